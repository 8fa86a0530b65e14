"""Encode every training image once with the VAE and keep the latents.

``mode="memory"``: latents live in RAM for this run only.
``mode="disk"``: one file per image in a ``.loratui_cache`` folder beside the
images (``<concept folder>/.loratui_cache/<image file name>.safetensors``),
reused by later runs. Each file records the key it was made for::

    key = sha256(recipe version, sha256 of the image file's bytes,
                 bucket (w, h), resize before the crop, VAE identity)

The VAE identity is a hash of its config and of a fixed sample of every
weight tensor (``vae_fingerprint``). So an edited image, another resolution or
bucket setting, or another VAE is encoded again, and an unchanged image is never
encoded twice — whatever its modification time says. Files are written
atomically (engine.fsutil): an interrupted run leaves old files or new ones,
never half of one; a damaged file is simply encoded again.

What is stored is the *mean* of the VAE's latent distribution, times the VAE
scaling factor (minus its shift factor, when it has one). sd-scripts caches a
random sample instead; the mean makes a cache hit identical to a fresh encode
and the cache independent of the seed.

Flip augmentation: like sd-scripts we encode and store both the image and its
mirror (a VAE is not mirror-symmetric, so flipping latents is not the same);
the trainer picks one per sample with ``get(i, flip=...)``. Called without
``flip``, ``get`` returns a fixed per-image choice drawn from the seed.

NaN/inf latents (the SDXL VAE overflows in fp16) are detected, never cached,
and stop the run with a message naming the image. An SDXL-like VAE
(``force_upcast`` in its config, scaling factor 0.13025) is run in fp32 when
fp16 was asked for, unless ``vae_fp32=False`` says the VAE is an fp16-fixed one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loratui.engine.fsutil import TMP_PREFIX, atomic_save, file_sha256
from loratui.engine.imagefile import CropInfo, array_to_tensor, load_image_array

if TYPE_CHECKING:
    from loratui.engine.dataset.items import ImageItem

CACHE_DIR_NAME = ".loratui_cache"
CACHE_VERSION = 1  # bump when the resize / crop / encode recipe changes
SDXL_SCALING_FACTOR = 0.13025
# default encode batch: about this many pixels (1024² → 1 image, as sd-scripts' default;
# 512² → 4; tiny demo images → 16)
AUTO_BATCH_PIXELS = 1024 * 1024


class LatentCacheError(Exception):
    """Caching failed in a way the user can act on; ``hint`` says how."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


# --------------------------------------------------------------------------- keys


