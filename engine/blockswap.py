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
        self.buffers: list = []  # the page-locked buffers the pinned copies live in
        frozen_of = [[p for p in block.parameters() if not p.requires_grad] for block in self.blocks]
        hosts = [p.data.detach().to(offload) for ps in frozen_of for p in ps]  # no copy while the model is in RAM
        # pinned: copies that overlap compute (a copy of the weights in page-locked RAM); not pinned:
        # the weights as they are (a mapped file's views: no RAM of their own), copied in step
        if self.cuda and pin:
            self.buffers, hosts = pinned_copies(hosts)
        it = iter(hosts)
        for i, block in enumerate(self.blocks):
            frozen = frozen_of[i]
            self.params.append(frozen)
            for p in frozen:
                self.host[id(p)] = next(it)
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


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def chunk_layout(sizes: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
    """(chunk sizes, (chunk, offset) of each tensor): ``sizes`` packed into a few buffers of
    power-of-two sizes. torch rounds every pinned allocation up to a power of two (its
    caching host allocator): one per weight took ~1.7× FLUX's swapped RAM; chunks of
    exactly a power of two, filled first-fit, waste only their ends."""
    place: list[tuple[int, int] | None] = [None] * len(sizes)
    chunks: list[int] = []
    left = [i for i in range(len(sizes))]
    while left:
        rest = sum(_aligned(sizes[i]) for i in left)
        biggest = max(_aligned(sizes[i]) for i in left)
        cap = max(1 << (rest.bit_length() - 1), 1 << (biggest - 1).bit_length())  # ≤ what is left, ≥ its largest
        used, keep = 0, []
        for i in left:
            if used + _aligned(sizes[i]) <= cap:
                place[i] = (len(chunks), used)
                used += _aligned(sizes[i])
            else:
                keep.append(i)
        if keep and used == 0:  # (cannot happen: cap holds the largest)
            raise AssertionError("chunk_layout: nothing fits")
        chunks.append(cap if keep or used > cap // 2 else 1 << (used - 1).bit_length())
        left = keep
    return chunks, place  # type: ignore[return-value]


def flat_copies(tensors: list, chunks: list[int], place: list[tuple[int, int]], pin: bool):
    """(buffers, copies): contiguous copies of ``tensors`` at their ``place`` in uint8 buffers
    of the ``chunks``' sizes (page-locked with ``pin``)."""
    import torch

    buffers = [torch.empty(n, dtype=torch.uint8, pin_memory=pin) for n in chunks]
    views = []
    for t, (c, off) in zip(tensors, place):
        n = t.numel() * t.element_size()
        v = buffers[c][off : off + n].view(t.dtype).view(t.shape)
        v.copy_(t)
        views.append(v)
    return buffers, views


def pinned_copies(tensors: list):
    """(buffers, copies) of ``tensors`` in page-locked memory, laid out by :func:`chunk_layout`."""
    if not tensors:
        return [], []
    chunks, place = chunk_layout([t.numel() * t.element_size() for t in tensors])
    return flat_copies(tensors, chunks, place, pin=True)


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
