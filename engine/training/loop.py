"""The run: checks (``prepare_run``), setup, then the loop, top to bottom.

``train(ctx)`` returns the terminal event; ``engine.train.run_training``
wraps it so that every failure becomes a ``Failed`` event.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loratui.engine.events import (
    Aborted,
    Control,
    Event,
    Finished,
    LogEvent,
    Phase,
    PhaseChanged,
    RunPlanned,
    StepEvent,
    WarningEvent,
)
from loratui.engine.schema import Profile
from loratui.engine.training.paths import TrainingError, epoch_path, final_path

Emit = Callable[[Event], None]


@dataclass
class RunContext:
    profile: Profile
    emit: Emit
    control: Control
    started_at: float
    passed_preflight: Callable[[], None]
    # what the run is doing (for error messages) and what it has saved
    phase: Phase = Phase.PREPARING
    step: int = 0
    total_steps: int = 0
    last_saved: str = ""  # the newest LoRA file written
    last_state: str = ""  # the newest state folder written
    lock: Any = None  # engine.state.OutputDirLock while the run writes
    heavy: bool = False  # past the preflight checks: models may have been loaded
    world: Any = None  # engine.distributed.World: this process's place in the run

    def where(self) -> str:
        if self.phase == Phase.TRAINING and self.total_steps:
            return f"at step {self.step + 1} of {self.total_steps}"
        return {
            Phase.LOADING_MODEL: "while loading the model",
            Phase.CACHING_LATENTS: "while caching latents",
            Phase.COMPILING: "while compiling the U-Net (optimization.torch_compile)",
            Phase.SAVING: "while saving",
        }.get(self.phase, "")

    def warn(self, msg: str) -> None:
        self.emit(WarningEvent(message=msg))

    def check_abort(self) -> None:
        if self.control.aborted:
            raise Aborted()


@dataclass
class Run:
    """Everything the loop uses, built by :func:`setup`."""

    ctx: RunContext
    plan: Any
    source: Any  # BatchSource
    objective: Any  # Objective
    stepper: Any  # OptimizerStep
    ckpt: Any  # Checkpointer
    start: tuple[int, int, int]  # (step, epoch, batch in epoch) to start from
    samples: Any = None  # engine.samples.during.TrainingSamples


def train(ctx: RunContext, *, overwrite: bool, resume: str | None) -> Event:
    prepared, device = start(ctx, overwrite=overwrite, resume=resume)
    return loop(setup(ctx, prepared, device))


def start(ctx: RunContext, *, overwrite: bool, resume: str | None):
    """The checks of ``prepare_run``; refuse to start, or lock the output folder."""
    from loratui.engine.training.prepare import prepare_run
    from loratui.engine.training.setup import describe_device, pick_device

    o = ctx.profile.output
    ctx.emit(PhaseChanged(phase=Phase.PREPARING, detail="scanning the dataset"))
    prepared = prepare_run(ctx.profile, resume=resume, overwrite=overwrite)
    for w in prepared.warnings:
        ctx.warn(w)
    ctx.emit(LogEvent(message="importing torch"))
    device = pick_device(ctx.profile)  # compute.gpu_ids of a one-process run: that GPU
    ctx.emit(RunPlanned(report=prepared.report, plan=prepared.plan, output_dir=o.output_dir, output_name=o.output_name,
                        device=describe_device(device), gpus=run_gpus(ctx.profile, device)))
    if prepared.problems:
        raise TrainingError("cannot start:\n  " + "\n  ".join(map(str, prepared.problems)), "fix the settings above, then start again")
    if prepared.plan.total_steps <= 0:
        raise TrainingError("nothing to train: the plan has 0 steps", "add images or raise epochs/repeats")
    ctx.passed_preflight()
    ctx.heavy = True
    from loratui.engine.state import OutputDirLock

    if not ctx.world.is_main:  # only the main process writes to the output folder
        return prepared, device
    ctx.lock = OutputDirLock(o.output_dir).acquire()
    for p in prepared.restored + ctx.lock.restored:
        ctx.warn(f"output.output_dir: put back {p.name}, a complete state an interrupted save had moved aside")
    if ctx.lock.removed:
        ctx.warn(
            f"output.output_dir: removed {len(ctx.lock.removed)} leftover(s) of an interrupted save in {o.output_dir} "
            f"({_few(ctx.lock.removed)}); the files saved before are intact"
        )
    ctx.check_abort()
    return prepared, device


def run_gpus(profile: Profile, device: str) -> list[int]:
    """The NVML (physical) numbers of the GPUs this machine's processes of the run use."""
    if not device.startswith("cuda"):
        return []
    c = profile.compute
    if c.world_size > 1:
        return c.gpu_list()[: c.processes] or list(range(c.processes))
    import torch

    from loratui.engine.training.setup import visible_gpus

    visible = visible_gpus() or []
    current = torch.cuda.current_device()
    return [visible[current]] if current < len(visible) else [current]


