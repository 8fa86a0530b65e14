"""The sample prompts' text-encoder outputs, made while the encoders are on the GPU for the
text-encoder cache and replayed when samples render during training.

A run that caches its text-encoder outputs takes the encoders off the GPU; a sample then
encodes its prompt where they are, in main memory -- T5-XXL on the CPU is seconds to a
minute a prompt (sd-scripts caches the sample prompts' outputs for the same reason). So the
cache step also runs each sample prompt through the family's own pipeline up to its first
denoiser call (which is stopped there: the denoiser is not on the GPU yet), recording what
each encoder returned for which input. While samples render, an encoder called with an input
it has recorded returns that output instead of running (any other input runs it as before).
Valid because cached encoders are frozen: the same input gives the same output.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any


class _Encoded(Exception):
    """Raised by the denoiser in the recording pass: the prompts are encoded, stop there."""


def _key(args: tuple, kwargs: dict) -> str:
    import torch

    h = hashlib.sha256()

    def put(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            for k in sorted(x):
                h.update(f"K{k}".encode())
                put(x[k])
        elif isinstance(x, (tuple, list)):
            h.update(f"L{len(x)}".encode())
            for v in x:
                put(v)
        else:
            h.update(repr(x).encode())

    put(args)
    put(kwargs)
    return h.hexdigest()


def _fresh(x: Any, device=None) -> Any:
    """A copy of an encoder's output (tensors cloned, containers rebuilt -- a ModelOutput too):
    what the memo keeps, and what it hands out (the pipeline or a hook may change it in place)."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu" if device is None else device, copy=True)
    if isinstance(x, dict):
        return type(x)(**{k: _fresh(v, device) for k, v in x.items()})
    if isinstance(x, (tuple, list)):
        return type(x)(_fresh(v, device) for v in x)
    return x


def _on(x: Any, device) -> Any:
    from loratui.engine.samples.render import _moved

    return _moved(x, device)


class TextMemo:
    def __init__(self) -> None:
        self.outputs: list[dict[str, Any]] = []  # per text encoder: key -> output (on the CPU)
        self.hits = 0  # outputs replayed (tests read them)
        self.misses = 0  # calls with an input not recorded: the encoder ran

    def __len__(self) -> int:
        return sum(len(d) for d in self.outputs)

    @contextlib.contextmanager
    def _wrapped(self, text_encoders: list, record: bool):
        if not self.outputs:
            self.outputs = [{} for _ in text_encoders]
        saved = []
        for te, table in zip(text_encoders, self.outputs):
            own = vars(te).get("forward")
            original = te.forward

            def forward(*args, original=original, table=table, te=te, **kwargs):
                key = _key(args, kwargs)
                if not record:
                    if key in table:
                        self.hits += 1
                        return _fresh(table[key])
                    self.misses += 1
                    return original(*args, **kwargs)
                # the pipeline's execution device may be where the (not yet moved) denoiser is
                at = next(te.parameters()).device
                out = original(*_on(args, at), **_on(kwargs, at))
                table[key] = _fresh(out)
                return out

            te.forward = forward
            saved.append((te, own))
        try:
            yield self
        finally:
            for te, own in saved:
                if own is None:
                    vars(te).pop("forward", None)
                else:
                    te.forward = own

    def recording(self, text_encoders: list):
        return self._wrapped(text_encoders, record=True)

    def replaying(self, text_encoders: list):
        return self._wrapped(text_encoders, record=False)


@contextlib.contextmanager
def _stopped_at(denoiser):
    own = vars(denoiser).get("forward")

    def stop(*args, **kwargs):
        raise _Encoded

    denoiser.forward = stop
    try:
        yield
    finally:
        if own is None:
            vars(denoiser).pop("forward", None)
        else:
            denoiser.forward = own


def record_sample_prompts(comp, prompts: list, *, device: str, clip_skip: int, autocast=None) -> TextMemo:
    """Encode ``prompts`` (already ``resolved``) as their samples will, with the text encoders
    where they are now (on the device, caching): a memo of every encoder call they make."""
    from loratui.engine.samples.render import render

    memo = TextMemo()
    with memo.recording(comp.text_encoders), _stopped_at(comp.unet):
        for p in prompts:
            try:
                render(comp, [p], device=device, clip_skip=clip_skip, autocast=autocast)
            except _Encoded:
                continue
    return memo
