"""Counting a training step on the meta device: no weights, no GPU.

The model is built from its configs on the meta device with the family's own
code, the LoRA is injected with ``engine.lora`` exactly as a run does, and one
training forward (text encoders when they train, the denoiser, the loss) runs
under ``saved_tensors_hooks`` and ``FlopCounterMode``. Every tensor autograd
saves for backward is counted once per storage (views of one tensor share it;
parameters are left out: they are counted as parameters).

Gradient checkpointing is counted from the same forward: the U-Net's
checkpointing function is replaced by one that runs the block normally and
books what it saves, and its inputs, to that block. With checkpointing a run
keeps what is saved outside the blocks, the blocks' inputs, and one block's
saves at a time while it is recomputed in backward.

The attention backend is emulated (``AttentionMode``): the fused kernels (flash
/ memory-efficient on CUDA, the flash kernel of the CPU) save q, k, v, the
output and a float32 log-sum-exp row per query; the meta device by itself
would decompose attention into the math path that keeps the whole score
matrix. ``AutocastMode`` does on meta tensors what CUDA autocast does to the
dtypes (matmuls in bf16/fp16, norms, softmax and the loss in fp32).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any

_local = threading.local()


class CountAborted(RuntimeError):
    """The caller's ``abort_when`` condition came true during a count."""


@contextlib.contextmanager
def abort_when(condition):
    """Counts made in this thread inside the block stop (``CountAborted``) as
    soon as ``condition()`` is true (the app starts a run: training wants the CPU)."""
    _local.abort = condition
    try:
        yield
    finally:
        _local.abort = None


def _check_abort() -> None:
    condition = getattr(_local, "abort", None)
    if condition is not None and condition():
        raise CountAborted("stopped: a run started")


@dataclass
class Counted:
    """What one training forward saves and costs (bytes, FLOPs)."""

    saved: int = 0  # every saved storage, without gradient checkpointing
    outside: int = 0  # with checkpointing: what is saved outside the checkpointed blocks
    unit_inputs: int = 0  # with checkpointing: the inputs each block keeps for its recompute
    max_unit: int = 0  # the largest block's own saves (alive while it is recomputed in backward)
    largest: int = 0  # the largest single saved storage (a gradient of its size exists in backward)
    flops_forward: float = 0.0
    flops_units: float = 0.0  # forward FLOPs inside checkpointed blocks (done again with checkpointing)
    flops_text: float = 0.0  # the part of flops_forward spent in the text encoders (run before the denoiser)
    units: int = 0
    replayed: int = 0  # blocks and frozen layers booked from the count of a copy (engine.estimate.replay)
    params: dict[str, dict[str, int]] = field(default_factory=dict)  # component -> {"count", "bytes"}
    lora_shapes: list[tuple[tuple[int, ...], bool, bool]] = field(default_factory=list)  # (shape, trainable, zero-initialised)
    swap_groups: list[list[int]] = field(default_factory=list)  # base parameters of each block block swap chooses from (Family.swap_groups)

    def activations(self, gradient_checkpointing: bool) -> int:
        if gradient_checkpointing:
            return self.outside + self.unit_inputs + self.max_unit
        return self.saved

    def step_flops(self, gradient_checkpointing: bool, text: str = "trained") -> float:
        """Forward + backward (input gradients of the frozen base cost about
        one forward; LoRA weight gradients are negligible) + the recompute. ``text``:
        the text encoders are ``trained`` (forward + backward), ``frozen`` (forward
        only, under no_grad) or ``cached`` (their outputs read from the cache: not run)."""
        denoiser = self.flops_forward - self.flops_text
        te = self.flops_text * {"trained": 2, "frozen": 1, "cached": 0}[text]
        return 2 * denoiser + te + (self.flops_units if gradient_checkpointing else 0.0)


