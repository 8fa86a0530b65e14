"""Dataset scan, report, bad input, captions, batches, step plan and image loading."""

from __future__ import annotations

import os
import random
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loratui.engine.problems import Severity, error
from loratui.engine.dataset import (
    ImageItem,
    batches_per_epoch,
    epoch_batches,
    load_image_tensor,
    plan_for,
    probe_image,
    process_caption,
    read_caption,
    scan_dataset,
)
from loratui.engine.schema import DatasetSettings, OptimizationSettings, Profile
from loratui.engine.synthetic import write_synthetic_dataset

SMALL = dict(resolution=64, min_bucket_reso=64, max_bucket_reso=128)


def settings(root, **kw) -> DatasetSettings:
    return DatasetSettings(train_data_dir=str(root), **{**SMALL, **kw})


def png(path: Path, size=(64, 64), colour=(200, 100, 50), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def noise(path: Path, size=(64, 64), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def unreadable(scan) -> dict[str, str]:
    out = {}
    for c in scan.report.concepts + scan.report.reg_concepts:
        for line in c.unreadable:
            name, reason = line.split(": ", 1)
            out[name] = reason
    return out


def names(scan) -> list[str]:
    return sorted(it.path.name for it in scan.items)


# --------------------------------------------------------------------------- the normal case


def test_synthetic_dataset_scans_clean(synthetic_dataset):
    scan = scan_dataset(settings(synthetic_dataset))
    r = scan.report
    assert r.problems == [] and r.warnings == []
    assert len(r.concepts) == 1
    c = r.concepts[0]
    assert (c.name, c.repeats, c.images, c.missing_captions) == ("shapes", 4, 6, 0)
    assert Path(c.folder) == synthetic_dataset / "4_shapes"
    assert len(scan.items) == 6
    it = scan.items[0]
    assert it.caption.startswith("toy, a ") and it.has_caption
    assert (it.concept, it.repeats, it.is_reg, it.image_size, it.bucket) == ("shapes", 4, False, (64, 64), (64, 64))
    assert r.images_x_repeats == 24 == scan.train_samples


def test_missing_captions_use_the_class_tokens(tmp_path):
    write_synthetic_dataset(tmp_path / "img", {"3_my char": 4}, captions=False)
    (tmp_path / "img/3_my char/img_001.txt").write_text("a photo of my char\n\nsecond line", encoding="utf-8")
    scan = scan_dataset(settings(tmp_path / "img"))
    c = scan.report.concepts[0]
    assert c.missing_captions == 3 and c.name == "my char"
    caps = {it.path.name: it.caption for it in scan.items}
    assert caps["img_001.png"] == "a photo of my char"  # first line
    assert caps["img_000.png"] == "my char"
    assert any("3 of 4 images have no .txt caption" in w and "'my char'" in w for w in map(str, scan.report.warnings))


def test_other_caption_extension(tmp_path):
    png(tmp_path / "img/1_x/a.png")
    (tmp_path / "img/1_x/a.caption").write_text("from caption file")
    (tmp_path / "img/1_x/a.txt").write_text("from txt")
    scan = scan_dataset(settings(tmp_path / "img", caption_extension=".caption"))
    assert scan.items[0].caption == "from caption file"


def test_image_extensions_are_case_insensitive_and_unsupported_ones_are_named(tmp_path):
    d = tmp_path / "img/2_x"
    png(d / "a.PNG")
    noise(d / "b.JpEg", fmt="JPEG")
    noise(d / "c.WEBP", fmt="WEBP")
    noise(d / "d.Bmp", fmt="BMP")
    noise(d / "e.gif", fmt="GIF")
    (d / "notes.md").write_text("not an image")
    scan = scan_dataset(settings(tmp_path / "img"))
    assert names(scan) == ["a.PNG", "b.JpEg", "c.WEBP", "d.Bmp"]
    assert any("e.gif" in w and "convert" in w for w in map(str, scan.report.warnings))
    assert not any("notes.md" in w for w in map(str, scan.report.warnings))


def test_scan_of_100_images_is_fast(tmp_path):
    write_synthetic_dataset(tmp_path / "img", {"1_a": 50, "2_b": 50})
    t = time.perf_counter()
    scan = scan_dataset(settings(tmp_path / "img"))
    elapsed = time.perf_counter() - t
    assert len(scan.items) == 100
    assert elapsed < 1.0, f"scan took {elapsed:.2f}s"


def test_progress_callback_counts_images(synthetic_dataset):
    seen = []
    scan_dataset(settings(synthetic_dataset), on_progress=seen.append)
    assert seen == [1, 2, 3, 4, 5, 6]


# --------------------------------------------------------------------------- bad images


def test_zero_byte_image(tmp_path):
    png(tmp_path / "img/1_x/good.png")
    (tmp_path / "img/1_x/empty.png").write_bytes(b"")
    scan = scan_dataset(settings(tmp_path / "img"))
    assert names(scan) == ["good.png"]
    assert unreadable(scan) == {"empty.png": "empty file (0 bytes)"}
    assert any("empty.png" in w and "unreadable" in w for w in map(str, scan.report.warnings))
    assert scan.report.problems == []


def test_truncated_png(tmp_path):
    p = noise(tmp_path / "img/1_x/cut.png")
    png(tmp_path / "img/1_x/good.png")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    scan = scan_dataset(settings(tmp_path / "img"))
    assert names(scan) == ["good.png"]
    assert "truncated or corrupt" in unreadable(scan)["cut.png"]


def test_truncated_jpeg(tmp_path):
    p = noise(tmp_path / "img/1_x/cut.jpg", fmt="JPEG")
    png(tmp_path / "img/1_x/good.png")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    scan = scan_dataset(settings(tmp_path / "img"))
    assert names(scan) == ["good.png"]
    assert "truncated or corrupt" in unreadable(scan)["cut.jpg"]


def test_jpeg_with_trailing_bytes_is_fine(tmp_path):
    p = noise(tmp_path / "img/1_x/tail.jpg", fmt="JPEG")
    p.write_bytes(p.read_bytes() + b"\x00" * 100)  # phone cameras append such trailers
    scan = scan_dataset(settings(tmp_path / "img"))
    assert names(scan) == ["tail.jpg"] and unreadable(scan) == {}


def test_text_file_named_png(tmp_path):
    png(tmp_path / "img/1_x/good.png")
    (tmp_path / "img/1_x/fake.png").write_text("this is not a picture\n")
    scan = scan_dataset(settings(tmp_path / "img"))
    assert names(scan) == ["good.png"]
    assert unreadable(scan)["fake.png"] == "not an image (a text file)"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def test_decompression_bomb_header_is_reported_not_decoded(tmp_path):
    d = tmp_path / "img/1_x"
    png(d / "good.png")
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b"")
    (d / "bomb.png").write_bytes(bomb)
    t = time.perf_counter()
    scan = scan_dataset(settings(tmp_path / "img"))
    assert time.perf_counter() - t < 2.0
    assert names(scan) == ["good.png"]
    reason = unreadable(scan)["bomb.png"]
    assert "20000×20000" in reason and "not decoded" in reason and "downscale" in reason


def test_probe_image_reports_size_after_exif_rotation(tmp_path):
    p = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when shown
    Image.new("RGB", (80, 40), (10, 20, 30)).save(p, exif=exif.tobytes())
    assert probe_image(p) == (40, 80)


def test_a_camera_jpeg_with_a_preview_decodes_at_a_reduced_scale_like_any_jpeg(tmp_path, monkeypatch):
    """Cameras and phones write MPO (a JPEG with its preview image after it): Pillow calls
    it "MPO", and it gets the JPEG's cheap scan probe and reduced-size decode too."""
    from PIL import JpegImagePlugin

    p = tmp_path / "img/1_x/camera.jpg"
    p.parent.mkdir(parents=True)
    big = Image.new("RGB", (1024, 768), (200, 30, 30))
    big.save(p, "MPO", save_all=True, append_images=[big.resize((160, 120))])
    with Image.open(p) as img:
        assert img.format == "MPO"
    loads, drafts = [], []
    real_load, real_draft = JpegImagePlugin.JpegImageFile.load, JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", lambda self: (loads.append(self.size), real_load(self))[1])
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: (drafts.append(size), real_draft(self, mode, size))[1])
    scan = scan_dataset(settings(tmp_path / "img", resolution=128, max_bucket_reso=256))
    assert not loads and scan.items[0].image_size == (1024, 768)  # the scan read its header only
    t, _ = load_image_tensor(scan.items[0])
    assert drafts and loads and loads[0][0] < 1024  # decoded at a reduced scale
    assert t[0].mean() > 0.5 and t[1].mean() < -0.5  # the picture itself, red


