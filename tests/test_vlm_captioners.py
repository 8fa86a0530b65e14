"""BLIP-2 and GIT captioners on tiny models built here from configs
(engine.captioners.tiny_vlm), no network: same writer modes, trigger, batches and
progress events as BLIP; the precision choice for CUDA."""

from __future__ import annotations

import pytest

from loratui.engine.captioners import CaptionSettings, run_captioner
from loratui.engine.captioners.tiny import TINY_BLIP_WORDS
from loratui.engine.captioners.tiny_vlm import save_tiny_blip2, save_tiny_git
from loratui.engine.captioners.vlm import choose_precision
from loratui.engine.cli import run_command
from loratui.engine.events import Failed, Finished, LogEvent, PhaseChanged
from loratui.engine.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    return {"blip2": save_tiny_blip2(root / "blip2"), "git": save_tiny_git(root / "git")}


@pytest.fixture
def images(tmp_path):
    return write_synthetic_dataset(tmp_path / "images", images_per_concept=3, captions=False) / "4_shapes"


def _words(text: str) -> list[str]:
    return text.replace(",", " ").split()


@pytest.mark.parametrize("tagger", ["blip2", "git"])
def test_writes_sentence_captions_with_trigger_in_batches(models, images, tagger):
    events = []
    s = CaptionSettings(tagger=tagger, model=str(models[tagger]), trigger="mychar", num_beams=2, min_length=3,
                        max_length=6, batch_size=2)
    summary = run_captioner(s, images, on_event=events.append)
    assert isinstance(events[-1], Finished) and not summary.failed and summary.written == 3, events[-3:]
    label = {"blip2": "BLIP-2", "git": "GIT"}[tagger]
    assert any(isinstance(e, LogEvent) and f"{label} captioner" in e.message and "(fp32)" in e.message for e in events)
    assert [e.current for e in events if isinstance(e, PhaseChanged) and e.phase == "captioning"] == [0, 1, 2, 3]
    first = {}
    for cap in sorted(images.glob("*.txt")):
        text = cap.read_text()
        assert text.startswith("mychar, ") and text.endswith("\n")
        words = _words(text.removeprefix("mychar, "))
        assert 3 <= len(words) <= 6 and set(words) <= set(TINY_BLIP_WORDS), text
        first[cap.name] = text
    # deterministic: overwriting changes nothing; skip mode leaves every file alone
    again = run_captioner(s.model_copy(update={"mode": "overwrite"}), images)
    assert again.unchanged == 3 and {c.name: c.read_text() for c in images.glob("*.txt")} == first
    assert run_captioner(s, images).skipped_existing == 3


def test_prompt_is_kept_and_append_mode(models, images):
    (images / "img_000.txt").write_text("toy\n")
    s = CaptionSettings(tagger="git", model=str(models["git"]), prompt="a photo of", mode="append", min_length=2, max_length=4)
    summary = run_captioner(s, images)
    assert summary.appended == 1 and summary.written == 2
    assert (images / "img_000.txt").read_text().startswith("toy, a photo of ")
    assert (images / "img_001.txt").read_text().startswith("a photo of ")


def test_a_wrong_folder_fails_with_a_message(tmp_path, images):
    (tmp_path / "empty").mkdir()
    events = []
    run_captioner(CaptionSettings(tagger="blip2", model=str(tmp_path / "empty")), images, on_event=events.append)
    assert isinstance(events[-1], Failed) and "has no config.json" in events[-1].message


def test_cli_caption_with_git(models, images, capsys):
    assert run_command(["caption", str(images), "--tagger", "git", "--model", str(models["git"]),
                        "--max-length", "5", "--trigger", "zzz"]) == 0
    assert all(p.read_text().startswith("zzz, ") for p in images.glob("*.txt")) and len(list(images.glob("*.txt"))) == 3


def test_precision_on_cuda_drops_to_8bit_when_fp16_does_not_fit(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 4000)  # "fp32" weights: 4000 bytes, fp16 needs 2000
    assert choose_precision("auto", "cpu", tmp_path, None) == "fp32"
    assert choose_precision("auto", "cuda", tmp_path, 10_000) == "fp16"
    assert choose_precision("auto", "cuda", tmp_path, 2_000) == "8bit"
    assert choose_precision("none", "cuda", tmp_path, 100) == "fp16"
    assert choose_precision("8bit", "cuda", tmp_path, 10**9) == "8bit"
    # the same weights as .bin beside them, and a trainer's training_args.bin: not counted twice
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 4000)
    (tmp_path / "training_args.bin").write_bytes(b"\0" * 4000)
    assert choose_precision("auto", "cuda", tmp_path, 3_000) == "fp16"
    assert CaptionSettings(tagger="blip2").model_id() == "Salesforce/blip2-opt-2.7b"
    assert CaptionSettings(tagger="git").model_id() == "microsoft/git-large-coco"
