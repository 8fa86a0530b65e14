"""The training loop: profile in, LoRA file out, events all the way.

Reads top to bottom: plan → preflight → load model → build network → cache
latents → optimizer/scheduler → loop (step, save, control) → final save.
Every failure a user can cause becomes a ``Failed`` event with a message and a
hint; the traceback of an unexpected error goes to the run's log file only.

Reliability (tests/test_resume.py, test_kill9.py, test_faults.py, test_bad_inputs.py):

* resume (``resume=`` a state folder or ``"latest"``) restores LoRA, optimizer,
  scheduler, scaler and every RNG and skips the batches already seen: on the
  CPU the resumed run ends bitwise equal to an uninterrupted one; a profile or
  dataset change that matters is refused with the differences listed;
* a run alone in its output folder first removes the leftovers of interrupted
  saves (engine.state.OutputDirLock); every file is written atomically;
* a NaN/inf loss or gradient is caught before the optimizer sees it: the run
  stops (or skips up to ``optimization.max_bad_steps`` steps), and weights
  that are not finite are never saved;
* out of memory and a full disk end in a ``Failed`` event with what to change,
  and the memory the run held is released before ``run_training`` returns.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratui.engine.events import (
    Aborted,
    CheckpointSaved,
    Control,
    Event,
    Failed,
    Finished,
    LogEvent,
    PhaseChanged,
    RunPlanned,
    StepEvent,
    WarningEvent,
)
from loratui.engine.schema import EIGHT_BIT_OPTIMIZERS, Profile, profile_warnings

Emit = Callable[[Event], None]


class TrainingError(Exception):
    """A problem the user can fix; ``hint`` says how."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint


# --------------------------------------------------------------------------- names


def final_path(profile: Profile) -> Path:
    return Path(profile.output.output_dir) / f"{profile.output.output_name}.safetensors"


def epoch_path(profile: Profile, epoch: int) -> Path:
    return Path(profile.output.output_dir) / f"{profile.output.output_name}-{epoch:06d}.safetensors"


def step_path(profile: Profile, step: int) -> Path:
    return Path(profile.output.output_dir) / f"{profile.output.output_name}-step{step:08d}.safetensors"


def log_path(profile: Profile) -> Path:
    return Path(profile.output.output_dir) / f"{profile.output.output_name}.log"


# --------------------------------------------------------------------------- device / precision


def pick_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def describe_device(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"
    return "cpu"


def resolve_precision(profile: Profile, device: str, warn: Callable[[str], None]) -> str:
    import torch

    mp = profile.optimization.mixed_precision
    if device == "cpu" and mp != "no":
        warn(f"optimization.mixed_precision: {mp} needs a GPU; training in fp32 on the CPU")
        return "no"
    if mp == "bf16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        warn("optimization.mixed_precision: this GPU has no bf16; using fp16")
        return "fp16"
    return mp


def weight_dtype_for(mp: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mp, torch.float32)


def save_dtype_for(profile: Profile):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32}[profile.output.save_precision]


# --------------------------------------------------------------------------- preflight


def preflight(profile: Profile, *, overwrite: bool) -> list[str]:
    """Problems known before any model loads (output folder, names, 8-bit on CPU)."""
    import torch

    problems: list[str] = []
    o = profile.output
    if not profile.model.base_model:
        problems.append("model.base_model: not set — point it at a .safetensors file, a diffusers folder or a Hub repo id")
    if not o.output_dir:
        problems.append("output.output_dir: not set — where the LoRA files are written")
    if not o.output_name:
        problems.append("output.output_name: not set — the LoRA's file name without .safetensors")
    if profile.optimization.optimizer in EIGHT_BIT_OPTIMIZERS and not torch.cuda.is_available():
        problems.append(
            f"optimization.optimizer: {profile.optimization.optimizer} needs an NVIDIA GPU (bitsandbytes); "
            "on this machine use AdamW or Lion"
        )
    if o.output_dir and o.output_name:
        out = Path(o.output_dir)
        target = final_path(profile)
        if target.exists() and not overwrite:
            problems.append(
                f"output.output_name: {target} already exists — choose another output name, "
                "or pass --overwrite to replace it"
            )
        problems.extend(_check_writable(out))
    return problems