def test_exif_rotated_jpeg_gets_a_portrait_bucket_and_loads_upright(tmp_path):
    p = tmp_path / "img/1_x/rot.jpg"
    p.parent.mkdir(parents=True)
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = (255, 0, 0)  # left half red as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait (rotated 90° clockwise)
    Image.fromarray(arr).save(p, exif=exif.tobytes(), quality=95)
    scan = scan_dataset(settings(tmp_path / "img", resolution=128, max_bucket_reso=256))
    it = scan.items[0]
    assert it.image_size == (40, 80) and it.bucket == (64, 192)  # landscape would be (192, 64)
    t, crop = load_image_tensor(it)
    assert tuple(t.shape) == (3, 192, 64)
    # after a clockwise turn the stored left half is on top
    assert t[0, :90].mean() > 0.8 and t[0, -90:].mean() < -0.8
    assert crop.original_size == (80, 40) and crop.target_size == (192, 64)


@pytest.mark.parametrize("kind", ["cmyk", "gray16", "palette_alpha", "la", "rgba", "gray", "bw"])
def test_odd_image_modes_load_as_rgb(tmp_path, kind):
    d = tmp_path / "img/1_x"
    d.mkdir(parents=True)
    if kind == "cmyk":
        p = d / "c.jpg"
        Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(p)  # red ink
        expect = (1, -1, -1)
    elif kind == "gray16":
        p = d / "g.png"
        Image.fromarray(np.full((64, 64), 32896, np.uint16)).save(p)  # mid grey in 16 bits
        assert Image.open(p).mode.startswith("I")
        expect = (0.0, 0.0, 0.0)
    elif kind == "palette_alpha":
        p = d / "p.png"
        img = Image.new("P", (64, 64), 0)
        img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        img.paste(1, (0, 0, 64, 32))  # top half red, bottom half transparent black
        img.save(p, transparency=0)
        expect = None
    elif kind == "la":
        p = d / "la.png"
        Image.new("LA", (64, 64), (0, 0)).save(p)  # fully transparent black
        expect = (1, 1, 1)  # flattened on white
    elif kind == "rgba":
        p = d / "a.png"
        img = Image.new("RGBA", (64, 64), (0, 0, 255, 0))
        img.paste((0, 0, 255, 255), (0, 0, 64, 32))
        img.save(p)
        expect = None
    elif kind == "gray":
        p = d / "l.png"
        Image.new("L", (64, 64), 255).save(p)
        expect = (1, 1, 1)
    else:
        p = d / "b.png"
        Image.new("1", (64, 64), 0).save(p)
        expect = (-1, -1, -1)
    scan = scan_dataset(settings(tmp_path / "img"))
    assert unreadable(scan) == {} and len(scan.items) == 1
    t, _ = load_image_tensor(scan.items[0])
    assert tuple(t.shape) == (3, 64, 64)
    assert float(t.min()) >= -1.0 and float(t.max()) <= 1.0
    means = [float(t[c].mean()) for c in range(3)]
    if kind == "palette_alpha":
        top = [float(t[c, :32].mean()) for c in range(3)]
        bottom = [float(t[c, 32:].mean()) for c in range(3)]
        assert top == pytest.approx([1, -1, -1], abs=0.02) and bottom == pytest.approx([1, 1, 1], abs=0.02)
    elif kind == "rgba":
        top = [float(t[c, :32].mean()) for c in range(3)]
        bottom = [float(t[c, 32:].mean()) for c in range(3)]
        assert top == pytest.approx([-1, -1, 1], abs=0.02) and bottom == pytest.approx([1, 1, 1], abs=0.02)
    else:
        assert means == pytest.approx(expect, abs=0.05)


