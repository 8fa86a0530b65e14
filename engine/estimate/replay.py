"""Replaying checkpointed blocks that are copies of one already counted.

A full-size SDXL U-Net runs 86 checkpointed blocks in a training forward, and
70 of them are transformer blocks of four shapes: counting every one on the
meta device is most of an estimate's time. A block whose structure (modules,
their settings, parameter shapes, dtypes, which parameters train) and inputs
(shapes, dtypes, grads) equal a block counted before saves the same storages
and costs the same FLOPs, so its count is replayed instead of run:

- a storage it saved that was one of its inputs is booked on the input it gets
  now (once per storage, as always);
- a storage it saved that it made is booked by its size;
- an output it saved is booked on the fresh output the replay returns;
- a storage from elsewhere (seen before the block) is already booked.

A block whose inputs or outputs are not plain tensors (or an output that is an
input) is never replayed: it runs. (A storage from elsewhere that nothing saved
before would be booked as made, once per copy; the U-Net's blocks save none.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_SIMPLE = (int, float, bool, str, type(None))


def module_signature(module) -> tuple:
    """Everything about ``module`` that what it saves and costs may depend on:
    its modules (kind, plain settings), parameters (shape, dtype, trained) and buffers."""
    parts: list = []
    stack = [("", module)]
    while stack:  # by hand: Module.named_modules is slow on deep peft-wrapped blocks
        name, m = stack.pop()
        attrs = tuple(sorted((k, v) for k, v in m.__dict__.items() if k[0] != "_" and isinstance(v, _SIMPLE)))
        parts.append((name, type(m).__qualname__, attrs))
        for pname, p in m._parameters.items():
            if p is not None:
                parts.append((name, pname, tuple(p.shape), str(p.dtype), bool(p.requires_grad)))
        for bname, b in m._buffers.items():
            if b is not None:
                parts.append((name, bname, tuple(b.shape), str(b.dtype)))
        for cname, child in reversed(m._modules.items()):
            if child is not None:
                stack.append((f"{name}.{cname}" if name else cname, child))
    return tuple(parts)


def _value_signature(v) -> Any:
    import torch

    if isinstance(v, torch.Tensor):
        return ("T", tuple(v.shape), v.stride(), str(v.dtype), v.device.type, bool(v.requires_grad))
    if isinstance(v, _SIMPLE):
        return v
    if isinstance(v, (tuple, list)):
        inner = tuple(_value_signature(i) for i in v)
        return None if any(i is _NO for i in inner) else (type(v).__name__, inner)
    if isinstance(v, dict):
        inner = tuple((k, _value_signature(i)) for k, i in sorted(v.items(), key=lambda kv: str(kv[0])))
        return None if any(i is _NO for _, i in inner) else ("dict", inner)
    return _NO


_NO = object()


def args_signature(args) -> tuple | None:
    sig = tuple(_value_signature(a) for a in args)
    return None if any(s is _NO for s in sig) else sig


@dataclass
class Record:
    """What one block saved and cost, in terms a copy of it can be booked by."""

    from_args: list[int] = field(default_factory=list)  # positions of the inputs whose storage it saved
    made: list[int] = field(default_factory=list)  # bytes of the storages it made and saved
    outputs: list[tuple] = field(default_factory=list)  # (shape, dtype, device, requires_grad, saved bytes or 0)
    tuple_output: bool = False
    flops: float = 0.0


def record(args, out, touched: dict[int, int], seen_before, flops: float) -> Record | None:
    """The record of a block that ran: ``touched`` is every storage it saved
    (key -> bytes), ``seen_before`` the storages booked before it ran."""
    import torch

    arg_pos: dict[int, int] = {}
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            arg_pos.setdefault(a.untyped_storage()._cdata, i)
    outs = out if isinstance(out, tuple) else (out,)
    if not outs or not all(isinstance(o, torch.Tensor) for o in outs):
        return None
    out_keys = {}
    for i, o in enumerate(outs):
        k = o.untyped_storage()._cdata
        if k in arg_pos or k in out_keys or not o.is_contiguous():
            return None  # an output that is an input, or two outputs of one storage: run it
        out_keys[k] = i
    rec = Record(tuple_output=isinstance(out, tuple), flops=flops)
    saved_out = {}
    for key, n in touched.items():
        if key in arg_pos:
            rec.from_args.append(arg_pos[key])
        elif key in out_keys:
            saved_out[out_keys[key]] = n
        elif key in seen_before:
            continue  # booked before the block, and so before any copy of it
        else:
            rec.made.append(n)
    for i, o in enumerate(outs):
        rec.outputs.append((tuple(o.shape), o.dtype, o.device, bool(o.requires_grad), saved_out.get(i, 0)))
    return rec


def fresh_outputs(rec: Record):
    """Outputs like the recorded ones (new storages) and which of them the block saved."""
    import torch

    outs = []
    for shape, dtype, device, grad, _ in rec.outputs:
        t = torch.empty(shape, dtype=dtype, device=device)
        outs.append(t.requires_grad_() if grad else t)
    return outs