def vae_fingerprint(vae, samples_per_tensor: int = 64) -> str:
    """A short hash identifying a VAE: its config plus, for every tensor of its
    state dict, the name, shape, dtype and ``samples_per_tensor`` values at fixed
    positions. Cheap (no full copy to the CPU) and exact across devices."""
    import torch

    h = hashlib.sha256()
    cfg = {k: v for k, v in dict(getattr(vae, "config", {}) or {}).items() if not k.startswith("_") or k == "_class_name"}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, t in sorted(vae.state_dict().items()):
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
            flat = t.detach().reshape(-1)
            n = flat.numel()
            if n == 0:
                continue
            k = min(n, samples_per_tensor)
            idx = torch.linspace(0, n - 1, k, device=flat.device).long()
            h.update(flat[idx].float().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


def cache_key(image_sha: str, bucket: tuple[int, int], vae_id: str, resized: tuple[int, int] | None = None) -> str:
    """The key a cache file must carry to be used: the image's bytes, the bucket
    and the resize before the crop (the two differ between bucket modes), the VAE."""
    blob = json.dumps(
        {"v": CACHE_VERSION, "image": image_sha, "bucket": list(bucket), "resized": list(resized or bucket), "vae": vae_id},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_path_for(image: str | Path) -> Path:
    image = Path(image)
    return image.parent / CACHE_DIR_NAME / (image.name + ".safetensors")


def _fmt(pair: Iterable[int]) -> str:
    return ",".join(str(int(v)) for v in pair)


def _unfmt(text: str) -> tuple[int, int]:
    a, b = text.split(",")
    return int(a), int(b)


def _read_meta(path: Path) -> dict[str, str] | None:
    """The header of a cache file, or None when absent or unreadable."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            meta["_tensors"] = ",".join(f.keys())
        return meta
    except Exception:  # noqa: BLE001 - a damaged cache file is re-encoded
        return None


# --------------------------------------------------------------------------- the store


@dataclass
class _Entry:
    latent: Any = None  # torch tensor (C, h, w) float32 on the CPU (memory)
    latent_flipped: Any = None
    path: Path | None = None  # disk
    crop: "CropInfo | None" = None
    crop_flipped: "CropInfo | None" = None


class LatentStore:
    """Latents by item index. ``get(i)`` → float32 (C, h, w) CPU tensor;
    ``crop(i)`` → CropInfo for SDXL's size conditioning."""

    def __init__(self, items: list["ImageItem"], *, mode: str, flip_aug: bool, seed: int, vae_id: str):
        self.items = items
        self.mode = mode
        self.flip_aug = flip_aug
        self.seed = seed
        self.vae_id = vae_id
        self.entries: dict[int, _Entry] = {}
        self.complete = False  # False when stopped early
        self.encoded = 0  # images encoded by this call
        self.reused = 0  # disk cache hits
        self.warnings: list[str] = []

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, i: int) -> bool:
        return i in self.entries

    def default_flip(self, i: int) -> bool:
        """The fixed per-image flip used when ``get`` is not told."""
        if not self.flip_aug:
            return False
        return random.Random(f"loratui.flip:{self.seed}:{self.items[i].path}").random() < 0.5

    def _entry(self, i: int) -> _Entry:
        try:
            return self.entries[i]
        except KeyError:
            raise LatentCacheError(
                f"{self.items[i].path}: its latent was not cached (caching was stopped)",
                "start the run again; cached images are reused",
            ) from None

    def _resolve_flip(self, i: int, flip: bool | None) -> bool:
        if flip is None:
            return self.default_flip(i)
        if flip and not self.flip_aug:
            raise ValueError("flipped latents were not cached (cache_latents(..., flip_aug=True))")
        return flip

    def get(self, i: int, flip: bool | None = None):
        e = self._entry(i)
        flip = self._resolve_flip(i, flip)
        if e.path is None:
            return e.latent_flipped if flip else e.latent
        from safetensors.torch import load_file

        try:
            return load_file(str(e.path))["latent_flipped" if flip else "latent"]
        except Exception as exc:  # noqa: BLE001
            raise LatentCacheError(
                f"{e.path}: cached latent cannot be read ({exc})",
                f"delete the folder {e.path.parent} and start again; it is rebuilt",
            ) from None

    def crop(self, i: int, flip: bool | None = None) -> "CropInfo":
        e = self._entry(i)
        return e.crop_flipped if self._resolve_flip(i, flip) else e.crop

    def batch(self, indices: list[int], flips: list[bool] | None = None):
        """(N, C, h, w) tensor and the crops of one batch (one bucket)."""
        import torch

        flips = flips or [None] * len(indices)
        lat = torch.stack([self.get(i, f) for i, f in zip(indices, flips)])
        return lat, [self.crop(i, f) for i, f in zip(indices, flips)]


# --------------------------------------------------------------------------- encoding


def _encode_dtype(vae, dtype, vae_fp32: bool | None):
    import torch

    if dtype is None:
        dtype = next(vae.parameters()).dtype
    if vae_fp32 is True:
        return torch.float32
    if vae_fp32 is None and dtype == torch.float16:
        cfg = vae.config
        sdxl_like = abs(float(getattr(cfg, "scaling_factor", 0.0)) - SDXL_SCALING_FACTOR) < 1e-6
        if sdxl_like and getattr(cfg, "force_upcast", True):
            return torch.float32
    return dtype


def encode_pixels(vae, pixels, *, device=None, dtype=None):
    """Latents (float32, scaled) of a (N, 3, H, W) batch in [-1, 1], with the VAE
    in whatever device/dtype it is (``device``/``dtype`` move the input only)."""
    import torch

    p = next(vae.parameters())
    with torch.no_grad():
        x = pixels.to(device=device or p.device, dtype=dtype or p.dtype)
        mean = vae.encode(x).latent_dist.mode().float()
    cfg = vae.config
    shift = getattr(cfg, "shift_factor", None) or 0.0
    return (mean - shift) * float(cfg.scaling_factor)


def cache_latents(
    items: list["ImageItem"],
    vae,
    *,
    mode: str = "memory",
    device: str | None = None,
    dtype=None,
    vae_fp32: bool | None = None,
    force_upcast: bool | None = None,
    flip_aug: bool = False,
    seed: int = 0,
    batch_size: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_warning: Callable[[str], None] | None = None,
    vae_id: str | None = None,
    workers: int | None = None,
) -> LatentStore:
    """Encode ``items`` (from ``scan_dataset``) and return a ``LatentStore``.

    ``dtype``: the precision asked for (the run's mixed precision); an SDXL VAE
    is upcast to fp32 for fp16 unless ``vae_fp32=False`` (``force_upcast`` is an
    alias). The VAE is moved to ``device``/the encode dtype while encoding and
    put back as it was. ``batch_size`` images are encoded at once (default: about
    one megapixel per batch). ``on_progress(n, total)`` after every image;
    ``should_stop()`` is checked between batches — when it answers True the store
    is returned with ``complete=False``. Raises ``LatentCacheError`` for NaN
    latents (naming the image) and ``DatasetError`` for an image that cannot be
    decoded."""
    import torch

    if mode not in ("memory", "disk"):
        raise ValueError(f"mode must be 'memory' or 'disk', not {mode!r}")
    if vae_fp32 is None:
        vae_fp32 = force_upcast
    p0 = next(vae.parameters())
    vae_id = vae_id or vae_fingerprint(vae)
    job = _CacheJob(
        items=items,
        vae=vae,
        store=LatentStore(items, mode=mode, flip_aug=flip_aug, seed=seed, vae_id=vae_id),
        device=torch.device(device) if device is not None else p0.device,
        enc_dtype=_encode_dtype(vae, dtype, vae_fp32),
        workers=workers or max(1, min(4, (os.cpu_count() or 2))),
        on_progress=on_progress,
        should_stop=should_stop,
        on_warning=on_warning,
        disk_ok=mode == "disk",
    )
    pool = ThreadPoolExecutor(max_workers=job.workers, thread_name_prefix="loratui-cache")
    try:
        todo = _disk_hits(job, pool) if mode == "disk" else list(range(len(items)))
        if todo is None:  # stopped
            return job.store
        if todo:
            with _vae_moved(vae, job.device, job.enc_dtype):
                if not _encode_all(job, pool, _plan_batches(items, todo, batch_size, flip_aug)):
                    return job.store
        job.store.complete = True
        return job.store
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _CacheJob:
    """One ``cache_latents`` call: what it works on and how far it got."""

    items: list["ImageItem"]
    vae: Any
    store: LatentStore
    device: Any
    enc_dtype: Any
    workers: int
    on_progress: Callable[[int, int], None] | None
    should_stop: Callable[[], bool] | None
    on_warning: Callable[[str], None] | None
    disk_ok: bool  # writing cache files (mode "disk", until a write fails)
    done: int = 0
    keys: dict[int, str] = field(default_factory=dict)  # item index → cache key (disk mode)
    cleaned: set[Path] = field(default_factory=set)  # cache folders already rid of old leftovers

    @property
    def flip_aug(self) -> bool:
        return self.store.flip_aug

    def stopped(self) -> bool:
        return bool(self.should_stop and self.should_stop())

    def one_done(self) -> None:
        self.done += 1
        if self.on_progress:
            self.on_progress(self.done, len(self.items))

    def warn(self, msg: str) -> None:
        self.store.warnings.append(msg)
        if self.on_warning:
            self.on_warning(msg)


# -- 1. keys and disk hits ---------------------------------------------------


def _disk_hits(job: _CacheJob, pool: ThreadPoolExecutor) -> list[int] | None:
    """Take every item whose cache file carries its key; the indices left to
    encode (None when stopped)."""
    todo: list[int] = []
    hashes = pool.map(lambda it: _safe_hash(it.path), job.items)
    for i, (it, sha) in enumerate(zip(job.items, hashes)):
        if job.stopped():
            return None
        if sha is None:
            todo.append(i)  # unreadable now: the loader will say why
            continue
        job.keys[i] = cache_key(sha, tuple(it.bucket), job.store.vae_id, tuple(it.resized))
        path = cache_path_for(it.path)
        entry = _hit_entry(_read_meta(path), job.keys[i], path, job.flip_aug)
        if entry is None:
            todo.append(i)
            continue
        job.store.entries[i] = entry
        job.store.reused += 1
        job.one_done()
    return todo


def _hit_entry(meta: dict[str, str] | None, key: str, path: Path, flip_aug: bool) -> _Entry | None:
    """The store entry of a usable cache file (its key, the tensors and the crops
    asked for), else None."""
    tensors = (meta or {}).get("_tensors", "").split(",")
    if not (meta and meta.get("key") == key and "latent" in tensors and (not flip_aug or "latent_flipped" in tensors)):
        return None
    try:
        crop = _crop_from_meta(meta, "")
        crop_f = _crop_from_meta(meta, "_flipped") if flip_aug else None
    except (KeyError, ValueError):
        return None
    return _Entry(path=path, crop=crop, crop_flipped=crop_f)


# -- 2. encode the rest, bucket by bucket ------------------------------------------


def _plan_batches(items: list["ImageItem"], todo: list[int], batch_size: int | None, flip_aug: bool) -> list[list[int]]:
    """Encode batches of one bucket each (default size: about AUTO_BATCH_PIXELS)."""
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for i in todo:
        by_bucket.setdefault(tuple(items[i].bucket), []).append(i)
    batches = []
    for (bw, bh), idx in sorted(by_bucket.items()):
        bs = batch_size or max(1, min(16, AUTO_BATCH_PIXELS // (bw * bh * (2 if flip_aug else 1))))
        batches.extend(idx[j : j + bs] for j in range(0, len(idx), bs))
    return batches


def _load_pixels(items: list["ImageItem"], batch: list[int], flip_aug: bool) -> list[tuple[Any, "CropInfo"]]:
    """(pixels, crop) of each image of a batch, followed by its mirror with ``flip_aug``."""
    out = []
    for i in batch:
        out.append(load_image_array(items[i], False))
        if flip_aug:
            out.append(load_image_array(items[i], True))
    return out


@contextlib.contextmanager
def _vae_moved(vae, device, dtype) -> Iterator[None]:
    """The VAE on ``device`` in ``dtype`` for the block, then back as it was."""
    p0 = next(vae.parameters())
    orig_device, orig_dtype = p0.device, p0.dtype
    moved = orig_device != device or orig_dtype != dtype
    if moved:
        vae.to(device=device, dtype=dtype)
    try:
        yield
    finally:
        if moved:
            vae.to(device=orig_device, dtype=orig_dtype)


def _encode_all(job: _CacheJob, pool: ThreadPoolExecutor, batches: list[list[int]]) -> bool:
    """Encode the batches, decoding the next ``workers + 1`` ahead in the pool.
    False when stopped."""
    import torch

    ahead = job.workers + 1
    pending = [pool.submit(_load_pixels, job.items, b, job.flip_aug) for b in batches[:ahead]]
    for n, batch in enumerate(batches):
        if job.stopped():
            return False
        loaded = pending[n].result()
        if n + ahead < len(batches):
            pending.append(pool.submit(_load_pixels, job.items, batches[n + ahead], job.flip_aug))
        pending[n] = None  # free the pixels
        pix = torch.stack([array_to_tensor(a) for a, _ in loaded])
        lat = encode_pixels(job.vae, pix, device=job.device, dtype=job.enc_dtype).cpu()
        _store_batch(job, batch, loaded, lat)
    return True


def _store_batch(job: _CacheJob, batch: list[int], loaded: list, lat) -> None:
    """Keep the finite latents of one encoded batch; raise LatentCacheError
    naming the images whose latents are NaN/inf (after keeping the others)."""
    import torch

    per = 2 if job.flip_aug else 1
    bad = []
    for k, i in enumerate(batch):
        chunk = lat[k * per : (k + 1) * per]
        if not torch.isfinite(chunk).all():
            bad.append(job.items[i].path)
            continue
        crop = loaded[k * per][1]
        crop_f = loaded[k * per + 1][1] if job.flip_aug else None
        tensors = {"latent": chunk[0].contiguous()}
        if job.flip_aug:
            tensors["latent_flipped"] = chunk[1].contiguous()
        job.store.entries[i] = _keep(job, i, tensors, crop, crop_f)
        job.store.encoded += 1
        job.one_done()
    if bad:
        raise LatentCacheError(
            f"{bad[0]}: the VAE produced NaN/inf latents (encoded in {str(job.enc_dtype).replace('torch.', '')})"
            + (f"; also {len(bad) - 1} more in the same batch" if len(bad) > 1 else ""),
            _nan_hint(job.enc_dtype),
        )


def _keep(job: _CacheJob, i: int, tensors: dict, crop: "CropInfo", crop_f: "CropInfo | None") -> _Entry:
    """The entry of one encoded image: its cache file (disk mode), or the latents
    in memory (memory mode, or once a cache write failed: said once)."""
    entry = _Entry(crop=crop, crop_flipped=crop_f)
    if job.disk_ok:
        path = cache_path_for(job.items[i].path)
        if path.parent not in job.cleaned:
            job.cleaned.add(path.parent)
            _remove_old_leftovers(path.parent)
        try:
            _write_cache(path, tensors, job.keys.get(i) or _key_now(job.items[i], job.store.vae_id), crop, crop_f)
            entry.path = path
        except OSError as exc:
            job.disk_ok = False
            job.warn(
                f"dataset.cache_latents: cannot write the latent cache in {path.parent} "
                f"({exc.strerror or exc}); keeping latents in memory for this run"
            )
    if entry.path is None:
        entry.latent = tensors["latent"]
        entry.latent_flipped = tensors.get("latent_flipped")
    return entry


def _nan_hint(enc_dtype) -> str:
    import torch

    if enc_dtype in (torch.float16, torch.bfloat16):
        return (
            "the SDXL VAE overflows in fp16: use an fp16-fixed VAE (model.vae, e.g. madebyollin/sdxl-vae-fp16-fix) "
            "or encode in fp32 (optimization.mixed_precision bf16 or no). Nothing bad was cached."
        )
    return (
        "the VAE gives NaN even in fp32, so its weights are likely broken or not a VAE of this model: "
        "check model.vae (or leave it empty for the model's own VAE); an fp16-fixed VAE file that was "
        "saved wrongly can do this too. Nothing bad was cached."
    )


def _safe_hash(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None


def _key_now(item: "ImageItem", vae_id: str) -> str:
    return cache_key(file_sha256(item.path), tuple(item.bucket), vae_id, tuple(item.resized))


def _crop_from_meta(meta: dict[str, str], suffix: str) -> CropInfo:
    return CropInfo(
        original_size=_unfmt(meta["original_size"]),
        crop_top_left=_unfmt(meta["crop_top_left" + suffix]),
        target_size=_unfmt(meta["target_size"]),
    )


_LEFTOVER_AGE_S = 3600


def _remove_old_leftovers(folder: Path) -> None:
    """Temp files of a cache write killed mid-way (an hour old: never one that a
    run beside us is writing right now)."""
    import time

    try:
        for p in folder.iterdir():
            if p.name.startswith(TMP_PREFIX) and time.time() - p.stat().st_mtime > _LEFTOVER_AGE_S:
                p.unlink()
    except OSError:
        pass


def _write_cache(path: Path, tensors: dict, key: str, crop: "CropInfo", crop_f: "CropInfo | None") -> None:
    from safetensors.torch import save_file

    meta = {
        "format": "loratui-latent-cache",
        "version": str(CACHE_VERSION),
        "key": key,
        "original_size": _fmt(crop.original_size),
        "crop_top_left": _fmt(crop.crop_top_left),
        "target_size": _fmt(crop.target_size),
    }
    if crop_f is not None:
        meta["crop_top_left_flipped"] = _fmt(crop_f.crop_top_left)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