class SavedCounter:
    """``saved_tensors_hooks`` that book each saved storage once."""

    def __init__(self, models: list):
        self.ignore: set[int] = set()
        for m in models:
            for t in [*m.parameters(), *m.buffers()]:
                self.ignore.add(t.untyped_storage()._cdata)
        self.seen: dict[int, int] = {}
        self.keep: list = []  # storages stay alive: their ids stay unique
        self.unit: dict[int, int] | None = None
        self.touched: dict[int, int] | None = None  # every storage the running block saves, booked or not
        self.inputs: dict[int, int] = {}
        self.outside_keys: set[int] = set()
        self.c = Counted()
        self.replayed = 0  # blocks booked from the record of a copy (engine.estimate.replay)
        self.replayed_flops = 0.0

    def pack(self, t):
        st = t.untyped_storage()
        key = st._cdata
        if key in self.ignore:
            return t
        if self.touched is not None:
            self.touched[key] = st.nbytes()
        if key in self.seen:
            return t
        self._book(key, st.nbytes(), st)
        return t

    def _book(self, key: int, n: int, st) -> int:
        if key in self.ignore or key in self.seen:
            return 0
        self.seen[key] = n
        self.keep.append(st)
        self.c.saved += n
        self.c.largest = max(self.c.largest, n)
        if self.unit is not None:
            self.unit[key] = n
        else:
            self.c.outside += n
            self.outside_keys.add(key)
        return n

    def hooks(self):
        import torch

        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    def checkpoint_func(self, flops, replay: bool = True, signatures: dict[int, tuple] | None = None):
        """A stand-in for the U-Net's ``_gradient_checkpointing_func``: runs the
        block as is and books its saves and inputs to it; a copy of a block
        counted before is booked from its record (``engine.estimate.replay``)."""
        import torch

        from loratui.engine.estimate import replay as rp

        records: dict[tuple, rp.Record | None] = {}
        signatures = dict(signatures or {})  # given: blocks whose copies have no LoRA yet (engine.estimate.lazy)

        def run(module, *args):
            if self.unit is not None:  # nested: part of the outer block
                return module(*args)
            _check_abort()
            tensors = rp.flat_tensors(args)
            for a in args:  # what checkpointing saves for the recompute (in a tuple: kept by its caller)
                if isinstance(a, torch.Tensor):
                    st = a.untyped_storage()
                    if st._cdata not in self.ignore:
                        self.inputs[st._cdata] = st.nbytes()
                        self.keep.append(st)
            key = None
            if replay and all(a.is_meta for a in tensors):
                arg_sig = rp.args_signature(args)
                if arg_sig is not None:
                    sig = signatures.get(id(module))
                    if sig is None:
                        sig = signatures[id(module)] = rp.module_signature(module)
                    key = (sig, arg_sig)
                    rec = records.get(key)
                    if rec is not None:
                        return self._replay(rec, args)
            self.unit = {}
            self.touched = {} if key is not None else None
            seen_before = set(self.seen) if key is not None else ()
            before = flops()
            out = None
            try:
                out = module(*args)
                return out
            finally:
                spent = flops() - before
                self.c.flops_units += spent
                self.c.max_unit = max(self.c.max_unit, sum(self.unit.values()))
                self.c.units += 1
                if key is not None and out is not None:
                    records[key] = rp.record(args, out, self.touched, seen_before, spent)
                self.unit = None
                self.touched = None

        return run

    def _replay(self, rec, args, unit: bool = True):
        """Book a copy of a block from ``rec`` (``unit``: a checkpointed block) and
        return fresh outputs like the block's."""
        from loratui.engine.estimate.replay import flat_tensors, fresh_outputs

        if unit:
            self.unit = {}
        try:
            flat = flat_tensors(args)
            for i in rec.from_args:
                st = flat[i].untyped_storage()
                self._book(st._cdata, st.nbytes(), st)
            made = 0
            for n in rec.made:
                made += n
                self.c.largest = max(self.c.largest, n)
            self.c.saved += made
            outs, saved = fresh_outputs(rec, args)
            for st in saved:
                self._book(st._cdata, st.nbytes(), st)
            if unit:
                self.c.max_unit = max(self.c.max_unit, sum(self.unit.values()) + made)
                self.c.flops_units += rec.flops
                self.c.units += 1
            else:
                self.c.outside += made
        finally:
            if unit:
                self.unit = None
        self.replayed_flops += rec.flops
        self.replayed += 1
        return tuple(outs) if rec.tuple_output else outs[0]