def _few(paths: list, n: int = 4) -> str:
    names = [p.name for p in paths]
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def setup(ctx: RunContext, prepared, device: str) -> Run:
    """Model, network, latents, optimizer; a resumed run's state put back."""
    import torch

    from loratui.engine import quiet_libraries
    from loratui.engine.errors import nan_hint
    from loratui.engine.metadata import model_hashes
    from loratui.engine.training import setup as s
    from loratui.engine.training.batches import BatchSource
    from loratui.engine.training.checkpoint import Checkpointer
    from loratui.engine.training.memory import apply_memory_savers, cache_text_outputs, place_for_training
    from loratui.engine.training.compile import compile_denoiser
    from loratui.engine.training.fastpath import speed_up
    from loratui.engine.training.optim import make_optimizer, make_scheduler, param_groups
    from loratui.engine.training.precision import allow_fp16_gradients, full_precision
    from loratui.engine.training.step import Objective, OptimizerStep

    profile, scan, plan = ctx.profile, prepared.scan, prepared.plan
    quiet_libraries()
    mp = s.resolve_precision(profile, device, ctx.warn, prepared.model.family)
    weight_dtype = s.weight_dtype_for(mp)
    # into main memory; its parts go onto the device in turn (memory.place_for_training)
    comp = s.load_model(profile, ctx.emit, "cpu", weight_dtype, ctx.warn)
    ctx.check_abort()
    network = s.build_network(profile, comp, ctx.emit, ctx.warn)
    apply_memory_savers(profile, comp, network, device, weight_dtype, ctx)
    full_precision(profile, network, mp, ctx.warn)
    s.check_disk_space(profile, plan, network.num_parameters(), ctx.warn)
    w = ctx.world
    store = main_first(ctx, profile.dataset.cache_latents == "disk", "the latent cache",
                       lambda: s.cache_latents(profile, scan, comp, ctx, device, weight_dtype))
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=mp, cpu=device == "cpu")
    from loratui.engine import text_cache as tc

    text_cache = main_first(ctx, tc.effective_mode(profile) == "disk", "the text-encoder cache",
                            lambda: cache_text_outputs(profile, scan, comp, ctx, device, accelerator, weight_dtype))
    if device != "cpu":  # (on a CPU it is there already)
        ctx.emit(PhaseChanged(phase=Phase.LOADING_MODEL, detail=f"Moving the model to {device}"))
    place_for_training(comp, network, device, text_cached=text_cache is not None, latents_cached=store is not None)
    speed_up(comp, device, lambda msg: ctx.emit(LogEvent(message=msg)))  # TF32, channels-last, SDPA
    groups = param_groups(profile, network)
    optimizer = make_optimizer(profile, groups)
    lr_scheduler = make_scheduler(profile, optimizer, plan.total_steps)
    optimizer = accelerator.prepare_optimizer(optimizer)
    allow_fp16_gradients(profile, accelerator)
    gen = torch.Generator(device=device).manual_seed(profile.optimization.seed)
    source = BatchSource(profile, scan.items, store=store, vae=comp.vae, device=device, weight_dtype=weight_dtype,
                         vae_fp32=comp.vae_needs_fp32, world=w)
    hint = nan_hint(profile, mp)
    metadata_inputs = dict(
        family=comp.family, report=prepared.report, plan=plan, tag_frequency=scan.tag_frequency(),
        bucket_info=scan.bucket_info(), base_model_hashes=model_hashes(profile.model.base_model, full=False),
        v_pred=comp.prediction_type == "v_prediction", num_processes=plan.processes,
        denoiser_config=comp.unet.config,
    )
    ckpt = Checkpointer(ctx, network, optimizer, lr_scheduler, accelerator, gen, source, metadata_inputs,
                        prepared.fingerprint, hint, s.save_dtype_for(profile), world=w)
    start_at = ckpt.restore(prepared.state) if prepared.state is not None else (0, 1, 0)
    objective = Objective(profile, comp, accelerator, gen, device, weight_dtype, text_cache)
    params = [p for g in groups for p in g["params"]]
    stepper = OptimizerStep(profile, optimizer, lr_scheduler, accelerator, params, hint, network=network, world=w)
    compile_denoiser(ctx, objective, source, params)  # optimization.torch_compile: the COMPILING phase
    from loratui.engine.samples.during import TrainingSamples

    samples = TrainingSamples(ctx, comp, device, accelerator.autocast, enabled=w.is_main)  # rank 0 renders them
    return Run(ctx, plan, source, objective, stepper, ckpt, start_at, samples)


def main_first(ctx: RunContext, to_disk: bool, what: str, build: Callable[[], Any]) -> Any:
    """A cache: in a data-parallel run with a disk cache the first process of
    each machine writes it while the others wait, then they read it (an
    in-memory cache each process builds for itself)."""
    w = ctx.world
    if not w.enabled or not to_disk:
        return build()
    if w.local_rank == 0:
        out = build()
        w.barrier(what)
        return out
    w.barrier(what)
    return build()


