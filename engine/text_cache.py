"""Encode every caption once with the text encoder(s) and keep the outputs.

``dataset.cache_text_encoder_outputs``:

- ``auto`` (default): ``memory`` whenever caching cannot change what is trained —
  the text encoders are frozen (``network.train_text_encoder`` false) and a
  caption is the same at every step (no ``shuffle_caption``, no
  ``caption_dropout_rate``) — else ``off``;
- ``memory``: outputs live in RAM for this run;
- ``disk``: also one file per image in the ``.loratui_cache`` folder beside it
  (``<image file name>.te.safetensors``), reused by later runs;
- ``off``: the text encoders encode every batch.

``memory``/``disk`` asked for where the outputs change between steps is refused
before anything loads (:func:`cache_problems`), as sd-scripts refuses
``--cache_text_encoder_outputs`` with ``shuffle_caption``/``caption_dropout_rate``
or a trained text encoder: an sd-scripts user expects the setting to be either
honoured or refused, never silently dropped.

Each output is keyed like the latent cache::

    key = sha256(recipe version, caption text, family, clip_skip,
                 encode dtype, text-encoder + tokenizer fingerprint)

A disk file carries its key and a sha256 of its tensors' bytes: a file of
another caption, model or setting, or one whose bytes were damaged, is encoded
again and rewritten (atomically), never used. Once cached, the frozen text
encoders leave the training device (to ``OFFLOAD_DEVICE``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loratui.engine.latent_cache import CACHE_DIR_NAME
from loratui.engine.problems import Problem, error

CACHE_VERSION = 1
OFFLOAD_DEVICE = "cpu"  # where cached text encoders go (tests set "meta": freed)
SETTING = "dataset.cache_text_encoder_outputs"
# beside the text encoders' weights while they cache: a batch of 16 captions through T5-XXL (512 tokens)
ENCODE_MARGIN = int(1.5 * 2**30)


# --------------------------------------------------------------------------- the decision (no torch)


def blockers(profile) -> list[tuple[str, str]]:
    """(setting, why) of each reason the text-encoder outputs change between steps."""
    ds, net = profile.dataset, profile.network
    out = []
    if net.train_text_encoder:
        out.append(("network.train_text_encoder", "the text encoders are trained, so their outputs change every step"))
    if ds.shuffle_caption:
        out.append(("dataset.shuffle_caption", "captions are shuffled every step"))
    if ds.caption_dropout_rate > 0:
        out.append(("dataset.caption_dropout_rate", "captions are dropped at random"))
    return out


def effective_mode(profile) -> str:
    """memory / disk / off: what the run does."""
    mode = profile.dataset.cache_text_encoder_outputs
    if mode == "off":
        return "off"
    if mode == "auto":
        return "off" if blockers(profile) else "memory"
    return mode


def cache_problems(profile) -> list[Problem]:
    mode = profile.dataset.cache_text_encoder_outputs
    if mode not in ("memory", "disk"):
        return []
    return [
        error(
            SETTING,
            f"{mode}: cannot cache the text-encoder outputs: {why} ({key})",
            f"turn {key} off, or set cache_text_encoder_outputs to auto (caches only when it can) or off; "
            "sd-scripts refuses this combination too",
        )
        for key, why in blockers(profile)
    ]


# --------------------------------------------------------------------------- keys


def encoder_fingerprint(text_encoders: list, tokenizers: list, samples_per_tensor: int = 64) -> str:
    """A short hash of the text encoders (config, every tensor's name/shape/dtype
    and a fixed sample of its values) and of the tokenizers (class, length, vocabulary)."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for te in text_encoders:
            cfg = te.config.to_dict() if hasattr(te.config, "to_dict") else dict(te.config)
            cfg = {k: v for k, v in cfg.items() if k not in ("_name_or_path", "transformers_version", "dtype", "torch_dtype")}
            h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
            for name, t in sorted(te.state_dict().items()):
                h.update(f"{name}|{tuple(t.shape)}".encode())
                flat = t.detach().reshape(-1)
                if flat.numel() == 0 or flat.device.type == "meta":
                    continue
                n = flat.numel()  # (integer steps: float32's linspace rounds past the end above 2^24 elements)
                idx = torch.arange(min(n, samples_per_tensor), device=flat.device) * (n - 1) // max(min(n, samples_per_tensor) - 1, 1)
                h.update(flat[idx].float().cpu().numpy().tobytes())
    for tok in tokenizers:
        vocab = sorted(tok.get_vocab().items())
        h.update(f"{type(tok).__name__}|{tok.model_max_length}|{len(tok)}".encode())
        h.update(json.dumps(vocab).encode())
    return h.hexdigest()[:32]


