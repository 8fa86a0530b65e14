"""The GPU fast path: what keeps a steady-state step free of host-device
synchronisation, and the per-run speed settings.

- ``poison_if_not_finite`` / ``guarded_step``: a non-finite loss or gradient is
  never applied, decided on the device (the ``found_inf`` of torch's grad
  scaler): fused AdamW takes ``found_inf`` itself; other optimizers are stepped
  and their parameters and state put back where ``found_inf`` is set.
- ``PendingStats``: a step's loss and gradient norm, copied without blocking to
  pinned memory on CUDA and read one step later.
- ``to_device``: pinned, non-blocking host-to-device copies.
- ``speed_up``: TF32 matmuls (Ampere and newer), a channels-last U-Net, and a
  check that attention runs through SDPA (flash / memory-efficient kernels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def poison_if_not_finite(grads: list, loss, on_host: bool | None = None) -> None:
    """Add +inf to one gradient element when ``loss`` is not finite (0 otherwise,
    which changes nothing), so that the gradient check that follows skips the
    step — on the device, without reading the loss. On the CPU (``on_host`` None:
    decided by where ``loss`` lives, ``HOST_DECIDES``) the loss is read instead:
    one read costs less there than the ops that avoid it."""
    import torch

    if loss is None or not grads:
        return
    if on_host is None:
        on_host = loss.device.type in HOST_DECIDES
    if on_host:
        if not math.isfinite(loss.item()):
            grads[0].add_(float("inf"))
        return
    bad = torch.where(torch.isfinite(loss), loss.new_zeros(()), loss.new_full((), float("inf")))
    grads[0].add_(bad.to(grads[0].dtype))  # x + 0 == x: a finite step is unchanged


def total_norm(grads: list):
    """The gradients' global L2 norm, a 0-dim tensor on their device (no sync)."""
    import torch

    if not grads:
        return None
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if get_total_norm is not None:
        return get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def clip_grad_norm(accelerator, params: list, max_norm: float):
    """The gradients' global L2 norm before clipping (a 0-dim tensor, no sync),
    clipped to ``max_norm``; fp16's gradients are unscaled first. What
    ``Accelerator.clip_grad_norm_`` does for a single-process or data-parallel
    run (the engine's own all-reduce), without its per-parameter DTensor
    grouping and the second norm, over the groups, that it adds."""
    import torch

    if accelerator.scaler is not None:
        accelerator.unscale_gradients()
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def backward(accelerator, loss) -> None:
    """``loss.backward()``, scaled by the run's fp16 grad scaler where it has one:
    ``Accelerator.backward`` for the engine's runs (it accumulates gradients itself:
    no division by accelerate's own accumulation steps, which are 1)."""
    scaler = accelerator.scaler
    (loss if scaler is None else scaler.scale(loss)).backward()


def found_inf_of(norm):
    """1.0 where ``norm`` is not finite, else 0.0: a 0-dim float32 on its device."""
    import torch

    return (~torch.isfinite(norm)).to(torch.float32)


def inner_optimizer(optimizer):
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def supports_found_inf(optimizer) -> bool:
    """Fused torch optimizers skip their update themselves when given ``found_inf``."""
    return bool(getattr(inner_optimizer(optimizer), "_step_supports_amp_scaling", False))


# devices whose work is done when an op returns: reading a value back there is not a sync
HOST_DECIDES = ("cpu",)


def guarded_step(optimizer, norm, on_host: bool | None = None) -> None:
    """``optimizer.step()`` unless ``norm`` is not finite, decided on the device.

    Fused optimizers get ``found_inf`` (their kernel skips the update and the
    step count). Others are stepped, then every parameter and state tensor on the
    parameters' device is put back to its value before the step where
    ``found_inf`` is set (one ``torch.where`` per tensor; a LoRA's parameters and
    state are small). Optimizer state not yet created (the first step) cannot be
    put back: that step reads ``found_inf`` on the host, once. On the CPU
    (``on_host`` None: decided by where ``norm`` lives, ``HOST_DECIDES``), reading
    ``found_inf`` costs nothing and the copies would: it is read."""
    import torch

    if norm is None:
        optimizer.step()
        return
    if on_host is None:
        on_host = norm.device.type in HOST_DECIDES
    if on_host:
        if math.isfinite(norm.item()):
            optimizer.step()
        return
    found = found_inf_of(norm)
    inner = inner_optimizer(optimizer)
    if supports_found_inf(inner):
        inner.grad_scale, inner.found_inf = None, found
        try:
            optimizer.step()
        finally:
            del inner.grad_scale, inner.found_inf
        return
    params = [p for g in inner.param_groups for p in g["params"] if p.grad is not None]
    if not params or any(p not in inner.state or not inner.state[p] for p in params):
        if not bool(found):  # first step: no state to put back yet; the one host read of a run
            optimizer.step()
        return
    device = params[0].device
    # host-side step counters (non-capturable torch optimizers on CUDA) stay: reading them back would sync
    tensors = params + [t for p in params for t in inner.state[p].values() if torch.is_tensor(t) and t.device == device]
    before = [t.clone() for t in tensors]
    optimizer.step()
    keep = found.to(torch.bool)
    with torch.no_grad():
        for t, old in zip(tensors, before):
            t.copy_(torch.where(keep, old, t))