def loop(r: Run) -> Event:
    """Epochs of batches; a step every ``gradient_accumulation_steps``; saves and controls between steps."""
    from loratui.engine.training.step import Accumulator

    ctx, plan, ckpt, profile = r.ctx, r.plan, r.ckpt, r.ctx.profile
    o, ga = profile.output, profile.optimization.gradient_accumulation_steps
    total, epochs = plan.total_steps, plan.epochs
    step, start_epoch, skip_batches = r.start
    meter = r.stepper.meter
    t_train = time.perf_counter()
    ctx.emit(PhaseChanged(phase=Phase.TRAINING, total=total))
    r.samples.at_first(step)
    epoch, stopped = start_epoch, False
    for epoch in range(start_epoch, epochs + 1):
        batches = r.source.epoch(epoch)
        acc = Accumulator()
        first = skip_batches if epoch == start_epoch else 0
        for bi, batch in enumerate(batches):
            if bi < first:
                continue
            pause(ctx, step, total)
            ctx.check_abort()
            acc.add(r.objective, r.source.load(batch), ga)
            if acc.micro % ga and bi + 1 != len(batches):
                continue
            report(r, r.stepper.apply(acc, step, epoch, ctx.last_saved), t_train)  # step k-1's numbers
            step += 1
            r.samples.after_step(epoch, step)
            if step >= total:
                break
            save_step = o.save_every_n_steps and step % o.save_every_n_steps == 0
            save_asked = ctx.control.take_save_request()
            if save_step or save_asked or ctx.control.stop_requested:
                report(r, r.stepper.collect(ctx.last_saved), t_train)  # a save waits for the GPU anyway
            if save_step:
                ckpt.checkpoint("step", epoch, bi, len(batches), o.save_state, step)
            if save_asked:
                ckpt.checkpoint("manual", epoch, bi, len(batches), o.save_state, step)
            if ctx.control.stop_requested:
                ckpt.checkpoint("manual", epoch, bi, len(batches), True, step)
                stopped = True
                break
        report(r, r.stepper.collect(ctx.last_saved), t_train)
        if not stopped:
            r.samples.after_epoch(epoch, step)
        if stopped or step >= total:
            break
        if o.save_every_n_epochs and epoch % o.save_every_n_epochs == 0 and epoch < epochs:
            ckpt.save_lora(epoch_path(profile, epoch), "epoch", epoch, step)
            if o.save_state and ckpt.state_saved_at != step:
                ckpt.save_state(epoch, len(batches), len(batches), step)

    elapsed = time.perf_counter() - t_train
    if stopped:
        ctx.emit(PhaseChanged(phase=Phase.DONE))
        summary = {"last_saved": ctx.last_saved, "last_state": ctx.last_state}
        return Finished(path="", steps=step, elapsed=elapsed, stopped_early=True, summary=summary)
    ckpt.save_lora(final_path(profile), "final", epoch, step)
    ctx.emit(PhaseChanged(phase=Phase.DONE))
    summary = {"epochs": epoch, "final_loss": meter.smoothed, "its": step / elapsed if elapsed else 0.0}
    return Finished(path=str(final_path(profile)), steps=step, elapsed=elapsed, summary=summary)


def pause(ctx: RunContext, step: int, total: int) -> None:
    """Wait while paused (every process of a data-parallel run: the controls are
    shared there); the PAUSED phase in the events, so a watcher sees it too."""
    paused = ctx.control.paused
    if paused:
        ctx.emit(PhaseChanged(phase=Phase.PAUSED, detail=f"before step {step + 1}"))
    ctx.control.wait_if_paused()
    if paused:
        ctx.emit(PhaseChanged(phase=Phase.TRAINING, total=total))


def report(r: Run, results: list, t_train: float) -> None:
    """Steps whose numbers reached the host: a StepEvent, or a warning for a skipped one."""
    ctx, total, epochs = r.ctx, r.plan.total_steps, r.plan.epochs
    for res in results:
        if res.why:
            allowed = ctx.profile.optimization.max_bad_steps
            ctx.warn(f"step {res.step}: {res.why}; skipped without updating the LoRA "
                     f"({res.bad_steps} of {allowed} allowed by optimization.max_bad_steps)")
            continue
        meter = r.stepper.meter
        smooth, its = meter.update(res.loss), meter.its
        ctx.emit(StepEvent(epoch=res.epoch, epochs=epochs, step=res.step, total_steps=total, loss=res.loss,
                           smoothed_loss=smooth, lr=res.lr, its=its, elapsed=time.perf_counter() - t_train,
                           eta=(total - res.step) / its if its > 0 else 0.0, **r.stepper.figures()))
