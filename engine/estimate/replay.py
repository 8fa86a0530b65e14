"""Replaying checkpointed blocks that are copies of one already counted.

A full-size SDXL U-Net runs 86 checkpointed blocks in a training forward, and
70 of them are transformer blocks of four shapes (Flux.1: 19 + 38 blocks of two
shapes; SD3.5 large: 38 of two): counting every one on the meta device is most
of an estimate's time. A block whose structure (modules,
their settings, parameter shapes, dtypes, which parameters train) and inputs
(shapes, dtypes, grads) equal a block counted before saves the same storages
and costs the same FLOPs, so its count is replayed instead of run:

- a storage it saved that was one of its inputs is booked on the input it gets
  now (once per storage, as always);
- a storage it saved that it made is booked by its size;
- an output it saved is booked on the fresh output the replay returns;
- a storage from elsewhere (seen before the block) is already booked.

A block whose inputs or outputs are not tensors (in tuples, lists, dicts) is
never replayed: it runs. An output that is (a view of) an input is a view of the
copy's own input. (A storage from elsewhere that nothing saved
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


def flat_tensors(args) -> list:
    """The tensors of ``args``, in tuples, lists and dicts too, in ``args_signature``'s order."""
    import torch

    out: list = []

    def walk(v):
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (tuple, list)):
            for i in v:
                walk(i)
        elif isinstance(v, dict):
            for _, i in sorted(v.items(), key=lambda kv: str(kv[0])):
                walk(i)

    walk(args)
    return out


@dataclass
class Record:
    """What one block saved and cost, in terms a copy of it can be booked by."""

    from_args: list[int] = field(default_factory=list)  # positions (flat_tensors) of the inputs whose storage it saved
    made: list[int] = field(default_factory=list)  # bytes of the storages it made and saved
    storages: list[tuple] = field(default_factory=list)  # the outputs' storages: (bytes, dtype, device, grad, saved)
    # (storage index, shape, stride, offset): views of them; index -1 - i: of the input flat_tensors(args)[i]
    outputs: list[tuple] = field(default_factory=list)
    tuple_output: bool = False
    flops: float = 0.0


def record(args, out, touched: dict[int, int], seen_before, flops: float) -> Record | None:
    """The record of a block that ran: ``touched`` is every storage it saved
    (key -> bytes), ``seen_before`` the storages booked before it ran."""
    import torch

    arg_pos: dict[int, int] = {}
    for i, a in enumerate(flat_tensors(args)):
        arg_pos.setdefault(a.untyped_storage()._cdata, i)
    outs = out if isinstance(out, tuple) else (out,)
    if not outs or not all(isinstance(o, torch.Tensor) for o in outs):
        return None
    rec = Record(tuple_output=isinstance(out, tuple), flops=flops)
    index: dict[int, int] = {}  # storage key -> its position in rec.storages
    for o in outs:
        st = o.untyped_storage()
        k = st._cdata
        if k in arg_pos:  # an input passed on (T5's position bias): a view of the copy's own input
            rec.outputs.append((-1 - arg_pos[k], tuple(o.shape), o.stride(), o.storage_offset()))
            continue
        if k not in index:
            index[k] = len(rec.storages)
            rec.storages.append([st.nbytes(), o.dtype, o.device, False, 0])
        rec.storages[index[k]][3] |= bool(o.requires_grad)
        rec.outputs.append((index[k], tuple(o.shape), o.stride(), o.storage_offset()))
    for key, n in touched.items():
        if key in arg_pos:
            rec.from_args.append(arg_pos[key])
        elif key in index:
            rec.storages[index[key]][4] = n
        elif key in seen_before:
            continue  # booked before the block, and so before any copy of it
        else:
            rec.made.append(n)
    rec.storages = [tuple(st) for st in rec.storages]
    return rec


def fresh_outputs(rec: Record, args):
    """Outputs like the recorded ones (views of new storages of the same sizes, or of
    the inputs it passed on) and the new storages that the block saved."""
    import torch

    bases, saved = [], []
    for nbytes, dtype, device, grad, was_saved in rec.storages:
        base = torch.empty(nbytes // dtype.itemsize, dtype=dtype, device=device)
        bases.append(base.requires_grad_() if grad else base)
        if was_saved:
            saved.append(base.untyped_storage())
    outs = []
    flat = flat_tensors(args) if any(i < 0 for i, *_ in rec.outputs) else []
    for i, shape, stride, offset in rec.outputs:
        base = bases[i] if i >= 0 else flat[-1 - i]
        outs.append(base.as_strided(shape, stride, offset))
    return outs, saved