def test_one_pixel_image_trains_with_a_warning(tmp_path):
    png(tmp_path / "img/1_x/dot.png", size=(1, 1), colour=(0, 255, 0))
    scan = scan_dataset(settings(tmp_path / "img"))
    it = scan.items[0]
    assert it.bucket == (64, 64)
    assert any("dot.png (1×1)" in w and "enlarged" in w for w in map(str, scan.report.warnings))
    t, crop = load_image_tensor(it)
    assert tuple(t.shape) == (3, 64, 64)
    assert float(t[1].mean()) == pytest.approx(1.0, abs=0.02)
    assert crop.original_size == (1, 1)


def test_load_error_after_scan_names_the_file(tmp_path):
    from loratui.engine.dataset import DatasetError

    p = noise(tmp_path / "img/1_x/a.png")
    scan = scan_dataset(settings(tmp_path / "img"))
    p.write_bytes(p.read_bytes()[:200])  # damaged after the scan
    with pytest.raises(DatasetError) as e:
        load_image_tensor(scan.items[0])
    assert str(p) in str(e.value) and e.value.hint


# --------------------------------------------------------------------------- captions in files


def test_non_utf8_caption_is_read_with_a_warning(tmp_path):
    png(tmp_path / "img/1_x/a.png")
    (tmp_path / "img/1_x/a.txt").write_bytes("café, smile".encode("cp1252"))
    scan = scan_dataset(settings(tmp_path / "img"))
    assert scan.items[0].caption == "café, smile"
    assert any("a.txt" in w and "not UTF-8" in w for w in map(str, scan.report.warnings))


