"""Turn exceptions into messages a user can act on.

* out of memory (GPU or RAM): what to lower, with the run's current figures;
* a full disk: which file could not be written, and that nothing else changed;
* a non-finite loss: the likely cause (fp16 overflow, a learning rate too high);
* errors our own modules raise (they carry a message and a hint already).

Nothing here imports torch at module level.
"""

from __future__ import annotations

import errno
import gc
import sys
from typing import TYPE_CHECKING

from loratui.engine.events import Failed

if TYPE_CHECKING:
    from loratui.engine.schema import Profile

# Errors our own modules raise: their text is already meant for the user.
OWN_ERRORS = ("ModelLoadError", "LoRAWeightsError", "DatasetError", "LatentCacheError", "ProfileError", "StateError")
_DISK_FULL_TEXT = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122", "storagefull")


# --------------------------------------------------------------------------- recognise


def is_oom(exc: BaseException) -> bool:
    """CUDA (or MPS) out of memory, whatever wraps it."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    if "cublas_status_alloc_failed" in text:  # a full card at the first matmul (cuBLAS's own workspace)
        return True
    return "out of memory" in text and ("cuda" in text or "gpu" in text or "mps" in text or "hip" in text)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT, also when safetensors or torch wrap it in their own error."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", 122)):
        return True
    text = str(exc).lower()
    return any(t in text for t in _DISK_FULL_TEXT)


def release_memory() -> None:
    """Collect garbage and hand cached GPU memory back (after the objects that
    held it are gone). Does not import torch when nothing did."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            host_empty = getattr(torch._C, "_host_emptyCache", None)  # pinned RAM (block swap's) the host cache keeps
            if host_empty is not None:
                host_empty()
    except Exception:  # noqa: BLE001 - best effort
        pass


# --------------------------------------------------------------------------- hints


def run_figures(profile: "Profile") -> str:
    """The settings that decide memory use, with their current values."""
    o, d, n = profile.optimization, profile.dataset, profile.network
    h = d.resolution_height or d.resolution
    parts = [
        f"batch {o.train_batch_size}" + (f" × accumulation {o.gradient_accumulation_steps}" if o.gradient_accumulation_steps > 1 else ""),
        f"resolution {d.resolution}×{h}",
        f"rank {n.network_dim}" + (f" (conv {n.conv_dim})" if n.network_type == "locon" else ""),
        f"gradient checkpointing {'on' if o.gradient_checkpointing else 'off'}",
        f"latents cached: {d.cache_latents}",
        f"optimizer {o.optimizer}",
        f"precision {o.mixed_precision}",
        "text encoder trained" if n.train_text_encoder else f"{_denoiser_word(_flow_family(profile))} only",
    ]
    if o.blocks_to_swap:
        parts.append(f"{o.blocks_to_swap} blocks swapped")
    return ", ".join(parts)


def _flow_family(profile: "Profile"):
    """The profile's family when it is set and trained with flow matching (SD3, FLUX), else None."""
    from loratui.engine.families import families, get_family, normalize_family

    try:
        name = normalize_family(profile.model.family) if profile.model.family not in ("", "auto") else ""
    except (KeyError, ValueError):
        return None
    fam = get_family(name) if name in families() else None
    return fam if fam is not None and fam.flow_matching else None


def _denoiser_word(flow_family) -> str:
    return "transformer" if flow_family is not None else "U-Net"


def _gpu_figures() -> str:
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_available():
            return ""
        d = torch.cuda.current_device()  # this process's card (a data-parallel rank's own)
        total = torch.cuda.get_device_properties(d).total_memory
        peak = torch.cuda.max_memory_allocated(d)
        return f" GPU: {peak / 2**30:.1f} GB used at the peak of {total / 2**30:.1f} GB."
    except Exception:  # noqa: BLE001
        return ""