def _check_writable(out: Path) -> list[str]:
    """Can files be created in ``out`` (or the nearest folder above it that
    exists)? A real probe: ``os.access`` says yes to root on a read-only disk."""
    import shutil
    import tempfile

    from loratui.engine.fsutil import TMP_PREFIX

    probe_dir = out
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        if probe_dir.is_symlink():
            return [f"output.output_dir: {probe_dir} is a broken symbolic link — choose another folder"]
        probe_dir = probe_dir.parent
    if probe_dir.exists() and not probe_dir.is_dir():
        return [f"output.output_dir: {probe_dir} is a file, not a folder — choose a folder"]
    try:
        fd, probe = tempfile.mkstemp(prefix=TMP_PREFIX + "probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        where = "" if probe_dir == out else f" (nothing can be created in {probe_dir})"
        return [f"output.output_dir: {out} is not writable{where}: {reason} — choose a folder you can write to"]
    try:
        free = shutil.disk_usage(probe_dir).free
        if free < 50 * 2**20:
            return [f"output.output_dir: only {free / 2**20:.0f} MB free on the disk of {out} — free some space first"]
    except OSError:
        pass
    return []


# --------------------------------------------------------------------------- text conditioning


def tokenize(tokenizers: list, captions: list[str]) -> list:
    out = []
    for tok in tokenizers:
        out.append(
            tok(
                captions,
                padding="max_length",
                max_length=tok.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
        )
    return out


def encode_text(comp, ids: list, clip_skip: int, device) -> tuple[Any, Any]:
    """(encoder_hidden_states, pooled or None) as sd-scripts builds them."""
    import torch

    if comp.family == "sdxl":
        te1, te2 = comp.text_encoders
        o1 = te1(ids[0].to(device), output_hidden_states=True)
        o2 = te2(ids[1].to(device), output_hidden_states=True)
        hidden = torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], dim=-1)
        return hidden, o2.text_embeds
    te = comp.text_encoders[0]
    out = te(ids[0].to(device), output_hidden_states=clip_skip > 1)
    if clip_skip > 1:
        h = out.hidden_states[-clip_skip]
        h = getattr(te, "text_model", te).final_layer_norm(h)
    else:
        h = out.last_hidden_state
    return h, None


def sdxl_time_ids(crops: list[tuple], device, dtype):
    import torch

    rows = [list(orig) + list(top_left) + list(target) for orig, top_left, target in crops]
    return torch.tensor(rows, device=device, dtype=dtype)


# --------------------------------------------------------------------------- optimizer / scheduler


def parse_optimizer_args(text: str) -> dict[str, Any]:
    import ast

    out: dict[str, Any] = {}
    for item in text.split():
        if "=" not in item:
            raise TrainingError(f"optimization.optimizer_args: {item!r} is not key=value", "e.g. weight_decay=0.1 betas=0.9,0.99")
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out[key] = value
    return out


def make_optimizer(profile: Profile, groups: list[dict]):
    o = profile.optimization
    kwargs = parse_optimizer_args(o.optimizer_args)
    name = o.optimizer
    try:
        if name == "AdamW":
            import torch

            kwargs.setdefault("weight_decay", 0.01)
            return torch.optim.AdamW(groups, lr=o.learning_rate, **kwargs)
        if name in EIGHT_BIT_OPTIMIZERS:
            import bitsandbytes as bnb

            cls = bnb.optim.AdamW8bit if name == "AdamW8bit" else bnb.optim.Lion8bit
            return cls(groups, lr=o.learning_rate, **kwargs)
        if name == "Lion":
            from lion_pytorch import Lion

            return Lion(groups, lr=o.learning_rate, **kwargs)
        if name == "Prodigy":
            from prodigyopt import Prodigy

            return Prodigy(groups, lr=o.learning_rate, **kwargs)
        if name == "DAdaptAdam":
            from dadaptation import DAdaptAdam

            return DAdaptAdam(groups, lr=o.learning_rate, **kwargs)
        if name == "Adafactor":
            from transformers.optimization import Adafactor

            kwargs.setdefault("relative_step", False)
            kwargs.setdefault("scale_parameter", False)
            kwargs.setdefault("warmup_init", False)
            return Adafactor(groups, lr=o.learning_rate, **kwargs)
    except TypeError as exc:
        raise TrainingError(f"optimization.optimizer_args: {name} does not accept them ({exc})", "remove or rename the argument") from None
    raise TrainingError(f"optimization.optimizer: unknown optimizer {name!r}")


