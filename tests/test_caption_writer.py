"""Caption files: the write modes, the never-lose-a-caption rule, odd and broken
images, cancelling, and `loratui caption` — with the tiny ONNX tagger."""

from __future__ import annotations

import os
import stat

import pytest
from PIL import Image

from loratui.engine.captioners import CaptionSettings, run_captioner
from loratui.engine.captioners.tiny import save_tiny_wd14
from loratui.engine.captioners.writer import (
    APPENDED,
    OVERWRITTEN,
    SKIPPED,
    UNCHANGED,
    WRITTEN,
    CaptionFileError,
    caption_path,
    has_caption,
    merge_tags,
    write_caption,
)
from loratui.engine.events import Control, Failed, Finished, PhaseChanged, WarningEvent
from loratui.engine.fsutil import TMP_PREFIX

RED_CAPTION = "red theme, long hair, ^_^, dim tag"


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    return save_tiny_wd14(tmp_path_factory.mktemp("wd14w") / "tagger", size=32)


def _settings(tagger_dir, **kw) -> CaptionSettings:
    return CaptionSettings(tagger="wd14", model=str(tagger_dir), **kw)


def _red_folder(root, n=3, size=(24, 24)):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", size, (255, 0, 0)).save(root / f"img{i}.png")
    return root


def _no_temp_files(folder) -> bool:
    return not [p for p in folder.rglob("*") if p.name.startswith(TMP_PREFIX)]


# --------------------------------------------------------------------------- writer


def test_caption_path_replaces_the_image_extension(tmp_path):
    assert caption_path(tmp_path / "a.b.png") == tmp_path / "a.b.txt"
    assert caption_path(tmp_path / "x.JPG", ".caption") == tmp_path / "x.caption"


def test_write_modes(tmp_path):
    img = tmp_path / "a.png"
    cap = tmp_path / "a.txt"
    out = write_caption(img, ["x", "y"])
    assert out.status == WRITTEN and cap.read_text() == "x, y\n"
    assert write_caption(img, ["z"], mode="skip").status == SKIPPED and cap.read_text() == "x, y\n"
    out = write_caption(img, ["long_hair", "Y", "z"], mode="append")
    assert out.status == APPENDED and cap.read_text() == "x, y, long_hair, z\n"
    assert write_caption(img, ["long hair", "z"], mode="append").status == UNCHANGED  # same tags, other spelling
    assert write_caption(img, ["q"], mode="overwrite").status == OVERWRITTEN and cap.read_text() == "q\n"
    assert write_caption(img, ["q"], mode="overwrite").status == UNCHANGED
    assert _no_temp_files(tmp_path)


def test_append_goes_on_the_first_line_and_keeps_the_rest(tmp_path):
    cap = tmp_path / "a.txt"
    cap.write_text("old, tags,\nsecond line, kept\n")
    write_caption(tmp_path / "a.png", ["new", "old"], mode="append")
    assert cap.read_text() == "old, tags, new\nsecond line, kept\n"
    assert merge_tags("a, b", ["B", "a"]) is None


def test_empty_caption_counts_as_none_and_odd_files_are_left_alone(tmp_path):
    (tmp_path / "e.txt").write_text("  \n")
    assert not has_caption(tmp_path / "e.png")
    assert write_caption(tmp_path / "e.png", ["t"], mode="skip").status == WRITTEN
    bad = tmp_path / "bin.txt"
    bad.write_bytes(b"\xff\xfe\x00broken")
    with pytest.raises(CaptionFileError, match="not UTF-8"):
        write_caption(tmp_path / "bin.png", ["t"], mode="overwrite")
    assert bad.read_bytes() == b"\xff\xfe\x00broken"
    assert has_caption(tmp_path / "bin.png")  # unreadable counts as present: skip mode never touches it


def test_new_captions_are_not_private_and_old_permissions_are_kept(tmp_path):
    write_caption(tmp_path / "n.png", ["t"])
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "n.txt").stat().st_mode) == 0o666 & ~umask
    os.chmod(tmp_path / "n.txt", 0o640)
    write_caption(tmp_path / "n.png", ["u"], mode="overwrite")
    assert stat.S_IMODE((tmp_path / "n.txt").stat().st_mode) == 0o640


def test_a_failed_write_leaves_the_old_caption(tmp_path, monkeypatch):
    cap = tmp_path / "a.txt"
    cap.write_text("precious\n")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_caption(tmp_path / "a.png", ["new"], mode="overwrite")
    monkeypatch.undo()
    assert cap.read_text() == "precious\n" and _no_temp_files(tmp_path)


# --------------------------------------------------------------------------- the job and the modes