def test_utf8_bom_and_utf16_captions(tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffnaïve tag".encode("utf-8"))
    assert read_caption(tmp_path / "bom.txt") == ("naïve tag", None)
    (tmp_path / "u16.txt").write_bytes("日本, tag".encode("utf-16"))
    text, warning = read_caption(tmp_path / "u16.txt")
    assert text == "日本, tag" and "UTF-16" in warning


def test_empty_and_binary_captions_fall_back_to_class_tokens(tmp_path):
    d = tmp_path / "img/5_mychar"
    for n in ("a", "b", "c"):
        png(d / f"{n}.png")
    (d / "a.txt").write_text("")
    (d / "b.txt").write_text("  \n \n")
    (d / "c.txt").write_bytes(b"\x89PNG\x00\x00binary")
    scan = scan_dataset(settings(tmp_path / "img"))
    assert [it.caption for it in scan.items] == ["mychar"] * 3
    assert not any(it.has_caption for it in scan.items)
    assert scan.report.concepts[0].missing_captions == 3
    w = "\n".join(map(str, scan.report.warnings))
    assert "empty caption file(s) a.txt, b.txt;" in w
    assert "c.txt: caption is not a text file" in w
    assert "have no .txt caption" not in w


# --------------------------------------------------------------------------- folders


def test_folder_without_number_prefix_is_skipped_with_a_warning(tmp_path):
    png(tmp_path / "img/10_ok/a.png")
    png(tmp_path / "img/mychar/b.png")
    scan = scan_dataset(settings(tmp_path / "img"))
    assert names(scan) == ["a.png"] and scan.report.problems == []
    assert any("mychar" in w and "no <repeats>_ number prefix" in w and "10_mychar" in w for w in map(str, scan.report.warnings))


def test_only_unnumbered_folders_is_a_problem(tmp_path):
    png(tmp_path / "img/mychar/b.png")
    scan = scan_dataset(settings(tmp_path / "img"))
    assert scan.items == []
    assert any("no usable concept folder" in p and "10_mychar" in p for p in map(str, scan.report.problems))


@pytest.mark.parametrize("folder", ["0_x", "-2_x"])
def test_repeats_below_one_is_a_problem(tmp_path, folder):
    png(tmp_path / "img" / folder / "a.png")
    png(tmp_path / "img/3_ok/a.png")
    scan = scan_dataset(settings(tmp_path / "img"))
    assert any(folder in p and "repeats" in p and "1_x" in p for p in map(str, scan.report.problems))
    assert [it.concept for it in scan.items] == ["ok"]


def test_only_a_zero_repeats_folder_gives_one_problem(tmp_path):
    png(tmp_path / "img/0_x/a.png")
    scan = scan_dataset(settings(tmp_path / "img"))
    assert len(scan.report.problems) == 1 and "0_x" in str(scan.report.problems[0])


def test_nested_folders_are_ignored_with_a_warning(tmp_path):
    png(tmp_path / "img/2_x/a.png")
    png(tmp_path / "img/2_x/more/b.png")
    png(tmp_path / "img/2_x/more/c.png")
    scan = scan_dataset(settings(tmp_path / "img"))
    assert names(scan) == ["a.png"]
    assert any("more" in w and "nested" in w and "2 images inside not used" in w for w in map(str, scan.report.warnings))


def test_symlink_loops_do_not_hang_the_scan(tmp_path):
    root = tmp_path / "img"
    png(root / "2_x/a.png")
    os.symlink(root / "2_x", root / "2_x/loop")  # a folder that contains itself
    os.symlink(root / "5_self", root / "5_self")  # a link to itself
    scan = scan_dataset(settings(root))
    assert names(scan) == ["a.png"] and scan.report.problems == []
    w = "\n".join(map(str, scan.report.warnings))
    assert "loop" in w and "nested" in w
    assert "5_self" in w and "looping symbolic link" in w


def test_dataset_folder_that_is_a_symlink_loop(tmp_path):
    os.symlink(tmp_path / "img", tmp_path / "img")
    scan = scan_dataset(settings(tmp_path / "img"))
    assert any("looping symbolic link" in p for p in map(str, scan.report.problems))


def test_missing_dataset_folder(tmp_path):
    scan = scan_dataset(settings(tmp_path / "nope"))
    assert scan.items == []
    assert scan.report.problems == [error("dataset.train_data_dir", f"{tmp_path / 'nope'} does not exist", "check the path")]
    assert str(scan.report.problems[0]) == f"dataset.train_data_dir: {tmp_path / 'nope'} does not exist — check the path"


def test_unset_dataset_folder():
    scan = scan_dataset(DatasetSettings())
    assert len(scan.report.problems) == 1 and "train_data_dir: not set" in str(scan.report.problems[0])


def test_empty_dataset_folder(tmp_path):
    (tmp_path / "img").mkdir()
    scan = scan_dataset(settings(tmp_path / "img"))
    assert len(scan.report.problems) == 1 and "is empty" in str(scan.report.problems[0])


def test_dataset_folder_is_a_file(tmp_path):
    png(tmp_path / "a.png")
    scan = scan_dataset(settings(tmp_path / "a.png"))
    assert "is a file, not a folder" in str(scan.report.problems[0])


def test_images_directly_in_the_dataset_folder(tmp_path):
    png(tmp_path / "img/a.png")
    png(tmp_path / "img/b.png")
    scan = scan_dataset(settings(tmp_path / "img"))
    assert len(scan.report.problems) == 1
    p = str(scan.report.problems[0])
    assert "2 images but no <repeats>_<name> folder" in p and str(tmp_path / "img" / "10_img") in p


def test_concept_folder_with_no_usable_image(tmp_path):
    (tmp_path / "img/3_x").mkdir(parents=True)
    (tmp_path / "img/3_x/a.png").write_bytes(b"")
    scan = scan_dataset(settings(tmp_path / "img"))
    assert any("no usable images" in p for p in map(str, scan.report.problems))


def test_cache_folder_is_not_a_nested_folder(tmp_path):
    png(tmp_path / "img/1_x/a.png")
    (tmp_path / "img/1_x/a.txt").write_text("cap")
    (tmp_path / "img/1_x/.loratui_cache").mkdir()
    (tmp_path / "img/1_x/._a.png").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    scan = scan_dataset(settings(tmp_path / "img"))
    assert scan.report.warnings == [] and names(scan) == ["a.png"]


# --------------------------------------------------------------------------- reg, balance


def test_reg_images_are_matched_to_train_samples_like_sd_scripts(tmp_path):
    write_synthetic_dataset(tmp_path / "img", {"2_t": 5})
    write_synthetic_dataset(tmp_path / "reg", {"1_person": 3}, captions=False)
    ds = settings(tmp_path / "img", reg_data_dir=str(tmp_path / "reg"))
    scan = scan_dataset(ds)
    assert scan.report.problems == []
    reg = scan.reg_items
    assert [it.is_reg for it in reg] == [True] * 3 and all(it.caption == "person" for it in reg)
    assert [it.repeats for it in reg] == [4, 3, 3]  # 10 reg samples for 10 train samples
    assert scan.report.reg_concepts[0].repeats == 1 and scan.report.reg_concepts[0].is_reg
    profile = Profile(dataset=ds, optimization=OptimizationSettings(max_train_epochs=2))
    plan = plan_for(profile, scan)
    assert (plan.images_x_repeats, plan.reg_samples, plan.batches_per_epoch, plan.total_steps) == (10, 10, 20, 40)


def test_more_reg_than_train_leaves_some_unused(tmp_path):
    write_synthetic_dataset(tmp_path / "img", {"1_t": 2})
    write_synthetic_dataset(tmp_path / "reg", {"1_r": 5})
    scan = scan_dataset(settings(tmp_path / "img", reg_data_dir=str(tmp_path / "reg")))
    assert len(scan.reg_items) == 2 and scan.reg_samples == 2 and scan.unused_reg_images == 3
    assert any("3 of 5 regularization images are not used" in w for w in map(str, scan.report.warnings))


def test_missing_reg_folder_is_a_problem(tmp_path):
    write_synthetic_dataset(tmp_path / "img", {"1_t": 2})
    scan = scan_dataset(settings(tmp_path / "img", reg_data_dir=str(tmp_path / "nope")))
    assert any(p.startswith("dataset.reg_data_dir:") and "does not exist" in p for p in map(str, scan.report.problems))


def test_balance_concepts(tmp_path):
    write_synthetic_dataset(tmp_path / "img", {"10_a": 5, "1_b": 10})
    plain = scan_dataset(settings(tmp_path / "img"))
    assert [c.repeats for c in plain.report.concepts] == [10, 1] and plain.train_samples == 60
    scan = scan_dataset(settings(tmp_path / "img", balance_concepts=True))
    a, b = scan.report.concepts
    assert (a.repeats, b.repeats) == (6, 3)  # 30 samples each, 60 in all as before
    assert scan.adjusted_repeats == {a.folder: (10, 6), b.folder: (1, 3)}
    assert {it.concept: it.repeats for it in scan.items} == {"a": 6, "b": 3}
    assert all(it.folder_repeats in (10, 1) for it in scan.items)
    assert any("balance_concepts" in w and "10_a 5 images × 6 = 30" in w for w in map(str, scan.report.warnings))


# --------------------------------------------------------------------------- caption processing


def test_caption_shuffle_keeps_the_first_tokens_and_is_reproducible():
    cap = "mychar, red hair, smile, outdoors, blue sky, looking at viewer"
    out1 = [process_caption(cap, None, random.Random(7), shuffle=True, keep_tokens=1) for _ in range(1)]
    rng_a, rng_b = random.Random(7), random.Random(7)
    seq_a = [process_caption(cap, rng=rng_a, shuffle=True, keep_tokens=1) for _ in range(20)]
    seq_b = [process_caption(cap, rng=rng_b, shuffle=True, keep_tokens=1) for _ in range(20)]
    assert seq_a == seq_b and seq_a[0] == out1[0]
    assert all(s.startswith("mychar, ") for s in seq_a)
    assert all(sorted(s.split(", ")) == sorted(cap.split(", ")) for s in seq_a)
    assert len(set(seq_a)) > 5  # it does shuffle
    other = [process_caption(cap, rng=random.Random(8), shuffle=True, keep_tokens=1) for _ in range(20)]
    assert other != seq_a
    kept2 = process_caption(cap, rng=random.Random(1), shuffle=True, keep_tokens=2)
    assert kept2.startswith("mychar, red hair, ")


def test_caption_untouched_without_shuffle():
    cap = "a photo of mychar,  smiling"
    assert process_caption(cap, rng=random.Random(0)) == cap
    ds = DatasetSettings(keep_tokens=1)
    assert process_caption(cap, ds, random.Random(0)) == cap


def test_caption_dropout_from_settings_is_reproducible():
    ds = DatasetSettings(caption_dropout_rate=0.5, shuffle_caption=True, keep_tokens=1)
    a = [process_caption("x, y, z", ds, r) for r in [random.Random(3)] for _ in range(200)]
    b = [process_caption("x, y, z", ds, r) for r in [random.Random(3)] for _ in range(200)]
    assert a == b
    dropped = a.count("")
    assert 60 < dropped < 140
    assert all(s == "" or s.startswith("x, ") for s in a)
    assert process_caption("x", DatasetSettings(caption_dropout_rate=1.0), random.Random(0)) == ""


# --------------------------------------------------------------------------- batches and plan


def _items(spec: list[tuple[tuple[int, int], int]]) -> list[ImageItem]:
    out = []
    for n, (bucket, reps) in enumerate(spec):
        out.append(
            ImageItem(
                path=Path(f"/d/{n}.png"),
                caption="c",
                concept="c",
                folder="/d",
                repeats=reps,
                is_reg=False,
                image_size=bucket,
                bucket=bucket,
                resized=bucket,
            )
        )
    return out


def test_epoch_batches_are_deterministic_complete_and_single_bucket():
    items = _items([((64, 64), 3)] * 5 + [((128, 64), 2)] * 4 + [((64, 128), 1)] * 3)
    b1 = epoch_batches(items, 4, epoch=1, seed=42)
    assert b1 == epoch_batches(list(items), 4, epoch=1, seed=42)
    # each item appears `repeats` times
    flat = [i for b in b1 for i in b]
    assert sorted(flat) == sorted(i for i, it in enumerate(items) for _ in range(it.repeats))
    for b in b1:
        assert 1 <= len(b) <= 4
        assert len({items[i].bucket for i in b}) == 1
    # buckets round up on their own: 15/4 → 4, 8/4 → 2, 3/4 → 1
    assert len(b1) == batches_per_epoch(items, 4) == 7
    assert epoch_batches(items, 4, epoch=2, seed=42) != b1
    assert epoch_batches(items, 4, epoch=1, seed=43) != b1


def test_epoch_batches_resume_skips_exactly():
    items = _items([((64, 64), 2)] * 10)
    full = epoch_batches(items, 3, epoch=3, seed=5)
    k = 4
    resumed = epoch_batches(items, 3, epoch=3, seed=5)[k:]
    assert resumed == full[k:]


def test_epoch_batches_do_not_touch_global_random():
    items = _items([((64, 64), 2)] * 10)
    random.seed(1)
    a = random.random()
    random.seed(1)
    epoch_batches(items, 2, 1, 0)
    assert random.random() == a


def _profile(ds: DatasetSettings, **opt) -> Profile:
    return Profile(dataset=ds, optimization=OptimizationSettings(**opt))


def test_plan_25_images_20_epochs_batch_1_is_500_steps(tmp_path):
    write_synthetic_dataset(tmp_path / "img", {"1_x": 25})
    ds = settings(tmp_path / "img")
    scan = scan_dataset(ds)
    plan = plan_for(_profile(ds, max_train_epochs=20, train_batch_size=1), scan)
    assert (plan.steps_per_epoch, plan.total_steps) == (25, 500)


def test_plan_with_repeats_batch_accumulation_and_max_steps(tmp_path):
    write_synthetic_dataset(tmp_path / "img", {"10_x": 25})
    ds = settings(tmp_path / "img")
    scan = scan_dataset(ds)
    plan = plan_for(_profile(ds, max_train_epochs=5, train_batch_size=2, gradient_accumulation_steps=2), scan)
    # 250 samples → 125 batches → 63 optimizer steps per epoch
    assert (plan.images_x_repeats, plan.batches_per_epoch, plan.steps_per_epoch, plan.total_steps) == (250, 125, 63, 315)
    capped = plan_for(_profile(ds, max_train_epochs=5, train_batch_size=2, gradient_accumulation_steps=2, max_train_steps=100), scan)
    assert capped.total_steps == 100 and capped.max_steps_cap and capped.epochs == 2


def test_plan_counts_batches_per_bucket(tmp_path):
    d = tmp_path / "img/1_x"
    for n in range(3):
        png(d / f"sq{n}.png", size=(64, 64))
        png(d / f"wide{n}.png", size=(200, 64))
    ds = settings(tmp_path / "img", resolution=128, max_bucket_reso=256)
    scan = scan_dataset(ds)
    assert scan.bucket_counts() == {(128, 128): 3, (192, 64): 3}
    plan = plan_for(_profile(ds, max_train_epochs=1, train_batch_size=2), scan)
    assert plan.batches_per_epoch == 4  # 2 + 2, not ceil(6 / 2) = 3
    info = scan.bucket_info()
    assert sorted(tuple(b["resolution"]) for b in info["buckets"].values()) == [(128, 128), (192, 64)]
    assert info["mean_img_ar_error"] == pytest.approx(3 * (200 / 64 - 3) / 6)  # only the wide ones miss


def test_metadata_helpers(synthetic_dataset):
    scan = scan_dataset(settings(synthetic_dataset))
    freq = scan.tag_frequency()["4_shapes"]
    assert freq["toy"] == 6 and freq["plain background"] == 6
    assert scan.dataset_dirs() == {"4_shapes": {"n_repeats": 4, "img_count": 6}}


# --------------------------------------------------------------------------- loading geometry


def test_load_crops_the_centre_and_flip_mirrors_with_sdxl_crop_info(tmp_path):
    d = tmp_path / "img/1_x"
    d.mkdir(parents=True)
    arr = np.zeros((64, 161, 3), np.uint8)
    arr[:, :, 0] = np.arange(161, dtype=np.uint8)[None, :]  # red = x
    Image.fromarray(arr).save(d / "strip.png")
    scan = scan_dataset(settings(tmp_path / "img", enable_bucket=False))
    it = scan.items[0]
    assert it.bucket == (64, 64) and it.resized == (161, 64)
    t, crop = load_image_tensor(it, flip=False)
    red = ((t[0] + 1) * 127.5).round()
    assert red[0, 0] == 48 and red[0, 63] == 111
    assert crop == ((64, 161), (0, 48), (64, 64))
    tf, crop_f = load_image_tensor(it, flip=True)
    red_f = ((tf[0] + 1) * 127.5).round()
    assert red_f[0, 0] == 111 and red_f[0, 63] == 48
    assert crop_f.crop_top_left == (0, 161 - 64 - 48)


def test_scan_problems_and_warnings_name_their_setting(tmp_path):
    """Each finding is a Problem whose key is the setting to change (the form marks that field)."""
    png(tmp_path / "img/3_x/a.png")
    png(tmp_path / "img/3_x/deep/b.png")
    (tmp_path / "img/plain").mkdir()
    png(tmp_path / "reg/1_r/c.png")
    scan = scan_dataset(settings(tmp_path / "img", reg_data_dir=str(tmp_path / "nope"), ))
    keys = {p.key for p in scan.report.problems}
    assert keys == {"dataset.reg_data_dir"}
    assert all(p.severity is Severity.ERROR for p in scan.report.problems)
    by_key = {(w.key, w.severity) for w in scan.report.warnings}
    assert ("dataset.train_data_dir", Severity.WARNING) in by_key  # plain/ lacks the prefix; deep/ is nested
    assert ("dataset.caption_extension", Severity.WARNING) in by_key  # a.png has no caption
    assert all(w.message and not w.message.startswith(w.key) for w in scan.report.warnings)
