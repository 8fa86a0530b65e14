"""Latent cache: memory/disk, keying (image, bucket, VAE), NaN, upcast, flip, stop."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loratui.engine.dataset import DatasetError, load_image_tensor, scan_dataset
from loratui.engine.fsutil import TMP_PREFIX
from loratui.engine.latent_cache import (
    CACHE_DIR_NAME,
    LatentCacheError,
    cache_latents,
    cache_path_for,
    encode_pixels,
    vae_fingerprint,
)
from loratui.engine.schema import DatasetSettings
from loratui.engine.tiny import tiny_vae


def make_vae(seed: int = 0):
    torch.manual_seed(seed)
    return tiny_vae().eval()


def counting(vae) -> list[tuple[int, torch.dtype]]:
    """Record (images, dtype) of every vae.encode call."""
    calls: list[tuple[int, torch.dtype]] = []
    orig = vae.encode

    def encode(x, *a, **k):
        calls.append((x.shape[0], x.dtype))
        return orig(x, *a, **k)

    vae.encode = encode
    return calls


def encoded(calls) -> int:
    return sum(n for n, _ in calls)


def write_images(folder: Path, n: int = 4, odd: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        arr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"image {i}")
    if odd:  # wider than its bucket: cropped, with a non-zero crop offset
        arr = rng.integers(0, 256, (64, 161, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / "wide.png")
        (folder / "wide.txt").write_text("wide")


def scan(root: Path, resolution: int = 64, **kw):
    ds = DatasetSettings(
        train_data_dir=str(root), resolution=resolution, min_bucket_reso=64, max_bucket_reso=max(128, resolution), **kw
    )
    result = scan_dataset(ds)
    assert result.report.problems == []
    return result.items


@pytest.fixture
def data(tmp_path) -> Path:
    write_images(tmp_path / "img/2_x")
    return tmp_path / "img"


def cache_files(root: Path) -> list[Path]:
    return sorted(root.rglob(f"{CACHE_DIR_NAME}/*"))


# --------------------------------------------------------------------------- memory


def test_memory_cache_holds_scaled_means_and_reports_progress(data):
    items = scan(data)
    vae = make_vae()
    calls = counting(vae)
    progress = []
    store = cache_latents(items, vae, mode="memory", on_progress=lambda n, t: progress.append((n, t)))
    assert store.complete and store.encoded == len(items) == 5 and encoded(calls) == 5
    assert progress[-1] == (5, 5) and [n for n, _ in progress] == sorted(n for n, _ in progress)
    assert cache_files(data) == []  # memory mode writes nothing
    for i, it in enumerate(items):
        lat = store.get(i)
        assert lat.dtype == torch.float32 and tuple(lat.shape) == (4, it.bucket[1] // 8, it.bucket[0] // 8)
        pix, crop = load_image_tensor(it)
        with torch.no_grad():
            want = vae.encode(pix[None]).latent_dist.mean[0] * vae.config.scaling_factor
        torch.testing.assert_close(lat, want, rtol=1e-4, atol=1e-5)
        assert store.crop(i) == crop
    wide = next(i for i, it in enumerate(items) if it.path.name == "wide.png")
    assert store.crop(wide) == ((64, 161), (0, 48), (64, 64))
    lat, crops = store.batch([0, 1])
    assert tuple(lat.shape) == (2, 4, 8, 8) and len(crops) == 2


def test_encode_pixels_applies_shift_factor():
    vae = make_vae()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    base = encode_pixels(vae, x)
    vae.register_to_config(shift_factor=0.5)
    shifted = encode_pixels(vae, x)
    torch.testing.assert_close(shifted, base - 0.5 * vae.config.scaling_factor)


# --------------------------------------------------------------------------- disk keying


def test_disk_cache_is_reused_and_rebuilt_only_when_needed(data):
    items = scan(data)
    vae = make_vae()
    calls = counting(vae)
    first = cache_latents(items, vae, mode="disk")
    assert encoded(calls) == 5 and first.reused == 0
    files = cache_files(data)
    assert [f.name for f in files] == sorted(it.path.name + ".safetensors" for it in items)
    assert not any(f.name.startswith(TMP_PREFIX) for f in (data / "2_x" / CACHE_DIR_NAME).iterdir())
    lat0, lat1 = first.get(0), first.get(1)  # disk mode reads the files on demand

    # unchanged → nothing encoded, same latents
    calls.clear()
    again = cache_latents(items, vae, mode="disk")
    assert encoded(calls) == 0 and again.reused == 5 and again.complete
    torch.testing.assert_close(again.get(0), lat0, rtol=0, atol=0)
    assert again.crop(0) == first.crop(0)

    # touched (new mtime, same bytes) → still nothing: the key is the content
    for it in items:
        os.utime(it.path, (1_000_000, 1_000_000))
    calls.clear()
    cache_latents(items, vae, mode="disk")
    assert encoded(calls) == 0

    # one image edited (same size, same name) → only it
    edited = items[1].path
    arr = np.asarray(Image.open(edited)).copy()
    arr[:8, :8] = 0
    Image.fromarray(arr).save(edited)
    calls.clear()
    store = cache_latents(items, vae, mode="disk")
    assert encoded(calls) == 1 and store.reused == 4
    assert not torch.equal(store.get(1), lat1)

    # another resolution → other buckets → all again
    items128 = scan(data, resolution=128)
    assert items128[0].bucket != items[0].bucket
    calls.clear()
    cache_latents(items128, vae, mode="disk")
    assert encoded(calls) == 5

    # another VAE → all again
    vae2 = make_vae(seed=1)
    calls2 = counting(vae2)
    cache_latents(items128, vae2, mode="disk")
    assert encoded(calls2) == 5
    calls2.clear()
    cache_latents(items128, vae2, mode="disk")
    assert encoded(calls2) == 0


def test_damaged_cache_file_is_encoded_again(data):
    items = scan(data)
    vae = make_vae()
    calls = counting(vae)
    cache_latents(items, vae, mode="disk")
    f = cache_path_for(items[2].path)
    f.write_bytes(f.read_bytes()[:40])
    calls.clear()
    store = cache_latents(items, vae, mode="disk")
    assert encoded(calls) == 1
    assert tuple(store.get(2).shape) == (4, 8, 8)


def test_unwritable_cache_folder_falls_back_to_memory(data):
    (data / "2_x" / CACHE_DIR_NAME).write_text("a file where the cache folder would go")
    items = scan(data)
    warnings = []
    store = cache_latents(items, make_vae(), mode="disk", on_warning=warnings.append)
    assert store.complete and len(store) == 5
    assert len(warnings) == 1 and "cannot write the latent cache" in warnings[0] and "memory" in warnings[0]
    assert tuple(store.get(4).shape) == (4, 8, 8)


def test_a_full_disk_while_caching_falls_back_to_memory(data, monkeypatch):
    """safetensors says a full disk as its own SafetensorError (not an OSError)."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*a, **k):
        raise SafetensorError("Error while serializing: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    items = scan(data)
    warnings = []
    store = cache_latents(items, make_vae(), mode="disk", on_warning=warnings.append)
    assert store.complete and len(store) == 5
    assert len(warnings) == 1 and "No space left on device" in warnings[0] and "memory" in warnings[0], warnings
    assert not any(p.name.startswith(".loratui-tmp-") for p in data.rglob("*"))


def test_vae_fingerprint():
    a, b = make_vae(0), make_vae(1)
    assert vae_fingerprint(a) == vae_fingerprint(make_vae(0))
    assert vae_fingerprint(a) != vae_fingerprint(b)
    c = make_vae(0)
    c.register_to_config(scaling_factor=0.13025)
    assert vae_fingerprint(c) != vae_fingerprint(a)


# --------------------------------------------------------------------------- precision and NaN


@pytest.mark.parametrize("half", [False, True])
def test_nan_latents_are_refused_and_never_cached(data, half):
    items = scan(data)
    vae = make_vae()
    with torch.no_grad():
        vae.encoder.conv_in.weight[0, 0, 0, 0] = math.nan
    kw = dict(dtype=torch.float16, vae_fp32=False) if half else {}
    with pytest.raises(LatentCacheError) as e:
        cache_latents(items, vae, mode="disk", batch_size=1, **kw)
    msg = str(e.value)
    assert str(items[0].path) in msg and "NaN" in msg and ("float16" if half else "float32") in msg
    if half:
        assert "fp16-fixed VAE" in e.value.hint and "fp32" in e.value.hint
    else:
        assert "model.vae" in e.value.hint
    assert cache_files(data) == []
    assert next(vae.parameters()).dtype == torch.float32


def test_sdxl_vae_is_upcast_for_fp16_unless_fixed(data):
    items = scan(data)[:2]
    vae = make_vae().half()
    vae.register_to_config(scaling_factor=0.13025, force_upcast=True)  # as the SDXL VAE's config says
    calls = counting(vae)
    store = cache_latents(items, vae, mode="memory", dtype=torch.float16)
    assert {d for _, d in calls} == {torch.float32}
    assert next(vae.parameters()).dtype == torch.float16  # put back as it was
    assert store.get(0).dtype == torch.float32
    calls.clear()
    cache_latents(items, vae, mode="memory", dtype=torch.float16, vae_fp32=False)  # an fp16-fixed VAE
    assert {d for _, d in calls} == {torch.float16}
    calls.clear()
    cache_latents(items, vae, mode="memory", dtype=torch.float16, force_upcast=True)
    assert {d for _, d in calls} == {torch.float32}


def test_sd1_vae_keeps_fp16(data):
    items = scan(data)[:1]
    vae = make_vae()
    calls = counting(vae)
    cache_latents(items, vae, mode="memory", dtype=torch.float16)
    assert {d for _, d in calls} == {torch.float16}
    assert next(vae.parameters()).dtype == torch.float32


# --------------------------------------------------------------------------- flip, stop, bad files


def test_flip_aug_caches_both_versions(data):
    items = scan(data)
    vae = make_vae()
    calls = counting(vae)
    store = cache_latents(items, vae, mode="disk", flip_aug=True, seed=3)
    assert encoded(calls) == 10  # each image and its mirror
    wide = next(i for i, it in enumerate(items) if it.path.name == "wide.png")
    assert not torch.allclose(store.get(wide, flip=True), store.get(wide, flip=False))
    assert store.crop(wide, flip=False).crop_top_left == (0, 48)
    assert store.crop(wide, flip=True).crop_top_left == (0, 49)
    pix, _ = load_image_tensor(items[wide], flip=True)
    torch.testing.assert_close(store.get(wide, flip=True), encode_pixels(vae, pix[None])[0], rtol=1e-4, atol=1e-5)
    # without a flip argument: a fixed per-image choice from the seed
    choice = [store.default_flip(i) for i in range(len(items))]
    assert choice == [store.default_flip(i) for i in range(len(items))]
    for i, f in enumerate(choice):
        assert torch.equal(store.get(i), store.get(i, flip=f))
    # both versions come back from disk next time
    calls.clear()
    again = cache_latents(items, vae, mode="disk", flip_aug=True, seed=3)
    assert encoded(calls) == 0 and torch.equal(again.get(wide, flip=True), store.get(wide, flip=True))


def test_cache_without_flips_is_rebuilt_when_flips_are_wanted(data):
    items = scan(data)
    vae = make_vae()
    calls = counting(vae)
    plain = cache_latents(items, vae, mode="disk")
    with pytest.raises(ValueError):
        plain.get(0, flip=True)
    calls.clear()
    cache_latents(items, vae, mode="disk", flip_aug=True)
    assert encoded(calls) == 10
    calls.clear()
    cache_latents(items, vae, mode="disk")  # a flip cache serves a plain run
    assert encoded(calls) == 0


def test_should_stop_returns_an_incomplete_store(data):
    items = scan(data)
    vae = make_vae()
    progress = []
    store = cache_latents(
        items,
        vae,
        mode="memory",
        batch_size=1,
        on_progress=lambda n, t: progress.append(n),
        should_stop=lambda: len(progress) >= 2,
    )
    assert not store.complete and len(store) == 2
    missing = next(i for i in range(len(items)) if i not in store)
    with pytest.raises(LatentCacheError):
        store.get(missing)


def test_image_broken_after_the_scan_names_the_file(data):
    items = scan(data)
    items[3].path.write_bytes(b"")
    with pytest.raises(DatasetError) as e:
        cache_latents(items, make_vae(), mode="disk")
    assert str(items[3].path) in str(e.value)


def test_odd_image_modes_encode(tmp_path):
    d = tmp_path / "img/1_x"
    d.mkdir(parents=True)
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(d / "cmyk.jpg")
    Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(d / "g16.png")
    pal = Image.new("P", (64, 64), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.save(d / "pal.png", transparency=0)
    Image.new("LA", (64, 80), (30, 128)).save(d / "la.png")
    Image.new("RGBA", (80, 64), (255, 0, 0, 100)).save(d / "rgba.png")
    Image.new("RGB", (1, 1), (9, 9, 9)).save(d / "dot.png")
    items = scan(tmp_path / "img")
    assert len(items) == 6
    store = cache_latents(items, make_vae(), mode="memory")
    assert store.complete
    for i in range(6):
        assert torch.isfinite(store.get(i)).all()


def test_same_bucket_but_another_resize_is_encoded_again(tmp_path):
    d = tmp_path / "img/1_x"
    d.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(d / "a.png")
    no_up = scan(tmp_path / "img", resolution=512, bucket_no_upscale=True)  # crop 300×200 as is
    fit = scan(tmp_path / "img", resolution=256, resolution_height=192)  # resize to 288×192, then crop
    assert no_up[0].bucket == fit[0].bucket == (256, 192)
    assert no_up[0].resized != fit[0].resized
    vae = make_vae()
    calls = counting(vae)
    a = cache_latents(no_up, vae, mode="disk").get(0)
    b = cache_latents(fit, vae, mode="disk").get(0)
    assert encoded(calls) == 2 and not torch.allclose(a, b)


def test_old_leftovers_of_a_killed_write_are_removed(data):
    from loratui.engine import latent_cache

    folder = data / "2_x" / CACHE_DIR_NAME
    folder.mkdir()
    old = folder / (TMP_PREFIX + "old.safetensors")
    fresh = folder / (TMP_PREFIX + "fresh.safetensors")
    old.write_bytes(b"half")
    fresh.write_bytes(b"half")
    os.utime(old, (1_000_000, 1_000_000))
    cache_latents(scan(data), make_vae(), mode="disk")
    assert not old.exists()
    assert fresh.exists()  # may belong to a run writing beside us
    assert latent_cache._LEFTOVER_AGE_S >= 600
