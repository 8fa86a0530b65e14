"""``optimization.torch_compile``: the denoiser compiled with ``torch.compile``
(``optimization.dynamo_backend``), before the first step, as its own phase.

Aspect-ratio buckets give the U-Net a few input shapes (a bucket's size and
the batch sizes its images make). Up to ``MAX_STATIC_SHAPES`` of them, each is
compiled static (``dynamic=False``: the fastest kernels) during the COMPILING
phase, one warm-up forward and backward per shape on zeros, so that training
never stops to compile; more shapes than that compile once with dynamic
shapes. A recompile during training (a shape not foreseen) is reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from loratui.engine.events import LogEvent, Phase, PhaseChanged, WarningEvent

MAX_STATIC_SHAPES = 8


@dataclass
class CompileReport:
    backend: str
    dynamic: bool
    shapes: list[tuple[int, int, int]]  # (batch, latent h, latent w) compiled before the first step
    seconds: float = 0.0
    recompiles: list[str] = field(default_factory=list)  # compiles that happened during training

    def summary(self) -> str:
        kind = "dynamic shapes" if self.dynamic else "one static graph per shape"
        sizes = ", ".join(f"{n}×{h * 8}×{w * 8}" for n, h, w in self.shapes)
        return (f"torch.compile ({self.backend}, {kind}): {len(self.shapes)} shape(s) [{sizes}] "
                f"compiled in {self.seconds:.1f} s")


def batch_shapes(source, latent_channels: int = 4, scale: int = 8) -> list[tuple[int, int, int]]:
    """The distinct (batch size, latent h, latent w) of an epoch's batches, most frequent first."""
    from collections import Counter

    seen: Counter = Counter()
    for b in source.epoch(1):
        w, h = source.items[b[0]].bucket
        seen[(len(b), h // scale, w // scale)] += 1
    return [s for s, _ in seen.most_common()]


def compile_denoiser(ctx, objective, source, params: list) -> CompileReport | None:
    """Compile ``objective.comp.unet`` in place and warm every batch shape up
    (COMPILING phase). None when ``optimization.torch_compile`` is off."""
    import torch

    opt = ctx.profile.optimization
    if not opt.torch_compile:
        return None
    if opt.blocks_to_swap and str(objective.device).startswith("cuda"):
        ctx.warn("optimization.torch_compile: off for this run: block swap moves the weights of "
                 f"{opt.blocks_to_swap} blocks in and out during every step, which a compiled graph would "
                 "compile again for each time; use one or the other")
        return None
    if (ctx.profile.model.fp8_base and str(objective.device).startswith("cuda") and opt.dynamo_backend == "inductor"
            and torch.cuda.get_device_capability() < (8, 9)):
        major, minor = torch.cuda.get_device_capability()
        ctx.warn(f"optimization.torch_compile: off for this run: this GPU (compute capability {major}.{minor}) has no "
                 "float8 type for the compiled kernels model.fp8_base needs (Ada / Hopper and newer do)")
        return None
    unet = objective.comp.unet
    shapes = batch_shapes(source)
    dynamic = len(shapes) > MAX_STATIC_SHAPES
    report = CompileReport(opt.dynamo_backend, dynamic, shapes if not dynamic else shapes[:1])
    _raise_recompile_limit(len(shapes) + 2)
    unet.compile(backend=opt.dynamo_backend, dynamic=True if dynamic else False)
    gen_state = objective.generator.get_state()
    t0 = time.perf_counter()
    for i, shape in enumerate(report.shapes):
        n, h, w = shape
        ctx.emit(PhaseChanged(phase=Phase.COMPILING, current=i, total=len(report.shapes),
                              detail=f"U-Net for batch {n} at {w * 8}×{h * 8} ({i + 1}/{len(report.shapes)}, "
                                     f"{time.perf_counter() - t0:.0f} s so far)"))
        ctx.check_abort()
        _warm_up(objective, source, shape, unet)
        for p in params:
            p.grad = None
    if str(objective.device).startswith("cuda"):
        torch.cuda.synchronize()
    report.seconds = time.perf_counter() - t0
    objective.generator.set_state(gen_state)  # the warm-up drew noise: the run's draws are as without it
    ctx.emit(LogEvent(message=report.summary()))
    _watch_recompiles(ctx, report)
    return report


def _warm_up(objective, source, shape, unet) -> None:
    """One forward and backward of the training loss at ``shape``, on zero latents."""
    import torch

    from loratui.engine.training import fastpath as fp
    from loratui.engine.training.batches import Batch

    n, h, w = shape
    items = [it for it in source.items if it.bucket == (w * 8, h * 8)][:1] * n or source.items[:1] * n
    latents = torch.zeros((n, unet.config.in_channels, h, w), device=objective.device, dtype=objective.weight_dtype)
    crops = [((h * 8, w * 8), (0, 0), (h * 8, w * 8))] * n
    loss = objective.loss(Batch(items, latents, crops, [""] * n))
    fp.backward(objective.accelerator, loss)


def _raise_recompile_limit(n: int) -> None:
    import torch._dynamo

    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the newer name, then the older
        if hasattr(cfg, name) and getattr(cfg, name) < n:
            setattr(cfg, name, n)


def _watch_recompiles(ctx, report: CompileReport) -> None:
    """A warning for each compile during training (a shape the warm-up did not
    foresee). One callback per process (torch's list is global); it reports to
    the run that compiled last, while that run is training."""
    _WATCH["run"] = (ctx, report)
    if _WATCH["registered"]:
        return
    try:
        from torch._dynamo.callback import on_compile_start
    except ImportError:  # an older torch: no callback, the summary stays
        return
    on_compile_start(_compile_started)
    _WATCH["registered"] = True


_WATCH: dict = {"registered": False, "run": None}


def _compile_started(*_args, **_kw) -> None:
    run = _WATCH["run"]
    if run is None or run[0].phase != Phase.TRAINING:
        return
    ctx, report = run
    report.recompiles.append(time.strftime("%H:%M:%S"))
    ctx.emit(WarningEvent(message=f"optimization.torch_compile: the U-Net recompiles for a new input shape "
                                  f"({len(report.recompiles)} so far); the step waits for it"))