@dataclass
class PendingStats:
    """One step's (loss, gradient norm) on their way to the host."""

    step: int
    epoch: int
    lr: float
    host: Any  # float32 tensor [loss, norm] on the host (pinned on CUDA)
    event: Any = None  # torch.cuda.Event recorded after the copy (CUDA only)

    @classmethod
    def record(cls, step: int, epoch: int, loss, norm, lr: float) -> PendingStats:
        import torch

        known = next((t for t in (loss, norm) if t is not None), None)
        device = known.device if known is not None else torch.device("cpu")
        # a missing one made where the other is (a CPU zero copied to the GPU would make the host wait)
        parts = [t if t is not None else torch.zeros((), device=device) for t in (loss, norm)]
        stats = torch.stack([t.detach().to(device, torch.float32).reshape(()) for t in parts])
        if device.type != "cuda":
            return cls(step, epoch, lr, stats)  # computed synchronously anyway: nothing to wait for
        host = torch.empty(2, dtype=torch.float32, pin_memory=True)
        host.copy_(stats, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return cls(step, epoch, lr, host, event)

    def read(self) -> tuple[float, float]:
        """(loss, norm); on CUDA waits for this step's copy only (the next step is already queued)."""
        if self.event is not None:
            self.event.synchronize()
        loss, norm = self.host.tolist()
        return loss, norm


# --------------------------------------------------------------------------- copies


def to_device(t, device, dtype=None):
    """``t`` on ``device`` (in ``dtype``): from pinned memory without blocking on CUDA."""
    if str(device).startswith("cuda") and t.device.type == "cpu":
        if dtype is not None and t.dtype != dtype and t.element_size() > dtype.itemsize:
            t = t.to(dtype)  # convert on the host first when it makes the copy smaller
        return t.pin_memory().to(device, dtype=dtype, non_blocking=True)
    return t.to(device, dtype=dtype)


def fast_copies(items: list, device) -> list:
    """``to_device`` for each tensor of ``items`` (token ids, weights); others as they are."""
    import torch

    return [to_device(t, device) if isinstance(t, torch.Tensor) else t for t in items]


# --------------------------------------------------------------------------- per-run speed settings


def speed_up(comp, device: str, log) -> list[str]:
    """TF32 matmuls on Ampere and newer, a channels-last U-Net, SDPA attention.
    Returns what was done (for the log); ``log`` gets one line."""
    import torch

    done = []
    if str(device).startswith("cuda"):
        if torch.cuda.get_device_capability()[0] >= 8:
            torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls (cuDNN convolutions: TF32 by default)
            done.append("TF32 matmuls")
        torch.backends.cudnn.benchmark = True
        comp.unet.to(memory_format=torch.channels_last)
        done.append("channels-last U-Net")
    attn = attention_processors(comp.unet)
    if attn:
        done.append("attention: " + ", ".join(sorted(attn)))
    if done:
        log("fast path: " + "; ".join(done))
    return done


def attention_processors(unet) -> set[str]:
    """The class names of the U-Net's attention processors (diffusers'
    ``AttnProcessor2_0`` is SDPA: flash / memory-efficient kernels on CUDA).
    A processor without SDPA is replaced by ``AttnProcessor2_0``."""
    procs = getattr(unet, "attn_processors", None)
    if not procs:
        return set()
    names = {type(p).__name__ for p in procs.values()}
    if names - SDPA_PROCESSORS:
        from diffusers.models.attention_processor import AttnProcessor2_0

        unet.set_attn_processor(AttnProcessor2_0())
        names = {type(p).__name__ for p in unet.attn_processors.values()}
    return names


# diffusers processors that call torch.nn.functional.scaled_dot_product_attention
SDPA_PROCESSORS = {"AttnProcessor2_0", "FusedAttnProcessor2_0", "AttnAddedKVProcessor2_0", "JointAttnProcessor2_0",
                   "FluxAttnProcessor2_0", "FluxAttnProcessor"}


def free_memory(device: str) -> int | None:
    """Bytes free on a CUDA device (what other programs use is not; what torch caches is); None elsewhere."""
    import torch

    if not str(device).startswith("cuda"):
        return None
    dev = torch.device(device)
    free, _ = torch.cuda.mem_get_info(dev.index if dev.index is not None else torch.cuda.current_device())  # (torch 2.4: an index)
    return int(free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))
