"""One training step: the loss of a micro-batch and the optimizer update.

``Objective.loss`` asks the family for the noisy input, timesteps and target
(epsilon / v today, flow matching next) and the extra conditioning (SDXL's
size/crop ids); the noise (with ``noise_offset``), timesteps and nothing else
are drawn from the run's ``torch.Generator``, always in that order.
``OptimizerStep`` applies accumulated gradients, or skips a step whose loss or
gradients are not finite (``optimization.max_bad_steps``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from loratui.engine.schema import Profile
from loratui.engine.training import chunked, losses
from loratui.engine.training import noise as noise_options
from loratui.engine.training.paths import TrainingError


class Meter:
    """Smoothed loss (EMA with bias correction) and a recent-rate it/s."""

    def __init__(self, window: int = 20):
        self.ema = 0.0
        self.n = 0
        self.times: deque[float] = deque(maxlen=window)

    def update(self, loss: float) -> float:
        self.n += 1
        self.ema = 0.9 * self.ema + 0.1 * loss
        self.times.append(time.perf_counter())
        return self.smoothed

    @property
    def smoothed(self) -> float:
        """The EMA with its bias correction (as the step events show it)."""
        return self.ema / (1 - 0.9**self.n) if self.n else 0.0

    @property
    def its(self) -> float:
        if len(self.times) < 2:
            return 0.0
        span = self.times[-1] - self.times[0]
        return (len(self.times) - 1) / span if span > 0 else 0.0


@dataclass
class Objective:
    """The loss the family's model is trained with."""

    profile: Profile
    comp: Any  # engine.loading.Components
    accelerator: Any
    generator: Any  # torch.Generator: noise and timesteps
    device: str
    weight_dtype: Any
    text_cache: Any = None  # engine.text_cache.TextOutputCache: captions encoded once

    @property
    def family(self):
        from loratui.engine.families import get_family

        return get_family(self.comp.family)

    def loss(self, batch):
        """Mean loss of ``batch`` (a 0-dim float32 tensor, not yet backpropagated)."""
        import torch

        opt, comp, fam, gen = self.profile.optimization, self.comp, self.family, self.generator
        latents, tokens = batch.latents, opt.max_token_length
        noise = noise_options.sample_noise(opt, latents, gen, self.device)
        noisy, timesteps = fam.noisy_input(comp.noise_scheduler, latents, noise_options.input_noise(opt, latents, noise, gen),
                                           gen, **noise_options.timestep_range(opt))
        with self.accelerator.autocast():
            te_ctx = contextlib.nullcontext() if self.profile.network.train_text_encoder else torch.no_grad()
            if self.text_cache is not None:
                hidden, pooled = self.text_cache.get(batch.captions, self.device)
            else:
                ids = chunked.tokenize(fam, comp.tokenizers, batch.captions, tokens)
                with te_ctx:
                    hidden, pooled = chunked.encode_text(fam, comp.text_encoders, ids, self.profile.model.clip_skip, self.device, tokens)
            pred = fam.predict(comp.unet, noisy, timesteps, hidden, pooled, batch.crops, self.device, self.weight_dtype)
        target = fam.target(comp.noise_scheduler, latents, noise, timesteps, comp.prediction_type)
        loss = losses.per_sample(opt, comp.noise_scheduler, pred, target, timesteps, batch.masks)
        loss = losses.weighted(opt, comp.noise_scheduler, loss, timesteps)
        if batch.has_reg:
            prior = self.profile.dataset.prior_loss_weight
            loss = loss * torch.tensor([prior if it.is_reg else 1.0 for it in batch.items], device=self.device)
        if opt.min_snr_gamma:
            loss = loss * fam.min_snr_weights(comp.noise_scheduler, timesteps, opt.min_snr_gamma, comp.prediction_type)
        weights = fam.loss_weights(comp.noise_scheduler, timesteps)  # SD3/FLUX weighting scheme; None elsewhere
        if weights is not None:
            loss = loss * weights.to(loss.device)
        return loss.mean()


@dataclass
class Accumulator:
    """Gradients gathered over ``gradient_accumulation_steps`` micro-batches."""

    loss: float = 0.0  # the mean loss of the micro-batches so far
    micro: int = 0  # micro-batches in this epoch
    bad: str = ""  # why the optimizer step being accumulated must be skipped

    def add(self, objective: Objective, batch, ga: int) -> None:
        loss = objective.loss(batch)
        value = loss.item()
        if math.isfinite(value):
            objective.accelerator.backward(loss / ga)
            self.loss += value / ga
        elif not self.bad:  # detected at once: never backpropagated, never applied
            self.bad = f"the loss became {value}"
        del loss
        self.micro += 1


@dataclass
class OptimizerStep:
    profile: Profile
    optimizer: Any
    lr_scheduler: Any
    accelerator: Any
    params: list
    nan_hint: str  # what to do about non-finite values, for the message
    bad_steps: int = 0
    meter: Meter = field(default_factory=Meter)
    network: Any = None  # for max-norm regularisation (network.scale_weight_norms)
    norms: Any = None  # engine.training.regularize.NormFigures of the last step, None when off

    def apply(self, acc: Accumulator, step: int, epoch: int, last_saved: str) -> tuple[float | None, str]:
        """Update the LoRA from the accumulated gradients (or skip a bad step).
        Returns (the step's loss, "") or (None, why it was skipped)."""
        import torch

        opt = self.profile.optimization
        if not acc.bad and (opt.max_grad_norm or self.accelerator.scaler is None):
            if opt.max_grad_norm:
                norm = self.accelerator.clip_grad_norm_(self.params, opt.max_grad_norm)
            else:
                norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
            # With a grad scaler (fp16), inf gradients are normal: it skips the step and lowers its scale.
            if self.accelerator.scaler is None and norm is not None and not math.isfinite(float(norm)):
                acc.bad = f"the gradients became {float(norm)}"
        if acc.bad:
            why = acc.bad
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps += 1
            if self.bad_steps > opt.max_bad_steps:
                raise self._too_many(why, step, epoch, last_saved)
            self.lr_scheduler.step()  # the schedule stays on the plan
            acc.bad, acc.loss = "", 0.0
            return None, why
        self.optimizer.step()
        if self.profile.network.scale_weight_norms and self.network is not None:
            from loratui.engine.training.regularize import apply_max_norm

            self.norms = apply_max_norm(self.network, self.profile.network.scale_weight_norms)
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss, acc.loss = acc.loss, 0.0
        return loss, ""

    def figures(self) -> dict[str, Any]:
        """The max-norm figures of the last step, as StepEvent fields ({} when off)."""
        n = self.norms
        return {} if n is None else {"keys_scaled": n.keys_scaled, "mean_norm": n.mean_norm, "max_norm": n.max_norm}

    def _too_many(self, why: str, step: int, epoch: int, last_saved: str) -> TrainingError:
        opt = self.profile.optimization
        allowed = (
            f" ({self.bad_steps} non-finite steps, more than optimization.max_bad_steps = {opt.max_bad_steps})"
            if opt.max_bad_steps
            else ""
        )
        return TrainingError(
            f"{why} at step {step + 1} (epoch {epoch}){allowed}; the run stopped before the LoRA was updated with it"
            + (f" — the last good LoRA is {last_saved}" if last_saved else " — no LoRA was saved yet"),
            self.nan_hint,
        )