def oom_hint(profile: "Profile") -> str:
    o, d, n = profile.optimization, profile.dataset, profile.network
    tips = []
    if o.train_batch_size > 1:
        tips.append(
            f"optimization.train_batch_size {o.train_batch_size} → {max(1, o.train_batch_size // 2)} "
            f"(and gradient_accumulation_steps {o.gradient_accumulation_steps} → {o.gradient_accumulation_steps * 2} "
            "to keep the effective batch)"
        )
    if max(d.resolution, d.resolution_height) > 512:
        tips.append(f"dataset.resolution {d.resolution} → {max(512, d.resolution - 256)}")
    if not o.gradient_checkpointing:
        tips.append("optimization.gradient_checkpointing false → true (much less VRAM, ~20 % slower)")
    if d.cache_latents == "off":
        tips.append("dataset.cache_latents off → memory (the VAE leaves the GPU during training)")
    if o.optimizer in ("AdamW", "Lion"):
        tips.append(f"optimization.optimizer {o.optimizer} → {o.optimizer}8bit")
    if n.network_dim > 16:
        tips.append(f"network.network_dim {n.network_dim} → 16")
    if n.network_type == "locon" and n.conv_dim > 8:
        tips.append(f"network.conv_dim {n.conv_dim} → 8")
    flow = _flow_family(profile)
    word = _denoiser_word(flow)
    if n.train_text_encoder:
        tips.append(f"network.train_text_encoder true → false ({word} only)")
    if o.mixed_precision == "no":
        tips.append("optimization.mixed_precision no → fp16 or bf16")
    # -- memory
    if not profile.model.fp8_base:
        tips.append(f"model.fp8_base false → true (the frozen {word} in fp8: about half its VRAM)")
    if flow is not None:  # sd-scripts' FLUX table: 16 blocks on 12 GB, 28 on 8 GB
        more = 16 if not o.blocks_to_swap else o.blocks_to_swap + 8
        tips.append(f"optimization.blocks_to_swap {o.blocks_to_swap} → {more} (blocks wait in RAM, each moved in "
                    "for its turn; slower)")
    if d.cache_text_encoder_outputs == "off" and not n.train_text_encoder:
        tips.append("dataset.cache_text_encoder_outputs off → auto (the text encoders leave the GPU)")
    head = "lower one of: " + "; ".join(tips) if tips else "this model does not fit this GPU even with the lightest settings"
    from loratui.engine.estimate.oom import oom_quote

    return f"{head}. This run: {run_figures(profile)}.{_gpu_figures()}{oom_quote(profile)}"


def nan_hint(profile: "Profile", precision: str | None = None) -> str:
    """What a non-finite loss most likely means for this profile.
    ``precision``: the mixed precision the run really used (fp16 falls back to
    fp32 on a CPU), default the profile's."""
    o = profile.optimization
    precision = precision or o.mixed_precision
    lrs = [f"learning_rate {o.learning_rate:g}"]
    if o.unet_lr:
        lrs.append(f"unet_lr {o.unet_lr:g}")
    if o.text_encoder_lr and profile.network.train_text_encoder:
        lrs.append(f"text_encoder_lr {o.text_encoder_lr:g}")
    lower = f"lower optimization.{' / '.join(lrs)} (e.g. to a tenth)"
    if precision == "fp16":
        head = f"fp16 overflow is the usual cause: set optimization.mixed_precision = \"bf16\" (RTX 30xx or newer), or {lower}"
    elif o.optimizer in ("Prodigy", "DAdaptAdam"):
        head = f"{o.optimizer} diverged: {lower}, or add optimizer_args such as d_coef=0.5"
    else:
        head = f"the learning rate is probably too high: {lower}"
    if o.max_grad_norm == 0:
        head += "; gradient clipping is off (optimization.max_grad_norm = 0): set it to 1"
    if o.max_bad_steps == 0:
        head += "; or let optimization.max_bad_steps skip a few bad steps"
    return head


def disk_full_message(what: str) -> str:
    return f"the disk is full: could not write {what}"


# --------------------------------------------------------------------------- explain


def explain_exception(exc: BaseException, profile: "Profile", *, where: str = "") -> Failed | None:
    """A Failed event for exceptions we understand; None for the rest.
    ``where``: what the run was doing ("while training, step 3 of 8")."""
    at = f" {where}" if where else ""
    name = type(exc).__name__
    if is_oom(exc):
        return Failed(message=f"the GPU ran out of memory{at}", hint=oom_hint(profile))
    if isinstance(exc, MemoryError):
        return Failed(
            message=f"the computer ran out of memory (RAM){at}",
            hint="close other programs, or lower the batch size / resolution; dataset.cache_latents = disk keeps latents off RAM. "
            f"This run: {run_figures(profile)}.",
        )
    if name in OWN_ERRORS:
        return Failed(message=str(exc), hint=getattr(exc, "hint", ""))
    if is_disk_full(exc):
        what = getattr(exc, "filename", None) or "a file"
        return Failed(message=f"{disk_full_message(str(what))}{at}", hint="free some space; files saved before are intact")
    if isinstance(exc, PermissionError):
        return Failed(message=f"permission denied: {exc.filename}{at}", hint="choose a folder you can write to")
    return None