def _fused_attention_function():
    import torch

    class FusedAttention(torch.autograd.Function):
        """Saves what flash / memory-efficient attention saves: q, k, v, out, lse."""

        @staticmethod
        def forward(ctx, q, k, v, scale):
            if q.device.type != "meta":
                out = _real_sdpa(q, k, v, scale)
            elif q.dim() == 4:  # the kernels write (batch, query, head, dim): the head-merge after is a view
                b, h, lq, _ = q.shape
                out = torch.empty((b, lq, h, v.shape[-1]), dtype=q.dtype, device=q.device).transpose(1, 2)
            else:
                out = torch.empty((*q.shape[:-1], v.shape[-1]), dtype=q.dtype, device=q.device)
            lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
            ctx.save_for_backward(q, k, v, out, lse)
            return out

        @staticmethod
        def backward(ctx, grad):  # pragma: no cover - the estimate never runs backward
            q, k, v, _, _ = ctx.saved_tensors
            return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), None

    return FusedAttention


def _real_sdpa(q, k, v, scale):
    import torch

    with torch.no_grad():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)


def attention_mode(attn_flops: list[float]):
    """A TorchFunctionMode that runs ``scaled_dot_product_attention`` as the
    fused kernels do (what they save) and counts its FLOPs in ``attn_flops``."""
    import torch
    from torch.overrides import TorchFunctionMode

    fused = _fused_attention_function()
    sdpa = torch.nn.functional.scaled_dot_product_attention

    class AttentionMode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            qkv = (*args, *(kwargs.get(n) for n in ("query", "key", "value")[len(args):]))[:3]
            plain = kwargs.get("attn_mask") is None and not kwargs.get("enable_gqa") and len(args) <= 3
            if func is sdpa and plain and all(isinstance(t, torch.Tensor) for t in qkv):
                q, k, v = qkv
                *batch, lq, d = q.shape
                lk = k.shape[-2]
                n = 1
                for b in batch:
                    n *= b
                attn_flops.append(4.0 * n * lq * lk * d)
                return fused.apply(q, k, v, kwargs.get("scale"))
            return func(*args, **kwargs)

    return AttentionMode()