def test_job_modes_touch_only_what_is_allowed(tagger_dir, tmp_path):
    d = _red_folder(tmp_path / "imgs")
    (d / "img0.txt").write_text("mine, handmade\n")
    (d / "img1.txt").write_text("")
    s = run_captioner(_settings(tagger_dir), d)
    assert (s.written, s.skipped_existing) == (2, 1)
    assert (d / "img0.txt").read_text() == "mine, handmade\n"
    assert (d / "img1.txt").read_text() == RED_CAPTION + "\n"

    s = run_captioner(_settings(tagger_dir, mode="append", trigger="mychar"), d)
    assert (d / "img0.txt").read_text() == "mine, handmade, mychar, " + RED_CAPTION + "\n"
    assert (d / "img1.txt").read_text() == RED_CAPTION + ", mychar\n"  # only the missing tag is added
    assert s.appended == 3

    s = run_captioner(_settings(tagger_dir, mode="overwrite", trigger="mychar"), d)
    assert s.overwritten == 3 and s.changed == 3
    assert all((d / f"img{i}.txt").read_text() == "mychar, " + RED_CAPTION + "\n" for i in range(3))


def test_skip_mode_with_everything_captioned_loads_no_model(tmp_path):
    d = _red_folder(tmp_path / "imgs", n=2)
    for i in range(2):
        (d / f"img{i}.txt").write_text("done\n")
    events = []
    s = run_captioner(_settings(tmp_path / "no-such-model"), d, on_event=events.append)
    assert isinstance(events[-1], Finished) and s.skipped_existing == 2 and not s.error
    assert not any(isinstance(e, PhaseChanged) and e.phase == "loading_model" for e in events)


