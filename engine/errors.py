"""Turn exceptions into messages a user can act on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.events import Failed

if TYPE_CHECKING:
    from engine.schema import Profile


def oom_hint(profile: "Profile") -> str:
    o, d, n = profile.optimization, profile.dataset, profile.network
    tips = []
    if o.train_batch_size > 1:
        tips.append(f"optimization.train_batch_size {o.train_batch_size} → {max(1, o.train_batch_size // 2)} "
                    f"(raise gradient_accumulation_steps to {o.gradient_accumulation_steps * 2} to keep the effective batch)")
    if max(d.resolution, d.resolution_height) > 512:
        tips.append(f"dataset.resolution {d.resolution} → {max(512, d.resolution - 256)}")
    if not o.gradient_checkpointing:
        tips.append("optimization.gradient_checkpointing → true (much less VRAM, ~20 % slower)")
    if d.cache_latents == "off":
        tips.append("dataset.cache_latents → memory (frees the VAE during training)")
    if o.optimizer in ("AdamW", "Lion"):
        tips.append(f"optimization.optimizer {o.optimizer} → {o.optimizer}8bit")
    if n.network_dim > 16:
        tips.append(f"network.network_dim {n.network_dim} → 16")
    if n.train_text_encoder:
        tips.append("network.train_text_encoder → false (U-Net only)")
    if o.mixed_precision == "no":
        tips.append("optimization.mixed_precision → fp16 or bf16")
    return "lower one of: " + "; ".join(tips) if tips else "this model does not fit this GPU with these settings"


def explain_exception(exc: BaseException, profile: "Profile") -> Failed | None:
    """A Failed event for exceptions we understand; None for the rest."""
    name = type(exc).__name__
    if name == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass
        return Failed(message="the GPU ran out of memory", hint=oom_hint(profile))
    # Errors our own modules raise carry a user-facing message already.
    if name in ("ModelLoadError", "LoRAWeightsError", "DatasetError", "LatentCacheError", "ProfileError", "StateError"):
        return Failed(message=str(exc), hint=getattr(exc, "hint", ""))
    if isinstance(exc, OSError) and exc.errno in (28,):  # ENOSPC
        return Failed(message=f"the disk is full ({exc.filename or 'while saving'})", hint="free some space; files already saved are intact")
    if isinstance(exc, PermissionError):
        return Failed(message=f"permission denied: {exc.filename}", hint="choose a folder you can write to")
    return None