def autocast_mode(dtype):
    """CUDA autocast's dtype rules for the ops a diffusion model uses, on meta tensors."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    low = {F.linear, F.conv2d, torch.matmul, torch.bmm, torch.baddbmm, torch.addmm, torch.Tensor.__matmul__,
           F.scaled_dot_product_attention}
    high = {F.group_norm, F.layer_norm, F.softmax, F.mse_loss, torch.Tensor.softmax}

    def cast(x, to):
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != to:
            return x.to(to)
        if isinstance(x, (list, tuple)):
            return type(x)(cast(i, to) for i in x)
        return x

    class AutocastMode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            to = dtype if func in low else torch.float32 if func in high else None
            if to is not None:
                args = cast(args, to)
                kwargs = {k: cast(v, to) for k, v in kwargs.items()}
            return func(*args, **kwargs)

    return AutocastMode()


def training_forward(family, unet, text_encoders, *, batch: int, height: int, width: int, device, dtype,
                     train_text_encoder: bool, clip_skip: int = 1, seq_len: int = 77, text_tokens: int = 0,
                     t5_mask: bool = False, flow_prediction: str = "sigma_scaled"):
    """One training forward as ``training.step.Objective.loss`` runs it; the loss.
    SD3 / Flux (``family.flow_matching``): T5 with ``text_tokens`` tokens."""
    import torch

    lat_h, lat_w = height // 8, width // 8
    channels = family.latent_channels(unet.config)

    def make(shape, dt=dtype):
        if device == "meta" or str(device) == "meta":
            return torch.empty(shape, device="meta", dtype=dt)
        return torch.randn(shape, dtype=dt)

    latents = make((batch, channels, lat_h, lat_w))
    noise = make((batch, channels, lat_h, lat_w))
    noisy = make((batch, channels, lat_h, lat_w))
    if family.flow_matching:
        from loratui.engine.flow_matching import FlowSettings, FlowStep

        timesteps = FlowStep(torch.rand((batch,), device=device), FlowSettings(model_prediction_type=flow_prediction))
        tokens = [seq_len] * (len(text_encoders) - 1) + [text_tokens or family.default_t5_tokens]
        ids = [torch.zeros((batch, n), dtype=torch.long, device=device) for n in tokens]
        ids.append(torch.ones((batch, tokens[-1]), dtype=torch.long, device=device))  # T5's attention mask
        text_encoders[-1].loratui_apply_attn_mask = t5_mask
    else:
        timesteps = torch.zeros((batch,), dtype=torch.long, device=device)
        ids = [torch.zeros((batch, seq_len), dtype=torch.long, device=device) for _ in text_encoders]
    te_ctx = contextlib.nullcontext() if train_text_encoder else torch.no_grad()
    with te_ctx:
        hidden, pooled = family.encode_text(text_encoders, ids, clip_skip, device)
    crops = [((height, width), (0, 0), (height, width))] * batch
    pred = family.predict(unet, noisy, timesteps, hidden, pooled, crops, device, dtype)
    loss = torch.nn.functional.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
    del latents
    return loss.mean()


def _flop_hooks(models, total: list[float]):
    """Forward hooks that add each Linear / Conv2d call's multiply-adds ×2 to ``total``
    (cheaper than FlopCounterMode on every op; attention is counted by AttentionMode)."""
    import torch

    handles = []

    def linear(mod, args, out):
        _check_abort()
        total[0] += 2.0 * out.numel() * mod.in_features

    def conv(mod, args, out):
        _check_abort()
        k = 1
        for d in mod.kernel_size:
            k *= d
        total[0] += 2.0 * out.numel() * (mod.in_channels // mod.groups) * k

    for m in models:
        for mod in m.modules():
            if isinstance(mod, torch.nn.Linear):
                handles.append(mod.register_forward_hook(linear))
            elif isinstance(mod, torch.nn.Conv2d):
                handles.append(mod.register_forward_hook(conv))
    return handles


def stack_layers(models) -> list:
    """The items of the ModuleLists of ``models`` (a text encoder's layers) that
    ``layer_replay`` may replay (those without a forward of their own)."""
    import torch

    return [layer for m in models for mod in m.modules() if isinstance(mod, torch.nn.ModuleList)
            for layer in mod if "forward" not in layer.__dict__]


@contextlib.contextmanager
def layer_replay(layers, counter: SavedCounter, flops, signatures: dict[int, tuple] | None = None, before_run=None):
    """A layer of a stack (the text encoders' 12 / 32) that is a copy of one run
    before with the same inputs on the meta device is booked from that run's
    record: fresh outputs, its FLOPs and, with grad, its saves (outside any
    checkpointed block). ``signatures``: those of layers whose copies got no
    LoRA yet (``engine.estimate.lazy``); ``before_run(layer)``: called when a
    layer really runs (it injects a copy's LoRA)."""
    import torch

    from loratui.engine.estimate import replay as rp

    records: dict[tuple, rp.Record | None] = {}
    signatures = dict(signatures or {})
    patched = []

    def wrap(layer):
        original = layer.forward

        def forward(*args, **kwargs):
            flat = (*args, kwargs)
            arg_sig = None
            if counter.unit is None and all(t.is_meta for t in rp.flat_tensors(flat)):
                arg_sig = rp.args_signature(flat)
            if arg_sig is None:
                if before_run is not None:
                    before_run(layer)
                return original(*args, **kwargs)
            sig = signatures.get(id(layer))
            if sig is None:
                sig = signatures[id(layer)] = rp.module_signature(layer)
            key = (sig, arg_sig, torch.is_grad_enabled())
            rec = records.get(key)
            if rec is not None:
                _check_abort()
                return counter._replay(rec, flat, unit=False)
            if before_run is not None:
                before_run(layer)
            counter.touched = {}
            seen_before = set(counter.seen)
            start = flops()
            try:
                out = original(*args, **kwargs)
                records[key] = rp.record(flat, out, counter.touched, seen_before, flops() - start)
            finally:
                counter.touched = None
            return out

        layer.forward = forward
        patched.append(layer)

    for layer in layers:
        wrap(layer)
    try:
        yield
    finally:
        for layer in patched:
            del layer.forward  # the class's forward again


def count_forward(family, unet, text_encoders, *, amp_dtype=None, fused_attention: bool = True, replay: bool = True,
                  lazy=None, **kw) -> Counted:
    """Run ``training_forward`` (on meta or real tensors) and count what it saves and costs
    (``replay``: copies of a checkpointed block are booked from its first count; ``lazy``:
    the ``engine.estimate.lazy.LazyLoRA`` of a model whose copies got no LoRA yet)."""
    import torch

    models = [m for m in (unet, *text_encoders) if m is not None]
    counter = SavedCounter(models)
    attn_flops: list[float] = []
    matmul_flops = [0.0]

    def flops() -> float:
        return matmul_flops[0] + sum(attn_flops) + counter.replayed_flops

    handles = _flop_hooks(models, matmul_flops)
    text_done: list[float] = []  # flops() when the denoiser starts: the text encoders' share
    handles.append(unet.register_forward_pre_hook(lambda *_: text_done.append(flops()) if not text_done else None))
    layers = stack_layers([te for te in text_encoders if te is not None]) if replay else []
    take = None
    if lazy is not None:
        def take(block):  # a copy's LoRA, injected as it runs: parameters, not activations
            modules = lazy.take(block)
            for mod in modules:
                for t in mod.parameters():
                    counter.ignore.add(t.untyped_storage()._cdata)
            handles.extend(_flop_hooks(modules, matmul_flops))

        handles.extend(lazy.pre_hooks(take, skip={id(layer) for layer in layers}))
    previous = getattr(unet, "_gradient_checkpointing_func", None)
    was_on = bool(getattr(unet, "is_gradient_checkpointing", False))
    unet.enable_gradient_checkpointing(gradient_checkpointing_func=counter.checkpoint_func(
        flops, replay, lazy.signatures if lazy is not None else None))
    try:
        with contextlib.ExitStack() as modes:
            if fused_attention:
                modes.enter_context(attention_mode(attn_flops))
            if amp_dtype is not None:
                modes.enter_context(autocast_mode(amp_dtype))
            modes.enter_context(counter.hooks())
            if layers:
                modes.enter_context(layer_replay(layers, counter, flops, lazy.signatures if lazy else None, take))
            training_forward(family, unet, text_encoders, **kw)
    finally:
        for h in handles:
            h.remove()
        if was_on and previous is not None:
            unet.enable_gradient_checkpointing(gradient_checkpointing_func=previous)
        else:
            unet.disable_gradient_checkpointing()
    c = counter.c
    c.flops_forward = flops()
    c.flops_text = text_done[0] if text_done else 0.0
    c.replayed = counter.replayed
    c.unit_inputs = sum(n for k, n in counter.inputs.items() if k not in counter.outside_keys)
    return c
