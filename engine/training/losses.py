"""The per-sample loss with sd-scripts' options (library/train_util.py
``conditional_loss`` / ``get_huber_threshold_if_needed``, custom_train_functions.py
``apply_debiased_estimation``):

- ``loss_type`` l2 (mean squared error), l1, huber ``2c(sqrt(d² + c²) - c)`` and
  smooth_l1 ``2(sqrt(d² + c²) - c)``, with ``c`` per sample from ``huber_schedule``:
  constant ``huber_c·huber_scale``, exponential ``exp(ln(huber_c)·t/T)·huber_scale``,
  snr ``(1 - huber_c)/(1 + sqrt((1-ᾱ_t)/ᾱ_t))² + huber_c``;
- a loss mask (masked loss): the element-wise loss times the mask, resized to the
  latents by area averaging, before the mean;
- ``debiased_estimation_loss``: each sample's loss × 1/sqrt(SNR(t)), SNR capped at 1000.
"""

from __future__ import annotations

import math
from typing import Any


def huber_c(opt: Any, noise_scheduler, timesteps):
    """The Huber parameter of each sample (a 1-d tensor), as ``huber_schedule`` says."""
    import torch

    if opt.huber_schedule == "exponential":
        alpha = -math.log(opt.huber_c) / noise_scheduler.config.num_train_timesteps
        return torch.exp(-alpha * timesteps.float()) * opt.huber_scale
    if opt.huber_schedule == "snr":
        ac = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
        sigmas = ((1.0 - ac) / ac) ** 0.5
        return (1 - opt.huber_c) / (1 + sigmas) ** 2 + opt.huber_c
    return torch.full(timesteps.shape, opt.huber_c * opt.huber_scale, device=timesteps.device)


def elementwise(loss_type: str, pred, target, c=None):
    """The element-wise loss of ``pred`` against ``target`` (c: per-sample Huber parameter)."""
    import torch

    if loss_type == "l2":
        return torch.nn.functional.mse_loss(pred, target, reduction="none")
    if loss_type == "l1":
        return torch.nn.functional.l1_loss(pred, target, reduction="none")
    c = c.view(-1, *([1] * (pred.ndim - 1)))
    root = torch.sqrt((pred - target) ** 2 + c**2) - c
    return 2 * c * root if loss_type == "huber" else 2 * root


def resize_mask(mask, size):
    """A (B, H, W) or (B, 1, H, W) mask in [0, 1] at the latents' size (area averaging)."""
    import torch

    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    return torch.nn.functional.interpolate(mask.float(), size=tuple(size), mode="area")


def per_sample(opt: Any, noise_scheduler, pred, target, timesteps, mask=None):
    """Each sample's mean loss (a 1-d float32 tensor)."""
    c = huber_c(opt, noise_scheduler, timesteps) if opt.loss_type in ("huber", "smooth_l1") else None
    loss = elementwise(opt.loss_type, pred.float(), target.float(), c)
    if mask is not None:
        loss = loss * resize_mask(mask.to(loss.device), loss.shape[2:])
    return loss.mean(dim=tuple(range(1, loss.ndim)))


def debiased_weights(noise_scheduler, timesteps):
    """1/sqrt(SNR(t)) of each sample, SNR capped at 1000 (t = 0 has an infinite SNR)."""
    import torch

    ac = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = torch.clamp(ac / (1 - ac), max=1000)
    return 1 / torch.sqrt(snr)


def weighted(opt: Any, noise_scheduler, loss, timesteps):
    """``loss`` (per sample) with the weights of the loss options that are on."""
    if opt.debiased_estimation_loss:
        loss = loss * debiased_weights(noise_scheduler, timesteps)
    return loss
