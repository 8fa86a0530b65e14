"""fp8 base (``model.fp8_base``, sd-scripts ``--fp8_base``): the frozen denoiser's
Linear and Conv2d weights stored as ``torch.float8_e4m3fn`` and computed in the
run's weight dtype (bf16/fp16 on a GPU, fp32 on the CPU), upcast layer by layer.

The upcast copy lives only while its layer computes: the backward pass keeps the
fp8 weight and upcasts it again (a custom autograd function), so the saved
activations hold no bf16 copy of the model. Weights that are trained (LoRA) are
never touched: they stay float32. Biases are kept in the compute dtype.
"""

from __future__ import annotations

import types
from typing import Any

def fp8_dtype():
    import torch

    return torch.float8_e4m3fn


def is_fp8(t) -> bool:
    import torch

    return t.dtype in tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


def fp8_unsupported() -> str | None:
    """Why this torch cannot store and upcast float8 e4m3fn here, or None."""
    import torch

    if not hasattr(torch, "float8_e4m3fn"):
        return f"torch {torch.__version__} has no float8_e4m3fn (fp8 needs torch 2.1 or newer)"
    try:
        x = torch.tensor([0.5, -1.25]).to(torch.float8_e4m3fn).to(torch.float32)
    except (RuntimeError, TypeError) as exc:  # pragma: no cover - a build without fp8 kernels
        return f"this torch build cannot convert float8 tensors ({exc})"
    if x.tolist() != [0.5, -1.25]:  # pragma: no cover
        return "this torch build converts float8 tensors wrongly"
    return None


def _linear_fn():
    import torch

    class Fp8Linear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, dtype):
            ctx.save_for_backward(weight)
            ctx.meta = (dtype, x.dtype)
            return torch.nn.functional.linear(x.to(dtype), weight.to(dtype), bias)

        @staticmethod
        def backward(ctx, grad):
            (weight,) = ctx.saved_tensors
            dtype, x_dtype = ctx.meta
            gx = grad.to(dtype) @ weight.to(dtype) if ctx.needs_input_grad[0] else None
            return (gx.to(x_dtype) if gx is not None else None), None, None, None

    return Fp8Linear


def _conv_fn():
    import torch

    class Fp8Conv2d(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, dtype, stride, padding, dilation, groups):
            ctx.save_for_backward(weight)
            ctx.meta = (dtype, x.dtype, tuple(x.shape), stride, padding, dilation, groups)
            return torch.nn.functional.conv2d(x.to(dtype), weight.to(dtype), bias, stride, padding, dilation, groups)

        @staticmethod
        def backward(ctx, grad):
            (weight,) = ctx.saved_tensors
            dtype, x_dtype, shape, stride, padding, dilation, groups = ctx.meta
            gx = None
            if ctx.needs_input_grad[0]:
                gx = torch.nn.grad.conv2d_input(shape, weight.to(dtype), grad.to(dtype), stride, padding, dilation, groups)
                gx = gx.to(x_dtype)
            return gx, None, None, None, None, None, None, None

    return Fp8Conv2d


_FNS: dict[str, Any] = {}


def _fn(name: str):
    if name not in _FNS:
        _FNS[name] = _linear_fn() if name == "linear" else _conv_fn()
    return _FNS[name]


def _linear_forward(self, x):
    return _fn("linear").apply(x, self.weight, self.bias, self.loratui_compute_dtype)


def _conv_forward(self, x):
    if self.padding_mode != "zeros" or isinstance(self.padding, str):
        # rare layouts: upcast for the call (no saved-memory gain, same result)
        w = self.weight.to(self.loratui_compute_dtype)
        return self._conv_forward(x.to(w.dtype), w, self.bias)
    return _fn("conv").apply(x, self.weight, self.bias, self.loratui_compute_dtype, self.stride, self.padding,
                             self.dilation, self.groups)


