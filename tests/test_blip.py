"""BLIP captioner on a tiny BlipForConditionalGeneration built here from configs
(engine.captioners.tiny.save_tiny_blip), no network."""

from __future__ import annotations

import pytest

from loratui.engine.captioners import CaptionSettings, run_captioner
from loratui.engine.captioners.tiny import TINY_BLIP_WORDS, save_tiny_blip
from loratui.engine.events import Failed, Finished, LogEvent, PhaseChanged
from loratui.engine.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return save_tiny_blip(tmp_path_factory.mktemp("blip") / "model")


@pytest.fixture
def images(tmp_path):
    return write_synthetic_dataset(tmp_path / "images", images_per_concept=3, captions=False) / "4_shapes"


def _settings(model, **kw) -> CaptionSettings:
    kw.setdefault("num_beams", 2)
    kw.setdefault("max_length", 12)
    return CaptionSettings(tagger="blip", model=str(model), **kw)


def _words(text: str) -> list[str]:
    return text.replace(",", " ").split()


def test_blip_writes_sentence_captions_with_the_trigger_first(blip_dir, images):
    events = []
    s = run_captioner(_settings(blip_dir, trigger="mychar", min_length=4, batch_size=2), images, on_event=events.append)
    assert isinstance(events[-1], Finished) and not s.failed and s.written == 3
    assert any(isinstance(e, LogEvent) and "BLIP captioner" in e.message and "cpu" in e.message for e in events)
    assert [e.current for e in events if isinstance(e, PhaseChanged) and e.phase == "captioning"] == [0, 1, 2, 3]
    vocab = set(TINY_BLIP_WORDS)
    first = {}
    for cap in sorted(images.glob("*.txt")):
        text = cap.read_text()
        assert text.endswith("\n") and text.count("\n") == 1
        assert text.startswith("mychar, ")
        words = _words(text.removeprefix("mychar, "))
        assert len(words) == 11 and set(words) <= vocab, text  # max_length 12 includes the start token
        first[cap.name] = text
    # Beam search is deterministic: a second run (overwrite) finds nothing to change.
    s = run_captioner(_settings(blip_dir, trigger="mychar", min_length=4, mode="overwrite"), images)
    assert s.unchanged == 3 and {c.name: c.read_text() for c in images.glob("*.txt")} == first


def test_blip_prompt_append_and_length_cap(blip_dir, images):
    (images / "img_000.txt").write_text("toy, handmade tag\n")
    s = run_captioner(_settings(blip_dir, prompt="a photo of", mode="append", max_length=500), images)
    assert not s.error and s.appended == 1 and s.written == 2
    kept = (images / "img_000.txt").read_text()
    assert kept.startswith("toy, handmade tag, a photo of ")
    cap = (images / "img_001.txt").read_text()
    assert cap.startswith("a photo of ")
    assert len(_words(cap)) == 23  # capped at the tiny text model's 24 positions instead of crashing


def test_blip_model_errors(blip_dir, images, tmp_path, monkeypatch):
    from huggingface_hub import constants

    not_blip = tmp_path / "empty_model"
    not_blip.mkdir()
    events = []
    run_captioner(_settings(not_blip), images, on_event=events.append)
    assert isinstance(events[-1], Failed) and "has no config.json" in events[-1].message

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    events = []
    s = run_captioner(_settings(""), images, on_event=events.append)
    assert events[-1].message.startswith(
        "cannot download Salesforce/blip-image-captioning-large: no network; pass a local folder with config.json"
    )
    assert s.error and not list(images.glob("*.txt"))


def test_blip_from_the_hub_cache_offline(blip_dir, images, tmp_path, monkeypatch):
    # A repo fetched before works offline, although it lacks some optional files.
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--loratui-test--tiny-blip"
    snap = repo / "snapshots" / ("1" * 40)
    snap.mkdir(parents=True)
    for f in blip_dir.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    s = run_captioner(_settings("loratui-test/tiny-blip", max_length=6), images)
    assert not s.error and s.written == 3


def test_a_card_too_full_for_the_captioner_is_said_as_such(blip_dir, images, monkeypatch):
    import torch
    from transformers import BlipForConditionalGeneration

    def full(self, *a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    monkeypatch.setattr(BlipForConditionalGeneration, "to", full)
    events = []
    s = run_captioner(_settings(blip_dir), images, on_event=events.append)
    assert isinstance(events[-1], Failed) and s.error and not list(images.glob("*.txt"))
    assert "not enough GPU memory to load it" in events[-1].message, events[-1].message
    assert "set device to cpu" in events[-1].hint and "bug" not in events[-1].hint
