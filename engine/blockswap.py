"""Block swap (``optimization.blocks_to_swap``, sd-scripts ``--blocks_to_swap``)
and CPU-offloaded checkpointing (``optimization.cpu_offload_checkpointing``).

Block swap keeps the frozen weights of N denoiser blocks in (pinned) CPU memory.
A block's weights are copied onto the training device when its forward runs and
again when its backward needs them: a saved-tensor hook records *which* weight a
layer saved for backward instead of keeping it, and brings the block back when
autograd asks. While block *i* computes, the copy of the next block (forward:
*i+1*, backward: *i-1*) runs on a side CUDA stream from pinned memory, so the
transfer overlaps compute; at most two swapped blocks are on the device at a time.
Trained weights (LoRA) are never swapped. On the CPU the same code runs with a
second copy as "the device", which is how the tests prove the hooks move blocks.

CPU-offloaded checkpointing checkpoints each block as a whole and keeps the
block's inputs — what checkpointing keeps for the backward pass — in CPU memory.
"""

from __future__ import annotations

import weakref
from typing import Any


class BlockSwap:
    def __init__(self, blocks: list, *, device, offload: str = "cpu", pin: bool = True):
        import torch

        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.blocks = list(blocks)
        self.params: list[list[Any]] = []
        self.host: dict[int, Any] = {}  # id(param) -> its CPU copy
        self.owner: dict[int, int] = {}  # id(param) -> block index
        self.by_id: dict[int, Any] = {}  # id(param) -> param
        self.resident: dict[int, Any] = {}  # block index -> CUDA event of its copy (None on the CPU)
        self.loads = 0  # copies made onto the device (tests and the log read it)
        self._handles: list = []
        self._own_forward: list = []  # a block's forward set on the instance before (else None)
        self.buffers: list = []  # one page-locked buffer per block (pinned copies)
        self.unpinned = ""  # why the copies could not be page-locked ("": they are, or were not asked to be)
        for i, block in enumerate(self.blocks):
            frozen = [p for p in block.parameters() if not p.requires_grad]
            self.params.append(frozen)
            hosts = [p.data.detach().to(offload) for p in frozen]  # no copy while the model is in main memory
            # pinned: copies that overlap compute (a copy of the weights in page-locked RAM); not pinned:
            # the weights as they are (a mapped file's views: no RAM of their own), copied in step
            if self.cuda and pin:
                hosts = self._pinned(hosts)
            for p, host in zip(frozen, hosts):
                self.host[id(p)] = host
                self.owner[id(p)] = i
                self.by_id[id(p)] = p
            self._evict(i, force=True)
            self._own_forward.append(vars(block).get("forward"))
            block.forward = self._wrap(i, block.forward)
            # every layer holding swapped weights makes sure they are in when it runs — also when
            # gradient checkpointing recomputes it during the backward pass
            for module in block.modules():
                if any(not p.requires_grad for p in module.parameters(recurse=False)):
                    self._handles.append(module.register_forward_pre_hook(
                        lambda m, args, i=i: self.use(i, i - 1 if _in_backward() else i + 1)))

    def _pinned(self, tensors: list) -> list:
        """Copies of ``tensors`` in one buffer of exactly their size, page-locked with
        ``cudaHostRegister`` (``pin_memory()`` per tensor would round each up to a power of
        two: ~1.7× the RAM for FLUX's weights). Unpinned where the driver refuses (the copies
        then block: slower, still right; ``unpinned`` says why)."""
        buf, views = flat_copies(tensors)
        if buf is not None and not self.unpinned:
            self.unpinned = _register(buf)
            if not self.unpinned:
                if not self.buffers:
                    weakref.finalize(self, _unregister, self.buffers)
                self.buffers.append(buf)
        return views

    def restore(self) -> None:
        """Undo: every swapped weight back in its block, in main memory (its host copy); the hooks gone."""
        import torch

        if self.cuda:
            torch.cuda.current_stream(self.device).synchronize()
        for i, block in enumerate(self.blocks):
            for p in self.params[i]:
                p.data = self.host[id(p)]
            own = self._own_forward[i]
            if own is None:
                vars(block).pop("forward", None)
            else:
                block.forward = own
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.resident.clear()

    # -- moving

    def _placeholder(self, p):
        import torch

        return torch.empty(0, dtype=p.dtype, device=self.device)

    def _evict(self, i: int, force: bool = False) -> None:
        if i not in self.resident and not force:
            return
        for p in self.params[i]:
            p.data = self._placeholder(p)
        self.resident.pop(i, None)

    def _load(self, i: int) -> None:
        import torch

        if i in self.resident:
            return
        if self.cuda:
            with torch.cuda.stream(self.stream):
                for p in self.params[i]:
                    p.data = self.host[id(p)].to(self.device, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self.stream)
        else:
            for p in self.params[i]:
                p.data = self.host[id(p)].clone()
            event = None
        self.resident[i] = event
        self.loads += 1

    def use(self, i: int, ahead: int) -> None:
        """Block ``i`` on the device for the current stream; ``ahead`` (or -1 for
        none) copied in the background; every other swapped block out."""
        import torch

        ahead = ahead if 0 <= ahead < len(self.blocks) else -1
        if self.resident.get(i, "out") is None and set(self.resident) <= {i, ahead} and (ahead < 0 or ahead in self.resident):
            return  # in and ready, the one ahead on its way: the common case of every layer's hook
        self._load(i)
        event = self.resident[i]
        if event is not None:
            main = torch.cuda.current_stream(self.device)
            main.wait_event(event)
            for p in self.params[i]:
                p.data.record_stream(main)  # allocated on the side stream, used on this one
            self.resident[i] = None
        for j in [j for j in self.resident if j not in (i, ahead)]:
            self._evict(j)
        if ahead >= 0:
            self._load(ahead)

    # -- hooks

    def _wrap(self, i: int, forward):
        import torch

        def swapped_forward(*args, **kwargs):
            self.use(i, i - 1 if _in_backward() else i + 1)
            try:
                if _saved_tensors_hooked():  # a checkpoint around the block: it keeps nothing, recomputes
                    return forward(*args, **kwargs)
                with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                    return forward(*args, **kwargs)
            finally:
                if not _in_backward():  # out until the backward pass asks for it (a recompute keeps it)
                    self._evict(i)

        return swapped_forward

    def _pack(self, t):
        """A saved swapped weight, or a view of one (``F.linear`` saves ``weight.t()``), as
        which weight and where in it: the backward pass brings the block back for it."""
        base = t if t._base is None else t._base
        j = self.owner.get(id(base))
        if j is None or self.by_id[id(base)] is not base:
            return t
        if base is t:
            return (_SWAPPED, j, base, None)
        return (_SWAPPED, j, base, (t.size(), t.stride(), t.storage_offset() - base.storage_offset()))

    def _unpack(self, obj):
        if not (isinstance(obj, tuple) and len(obj) == 4 and obj[0] is _SWAPPED):
            return obj
        _, j, p, view = obj
        self.use(j, j - 1)
        if view is None:
            return p
        size, stride, offset = view
        return p.as_strided(size, stride, p.storage_offset() + offset)