def apply_fp8(model, compute_dtype, convert: bool = True) -> int:
    """Store every frozen Linear/Conv2d weight of ``model`` as float8 e4m3fn and
    compute it in ``compute_dtype``. Returns the number of layers converted.
    ``convert=False``: only the layers whose weights are float8 already (read so)."""
    import torch

    fp8 = fp8_dtype()
    n = 0
    adapters = _adapter_modules(model)  # a LoRA's own layers stay as they are, frozen or not
    for module in model.modules():
        if id(module) in adapters:
            continue
        if type(module) is torch.nn.Linear:
            forward = _linear_forward
        elif type(module) is torch.nn.Conv2d:
            forward = _conv_forward
        else:
            continue
        if module.weight.requires_grad or getattr(module, "loratui_compute_dtype", None) is not None:
            continue
        if not convert and module.weight.dtype != fp8:
            continue
        with torch.no_grad():
            if module.weight.dtype != fp8:
                module.weight.data = module.weight.data.to(fp8)
            if module.bias is not None and module.bias.dtype != compute_dtype:
                module.bias.data = module.bias.data.to(compute_dtype)
        module.loratui_compute_dtype = compute_dtype
        module.forward = types.MethodType(forward, module)
        n += 1
    return n


_ADAPTER_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


def _adapter_modules(model) -> set[int]:
    """ids of the modules inside peft LoRA layers' adapters (frozen when a LoRA file's modules
    are kept but not trained): they are the LoRA, not the base."""
    import torch

    out: set[int] = set()
    for m in model.modules():
        for part in _ADAPTER_PARTS:
            sub = getattr(m, part, None)
            if isinstance(sub, torch.nn.Module):
                out.update(id(x) for x in sub.modules())
    return out


def keeps_fp8(model, key: str) -> bool:
    """Is ``key`` (a state-dict name of ``model``) the weight of a Linear/Conv2d,
    which an fp8 base keeps in fp8 as read from the file?"""
    import torch

    owner, _, leaf = key.rpartition(".")
    if leaf != "weight":
        return False
    # a model's own keep-in-fp32 layers (T5's ``wo``: it casts its input to that weight's dtype -- to fp8)
    if set(owner.split(".")) & set(getattr(model, "_keep_in_fp32_modules", None) or ()):
        return False
    try:
        module = model.get_submodule(owner)
    except AttributeError:
        return False
    return type(module) in (torch.nn.Linear, torch.nn.Conv2d)


# --------------------------------------------------------------------------- scaled fp8 files

SCALE_SUFFIXES = (".scale_weight", ".weight_scale")  # ComfyUI's scaled fp8 (older, newer)
SCALE_EXTRAS = (".scale_input", ".input_scale")
SCALE_MARKERS = ("scaled_fp8",)


def descale(sd: dict, dtype) -> dict:
    """A "scaled fp8" file's weights as their real values: ComfyUI's ``*_fp8_scaled`` files
    (SD3.5's own ``sd3.5_large_fp8_scaled``, ``t5xxl_fp8_e4m3fn_scaled``) store each weight
    as fp8 divided by a per-tensor (or per-row) scale kept beside it. Each such weight is
    multiplied back, in ``dtype`` (the run's; bf16 when None): a plain fp8 read would train on
    weights off by that scale. Input scales (for fp8 matmuls) and markers are dropped."""
    import torch

    scales = {k: v for k, v in sd.items() if k.endswith(SCALE_SUFFIXES)}
    if not scales:
        return sd
    out = {k: v for k, v in sd.items() if k not in scales and not k.endswith(SCALE_EXTRAS)
           and k.rsplit(".", 1)[-1] not in SCALE_MARKERS and k not in SCALE_MARKERS}
    target = dtype or torch.bfloat16
    for k, s in scales.items():
        w = k[: -len(".scale_weight")] + ".weight"
        if w in out:
            scale = s.float()
            if scale.ndim == 1 and out[w].ndim > 1:
                scale = scale.reshape(-1, *([1] * (out[w].ndim - 1)))
            out[w] = (out[w].float() * scale).to(target)
    return out
