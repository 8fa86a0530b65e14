"""WD14 tagger: preprocessing, model loading, tag selection — on a tiny ONNX tagger
built here (engine.captioners.tiny), no network."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from loratui.engine.captioners import CaptionError, CaptionSettings, run_captioner
from loratui.engine.captioners.tiny import TINY_WD14_TAGS, save_tiny_wd14, tiny_wd14_scores
from loratui.engine.captioners.wd14 import (
    KAOMOJIS,
    WD14Tagger,
    display_tag,
    load_tags,
    preprocess,
    scores_to_tags,
)
from loratui.engine.events import Failed, Finished, PhaseChanged

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    return save_tiny_wd14(tmp_path_factory.mktemp("wd14") / "tagger", size=32)


def _settings(model, **kw) -> CaptionSettings:
    return CaptionSettings(tagger="wd14", model=str(model), **kw)


def _caption_of(tagger_dir, rgb, **kw) -> list[str]:
    tagger = WD14Tagger.load(_settings(tagger_dir, **kw))
    return tagger.caption([Image.new("RGB", (32, 32), rgb)])[0]


# --------------------------------------------------------------------------- preprocessing


def test_known_image_gives_known_input_tensor():
    # 4 wide x 2 high, RGBA: opaque red, green, blue, and one fully transparent pixel; second row grey.
    im = Image.new("RGBA", (4, 2))
    im.putdata([(255, 0, 0, 255), (0, 255, 0, 255), (0, 0, 255, 255), (10, 20, 30, 0)] + [(100, 110, 120, 255)] * 4)
    x = preprocess(im, 4)
    assert x.dtype == np.float32 and x.shape == (4, 4, 3) and x.flags.c_contiguous
    white = [255.0, 255.0, 255.0]
    expected = np.array(
        [
            [white] * 4,  # pad row on top: (4 - 2) // 2 = 1
            [[0, 0, 255], [0, 255, 0], [255, 0, 0], white],  # BGR; transparent -> white
            [[120, 110, 100]] * 4,
            [white] * 4,  # pad row below
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(x, expected)


def test_half_transparent_pixels_blend_onto_white():
    im = Image.new("RGBA", (2, 2), (0, 0, 0, 128))
    x = preprocess(im, 2)
    assert np.all(np.abs(x - 127) <= 1)  # black at ~50 % over white


def test_tall_image_is_padded_left_and_right():
    im = Image.new("RGB", (1, 3), RED)
    x = preprocess(im, 3)
    np.testing.assert_array_equal(x[:, 0], np.full((3, 3), 255.0))
    np.testing.assert_array_equal(x[:, 1], np.tile([0.0, 0.0, 255.0], (3, 1)))
    np.testing.assert_array_equal(x[:, 2], np.full((3, 3), 255.0))


def test_resize_to_model_size_keeps_colour_and_padding():
    x = preprocess(Image.new("RGB", (64, 64), RED), 32)
    assert x.shape == (32, 32, 3)
    np.testing.assert_allclose(x, np.broadcast_to([0.0, 0.0, 255.0], (32, 32, 3)), atol=0.5)
    y = preprocess(Image.new("RGB", (64, 32), BLUE), 32)  # padded to 64x64: white bands of 16 rows
    assert np.all(y[:6] == 255) and np.all(y[-6:] == 255)
    np.testing.assert_allclose(y[10:22], np.broadcast_to([255.0, 0.0, 0.0], (12, 32, 3)), atol=1)


# --------------------------------------------------------------------------- model files


def test_tags_csv_categories(tagger_dir):
    tags = load_tags(tagger_dir / "selected_tags.csv")
    assert [tags.names[i] for i in tags.rating] == ["general", "sensitive", "questionable", "explicit"]
    assert [tags.names[i] for i in tags.character] == ["hatsune_miku", "kagamine_rin"]
    assert len(tags.general) == sum(1 for t in TINY_WD14_TAGS if t[1] == 0)


def test_input_size_and_provider_come_from_the_model(tmp_path):
    d = save_tiny_wd14(tmp_path / "t16", size=16)
    tagger = WD14Tagger.load(_settings(d))
    assert tagger.size == 16 and tagger.model_batch is None
    assert tagger.provider == "CPUExecutionProvider"


def test_model_scores_match_the_designed_function(tagger_dir):
    tagger = WD14Tagger.load(_settings(tagger_dir))
    batch = np.stack([preprocess(Image.new("RGB", (32, 32), c), 32) for c in (RED, GREEN, WHITE)])
    got = tagger.predict(batch)
    for row, colour in zip(got, (RED, GREEN, WHITE)):
        want = tiny_wd14_scores(colour)
        np.testing.assert_allclose(row, [want[t[0]] for t in TINY_WD14_TAGS], rtol=1e-5)


# --------------------------------------------------------------------------- captions


def test_default_caption_of_a_red_image(tagger_dir):
    # Red in, "red theme" out: the tensor really is BGR (RGB would light "blue theme").
    assert _caption_of(tagger_dir, RED) == ["red theme", "long hair", "^_^", "dim tag"]
    assert _caption_of(tagger_dir, BLUE) == ["blue theme", "dim tag"]


def test_character_threshold_is_separate(tagger_dir):
    # green: hatsune_miku 0.95 >= 0.85, kagamine_rin 0.82 < 0.85 although above 0.35.
    assert _caption_of(tagger_dir, GREEN) == ["green theme", "dim tag", "hatsune miku"]
    assert _caption_of(tagger_dir, GREEN, character_threshold=0.8) == [
        "green theme", "dim tag", "hatsune miku", "kagamine rin",
    ]  # fmt: skip
    assert _caption_of(tagger_dir, GREEN, character_first=True)[0] == "hatsune miku"


def test_general_threshold(tagger_dir):
    assert _caption_of(tagger_dir, RED, general_threshold=0.5) == ["red theme", "long hair", "^_^"]
    assert _caption_of(tagger_dir, RED, general_threshold=0.99) == []


def test_rating_tag_first_last_or_none(tagger_dir):
    assert _caption_of(tagger_dir, RED, rating="first")[0] == "sensitive"
    assert _caption_of(tagger_dir, BLUE, rating="last")[-1] == "general"
    assert "sensitive" not in _caption_of(tagger_dir, RED, rating="none")


def test_underscores_kaomoji_and_exclusions(tagger_dir):
    assert _caption_of(tagger_dir, RED, replace_underscores=False) == ["red_theme", "long_hair", "^_^", "dim_tag"]
    # exclusions match either spelling, any case
    assert _caption_of(tagger_dir, RED, exclude=["Long_Hair", "dim tag", "^_^"]) == ["red theme"]
    assert display_tag("^_^") == "^_^" and display_tag("o_o") == "o_o" and display_tag("long_hair") == "long hair"
    assert "||_||" in KAOMOJIS


def test_scores_to_tags_orders_by_confidence(tagger_dir):
    tags = load_tags(tagger_dir / "selected_tags.csv")
    scores = np.zeros(len(tags.names), dtype=np.float32)
    idx = {n: i for i, n in enumerate(tags.names)}
    scores[idx["dim_tag"]], scores[idx["blue_theme"]], scores[idx["red_theme"]] = 0.9, 0.4, 0.6
    assert scores_to_tags(scores, tags, _settings("x")) == ["dim tag", "red theme", "blue theme"]


def test_job_writes_trigger_first_and_reports_progress(tagger_dir, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name, colour in (("a_red", RED), ("b_green", GREEN), ("c_blue", BLUE)):
        Image.new("RGB", (40, 40), colour).save(imgs / f"{name}.png")
    events = []
    s = _settings(tagger_dir, trigger="mychar, red theme", exclude=["long hair"], batch_size=2)
    summary = run_captioner(s, imgs, on_event=events.append)
    assert summary.written == 3 and not summary.failed
    assert (imgs / "a_red.txt").read_text() == "mychar, red theme, ^_^, dim tag\n"  # trigger tag not doubled
    assert (imgs / "b_green.txt").read_text() == "mychar, red theme, green theme, dim tag, hatsune miku\n"
    phases = [e.phase for e in events if isinstance(e, PhaseChanged)]
    assert phases.index("preparing") < phases.index("loading_model") < phases.index("captioning")
    progress = [(e.current, e.total) for e in events if isinstance(e, PhaseChanged) and e.phase == "captioning"]
    assert progress[0] == (0, 3) and progress[-1] == (3, 3)
    assert isinstance(events[-1], Finished) and events[-1].summary["written"] == 3


def test_fixed_batch_model_runs_any_batch_size(tmp_path):
    # A model exported with a fixed batch of 2 gets chunks of 2; the odd one out is padded.
    d = save_tiny_wd14(tmp_path / "fixed", size=32, batch=2)
    tagger = WD14Tagger.load(_settings(d, batch_size=8))
    assert tagger.model_batch == 2
    caps = tagger.caption([Image.new("RGB", (32, 32), c) for c in (RED, BLUE, RED, GREEN, BLUE)])
    assert caps[0] == caps[2] == ["red theme", "long hair", "^_^", "dim tag"]
    assert caps[1] == caps[4] == ["blue theme", "dim tag"] and caps[3][0] == "green theme" and len(caps) == 5


def test_tagger_that_only_takes_one_image_falls_back_to_batch_one(tmp_path):
    from loratui.engine.events import LogEvent

    d = save_tiny_wd14(tmp_path / "single", size=32, one_at_a_time=True)
    events = []
    tagger = WD14Tagger.load(_settings(d, batch_size=4), on_event=events.append)
    caps = tagger.caption([Image.new("RGB", (32, 32), c) for c in (RED, BLUE, GREEN)])
    assert caps[0][0] == "red theme" and caps[1][0] == "blue theme" and caps[2][0] == "green theme"
    assert tagger.model_batch == 1 and any("one image at a time" in e.message for e in events if isinstance(e, LogEvent))


# --------------------------------------------------------------------------- model errors


def _failure(settings, folder) -> Failed:
    events = []
    summary = run_captioner(settings, folder, on_event=events.append)
    assert summary.error and isinstance(events[-1], Failed)
    return events[-1]


@pytest.fixture
def one_image(tmp_path):
    d = tmp_path / "one"
    d.mkdir()
    Image.new("RGB", (8, 8), RED).save(d / "x.png")
    return d


def test_missing_or_mismatched_model_files(tmp_path, tagger_dir, one_image):
    only_onnx = tmp_path / "only_onnx"
    only_onnx.mkdir()
    (only_onnx / "model.onnx").write_bytes((tagger_dir / "model.onnx").read_bytes())
    f = _failure(_settings(only_onnx), one_image)
    assert "no selected_tags.csv" in f.message and str(only_onnx) in f.message

    mismatch = tmp_path / "mismatch"
    save_tiny_wd14(mismatch)
    with open(mismatch / "selected_tags.csv", "a") as fh:
        fh.write("99,extra_tag,0,1\n")
    f = _failure(_settings(mismatch), one_image)
    assert "14 tags" in f.message and "13" in f.message and "same repo" in f.hint

    broken = tmp_path / "broken"
    save_tiny_wd14(broken)
    (broken / "model.onnx").write_bytes(b"not a model")
    f = _failure(_settings(broken), one_image)
    assert "cannot load" in f.message and "model.onnx" in f.message

    f = _failure(_settings(tmp_path / "nowhere"), one_image)
    assert "does not exist" in f.message
    assert not (one_image / "x.txt").exists()


def test_repo_id_offline_says_what_to_do(monkeypatch, one_image, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    f = _failure(_settings("loratui-test/not-a-tagger"), one_image)
    assert f.message == (
        "cannot download loratui-test/not-a-tagger: no network; "
        "pass a local folder with model.onnx and selected_tags.csv"
    )


def test_repo_id_found_in_the_hub_cache(monkeypatch, tagger_dir, one_image, tmp_path):
    # A model fetched before is used from the Hugging Face cache with no network call.
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snap = cache / "models--loratui-test--tiny-tagger" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for f in ("model.onnx", "selected_tags.csv"):
        (snap / f).write_bytes((tagger_dir / f).read_bytes())
    (cache / "models--loratui-test--tiny-tagger" / "refs").mkdir()
    (cache / "models--loratui-test--tiny-tagger" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    summary = run_captioner(_settings("loratui-test/tiny-tagger"), one_image)
    assert not summary.error and summary.written == 1
    assert (one_image / "x.txt").read_text().startswith("red theme")


def test_settings_reject_bad_values():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="image extension"):
        CaptionSettings(caption_extension=".png")
    with pytest.raises(ValidationError):
        CaptionSettings(general_threshold=1.5)
    assert CaptionSettings().model_id() == "SmilingWolf/wd-v1-4-convnextv2-tagger-v2"
    assert CaptionSettings(tagger="blip").model_id() == "Salesforce/blip-image-captioning-large"


def test_caption_error_is_raised_for_bad_csv(tmp_path):
    p = tmp_path / "selected_tags.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(CaptionError, match="name"):
        load_tags(p)


def test_download_reports_progress_as_events(monkeypatch, tagger_dir, one_image, tmp_path):
    # The Hub is replaced by a fake hf_hub_download that streams the tiny tagger's
    # files through the tqdm class it is given, as the real one does.
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub import errors as hf_errors

    import loratui.engine.captioners.hub as hub

    store = tmp_path / "fetched"
    store.mkdir()
    calls = []

    def fake_download(repo_id, filename, *, local_files_only=False, tqdm_class=None, **kw):
        calls.append((filename, local_files_only))
        if local_files_only:
            raise hf_errors.LocalEntryNotFoundError("not cached")
        data = (tagger_dir / filename).read_bytes()
        with tqdm_class(total=len(data), desc=filename, unit="B") as bar:
            for i in range(0, len(data), 100):
                bar.update(len(data[i : i + 100]))
        (store / filename).write_bytes(data)
        return str(store / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "network_reachable", lambda timeout=5.0: True)
    events = []
    summary = run_captioner(_settings("someone/tagger"), one_image, on_event=events.append)
    assert not summary.error and summary.written == 1
    assert ("model.onnx", True) in calls and ("model.onnx", False) in calls
    size = (tagger_dir / "model.onnx").stat().st_size
    dl = [e for e in events if isinstance(e, PhaseChanged) and e.phase == "downloading" and "model.onnx" in e.detail]
    assert dl[-1].current == dl[-1].total == size
    phases = [e.phase for e in events if isinstance(e, PhaseChanged)]
    assert phases.index("loading_model") < phases.index("downloading") < phases.index("captioning")


def test_progress_class_prints_nothing(capsys):
    from loratui.engine.captioners.hub import progress_class

    seen = []
    bar_cls = progress_class(lambda d, n, t: seen.append((d, n, t)))
    with bar_cls(total=100, desc="f.bin", unit="B", unit_scale=True, name="x") as bar:
        bar.update(30)
        bar.update(70)
    assert seen == [("f.bin", 30, 100), ("f.bin", 100, 100)]
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_exif_orientation_is_applied(tmp_path):
    from loratui.engine.captioners.images import open_rgb

    im = Image.new("RGB", (40, 20), RED)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when shown
    im.save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert open_rgb(tmp_path / "r.jpg").size == (20, 40)


def test_cuda_request_falls_back_to_cpu_with_a_warning(tagger_dir, capfd):
    from loratui.engine.events import WarningEvent

    events = []
    tagger = WD14Tagger.load(_settings(tagger_dir, device="cuda"), on_event=events.append)
    warned = [e.message for e in events if isinstance(e, WarningEvent)]
    if tagger.provider == "CUDAExecutionProvider":  # a machine with a working CUDA onnxruntime
        assert not warned
    else:
        assert tagger.provider == "CPUExecutionProvider" and any("tagging on the CPU" in w for w in warned)
        out = capfd.readouterr()
        assert "onnxruntime" not in out.err and "Failed to load" not in out.out  # no raw library noise
    assert tagger.caption([Image.new("RGB", (32, 32), RED)])[0][0] == "red theme"


@pytest.mark.parametrize(("paths", "present"), [
    ({"/proc/driver/nvidia/version", "/dev/nvidia0"}, True),
    ({"/dev/nvidia1"}, True),  # a container given the second GPU only
    ({"/dev/dxg"}, True),  # WSL2
    ({"/dev/nvidiactl"}, False),
    (set(), False),
])
def test_device_auto_finds_an_nvidia_driver_where_it_shows(paths, present, monkeypatch):
    import fnmatch
    import glob
    import os

    from loratui.engine.captioners import wd14

    monkeypatch.setattr(os.path, "exists", lambda p: p in paths)
    monkeypatch.setattr(glob, "glob", lambda pattern: [p for p in paths if fnmatch.fnmatch(p, pattern)])
    assert wd14._nvidia_present() is present