_SWAPPED = object()  # marks what _pack kept instead of a swapped weight


def _saved_tensors_hooked() -> bool:
    """Whether saved-tensor hooks are already on: a (non-reentrant) checkpoint around the block
    keeps no tensor of it and recomputes it in the backward pass; hooks of ours inside would
    hide its own, and it would keep every activation."""
    import torch

    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    if top is None:
        return False
    try:
        return top(True) is not None  # ignore_is_tracing
    except TypeError:
        return top() is not None


_ALIGN = 512  # bytes: every copy starts where any dtype (and a DMA engine) can read it


def flat_copies(tensors: list):
    """(buffer, copies): contiguous copies of ``tensors`` laid out in one uint8 buffer of
    their total size (each aligned), or (None, []) for none."""
    import torch

    sizes = [t.numel() * t.element_size() for t in tensors]
    offsets, total = [], 0
    for n in sizes:
        total = -(-total // _ALIGN) * _ALIGN
        offsets.append(total)
        total += n
    if not tensors:
        return None, []
    buf = torch.empty(total, dtype=torch.uint8)
    views = []
    for t, off, n in zip(tensors, offsets, sizes):
        v = buf[off : off + n].view(t.dtype).view(t.shape)
        v.copy_(t)
        views.append(v)
    return buf, views


def _register(buf) -> str:
    """Page-lock ``buf`` (CUDA); "" when done, else why not."""
    import torch

    try:
        err = torch.cuda.cudart().cudaHostRegister(buf.data_ptr(), buf.numel() * buf.element_size(), 0)
    except Exception as exc:  # noqa: BLE001 - no such call in this torch: copies from pageable memory
        return f"{type(exc).__name__}: {exc}"
    return "" if int(err) == 0 else f"cudaHostRegister failed ({err})"


def _unregister(buffers: list) -> None:
    import torch

    for buf in buffers:
        try:
            torch.cuda.cudart().cudaHostUnregister(buf.data_ptr())
        except Exception:  # noqa: BLE001 - at exit the runtime may be gone already
            pass


def _in_backward() -> bool:
    import torch

    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


def offload_checkpointing(denoiser, blocks: list) -> int:
    """Checkpoint each of ``blocks`` as a whole, its inputs kept in CPU memory
    (the denoiser's own finer checkpointing is turned off). Returns the count."""
    if hasattr(denoiser, "disable_gradient_checkpointing"):
        denoiser.disable_gradient_checkpointing()
    for block in blocks:
        block.forward = _offloaded(block.forward)
    return len(blocks)


def _offloaded(forward):
    import torch
    from torch.utils._pytree import tree_flatten, tree_unflatten
    from torch.utils.checkpoint import checkpoint

    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        leaves, spec = tree_flatten((args, kwargs))
        devices = [t.device if isinstance(t, torch.Tensor) else None for t in leaves]
        on_cpu = [t.to("cpu") if isinstance(t, torch.Tensor) else t for t in leaves]

        def inner(_anchor, *flat):
            back = [t.to(d, non_blocking=True) if d is not None else t for t, d in zip(flat, devices)]
            a, kw = tree_unflatten(back, spec)
            return forward(*a, **kw)

        # checkpoint keeps the RNG state of the devices its arguments are on: an empty tensor on the
        # block's device, so a recompute draws the same dropout masks there as the forward did
        on_device = next((t for t in leaves if isinstance(t, torch.Tensor) and t.device.type != "cpu"), None)
        anchor = on_device.new_empty(0) if on_device is not None else None
        return checkpoint(inner, anchor, *on_cpu, use_reentrant=False)

    return run
