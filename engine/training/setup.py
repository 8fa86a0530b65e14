"""Setting a run up once its checks passed: device and precision, the model,
the LoRA network, the latent cache, the disk space the saves need."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from loratui.engine.events import LogEvent, Phase, PhaseChanged
from loratui.engine.schema import Profile
from loratui.engine.training.paths import TrainingError

# --------------------------------------------------------------------------- device / precision


def pick_device(profile: Profile | None = None) -> str:
    """"cuda" where there is a GPU, else "cpu". A one-process run with
    ``compute.gpu_ids`` trains on the GPU it names (nvidia-smi's numbering):
    made this thread's current device, which "cuda" means from then on."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    ids = profile.compute.gpu_list() if profile is not None and profile.compute.world_size == 1 else []
    if ids:
        index = cuda_index(ids[0])
        if index < torch.cuda.device_count():  # (past the last GPU: the run's checks say so, by the field)
            torch.cuda.set_device(index)
    return "cuda"


def visible_gpus() -> list[int] | None:
    """The GPUs ``CUDA_VISIBLE_DEVICES`` leaves to this process, by number (None: not set, all)."""
    import os

    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None or not raw.strip():
        return None
    parts = [v.strip() for v in raw.split(",") if v.strip()]
    if not all(v.isdigit() for v in parts):  # GPU-…/MIG-… UUIDs: not numbers to check gpu_ids against
        return None
    return [int(v) for v in parts]


def cuda_index(gpu: int) -> int:
    """The CUDA index, in this process, of GPU number ``gpu`` (its number in nvidia-smi)."""
    visible = visible_gpus()
    if visible is None:
        return gpu
    if gpu not in visible:
        message, hint = hidden_gpu(gpu, visible)
        raise TrainingError(f"compute.gpu_ids: {message}", hint)
    return visible.index(gpu)


def hidden_gpu(gpu: int, visible: list[int]) -> tuple[str, str]:
    """(message, hint) for a GPU number ``CUDA_VISIBLE_DEVICES`` leaves out."""
    return (f"GPU {gpu} is hidden from this process (CUDA_VISIBLE_DEVICES={','.join(map(str, visible))})",
            "name a GPU CUDA_VISIBLE_DEVICES lists, or unset CUDA_VISIBLE_DEVICES")


def describe_device(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"
    return "cpu"


FP16_OVERFLOWS = {"sd3": "SD3", "flux": "FLUX.1"}  # their activations pass fp16's 65504 (T5 too)


def resolve_precision(profile: Profile, device: str, warn: Callable[[str], None], family: str | None = None) -> str:
    import torch

    mp = profile.optimization.mixed_precision
    if device == "cpu" and mp != "no":
        warn(f"optimization.mixed_precision: {mp} needs a GPU; training in fp32 on the CPU")
        return "no"
    why = ""
    if mp == "bf16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported(including_emulation=False):
        mp, why = "fp16", "this GPU has no bf16; "
        if family not in FP16_OVERFLOWS:
            warn(f"optimization.mixed_precision: {why}using fp16 with the grad scaler")
    if mp == "fp16" and family in FP16_OVERFLOWS:
        warn(f"optimization.mixed_precision: {why}{FP16_OVERFLOWS[family]} overflows in fp16 (NaN losses, black "
             "samples): steps that overflow are skipped, and optimization.max_bad_steps ends the run; train it in "
             "bf16 on an Ampere or newer GPU")
    return mp


def weight_dtype_for(mp: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mp, torch.float32)


def save_dtype_for(profile: Profile):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32}[profile.output.save_precision]


# --------------------------------------------------------------------------- model, network, latents


def load_model(profile: Profile, emit, device: str, weight_dtype, warn: Callable[[str], None]):
    """The base model's components (engine.loading.Components), frozen."""
    from loratui.engine.families import get_family
    from loratui.engine.loading import load_components

    emit(PhaseChanged(phase=Phase.LOADING_MODEL, detail=profile.model.base_model))
    comp = load_components(
        profile.model,
        device=device,
        dtype=weight_dtype,
        on_progress=lambda msg: emit(PhaseChanged(phase=Phase.LOADING_MODEL, detail=msg)),
    )
    emit(LogEvent(message=f"loaded {comp.source}"))
    for w in comp.warnings:
        warn(w)
    note = get_family(comp.family).clip_skip_warning(profile.model.clip_skip)
    if note:
        warn(note)
    return comp


def build_network(profile: Profile, comp, emit, warn: Callable[[str], None]):
    """The LoRA network on the model (seeded: the same seed gives the same initial weights)."""
    import random

    import torch

    from loratui.engine.families import get_family
    from loratui.engine.lora import LoRANetwork
    from loratui.engine.registries import NETWORK_TYPES

    opt, net = profile.optimization, profile.network
    torch.manual_seed(opt.seed)
    random.seed(opt.seed)
    for m in [comp.unet, comp.vae, *comp.text_encoders]:
        m.requires_grad_(False)
    conv = net.network_type == "locon"
    if NETWORK_TYPES[net.network_type].algo is not None:  # -- lycoris: LyCORIS networks
        from loratui.engine.lycoris_net import build_lycoris_network

        return build_lycoris_network(profile, comp, emit, warn)
    network = LoRANetwork.create(
        comp.unet,
        comp.text_encoders,
        comp.family,
        rank=net.network_dim,
        alpha=net.network_alpha,
        conv_rank=net.conv_dim if conv else None,
        conv_alpha=net.conv_alpha if conv else None,
        train_unet=net.train_unet,
        train_text_encoder=net.train_text_encoder,
        weights=net.network_weights or None,
        target_filter=get_family(comp.family).lora_target_filter(net),
    )
    if opt.gradient_checkpointing:
        network.enable_gradient_checkpointing()
    from loratui.engine.training.regularize import attach_dropout

    attach_dropout(network, net.network_dropout, net.rank_dropout, net.module_dropout)
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
    return network


def cache_latents(profile: Profile, scan, comp, ctx, device: str, weight_dtype):
    """The latent store (None when dataset.cache_latents is off); the VAE goes back to the CPU after."""
    import torch

    from loratui.engine.dataset import cache_latents as build_cache

    ds, emit, control = profile.dataset, ctx.emit, ctx.control
    if ds.cache_latents == "off":
        return None
    emit(PhaseChanged(phase=Phase.CACHING_LATENTS, current=0, total=len(scan.items)))
    torch.nn.Module.to(comp.vae, device=device)  # on the device for the caching only
    store = build_cache(
        scan.items,
        comp.vae,
        mode=ds.cache_latents,
        device=device,
        dtype=weight_dtype,
        vae_fp32=comp.vae_needs_fp32,
        on_progress=lambda n, total: emit(PhaseChanged(phase=Phase.CACHING_LATENTS, current=n, total=total)),
        should_stop=lambda: control.aborted,
        flip_aug=ds.flip_aug,
        seed=profile.optimization.seed,
    )
    ctx.check_abort()
    comp.vae.to("cpu")
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return store


# --------------------------------------------------------------------------- disk space


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
    from loratui.engine.estimate.resources import save_counts  # the estimate counts the same files

    n_lora, n_states = save_counts(profile, plan)
    n_states = max(1, n_states)  # a stop always saves a state
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
