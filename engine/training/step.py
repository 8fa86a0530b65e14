"""One training step: the loss of a micro-batch and the optimizer update.

``Objective.loss`` asks the family for the noisy input, timesteps and target
(epsilon / v today, flow matching next) and the extra conditioning (SDXL's
size/crop ids); the noise (with ``noise_offset``), timesteps and nothing else
are drawn from the run's ``torch.Generator``, always in that order.
``OptimizerStep`` applies accumulated gradients, or skips on the device a step
whose loss or gradients are not finite (``optimization.max_bad_steps``); no
host-device synchronisation in a steady-state step (engine/training/fastpath.py).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from loratui.engine.schema import Profile
from loratui.engine.training import chunked, losses
from loratui.engine.training import fastpath as fp
from loratui.engine.training import noise as noise_options
from loratui.engine.training.fastpath import fast_copies
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
        # a data-parallel shard: the draws are made for the whole global batch, this process keeps its part
        whole = _whole_batch(latents, batch)
        noise = noise_options.sample_noise(opt, whole, gen, self.device)
        noisy, timesteps = fam.noisy_input(comp.noise_scheduler, whole, noise_options.input_noise(opt, whole, noise, gen),
                                           gen, **noise_options.timestep_range(opt))
        if whole is not latents:
            part = slice(batch.offset, batch.offset + latents.shape[0])
            noise, noisy, timesteps = noise[part], noisy[part], timesteps[part]
        with self.accelerator.autocast():
            te_ctx = contextlib.nullcontext() if self.profile.network.train_text_encoder else torch.no_grad()
            if self.text_cache is not None:
                hidden, pooled = self.text_cache.get(batch.captions, self.device)
            else:
                ids = fast_copies(chunked.tokenize(fam, comp.tokenizers, batch.captions, tokens), self.device)  # pinned, non-blocking on CUDA
                with te_ctx:
                    hidden, pooled = chunked.encode_text(fam, comp.text_encoders, ids, self.profile.model.clip_skip, self.device, tokens)
            pred = fam.predict(comp.unet, noisy, timesteps, hidden, pooled, batch.crops, self.device, self.weight_dtype)
        target = fam.target(comp.noise_scheduler, latents, noise, timesteps, comp.prediction_type)
        loss = losses.per_sample(opt, comp.noise_scheduler, pred, target, timesteps, batch.masks)
        loss = losses.weighted(opt, comp.noise_scheduler, loss, timesteps)
        if batch.has_reg:
            prior = self.profile.dataset.prior_loss_weight
            loss = loss * fast_copies([torch.tensor([prior if it.is_reg else 1.0 for it in batch.items])], self.device)[0]
        if opt.min_snr_gamma:
            loss = loss * fam.min_snr_weights(comp.noise_scheduler, timesteps, opt.min_snr_gamma, comp.prediction_type)
        weights = fam.loss_weights(comp.noise_scheduler, timesteps)  # SD3/FLUX weighting scheme; None elsewhere
        if weights is not None:
            loss = loss * weights.to(loss.device)
        return loss.mean()


def _whole_batch(latents, batch):
    """``latents`` in their place in a zero tensor of the global batch's size
    (``latents`` itself when this process has the whole batch)."""
    if not batch.global_n or batch.global_n == latents.shape[0] and batch.offset == 0:
        return latents
    whole = latents.new_zeros((batch.global_n, *latents.shape[1:]))
    whole[batch.offset : batch.offset + latents.shape[0]] = latents
    return whole


@dataclass
class Accumulator:
    """Gradients gathered over ``gradient_accumulation_steps`` micro-batches.

    The loss stays on the device (no ``.item()``: that would wait for the GPU
    every micro-batch); a non-finite one is still never applied: ``OptimizerStep``
    turns it into non-finite gradients, which skip the update on the device."""

    loss: Any = None  # 0-dim float32 tensor on the device: the mean loss of the micro-batches so far
    micro: int = 0  # micro-batches in this epoch

    def add(self, objective: Objective, batch, ga: int) -> None:
        loss = objective.loss(batch)
        if batch.global_n:  # a data-parallel shard: its share of the global batch's mean (summed across processes)
            loss = loss * batch.weight
        if ga > 1:
            loss = loss / ga
        fp.backward(objective.accelerator, loss)
        part = loss.detach().float()
        self.loss = part if self.loss is None else self.loss + part
        del loss
        self.micro += 1


@dataclass
class StepResult:
    """What one optimizer step did, known once its numbers reached the host."""

    step: int  # 1-based
    epoch: int
    loss: float | None  # None: skipped
    why: str  # why it was skipped ("" when applied)
    lr: float
    bad_steps: int = 0  # skipped steps so far, this one included


@dataclass
class OptimizerStep:
    """Applies accumulated gradients, skipping on the device a step whose loss or
    gradients are not finite (as torch's grad scaler does with ``found_inf``).

    On CUDA a step's loss and gradient norm reach the host one step later:
    ``apply`` queues step k and returns step k-1's :class:`StepResult` (read from
    a non-blocking copy to pinned memory, so the GPU never waits for the host);
    on other devices it returns step k's. ``collect`` returns all pending ones
    (before a save, at the end).
    Too many bad steps (``optimization.max_bad_steps``) raise there."""

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
    pending: list = field(default_factory=list)  # engine.training.fastpath.PendingStats, oldest first
    world: Any = None  # engine.distributed.World of a data-parallel run

    def apply(self, acc: Accumulator, step: int, epoch: int, last_saved: str) -> list[StepResult]:
        """Queue the update of step ``step + 1`` from the accumulated gradients;
        return the results of the earlier steps now known."""
        opt, scaler = self.profile.optimization, self.accelerator.scaler
        if self.world is not None and self.world.enabled:  # data-parallel: every process's share, summed
            acc.loss = self.world.reduce_gradients(self.params, acc.loss)
        grads = [p.grad for p in self.params if p.grad is not None]
        fp.poison_if_not_finite(grads, acc.loss)  # a non-finite loss makes non-finite gradients: never applied
        if opt.max_grad_norm:
            norm = fp.clip_grad_norm(self.accelerator, self.params, opt.max_grad_norm)
        elif scaler is None:
            norm = fp.total_norm(grads)
        else:
            norm = None  # the scaler finds inf gradients itself
        inner = fp.inner_optimizer(self.optimizer)  # accelerate's wrapper adds per-step package lookups, nothing we use
        if scaler is None:
            # skipped on the device when the norm is not finite; Prodigy / D-Adaptation keep state in their
            # param groups, which the device-side undo does not cover: decided on the host (they sync anyway)
            fp.guarded_step(inner, norm, on_host=True if self._adaptive else None)
        else:  # fp16: inf gradients are normal; the scaler skips the step and lowers its scale
            self.optimizer.step()
        if self.profile.network.scale_weight_norms and self.network is not None:
            from loratui.engine.training.regularize import apply_max_norm

            self.norms = apply_max_norm(self.network, self.profile.network.scale_weight_norms)
        self.lr_scheduler.step()  # the schedule stays on the plan, skipped step or not
        inner.zero_grad(set_to_none=True)
        self.pending.append(fp.PendingStats.record(step + 1, epoch, acc.loss, norm, self.lr_scheduler.get_last_lr()[0]))
        acc.loss = None
        # CUDA: step k's numbers are read once step k+1 is queued (the GPU never waits for the host);
        # elsewhere the step is done when apply returns: read now
        return self.collect(last_saved, keep=1 if self.pending[-1].event is not None else 0)

    @cached_property
    def _adaptive(self) -> bool:  # (once a run: not per step)
        from loratui.engine.registries import OPTIMIZERS

        entry = OPTIMIZERS.get(self.profile.optimization.optimizer)
        return bool(entry is not None and entry.adaptive_lr)

    def collect(self, last_saved: str, keep: int = 0) -> list[StepResult]:
        """The results of all pending steps but the newest ``keep``, oldest first."""
        out = []
        while len(self.pending) > keep:
            p = self.pending.pop(0)
            loss, norm = p.read()
            why = ""
            if not math.isfinite(loss):
                why = f"the loss became {loss}"
            elif self.accelerator.scaler is None and not math.isfinite(norm):
                why = f"the gradients became {norm}"
            if why:
                self.bad_steps += 1
                if self.bad_steps > self.profile.optimization.max_bad_steps:
                    self.pending.clear()
                    raise self._too_many(why, p.step - 1, p.epoch, last_saved)
            out.append(StepResult(p.step, p.epoch, None if why else loss, why, p.lr, self.bad_steps))
        return out

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