def make_scheduler(profile: Profile, optimizer, total_steps: int):
    from diffusers.optimization import get_scheduler

    o = profile.optimization
    warmup = o.lr_warmup_steps
    warmup_steps = int(round(warmup * total_steps)) if warmup < 1 else int(warmup)
    kwargs: dict[str, Any] = {}
    if o.lr_scheduler == "cosine_with_restarts":
        kwargs["num_cycles"] = o.lr_scheduler_num_cycles
    if o.lr_scheduler == "polynomial":
        kwargs["power"] = o.lr_scheduler_power
    return get_scheduler(
        o.lr_scheduler,
        optimizer,
        num_warmup_steps=warmup_steps,
        num_training_steps=max(total_steps, 1),
        **kwargs,
    )


# --------------------------------------------------------------------------- loss


def min_snr_weights(noise_scheduler, timesteps, gamma: float, v_pred: bool):
    import torch

    ac = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = ac / (1 - ac)
    w = torch.clamp(snr, max=gamma) / (snr + 1 if v_pred else snr)
    return w.float()


# --------------------------------------------------------------------------- progress


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
        return self.ema / (1 - 0.9**self.n)

    @property
    def its(self) -> float:
        if len(self.times) < 2:
            return 0.0
        span = self.times[-1] - self.times[0]
        return (len(self.times) - 1) / span if span > 0 else 0.0


# --------------------------------------------------------------------------- the run


@dataclass
class RunContext:
    profile: Profile
    emit: Emit
    control: Control
    started_at: float
    passed_preflight: Callable[[], None]
    # what the run is doing (for error messages) and what it has saved
    phase: str = "preparing"
    step: int = 0
    total_steps: int = 0
    last_saved: str = ""  # the newest LoRA file written
    last_state: str = ""  # the newest state folder written
    lock: Any = None  # engine.state.OutputDirLock while the run writes
    heavy: bool = False  # past the preflight checks: models may have been loaded

    def where(self) -> str:
        if self.phase == "training" and self.total_steps:
            return f"at step {self.step + 1} of {self.total_steps}"
        return {
            "loading_model": "while loading the model",
            "caching_latents": "while caching latents",
            "saving": "while saving",
        }.get(self.phase, "")


def run_training(
    profile: Profile,
    emit: Emit,
    control: Control | None = None,
    *,
    overwrite: bool = False,
    resume: str | None = None,
) -> Event:
    """Run to the end and return the terminal event (also emitted).

    Never raises for a problem of the run: a ``Failed`` event says what went
    wrong (out of memory, disk full, NaN loss, bad input ...) and the memory the
    run held is released before it is returned. ``resume``: a state folder, or
    ``"latest"`` for the newest state of this output name."""
    from loratui.engine.errors import release_memory
    from loratui.engine.metrics import MetricsWriter, metrics_path_for

    control = control or Control()
    metrics = MetricsWriter(metrics_path_for(profile), fresh=not (resume or profile.output.resume))
    outer_emit = emit
    ctx: RunContext

    def emit(ev: Event) -> None:  # noqa: F811 - every event also goes to the metrics file
        if isinstance(ev, PhaseChanged):
            ctx.phase = ev.phase
            if ev.phase == "training" and ev.total:
                ctx.total_steps = ev.total
        elif isinstance(ev, StepEvent):
            ctx.step, ctx.total_steps = ev.step, ev.total_steps
        metrics.write(ev)
        outer_emit(ev)

    ctx = RunContext(profile, emit, control, time.time(), metrics.release)
    try:
        result: Event = _train(ctx, overwrite=overwrite, resume=resume)
    except Aborted:
        result = Failed(message="aborted by the user; nothing was saved since the last checkpoint", last_saved=ctx.last_saved)
    except TrainingError as exc:
        result = Failed(message=exc.message, hint=exc.hint, last_saved=ctx.last_saved)
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        result = _unexpected(ctx, exc)
    finally:
        if ctx.lock is not None:
            ctx.lock.release()
    if isinstance(result, Failed) and ctx.heavy:
        # The model, optimizer and activations died with _train's frames (the
        # exception and its traceback are gone by now): give the memory back
        # so the app can start another run.
        release_memory()
    emit(result)
    metrics.close()
    return result


def _unexpected(ctx: RunContext, exc: BaseException) -> Failed:
    from dataclasses import replace

    from loratui.engine.errors import explain_exception

    known = explain_exception(exc, ctx.profile, where=ctx.where())
    if known is not None:
        return replace(known, last_saved=ctx.last_saved)
    where = ""
    with contextlib.suppress(OSError):
        lp = log_path(ctx.profile)
        lp.parent.mkdir(parents=True, exist_ok=True)
        with open(lp, "a", encoding="utf-8") as fh:
            fh.write(f"\n--- {time.ctime()} internal error ---\n")
            traceback.print_exception(exc, file=fh)
        where = f" (details in {lp})"
    return Failed(
        message=f"internal error: {type(exc).__name__}: {exc}{where}",
        hint="please report this with the log file",
        last_saved=ctx.last_saved,
    )


