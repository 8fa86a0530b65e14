"""The training loop: profile in, LoRA file out, events all the way.

Reads top to bottom: plan → preflight → load model → build network → cache
latents → optimizer/scheduler → loop (step, save, control) → final save.
Every failure a user can cause becomes a ``Failed`` event with a message and a
hint; the traceback of an unexpected error goes to the run's log file only.
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

from engine.events import (
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
from engine.schema import EIGHT_BIT_OPTIMIZERS, Profile, profile_warnings

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


def preflight(profile: Profile, *, overwrite: bool, resuming: bool) -> list[str]:
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
        if target.exists() and not overwrite and not resuming:
            problems.append(
                f"output.output_name: {target} already exists — choose another output name, "
                "or pass --overwrite to replace it"
            )
        problems.extend(_check_writable(out))
    return problems


def _check_writable(out: Path) -> list[str]:
    probe_dir = out
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if probe_dir.exists() and not probe_dir.is_dir():
        return [f"output.output_dir: {probe_dir} is a file, not a folder"]
    if not os.access(probe_dir, os.W_OK | os.X_OK):
        return [f"output.output_dir: {out} is not writable — choose a folder you can write to"]
    try:
        import shutil

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


def run_training(
    profile: Profile,
    emit: Emit,
    control: Control | None = None,
    *,
    overwrite: bool = False,
    resume: str | None = None,
) -> Event:
    """Run to the end and return the terminal event (also emitted)."""
    from engine.metrics import MetricsWriter, metrics_path_for

    control = control or Control()
    metrics = MetricsWriter(metrics_path_for(profile), fresh=not (resume or profile.output.resume))
    outer_emit = emit

    def emit(ev: Event) -> None:  # noqa: F811 - every event also goes to the metrics file
        metrics.write(ev)
        outer_emit(ev)

    ctx = RunContext(profile, emit, control, time.time(), metrics.release)
    try:
        result: Event = _train(ctx, overwrite=overwrite, resume=resume)
    except Aborted:
        result = Failed(message="aborted by the user; nothing was saved since the last checkpoint")
    except TrainingError as exc:
        result = Failed(message=exc.message, hint=exc.hint)
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        result = _unexpected(ctx, exc)
    emit(result)
    metrics.close()
    return result


def _unexpected(ctx: RunContext, exc: BaseException) -> Failed:
    from engine.errors import explain_exception

    known = explain_exception(exc, ctx.profile)
    if known is not None:
        return known
    where = ""
    with contextlib.suppress(OSError):
        lp = log_path(ctx.profile)
        lp.parent.mkdir(parents=True, exist_ok=True)
        with open(lp, "a", encoding="utf-8") as fh:
            fh.write(f"\n--- {time.ctime()} internal error ---\n")
            traceback.print_exception(exc, file=fh)
        where = f" (details in {lp})"
    return Failed(message=f"internal error: {type(exc).__name__}: {exc}{where}", hint="please report this with the log file")


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
        warn(w)
    from engine.dataset import plan_for, scan_dataset

    scan = scan_dataset(ds)
    report = scan.report
    for w in report.warnings:
        warn(w)
    problems = list(report.problems)
    problems += preflight(profile, overwrite=overwrite, resuming=bool(resume or o.resume))
    plan = plan_for(profile, scan)
    resume_dir = resume or o.resume
    state = None
    if resume_dir:
        from engine.state import StateError, read_state, resume_differences

        try:
            state = read_state(resume_dir)
        except StateError as exc:
            problems.append(f"output.resume: {exc}")
        else:
            diffs = resume_differences(state, profile)
            if diffs:
                problems.append(
                    f"output.resume: the profile differs from the one {state.folder.name} was trained with:\n    "
                    + "\n    ".join(diffs)
                    + "\n  undo these changes, or start a new run without resume"
                )
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
    check_abort()

    # ---- 2. model ------------------------------------------------------------------
    from engine import quiet_libraries

    quiet_libraries()
    mp = resolve_precision(profile, device, warn)
    weight_dtype = weight_dtype_for(mp)
    emit(PhaseChanged(phase="loading_model", detail=profile.model.base_model))
    from engine.models import load_components

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
    from engine.lora import LoRANetwork

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
    ranks = ", ".join(f"{n}× rank {r} alpha {a:g}" for (r, a), n in sorted(network.rank_summary().items()))
    emit(LogEvent(message=f"LoRA: {network.num_modules} modules ({ranks}), {network.num_parameters():,} trainable parameters"))

    # ---- 4. latents -------------------------------------------------------------------
    from engine.dataset import cache_latents, epoch_batches, load_image_tensor, process_caption
    from engine.latent_cache import encode_pixels

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
        from engine.state import load_training
        from engine.lora import read_lora_file

        sd, _ = read_lora_file(state.folder / "lora.safetensors")
        network.load_kohya_state_dict(sd)
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
        emit(LogEvent(message=f"resumed from {state.folder.name}: step {step}, epoch {start_epoch}, batch {skip_batches}"))

    # ---- 6. the loop ----------------------------------------------------------------------
    total, per_epoch, epochs = plan.total_steps, plan.steps_per_epoch, plan.epochs
    ga = opt.gradient_accumulation_steps
    meter = Meter()
    t_train = time.perf_counter()
    last_saved = ""

    from engine.metadata import model_hashes

    base_hashes = model_hashes(profile.model.base_model, full=False)

    def save(path: Path, kind: str, epoch: int) -> None:
        nonlocal last_saved
        emit(PhaseChanged(phase="saving", detail=path.name))
        from engine.metadata import build_metadata

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
        network.save(path, md, save_dtype_for(profile))
        last_saved = str(path)
        emit(CheckpointSaved(path=str(path), kind=kind, size=path.stat().st_size, epoch=epoch, step=step))
        emit(PhaseChanged(phase="training"))

    def save_state(epoch: int, batch_in_epoch: int, nbatches: int) -> None:
        from engine.state import prune_states, state_dir, write_state

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
        write_state(
            folder,
            lora_sd=network.kohya_state_dict(torch.float32),
            training=training,
            epoch=epoch,
            batch_in_epoch=batch_in_epoch,
            step=step,
            profile=profile,
            extra={"last_saved": last_saved},
        )
        prune_states(profile, o.save_last_n_states)
        size = sum(f.stat().st_size for f in folder.iterdir())
        emit(CheckpointSaved(path=str(folder), kind="state", size=size, epoch=epoch, step=step))
        emit(PhaseChanged(phase="training"))

    emit(PhaseChanged(phase="training", total=total))
    epoch = start_epoch
    stopped = False
    for epoch in range(start_epoch, epochs + 1):
        batches = epoch_batches(scan.items, opt.train_batch_size, epoch, opt.seed)
        micro = 0
        loss_acc = 0.0
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
            accelerator.backward(loss / ga)
            loss_acc += loss.item() / ga
            micro += 1
            if micro % ga and bi + 1 != len(batches):
                continue
            # -- optimizer step
            if opt.max_grad_norm:
                accelerator.clip_grad_norm_(params, opt.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            step_loss, loss_acc = loss_acc, 0.0
            if not math.isfinite(step_loss):
                raise TrainingError(
                    f"the loss became {step_loss} at step {step}",
                    "fp16 overflow is the usual cause: use mixed_precision bf16, or lower the learning rate"
                    + (f"; the last good LoRA is {last_saved}" if last_saved else ""),
                )
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
                save(step_path(profile, step), "step", epoch)
                if o.save_state:
                    save_state(epoch, bi + 1, len(batches))
            if control.take_save_request():
                save(step_path(profile, step), "manual", epoch)
                if o.save_state:
                    save_state(epoch, bi + 1, len(batches))
            if control.stop_requested:
                save(step_path(profile, step), "manual", epoch)
                save_state(epoch, bi + 1, len(batches))
                stopped = True
                break
        if stopped or step >= total:
            break
        if o.save_every_n_epochs and epoch % o.save_every_n_epochs == 0 and epoch < epochs:
            save(epoch_path(profile, epoch), "epoch", epoch)
            if o.save_state:
                save_state(epoch, len(batches), len(batches))

    elapsed = time.perf_counter() - t_train
    if stopped:
        emit(PhaseChanged(phase="done"))
        return Finished(path="", steps=step, elapsed=elapsed, stopped_early=True, summary={"last_saved": last_saved})
    save(final_path(profile), "final", epoch)
    emit(PhaseChanged(phase="done"))
    return Finished(
        path=str(final_path(profile)),
        steps=step,
        elapsed=elapsed,
        summary={"epochs": epoch, "final_loss": meter.ema, "its": step / elapsed if elapsed else 0.0},
    )