def caption_key(caption: str, *, family: str, clip_skip: int, dtype: str, encoder_id: str, max_tokens: int = 75) -> str:
    fields = {"v": CACHE_VERSION, "caption": caption, "family": family, "clip_skip": clip_skip, "dtype": dtype,
              "encoders": encoder_id}
    if max_tokens > 75:  # long captions (chunked encoding) are other outputs; 75 keeps the keys it always had
        fields["max_tokens"] = max_tokens
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_path_for(image: str | Path) -> Path:
    image = Path(image)
    return image.parent / CACHE_DIR_NAME / (image.name + ".te.safetensors")


def _digest(tensors: dict) -> str:
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu().reshape(-1)
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _read_valid(path: Path, key: str) -> dict | None:
    """The tensors of a cache file made for ``key`` whose bytes are intact, else None."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") != key:
                return None
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # noqa: BLE001 - a damaged file is encoded again
        return None
    if "0" not in tensors or "_n" not in tensors or meta.get("sha256") != _digest(tensors):
        return None
    return tensors


def _write(path: Path, tensors: dict, key: str) -> None:
    from safetensors.torch import save_file

    from loratui.engine.fsutil import atomic_save

    meta = {"format": "loratui-text-encoder-cache", "version": str(CACHE_VERSION), "key": key, "sha256": _digest(tensors)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta))


# --------------------------------------------------------------------------- the cache


@dataclass
class TextOutputCache:
    """What the family's ``encode_text`` returned — (hidden states, pooled output or
    None) for SD, any tuple of tensors or None for other families — by caption, one
    row each, on the CPU in the dtype it was computed in. Row keys: "0", "1"...
    and "_n" (the tuple's length)."""

    by_caption: dict[str, dict] = field(default_factory=dict)
    encoded: int = 0  # captions encoded by this run
    reused: int = 0  # images whose disk file was used
    remade: int = 0  # disk files that were there but not usable (other key, damaged)
    warnings: list[str] = field(default_factory=list)
    _layout: tuple | None = field(default=None, init=False, repr=False)  # the rows' keys, as get returns them

    def __len__(self) -> int:
        return len(self.by_caption)

    def get(self, captions: list[str], device) -> tuple:
        """The batch of ``captions``: the tuple ``encode_text`` returns, each tensor
        stacked and on ``device`` (None where it returned None), copied from pinned memory
        without blocking on CUDA (a plain ``.to`` would wait for the GPU's queue every step)."""
        import torch

        from loratui.engine.training.fastpath import to_device

        rows = [self.by_caption[c] for c in captions]
        if self._layout is None:  # every row has the same layout: read its lengths once
            first = rows[0]
            n = int(first["_n"].item()) if "_n" in first else 2
            self._layout = tuple(
                tuple(f"{k}.{j}" for j in range(int(first[f"_n{k}"].item()))) if f"_n{k}" in first else str(k)
                for k in range(n)
            )

        def stack(key: str):
            return to_device(torch.stack([r[key] for r in rows]), device) if key in rows[0] else None

        return tuple(tuple(stack(k) for k in part) if isinstance(part, tuple) else stack(part) for part in self._layout)


def _row(outs: tuple, i: int) -> dict:
    """Sample ``i`` of what ``encode_text`` returned, on the CPU: tensors by position,
    the members of a nested tuple (FLUX: T5 states and their mask) as ``k.j``."""
    import torch

    row = {"_n": torch.tensor(len(outs))}
    for k, o in enumerate(outs):
        if isinstance(o, (tuple, list)):
            row[f"_n{k}"] = torch.tensor(len(o))
            row.update({f"{k}.{j}": part[i].detach().cpu().clone() for j, part in enumerate(o) if part is not None})
        elif o is not None:
            row[str(k)] = o[i].detach().cpu().clone()
    return row


def build_cache(
    items: list,
    family,
    text_encoders: list,
    tokenizers: list,
    *,
    mode: str,
    clip_skip: int,
    device,
    autocast: Callable[[], Any],
    dtype_name: str,
    batch_size: int = 16,
    max_tokens: int = 75,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    bring: Callable[[], None] | None = None,
) -> TextOutputCache | None:
    """Encode the captions of ``items`` (``ImageItem``: ``.path``, ``.caption``) the
    way a training step does (``family.tokenize`` / ``family.encode_text`` under
    ``autocast()``, no gradients). None when stopped. ``bring`` is called once before
    the first caption is encoded (the encoders go onto the device only when there is
    something to encode, and after their fingerprint is taken)."""
    import torch

    from loratui.engine.training import chunked

    if mode not in ("memory", "disk"):
        raise ValueError(f"mode must be 'memory' or 'disk', not {mode!r}")
    cache = TextOutputCache()
    enc_id = encoder_fingerprint(text_encoders, tokenizers)
    key = lambda c: caption_key(c, family=family.name, clip_skip=clip_skip, dtype=dtype_name, encoder_id=enc_id, max_tokens=max_tokens)  # noqa: E731
    by_caption: dict[str, list] = {}
    for it in items:
        by_caption.setdefault(it.caption, []).append(it)
    valid: set[Path] = set()  # disk files already right
    if mode == "disk":
        for caption, its in by_caption.items():
            for it in its:
                path = cache_path_for(it.path)
                found = _read_valid(path, key(caption))
                if found is None:
                    cache.remade += path.is_file()
                    continue
                valid.add(path)
                cache.reused += 1
                cache.by_caption.setdefault(caption, found)
    todo = [c for c in by_caption if c not in cache.by_caption]
    done = len(by_caption) - len(todo)
    if todo and bring is not None:
        bring()
    for start in range(0, len(todo), batch_size):
        if should_stop and should_stop():
            return None
        chunk = todo[start : start + batch_size]
        ids = chunked.tokenize(family, tokenizers, chunk, max_tokens)  # as a training step does (75: the family's own)
        with torch.no_grad(), autocast():
            outs = tuple(chunked.encode_text(family, text_encoders, ids, clip_skip, device, max_tokens))
        for i, caption in enumerate(chunk):
            cache.by_caption[caption] = _row(outs, i)
        cache.encoded += len(chunk)
        done += len(chunk)
        if on_progress:
            on_progress(done, len(by_caption))
    if mode == "disk":
        _write_missing(cache, by_caption, key, valid)
    return cache


def _write_missing(cache: TextOutputCache, by_caption: dict[str, list], key, valid: set[Path]) -> None:
    """A valid file beside every image (those that have one are left alone); a
    write that fails keeps the outputs in memory for this run, said once."""
    for caption, its in by_caption.items():
        k = key(caption)
        for it in its:
            path = cache_path_for(it.path)
            if path in valid:
                continue
            try:
                _write(path, cache.by_caption[caption], k)
            except OSError as exc:
                cache.warnings.append(
                    f"{SETTING}: cannot write the text-encoder cache in {path.parent} "
                    f"({exc.strerror or exc}); keeping the outputs in memory for this run"
                )
                return