def _few(paths: list[Path], n: int = 4) -> str:
    names = [p.name for p in paths]
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def check_disk_space(profile: Profile, plan, lora_params: int, warn: Callable[[str], None]) -> None:
    """Refuse to start when not even one LoRA and one state fit on the output
    disk; warn when everything the run will write does not."""
    import shutil

    o = profile.output
    try:
        free = shutil.disk_usage(o.output_dir).free
    except OSError:
        return
    per_value = 4 if o.save_precision == "float" else 2
    lora_bytes = lora_params * per_value + 64 * 1024
    state_bytes = lora_params * 4 * 3 + 64 * 1024  # fp32 weights + two optimizer moments
    n_lora = 1
    if o.save_every_n_epochs:
        n_lora += max(0, (plan.epochs - 1) // o.save_every_n_epochs)
    if o.save_every_n_steps:
        n_lora += plan.total_steps // o.save_every_n_steps
    n_states = 1
    if o.save_state:
        n_states = (o.save_last_n_states + 1) if o.save_last_n_states else n_lora
    need_min = lora_bytes + state_bytes
    need_all = n_lora * lora_bytes + n_states * state_bytes
    out = o.output_dir
    if free < need_min:
        raise TrainingError(
            f"output.output_dir: only {_size(free)} free on the disk of {out}; one LoRA and one saved state "
            f"need about {_size(need_min)}",
            "free some space, or choose an output folder on another disk",
        )
    if free < need_all:
        warn(
            f"output.output_dir: this run writes about {_size(need_all)} ({n_lora} LoRA file(s) of {_size(lora_bytes)}"
            + (f", {n_states} state(s) of {_size(state_bytes)}" if o.save_state else "")
            + f") but only {_size(free)} are free on the disk of {out}; it stops with a message if the disk fills up — "
            "free some space, or save less often (output.save_every_n_epochs / save_every_n_steps / save_last_n_states)"
        )


def _train(ctx: RunContext, *, overwrite: bool, resume: str | None) -> Event:
    profile, emit, control = ctx.profile, ctx.emit, ctx.control
    o, opt, ds, net = profile.output, profile.optimization, profile.dataset, profile.network

    def warn(msg: str) -> None:
        emit(WarningEvent(message=msg))

    def check_abort() -> None:
        if control.aborted:
            raise Aborted()

    # ---- 1. plan (no model yet) ------------------------------------------------
    emit(PhaseChanged(phase="preparing", detail="scanning the dataset"))
    for w in profile_warnings(profile):
        warn(str(w))
    from loratui.engine.dataset import plan_for, scan_dataset
    from loratui.engine.state import dataset_fingerprint

    scan = scan_dataset(ds)
    report = scan.report
    for w in report.warnings:
        warn(w)
    problems = list(report.problems)
    from loratui.engine.models import inspect_model

    problems += inspect_model(profile.model).problems  # headers only: the same checks the loader makes
    if net.network_weights and not Path(net.network_weights).expanduser().is_file():
        what = "is a folder" if Path(net.network_weights).expanduser().is_dir() else "does not exist"
        problems.append(
            f"network.network_weights: {net.network_weights} {what} — point it at a LoRA .safetensors file "
            "to continue from, or clear it to start a new LoRA"
        )
    resume_spec = resume or o.resume
    problems += preflight(profile, overwrite=overwrite)
    plan = plan_for(profile, scan)
    fingerprint = dataset_fingerprint(scan.items, plan.total_steps)
    state = None
    restored: list[Path] = []
    if resume_spec:
        from loratui.engine.state import (
            OutputDirLock,
            StateError,
            dataset_differences,
            read_state,
            resolve_resume,
            resume_differences,
        )

        if Path(o.output_dir).is_dir():  # a state a kill left moved aside is a state too
            restored = OutputDirLock.put_back(o.output_dir)

        try:
            state = read_state(resolve_resume(resume_spec, profile))
        except StateError as exc:
            problems.append(f"output.resume: {exc}" + (f" — {exc.hint}" if exc.hint else ""))
        else:
            diffs = resume_differences(state, profile)
            if diffs:
                problems.append(
                    f"output.resume: the profile differs from the one {state.folder.name} was trained with:\n    "
                    + "\n    ".join(diffs)
                    + "\n  undo these changes to resume, or start a new run without resume"
                )
            else:  # the same settings: is it the same data?
                ds_problems, ds_warnings = dataset_differences(state, fingerprint)
                problems += [f"output.resume: {p}" for p in ds_problems]
                for w in ds_warnings:
                    warn(f"output.resume: {w}")
    emit(LogEvent(message="importing torch"))
    import torch

    device = pick_device()
    emit(
        RunPlanned(
            report=report,
            plan=plan,
            output_dir=o.output_dir,
            output_name=o.output_name,
            device=describe_device(device),
        )
    )
    if problems:
        raise TrainingError("cannot start:\n  " + "\n  ".join(problems), "fix the settings above, then start again")
    if plan.total_steps <= 0:
        raise TrainingError("nothing to train: the plan has 0 steps", "add images or raise epochs/repeats")
    ctx.passed_preflight()
    ctx.heavy = True
    from loratui.engine.state import OutputDirLock

    ctx.lock = OutputDirLock(o.output_dir).acquire()
    for p in restored + ctx.lock.restored:
        warn(f"output.output_dir: put back {p.name}, a complete state an interrupted save had moved aside")
    if ctx.lock.removed:
        warn(
            f"output.output_dir: removed {len(ctx.lock.removed)} leftover(s) of an interrupted save in {o.output_dir} "
            f"({_few(ctx.lock.removed)}); the files saved before are intact"
        )
    check_abort()

    # ---- 2. model ------------------------------------------------------------------
    from loratui.engine import quiet_libraries

    quiet_libraries()
    mp = resolve_precision(profile, device, warn)
    weight_dtype = weight_dtype_for(mp)
    emit(PhaseChanged(phase="loading_model", detail=profile.model.base_model))
    from loratui.engine.models import load_components

    comp = load_components(
        profile.model,
        device=device,
        dtype=weight_dtype,
        on_progress=lambda msg: emit(PhaseChanged(phase="loading_model", detail=msg)),
    )
    emit(LogEvent(message=f"loaded {comp.source}"))
    for w in comp.warnings:
        warn(w)
    if comp.family == "sdxl" and profile.model.clip_skip > 1:
        warn("model.clip_skip: SDXL always uses the penultimate layer; clip_skip is ignored")
    check_abort()

    # ---- 3. network -----------------------------------------------------------------
    from loratui.engine.lora import LoRANetwork

    torch.manual_seed(opt.seed)
    random.seed(opt.seed)
    unet, vae = comp.unet, comp.vae
    for m in [unet, vae, *comp.text_encoders]:
        m.requires_grad_(False)
    conv = net.network_type == "locon"
    network = LoRANetwork.create(
        unet,
        comp.text_encoders,
        comp.family,
        rank=net.network_dim,
        alpha=net.network_alpha,
        conv_rank=net.conv_dim if conv else None,
        conv_alpha=net.conv_alpha if conv else None,
        train_unet=net.train_unet,
        train_text_encoder=net.train_text_encoder,
        weights=net.network_weights or None,
    )
    train_te = net.train_text_encoder
    if opt.gradient_checkpointing:
        network.enable_gradient_checkpointing()
    summary = network.rank_summary()
    ranks = ", ".join(f"{n}× rank {r} alpha {a:g}" for (r, a), n in sorted(summary.items()))
    emit(LogEvent(message=f"LoRA: {network.num_modules} modules ({ranks}), {network.num_parameters():,} trainable parameters"))
    if net.network_weights:
        expected = {net.network_dim} | ({net.conv_dim} if conv else set())
        file_ranks = sorted({r for r, _ in summary} - expected)
        if file_ranks:
            warn(
                f"network.network_weights: {Path(net.network_weights).name} has rank(s) "
                f"{', '.join(map(str, file_ranks))}, not network.network_dim {net.network_dim}; training continues "
                "at the file's ranks and alphas (set network_dim to match to silence this)"
            )
    check_disk_space(profile, plan, network.num_parameters(), warn)

    # ---- 4. latents -------------------------------------------------------------------
    from loratui.engine.dataset import cache_latents, epoch_batches, load_image_tensor, process_caption
    from loratui.engine.latent_cache import encode_pixels

    store = None
    if ds.cache_latents != "off":
        emit(PhaseChanged(phase="caching_latents", current=0, total=len(scan.items)))
        store = cache_latents(
            scan.items,
            vae,
            mode=ds.cache_latents,
            device=device,
            dtype=weight_dtype,
            vae_fp32=comp.vae_needs_fp32,
            on_progress=lambda n, total: emit(PhaseChanged(phase="caching_latents", current=n, total=total)),
            should_stop=lambda: control.aborted,
            flip_aug=ds.flip_aug,
            seed=opt.seed,
        )
        check_abort()
        vae.to("cpu")
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

    # ---- 5. optimizer / scheduler ------------------------------------------------------
    groups = []
    if net.train_unet:
        groups.append({"params": network.unet_parameters(), "lr": opt.unet_lr or opt.learning_rate})
    if train_te:
        groups.append({"params": network.text_encoder_parameters(), "lr": opt.text_encoder_lr or opt.learning_rate})
    groups = [g for g in groups if g["params"]]
    optimizer = make_optimizer(profile, groups)
    lr_scheduler = make_scheduler(profile, optimizer, plan.total_steps)
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=mp, cpu=device == "cpu")
    optimizer = accelerator.prepare_optimizer(optimizer)
    noise_scheduler = comp.noise_scheduler
    v_pred = comp.prediction_type == "v_prediction"
    gen = torch.Generator(device=device).manual_seed(opt.seed)
    caption_rng = random.Random(opt.seed)
    params = [p for g in groups for p in g["params"]]
    step, start_epoch, skip_batches = 0, 1, 0
    if state is not None:
        from loratui.engine.lora import read_lora_file
        from loratui.engine.state import load_training

        sd, _ = read_lora_file(state.folder / "lora.safetensors")
        network.load_kohya_state_dict(sd, source=str(state.folder / "lora.safetensors"))
        tr = load_training(state.folder)
        optimizer.load_state_dict(tr["optimizer"])
        lr_scheduler.load_state_dict(tr["scheduler"])
        if tr.get("scaler") is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(tr["scaler"])
        torch.set_rng_state(tr["torch_rng"])
        gen.set_state(tr["gen"])
        caption_rng.setstate(tr["caption_rng"])
        if tr.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(tr["cuda_rng"])
        step, start_epoch, skip_batches = state.step, state.epoch, state.batch_in_epoch
        ctx.last_saved = str(state.extra.get("last_saved") or "")
        ctx.last_state = str(state.folder)
        emit(LogEvent(message=f"resumed from {state.folder.name}: step {step}, epoch {start_epoch}, batch {skip_batches}"))

    # ---- 6. the loop ----------------------------------------------------------------------
    total, per_epoch, epochs = plan.total_steps, plan.steps_per_epoch, plan.epochs
    ga = opt.gradient_accumulation_steps
    meter = Meter()
    t_train = time.perf_counter()
    lora_saved_at = state_saved_at = -1  # steps of the newest LoRA / state written by this run
    bad_steps = 0

    from loratui.engine.errors import disk_full_message, is_disk_full, nan_hint
    from loratui.engine.metadata import model_hashes

    base_hashes = model_hashes(profile.model.base_model, full=False)

    def resume_hint() -> str:
        if ctx.last_state:
            return f"; then resume with --resume latest (the newest state is {Path(ctx.last_state).name})"
        return f"; the last saved LoRA is {ctx.last_saved}" if ctx.last_saved else ""

    def write_guarded(target: Path, write: Callable[[], Any]) -> None:
        """Disk full or a folder that became read-only: a clear message; the
        atomic writers have already removed their temporary file."""
        try:
            write()
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is a disk problem
            if is_disk_full(exc):
                raise TrainingError(
                    f"{disk_full_message(target.name)} in {target.parent} at step {step}",
                    "free some space: the files saved before are intact and no half-written file was left" + resume_hint(),
                ) from None
            if isinstance(exc, PermissionError):
                raise TrainingError(
                    f"output.output_dir: cannot write {target.name} in {target.parent} (permission denied) at step {step}",
                    "make the folder writable again: the files saved before are intact" + resume_hint(),
                ) from None
            raise

    def check_finite_weights() -> None:
        with torch.no_grad():
            if bool(torch.stack([torch.isfinite(p).all() for p in network.parameters()]).all()):
                return
        raise TrainingError(
            f"the LoRA weights are no longer finite (NaN/inf) at step {step}; nothing was saved over the earlier files"
            + (f" — the last good LoRA is {ctx.last_saved}" if ctx.last_saved else ""),
            nan_hint(profile, mp),
        )

    def save(path: Path, kind: str, epoch: int) -> None:
        nonlocal lora_saved_at
        check_finite_weights()
        emit(PhaseChanged(phase="saving", detail=path.name))
        from loratui.engine.metadata import build_metadata

        md = build_metadata(
            profile,
            family=comp.family,
            report=report,
            plan=plan,
            tag_frequency=scan.tag_frequency(),
            bucket_info=scan.bucket_info(),
            base_model_hashes=base_hashes,
            training_started_at=ctx.started_at,
            training_finished_at=time.time() if kind == "final" else None,
            steps=step,
            epoch=epoch,
            v_pred=v_pred,
        )
        write_guarded(path, lambda: network.save(path, md, save_dtype_for(profile)))
        ctx.last_saved = str(path)
        lora_saved_at = step
        emit(CheckpointSaved(path=str(path), kind=kind, size=path.stat().st_size, epoch=epoch, step=step))
        emit(PhaseChanged(phase="training"))

    def save_state(epoch: int, batch_in_epoch: int, nbatches: int) -> None:
        nonlocal state_saved_at
        from loratui.engine.state import prune_states, state_dir, write_state

        check_finite_weights()
        if batch_in_epoch >= nbatches:  # at an epoch's end: continue with the next one
            epoch, batch_in_epoch = epoch + 1, 0
        folder = state_dir(profile, step)
        emit(PhaseChanged(phase="saving", detail=folder.name))
        training = {
            "optimizer": optimizer.state_dict(),
            "scheduler": lr_scheduler.state_dict(),
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "gen": gen.get_state(),
            "caption_rng": caption_rng.getstate(),
        }
        write_guarded(
            folder,
            lambda: write_state(
                folder,
                lora_sd=network.kohya_state_dict(torch.float32),
                training=training,
                epoch=epoch,
                batch_in_epoch=batch_in_epoch,
                step=step,
                profile=profile,
                extra={"last_saved": ctx.last_saved, "dataset": fingerprint},
            ),
        )
        ctx.last_state = str(folder)
        state_saved_at = step
        prune_states(profile, o.save_last_n_states)  # only now that the new one is complete
        size = sum(f.stat().st_size for f in folder.iterdir())
        emit(CheckpointSaved(path=str(folder), kind="state", size=size, epoch=epoch, step=step))
        emit(PhaseChanged(phase="training"))

    def checkpoint(kind: str, epoch: int, bi: int, nbatches: int, with_state: bool) -> None:
        if lora_saved_at != step:
            save(step_path(profile, step), kind, epoch)
        if with_state and state_saved_at != step:
            save_state(epoch, bi + 1, nbatches)

    emit(PhaseChanged(phase="training", total=total))
    epoch = start_epoch
    stopped = False
    for epoch in range(start_epoch, epochs + 1):
        batches = epoch_batches(scan.items, opt.train_batch_size, epoch, opt.seed)
        micro = 0
        loss_acc = 0.0
        bad = ""  # why the optimizer step being accumulated must be skipped
        first = skip_batches if epoch == start_epoch else 0
        for bi, batch in enumerate(batches):
            if bi < first:
                continue
            control.wait_if_paused()
            check_abort()
            items = [scan.items[i] for i in batch]
            # -- inputs
            with torch.no_grad():
                if store is not None:
                    flips = [ds.flip_aug and caption_rng.random() < 0.5 for _ in batch]
                    latents = torch.stack([store.get(i, f) for i, f in zip(batch, flips)]).to(device, dtype=weight_dtype)
                    crops = [store.crop(i, f) for i, f in zip(batch, flips)]
                else:
                    imgs, crops = [], []
                    for it in items:
                        flip = ds.flip_aug and caption_rng.random() < 0.5
                        img, crop = load_image_tensor(it, flip=flip)
                        imgs.append(img)
                        crops.append(crop)
                    pix = torch.stack(imgs).to(device, dtype=torch.float32 if comp.vae_needs_fp32 else weight_dtype)
                    latents = encode_pixels(vae, pix).to(device, dtype=weight_dtype)
            captions = [process_caption(it.caption, ds, caption_rng) for it in items]
            ids = tokenize(comp.tokenizers, captions)
            noise = torch.randn(latents.shape, generator=gen, device=device, dtype=latents.dtype)
            if opt.noise_offset:
                noise = noise + opt.noise_offset * torch.randn(
                    (latents.shape[0], latents.shape[1], 1, 1), generator=gen, device=device, dtype=latents.dtype
                )
            bsz = latents.shape[0]
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), generator=gen, device=device).long()
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            # -- forward
            with accelerator.autocast():
                te_ctx = contextlib.nullcontext() if train_te else torch.no_grad()
                with te_ctx:
                    hidden, pooled = encode_text(comp, ids, profile.model.clip_skip, device)
                kwargs = {}
                if comp.family == "sdxl":
                    kwargs["added_cond_kwargs"] = {
                        "text_embeds": pooled.to(weight_dtype),
                        "time_ids": sdxl_time_ids(crops, device, weight_dtype),
                    }
                pred = unet(noisy, timesteps, hidden.to(weight_dtype), **kwargs).sample
            target = noise_scheduler.get_velocity(latents, noise, timesteps) if v_pred else noise
            loss = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
            if any(it.is_reg for it in items):
                w = torch.tensor([ds.prior_loss_weight if it.is_reg else 1.0 for it in items], device=device)
                loss = loss * w
            if opt.min_snr_gamma:
                loss = loss * min_snr_weights(noise_scheduler, timesteps, opt.min_snr_gamma, v_pred)
            loss = loss.mean()
            loss_value = loss.item()
            if math.isfinite(loss_value):
                accelerator.backward(loss / ga)
                loss_acc += loss_value / ga
            elif not bad:  # detected at once: never backpropagated, never applied
                bad = f"the loss became {loss_value}"
            del loss, pred
            micro += 1
            if micro % ga and bi + 1 != len(batches):
                continue
            # -- optimizer step
            if not bad and (opt.max_grad_norm or accelerator.scaler is None):
                if opt.max_grad_norm:
                    norm = accelerator.clip_grad_norm_(params, opt.max_grad_norm)
                else:
                    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
                # With a grad scaler (fp16), inf gradients are normal: it skips the step and lowers its scale.
                if accelerator.scaler is None and norm is not None and not math.isfinite(float(norm)):
                    bad = f"the gradients became {float(norm)}"
            if bad:
                optimizer.zero_grad(set_to_none=True)
                bad_steps += 1
                if bad_steps > opt.max_bad_steps:
                    allowed = (
                        f" ({bad_steps} non-finite steps, more than optimization.max_bad_steps = {opt.max_bad_steps})"
                        if opt.max_bad_steps
                        else ""
                    )
                    raise TrainingError(
                        f"{bad} at step {step + 1} (epoch {epoch}){allowed}; the run stopped before the LoRA was updated with it"
                        + (f" — the last good LoRA is {ctx.last_saved}" if ctx.last_saved else " — no LoRA was saved yet"),
                        nan_hint(profile, mp),
                    )
                step += 1
                lr_scheduler.step()  # the schedule stays on the plan
                warn(f"step {step}: {bad}; skipped without updating the LoRA ({bad_steps} of {opt.max_bad_steps} allowed by optimization.max_bad_steps)")
                bad, loss_acc = "", 0.0
            else:
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                step_loss, loss_acc = loss_acc, 0.0
                smooth = meter.update(step_loss)
                its = meter.its
                elapsed = time.perf_counter() - t_train
                emit(
                    StepEvent(
                        epoch=epoch,
                        epochs=epochs,
                        step=step,
                        total_steps=total,
                        loss=step_loss,
                        smoothed_loss=smooth,
                        lr=lr_scheduler.get_last_lr()[0],
                        its=its,
                        elapsed=elapsed,
                        eta=(total - step) / its if its > 0 else 0.0,
                    )
                )
            if step >= total:
                break
            if o.save_every_n_steps and step % o.save_every_n_steps == 0:
                checkpoint("step", epoch, bi, len(batches), o.save_state)
            if control.take_save_request():
                checkpoint("manual", epoch, bi, len(batches), o.save_state)
            if control.stop_requested:
                checkpoint("manual", epoch, bi, len(batches), True)
                stopped = True
                break
        if stopped or step >= total:
            break
        if o.save_every_n_epochs and epoch % o.save_every_n_epochs == 0 and epoch < epochs:
            save(epoch_path(profile, epoch), "epoch", epoch)
            if o.save_state and state_saved_at != step:
                save_state(epoch, len(batches), len(batches))

    elapsed = time.perf_counter() - t_train
    if stopped:
        emit(PhaseChanged(phase="done"))
        return Finished(
            path="",
            steps=step,
            elapsed=elapsed,
            stopped_early=True,
            summary={"last_saved": ctx.last_saved, "last_state": ctx.last_state},
        )
    save(final_path(profile), "final", epoch)
    emit(PhaseChanged(phase="done"))
    return Finished(
        path=str(final_path(profile)),
        steps=step,
        elapsed=elapsed,
        summary={"epochs": epoch, "final_loss": meter.ema, "its": step / elapsed if elapsed else 0.0},
    )
