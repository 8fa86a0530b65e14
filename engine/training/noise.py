"""The noise a training step adds, with sd-scripts' options (library/train_util.py
``get_noise_noisy_latents_and_timesteps``, library/custom_train_functions.py):

- ``noise_offset`` (× a random strength in [0, 1) with ``noise_offset_random_strength``;
  plus ``adaptive_noise_scale`` × |mean of each latent channel|, clamped at 0);
- multires (pyramid) noise: ``multires_noise_iterations`` octaves, each drawn at a size
  divided by a random factor in [2, 4) per octave, upsampled bilinearly and weighted
  ``multires_noise_discount``^i, then the sum divided by its standard deviation;
- input perturbation (``ip_noise_gamma``): extra noise on the noisy input only; the
  target keeps the plain noise;
- ``min_timestep`` / ``max_timestep``: the range timesteps are drawn from.

Every draw comes from the run's generator. With an option off nothing is drawn for it,
so a run without these options draws exactly what it drew before (noise, offset,
timesteps, in that order).
"""

from __future__ import annotations

from typing import Any


def _randn(shape, gen, like, device=None):
    import torch

    return torch.randn(shape, generator=gen, device=device if device is not None else like.device, dtype=like.dtype)


def _rand1(gen, like) -> Any:
    import torch

    return torch.rand(1, generator=gen, device=like.device, dtype=like.dtype)


def offset_noise(opt: Any, latents, noise, gen, device=None):
    """``noise`` with the noise offset (random strength, adaptive scale) added."""
    import torch

    if not opt.noise_offset:
        return noise
    strength: Any = opt.noise_offset
    if opt.noise_offset_random_strength:
        strength = _rand1(gen, latents) * opt.noise_offset
    if opt.adaptive_noise_scale:
        mean = latents.mean(dim=(2, 3), keepdim=True).abs()
        strength = torch.clamp(strength + opt.adaptive_noise_scale * mean, min=0.0)
    return noise + strength * _randn((latents.shape[0], latents.shape[1], 1, 1), gen, latents, device)


def pyramid_noise(noise, gen, iterations: int, discount: float):
    """Multires noise: coarser octaves of noise upsampled onto ``noise``, normalised to std 1."""
    import torch

    b, c, h, w = noise.shape
    up = torch.nn.Upsample(size=(h, w), mode="bilinear")
    out = noise
    for i in range(iterations):
        r = float(_rand1(gen, noise).item()) * 2 + 2
        h, w = max(1, int(h / (r**i))), max(1, int(w / (r**i)))
        out = out + up(_randn((b, c, h, w), gen, noise)) * discount**i
        if h == 1 or w == 1:
            break
    return out / out.std()


def sample_noise(opt: Any, latents, gen, device):
    """The noise of one batch: what the target is made of."""
    noise = _randn(latents.shape, gen, latents, device)
    noise = offset_noise(opt, latents, noise, gen, device)
    if opt.multires_noise_iterations:
        noise = pyramid_noise(noise, gen, opt.multires_noise_iterations, opt.multires_noise_discount)
    return noise


def input_noise(opt: Any, latents, noise, gen):
    """The noise mixed into the noisy input: ``noise`` plus the input perturbation."""
    if not opt.ip_noise_gamma:
        return noise
    strength: Any = opt.ip_noise_gamma
    if opt.ip_noise_gamma_random_strength:
        strength = _rand1(gen, latents) * opt.ip_noise_gamma
    return noise + strength * _randn(latents.shape, gen, latents)


def timestep_range(opt: Any) -> dict[str, int]:
    """Keyword arguments of ``Family.noisy_input`` for a bounded timestep range ({} when unbounded)."""
    if opt.min_timestep == 0 and opt.max_timestep == 1000:
        return {}
    return {"min_timestep": opt.min_timestep, "max_timestep": opt.max_timestep}
