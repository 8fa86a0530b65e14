"""``full_bf16`` / ``full_fp16`` as sd-scripts has them: the LoRA weights themselves (and
so their gradients and the optimizer's state) in bf16 / fp16, not fp32 masters.

For fp16 sd-scripts lets accelerate's gradient scaler unscale fp16 gradients (which
PyTorch refuses by default); the same is done here. On a CPU (mixed precision falls back
to fp32) the options do nothing and say so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


FP16_UNSAFE = ("Prodigy",)  # optimizers whose update divides by a term fp16 rounds to 0


def full_precision(profile: Any, network: Any, mp: str, warn: Callable[[str], None]) -> None:
    """Cast the trained LoRA weights to bf16 / fp16 when full_bf16 / full_fp16 is on."""
    import torch

    o = profile.optimization
    want = "bf16" if o.full_bf16 else ("fp16" if o.full_fp16 else None)
    if want is None:
        return
    if mp != want:
        warn(f"optimization.full_{want}: training in {mp} mixed precision here; the LoRA weights stay in fp32")
        return
    if want == "fp16" and o.optimizer in FP16_UNSAFE:
        # its eps (1e-8) is 0 in fp16: the zero gradients of a fresh LoRA's down weights give 0/0
        warn(f"optimization.full_fp16: {o.optimizer} turns fp16 LoRA weights into NaN within a step or two; "
             "the LoRA weights stay in fp32 (full_fp16 works with AdamW, AdamW8bit, Lion, Lion8bit, DAdaptAdam "
             "and Adafactor)")
        return
    dtype = torch.bfloat16 if want == "bf16" else torch.float16
    for p in network.parameters():
        p.data = p.data.to(dtype)


def allow_fp16_gradients(profile: Any, accelerator: Any) -> None:
    """With full_fp16, let the grad scaler unscale fp16 gradients (as sd-scripts patches it)."""
    scaler = getattr(accelerator, "scaler", None)
    if not profile.optimization.full_fp16 or scaler is None:
        return
    original = scaler._unscale_grads_

    def unscale(optimizer, inv_scale, found_inf, allow_fp16):
        return original(optimizer, inv_scale, found_inf, True)

    scaler._unscale_grads_ = unscale
