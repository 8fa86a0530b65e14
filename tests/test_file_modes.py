"""File modes of everything the tool writes (issue 9 §7).

A written file gets the mode any tool gives it under the user's umask (0644
under 022, 0600 under 077), or the old file's mode when it replaces one (as
``open()`` keeps it); a written folder 0755 under 022. The defect this guards
against: the atomic writes' temporary files are 0600, and safetensors'
``save_file`` replaces the file it is given by its own 0600 one, so LoRA files,
state folders and latent caches came out readable by their owner only.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from loratui.engine import fsutil
from loratui.engine.fsutil import atomic_dir, atomic_save, atomic_write_bytes, atomic_write_text, file_sha256


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def expected_file(umask: int) -> int:
    return 0o666 & ~umask


def expected_dir(umask: int) -> int:
    return 0o777 & ~umask


def save_safetensors(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(path))


# --------------------------------------------------------------------------- fsutil


def test_umask_is_read_without_changing_it(umask, monkeypatch):
    assert fsutil._umask() == umask
    if os.path.exists("/proc/self/status"):
        # on Linux it never sets the umask (another thread could create a file meanwhile)
        def no_set(_mask):
            raise AssertionError("os.umask called")

        monkeypatch.setattr(os, "umask", no_set)
        assert fsutil._umask() == umask


def test_umask_fallback_without_proc(umask, monkeypatch):
    real_open = open

    def no_proc(path, *a, **k):
        if str(path) == "/proc/self/status":
            raise FileNotFoundError(path)
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", no_proc)
    assert fsutil._umask() == umask
    monkeypatch.undo()
    assert fsutil._umask() == umask  # restored after the read


def test_new_files_get_the_umask_mode(tmp_path, umask):
    atomic_write_bytes(tmp_path / "a.bin", b"1")
    atomic_write_text(tmp_path / "b.txt", "2")
    atomic_save(tmp_path / "c.bin", lambda tmp: tmp.write_bytes(b"3"))
    for name in ("a.bin", "b.txt", "c.bin"):
        assert mode(tmp_path / name) == expected_file(umask), name


def test_a_writer_that_replaces_the_temp_file_still_gets_the_umask_mode(tmp_path, umask):
    atomic_save(tmp_path / "x.safetensors", save_safetensors)
    assert mode(tmp_path / "x.safetensors") == expected_file(umask)


def test_replacing_a_file_keeps_its_mode(tmp_path, umask):
    for m in (0o640, 0o600, 0o664):
        target = tmp_path / f"f{m:o}.safetensors"
        target.write_bytes(b"old")
        os.chmod(target, m)
        atomic_save(target, save_safetensors)
        assert mode(target) == m
        atomic_write_text(target, "new")
        assert mode(target) == m and target.read_text() == "new"


def test_atomic_dir_modes(tmp_path, umask):
    def fill(d: Path) -> None:
        save_safetensors(d / "lora.safetensors")
        (d / "state.json").write_text("{}")
        (d / "sub").mkdir()
        (d / "sub" / "n.txt").write_text("n")

    target = atomic_dir(tmp_path / "state", fill)
    assert mode(target) == expected_dir(umask)
    assert mode(target / "sub") == expected_dir(umask)
    for f in ("lora.safetensors", "state.json", "sub/n.txt"):
        assert mode(target / f) == expected_file(umask), f
    os.chmod(target, 0o750)
    atomic_dir(target, fill)  # replacing a folder keeps its mode, like a file
    assert mode(target) == 0o750
    assert mode(target / "lora.safetensors") == expected_file(umask)


def test_atomic_dir_never_changes_linked_files(tmp_path, umask):
    src = tmp_path / "private.png"
    src.write_bytes(b"img")
    os.chmod(src, 0o600)

    def fill(d: Path) -> None:
        os.link(src, d / "hard.png")
        os.symlink(src, d / "soft.png")

    target = atomic_dir(tmp_path / "out", fill)
    assert mode(src) == 0o600 and mode(target / "hard.png") == 0o600
    assert os.path.islink(target / "soft.png")


def test_file_sha256_streams_and_matches_hashlib(tmp_path, monkeypatch):
    data = os.urandom(3 * (1 << 20) + 17)
    p = tmp_path / "big.bin"
    p.write_bytes(data)
    monkeypatch.setattr(fsutil, "_HASH_CHUNK", 1 << 16)
    assert file_sha256(p) == hashlib.sha256(data).hexdigest()
    with pytest.raises(OSError):
        file_sha256(tmp_path / "missing.bin")


# --------------------------------------------------------------------------- what the tool writes


def test_lora_file_mode(tmp_path, umask):
    from loratui.engine.lora import LoRANetwork
    from loratui.engine.tiny import tiny_unet_sd1

    net = LoRANetwork.create(tiny_unet_sd1(), None, "sd1", rank=2, alpha=1, train_text_encoder=False)
    path = net.save(tmp_path / "my.safetensors", metadata={"ss_network_dim": 2})
    assert mode(path) == expected_file(umask)
    os.chmod(path, 0o640)
    net.save(path)
    assert mode(path) == 0o640


def test_state_folder_modes(tmp_path, umask):
    import torch

    from loratui.engine.schema import Profile
    from loratui.engine.state import write_state

    folder = write_state(
        tmp_path / "my-state-000001",
        lora_sd={"w": torch.zeros(2)},
        training={"optimizer": {}},
        epoch=0,
        batch_in_epoch=1,
        step=1,
        profile=Profile(),
    )
    assert mode(folder) == expected_dir(umask)
    files = sorted(p.name for p in folder.iterdir())
    assert "lora.safetensors" in files and "state.json" in files
    for name in files:
        assert mode(folder / name) == expected_file(umask), name


def test_caption_writer_modes(tmp_path, umask):
    from loratui.engine.captioners.writer import write_caption

    img = tmp_path / "a.png"
    img.write_bytes(b"x")
    out = write_caption(img, "one, two", mode="overwrite")
    assert mode(out.path) == expected_file(umask)
    os.chmod(out.path, 0o640)
    write_caption(img, "three", mode="overwrite")
    assert mode(out.path) == 0o640 and out.path.read_text() == "three\n"
    write_caption(img, "four", mode="append")
    assert mode(out.path) == 0o640


def test_saved_caption_mode(tmp_path, umask):
    from loratui.engine.inspection import save_caption

    img = tmp_path / "a.png"
    img.write_bytes(b"x")
    path = save_caption(img, "hello")
    assert mode(path) == expected_file(umask)
    os.chmod(path, 0o600)
    save_caption(img, "again")
    assert mode(path) == 0o600


def test_latent_cache_file_mode(tmp_path, umask):
    import numpy as np
    from PIL import Image

    from loratui.engine.dataset import scan_dataset
    from loratui.engine.latent_cache import cache_latents, cache_path_for
    from loratui.engine.schema import DatasetSettings
    from loratui.engine.tiny import tiny_vae

    d = tmp_path / "img" / "1_x"
    d.mkdir(parents=True)
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(d / "a.png")
    items = scan_dataset(DatasetSettings(train_data_dir=str(tmp_path / "img"), resolution=64, enable_bucket=False)).items
    cache_latents(items, tiny_vae(), mode="disk")
    path = cache_path_for(items[0].path)
    assert mode(path) == expected_file(umask)
    assert mode(path.parent) == expected_dir(umask)


def test_kohya_folder_modes(tmp_path, umask):
    import numpy as np
    from PIL import Image

    from loratui.engine.inspection import make_kohya_folder

    src = tmp_path / "flat"
    src.mkdir()
    for n in range(2):
        Image.fromarray(np.full((32, 32, 3), n * 90, dtype=np.uint8)).save(src / f"{n}.png")
        os.chmod(src / f"{n}.png", 0o644 & ~umask)
    (src / "0.txt").write_text("cap")
    os.chmod(src / "0.png", 0o600)  # a private picture
    res = make_kohya_folder(src, tmp_path / "ds", "x", repeats=3)
    assert mode(res.folder) == expected_dir(umask)
    assert mode(res.folder / "0.txt") == expected_file(umask)
    assert mode(res.folder / "1.png") == 0o644 & ~umask  # a copy keeps the image's mode, as cp does
    assert mode(res.folder / "0.png") == 0o600  # and a private one stays private
    linked = make_kohya_folder(src, tmp_path / "ds2", "x", repeats=3, mode="hardlink")
    assert mode(linked.folder) == expected_dir(umask)
    assert mode(src / "1.png") == 0o644 & ~umask  # the source is never changed