def test_odd_and_broken_images(tagger_dir, tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(d / "cmyk.jpg", quality=100)  # red in CMYK
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    pal.save(d / "palette.png")
    pal_t = Image.new("P", (16, 16), 1)
    pal_t.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    pal_t.save(d / "palette_transparent.png", transparency=1)  # all transparent -> white
    Image.new("RGBA", (16, 16), (0, 0, 255, 0)).save(d / "alpha.png")  # transparent blue -> white
    Image.new("LA", (16, 16), (0, 255)).save(d / "grey_alpha.png")
    Image.new("I;16", (16, 16), 65535).save(d / "sixteen_bit.png")
    (d / "empty.png").write_bytes(b"")
    (d / "garbage.jpg").write_bytes(os.urandom(300))
    good = d / "cmyk.jpg"
    (d / "truncated.png").write_bytes((d / "palette.png").read_bytes()[:-40])
    (d / "notes.md").write_text("not an image")
    assert good.exists()

    events = []
    s = run_captioner(_settings(tagger_dir, batch_size=3), d, on_event=events.append)
    assert isinstance(events[-1], Finished)
    failed = {os.path.basename(p) for p, _ in s.failed}
    assert failed == {"empty.png", "garbage.jpg", "truncated.png"}
    reasons = dict((os.path.basename(p), r) for p, r in s.failed)
    assert "0 bytes" in reasons["empty.png"]
    warnings = [e.message for e in events if isinstance(e, WarningEvent)]
    assert any("empty.png" in w for w in warnings) and any("truncated.png" in w for w in warnings)
    for name in failed:
        assert not caption_path(d / name).exists()
    assert (d / "cmyk.txt").read_text().startswith("red theme")
    assert (d / "palette.txt").read_text().startswith("red theme")
    white = "white background"
    for name in ("palette_transparent", "alpha", "sixteen_bit"):
        assert (d / f"{name}.txt").read_text().startswith(white), name
    assert (d / "grey_alpha.txt").exists() and not (d / "notes.txt").exists()
    assert s.written == 6 and s.images == 9


def test_images_sharing_a_caption_file(tagger_dir, tmp_path):
    d = _red_folder(tmp_path / "imgs", n=1)
    Image.new("RGB", (8, 8), (0, 0, 255)).save(d / "img0.jpg")
    events = []
    s = run_captioner(_settings(tagger_dir), d, on_event=events.append)
    assert s.images == 1 and s.written == 1
    assert any("share the caption file img0.txt" in e.message for e in events if isinstance(e, WarningEvent))
    assert (d / "img0.txt").read_text().startswith("blue theme")  # img0.jpg sorts first


def test_recursive_and_selected_images(tagger_dir, tmp_path):
    root = tmp_path / "images"
    _red_folder(root / "10_char", n=2)
    _red_folder(root / "5_style", n=1)
    events = []
    s = run_captioner(_settings(tagger_dir), root, on_event=events.append)
    assert s.error.startswith("no images in") and "--recursive" in events[-1].hint
    s = run_captioner(_settings(tagger_dir, recursive=True), root)
    assert s.written == 3 and (root / "5_style" / "img0.txt").exists()
    (root / "10_char" / "img1.txt").unlink()
    s = run_captioner(_settings(tagger_dir, mode="overwrite"), root, images=[root / "10_char" / "img1.png"])
    assert s.images == 1 and s.written == 1


def test_missing_folder_fails_clearly(tagger_dir, tmp_path):
    events = []
    s = run_captioner(_settings(tagger_dir), tmp_path / "nope", on_event=events.append)
    assert isinstance(events[-1], Failed) and f"{tmp_path / 'nope'} does not exist" in events[-1].message
    assert s.error


# --------------------------------------------------------------------------- cancel


@pytest.mark.parametrize("mode", ["skip", "overwrite"])
def test_cancel_midway_leaves_every_caption_whole(tagger_dir, tmp_path, mode):
    d = _red_folder(tmp_path / "imgs", n=7)
    if mode == "overwrite":
        for i in range(7):
            (d / f"img{i}.txt").write_text(f"old caption {i}, kept whole\n")
    control = Control()
    events = []

    def on_event(ev):
        events.append(ev)
        if isinstance(ev, PhaseChanged) and ev.phase == "captioning" and ev.current == 3:
            control.abort()

    s = run_captioner(_settings(tagger_dir, mode=mode, batch_size=2), d, control=control, on_event=on_event)
    assert s.stopped_early and isinstance(events[-1], Finished) and events[-1].stopped_early
    assert s.changed == 3
    for i in range(7):
        cap = d / f"img{i}.txt"
        if i < 3:
            assert cap.read_text() == RED_CAPTION + "\n"
        elif mode == "overwrite":
            assert cap.read_text() == f"old caption {i}, kept whole\n"
        else:
            assert not cap.exists()
    assert _no_temp_files(d)


def test_abort_before_start_writes_nothing(tagger_dir, tmp_path):
    d = _red_folder(tmp_path / "imgs", n=2)
    control = Control()
    control.abort()
    s = run_captioner(_settings(tagger_dir), d, control=control)
    assert s.stopped_early and not list(d.glob("*.txt"))


# --------------------------------------------------------------------------- CLI


def test_cli_caption(tagger_dir, tmp_path, capsys):
    from loratui.engine.cli import run_command

    d = _red_folder(tmp_path / "imgs", n=2)
    rc = run_command(["caption", str(d), "--model", str(tagger_dir), "--trigger", "mychar",
                      "--exclude", "dim_tag,^_^", "--threshold", "0.35", "--ext", "caption"])  # fmt: skip
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert (d / "img0.caption").read_text() == "mychar, red theme, long hair\n"
    assert "[2/2] img1.png: mychar, red theme, long hair" in out.out and "done: 2 written" in out.out

    rc = run_command(["caption", str(d), "--model", str(tagger_dir), "--ext", ".caption"])
    assert rc == 0 and "2 kept (already captioned)" in capsys.readouterr().out

    rc = run_command(["caption", str(tmp_path / "missing"), "--model", str(tagger_dir)])
    err = capsys.readouterr().err
    assert rc == 1 and "does not exist" in err and "Traceback" not in err

    rc = run_command(["caption", str(d), "--threshold", "3"])
    assert rc == 2 and "error: --threshold: Input should be less than or equal to 1" in capsys.readouterr().err
    rc = run_command(["caption", str(d), "--ext", ".png"])
    err = capsys.readouterr().err
    assert rc == 2 and "error: --ext: .png is an image extension" in err
    assert not (d / "img0.png").read_bytes().startswith(b"mychar")  # the image is untouched


def test_cli_offline_model_message(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    from loratui.engine.cli import run_command

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    d = _red_folder(tmp_path / "imgs", n=1)
    rc = run_command(["caption", str(d), "--model", "SmilingWolf/wd-vit-tagger-v3"])
    err = capsys.readouterr().err
    assert rc == 1
    assert (
        "error: cannot download SmilingWolf/wd-vit-tagger-v3: no network; "
        "pass a local folder with model.onnx and selected_tags.csv" in err
    )


def test_importing_the_captioners_loads_no_heavy_library():
    import subprocess
    import sys

    code = (
        "import sys, loratui.engine.captioners, loratui.engine.captioners.wd14, loratui.engine.captioners.blip, "
        "loratui.engine.captioners.writer, loratui.engine.commands.caption\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'PIL', 'numpy') if m in sys.modules]\n"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
