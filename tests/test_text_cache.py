"""Text-encoder output caching: encoded once, same loss, encoders off the device,
a disk cache reused by the next run, damaged files made again."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loratui.engine import text_cache  # noqa: E402
from loratui.engine.events import Finished, LogEvent, StepEvent  # noqa: E402
from loratui.engine.families.base import Family  # noqa: E402
from loratui.engine.train import run_training  # noqa: E402
from loratui.engine.training import memory  # noqa: E402
from loratui.engine.training.prepare import prepare_run  # noqa: E402
from tiny_runs import tiny_profile  # noqa: E402


@pytest.fixture
def data(tmp_path):
    from loratui.engine.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path / "images", {"2_toy": 4}, size=(64, 64))


@pytest.fixture
def encode_calls(monkeypatch):
    """Every Family.encode_text call, with the number of captions it encoded."""
    from loratui.engine.families.sdxl import SDXL

    calls: list[int] = []
    for cls in (Family, SDXL):
        def counting(self, text_encoders, ids, clip_skip, device, original=cls.encode_text):
            calls.append(int(ids[0].shape[0]))
            return original(self, text_encoders, ids, clip_skip, device)

        monkeypatch.setattr(cls, "encode_text", counting)
    return calls


def _run(model, data, out, **over):
    over.setdefault("network__train_text_encoder", False)
    events: list = []
    result = run_training(tiny_profile(model, data, out, **over), events.append)
    assert isinstance(result, Finished), result
    steps = [e for e in events if isinstance(e, StepEvent)]
    logs = [e.message for e in events if isinstance(e, LogEvent)]
    return result, steps, logs


def test_decision_and_refusals(tiny_sd1_dir, data, tmp_path):
    p = tiny_profile(tiny_sd1_dir, data, tmp_path / "o")
    assert p.dataset.cache_text_encoder_outputs == "auto"
    assert text_cache.effective_mode(p) == "off"  # the text encoder is trained by default
    frozen = tiny_profile(tiny_sd1_dir, data, tmp_path / "o", network__train_text_encoder=False)
    assert text_cache.effective_mode(frozen) == "memory"
    shuffled = tiny_profile(tiny_sd1_dir, data, tmp_path / "o", network__train_text_encoder=False,
                            dataset__shuffle_caption=True)
    assert text_cache.effective_mode(shuffled) == "off" and prepare_run(shuffled).ok  # auto: simply not cached
    for over, key in (({"dataset__shuffle_caption": True}, "dataset.shuffle_caption"),
                      ({"dataset__caption_dropout_rate": 0.1}, "dataset.caption_dropout_rate"),
                      ({"network__train_text_encoder": True}, "network.train_text_encoder")):
        kw = {"network__train_text_encoder": False, "dataset__cache_text_encoder_outputs": "disk", **over}
        prepared = prepare_run(tiny_profile(tiny_sd1_dir, data, tmp_path / "o", **kw))
        found = [pr for pr in prepared.problems if pr.key == text_cache.SETTING]
        assert len(found) == 1 and key in found[0].message and "sd-scripts" in found[0].hint, prepared.problems
        assert not prepared.ok


def test_cached_run_encodes_once_same_loss_and_frees_the_encoder(tiny_sd1_dir, data, tmp_path, encode_calls, monkeypatch):
    _, plain, _ = _run(tiny_sd1_dir, data, tmp_path / "plain", dataset__cache_text_encoder_outputs="off")
    assert len(encode_calls) == len(plain) == 8  # one encode per step
    plain_lora = load_file(str(tmp_path / "plain" / "tiny.safetensors"))

    encode_calls.clear()
    released: list = []
    original_release = memory.release_text_encoders
    monkeypatch.setattr(memory, "release_text_encoders", lambda tes, dev: (released.extend(tes), original_release(tes, dev)))
    monkeypatch.setattr(text_cache, "OFFLOAD_DEVICE", "meta")  # freed: any use during training would fail
    result, cached, logs = _run(tiny_sd1_dir, data, tmp_path / "cached")
    assert encode_calls == [4]  # 4 distinct captions, one batch, before training; none per step
    assert any("text-encoder outputs cached (memory)" in m for m in logs), logs
    assert released and all(p.device.type == "meta" for te in released for p in te.parameters())
    assert [s.step for s in cached] == [s.step for s in plain]
    for a, b in zip(plain, cached):
        assert a.loss == pytest.approx(b.loss, rel=1e-5, abs=1e-7)
    cached_lora = load_file(result.path)
    assert cached_lora.keys() == plain_lora.keys()
    for k in plain_lora:
        torch.testing.assert_close(cached_lora[k].float(), plain_lora[k].float(), rtol=1e-3, atol=1e-5)


def test_disk_cache_reused_and_damaged_files_remade(tiny_sd1_dir, data, tmp_path, encode_calls):
    _, first, logs = _run(tiny_sd1_dir, data, tmp_path / "a", dataset__cache_text_encoder_outputs="disk",
                          optimization__max_train_epochs=1)
    files = sorted((data / "2_toy" / ".loratui_cache").glob("*.te.safetensors"))
    assert len(files) == 4 and encode_calls == [4]

    encode_calls.clear()
    _, second, logs = _run(tiny_sd1_dir, data, tmp_path / "b", dataset__cache_text_encoder_outputs="disk",
                           optimization__max_train_epochs=1)
    assert encode_calls == []  # every caption from the disk
    assert any("4 image(s) from the disk cache" in m for m in logs), logs
    assert [s.loss for s in second] == [s.loss for s in first]

    # one file's tensor bytes flipped (its header intact), one truncated, one of another caption
    raw = bytearray(files[0].read_bytes())
    raw[-5] ^= 0xFF
    files[0].write_bytes(bytes(raw))
    files[1].write_bytes(files[1].read_bytes()[:100])
    caption = (data / "2_toy" / files[2].name.replace(".png.te.safetensors", ".txt"))
    caption.write_text(caption.read_text().strip() + ", edited")
    encode_calls.clear()
    _, third, logs = _run(tiny_sd1_dir, data, tmp_path / "c", dataset__cache_text_encoder_outputs="disk",
                          optimization__max_train_epochs=1)
    assert encode_calls == [3]  # the three bad ones encoded again, never trusted
    assert any("3 stale or damaged file(s) made again" in m for m in logs), logs
    for f in files:  # all rewritten valid
        meta_ok = text_cache._read_valid(f, _key_of(f))
        assert meta_ok is not None, f


def _key_of(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {})["key"]


def test_sdxl_cache_keeps_pooled_output(tiny_sdxl_dir, data, tmp_path, encode_calls):
    _, steps, logs = _run(tiny_sdxl_dir, data, tmp_path / "x", optimization__max_train_epochs=1)
    assert encode_calls == [4] and len(steps) == 4
    assert all(torch.isfinite(torch.tensor(s.loss)) for s in steps)


def test_text_encoders_too_big_for_the_card_cache_with_their_layers_visiting_it(tiny_sd1_dir, data, tmp_path,
                                                                               monkeypatch):
    """On a card whose free memory cannot hold the text encoders (T5-XXL on 8 GB), their layers
    visit it in turn while they cache: the same outputs, the same run, said in the log; after
    it every layer has its weights and no hooks."""
    _, whole, _ = _run(tiny_sd1_dir, data, tmp_path / "whole", optimization__max_train_epochs=1)
    monkeypatch.setattr(memory, "free_memory", lambda device: 1024)  # "1 KB free"
    released: list = []
    original_release = memory.release_text_encoders
    monkeypatch.setattr(memory, "release_text_encoders", lambda tes, dev: (released.extend(tes), original_release(tes, dev)))
    _, visited, logs = _run(tiny_sd1_dir, data, tmp_path / "visited", optimization__max_train_epochs=1)
    said = [m for m in logs if m.startswith("text encoders cached with")]
    assert said and "text encoder's 3 layers visiting cpu in turn" in said[0] and said[0].endswith("1 kB is free"), logs
    assert [s.loss for s in visited] == [s.loss for s in whole]
    (te,) = released
    layers = [m for m in te.modules() if type(m).__name__ == "CLIPEncoderLayer"]
    assert len(layers) == 3
    for layer in layers:
        assert "forward" not in vars(layer) and not any(m._forward_pre_hooks for m in layer.modules())
        assert all(p.numel() > 0 for p in layer.parameters())
    ids = torch.zeros(1, 77, dtype=torch.long)
    with torch.no_grad():  # it still encodes as it did
        assert torch.isfinite(te(ids).last_hidden_state).all()


def test_only_as_many_text_encoders_visit_the_card_in_turn_as_its_free_memory_needs(monkeypatch):
    """T5 swapped layer by layer makes room enough: CLIP goes onto the card whole."""
    from loratui.engine.text_cache import ENCODE_MARGIN

    class Encoder(torch.nn.Module):
        def __init__(self, width, n):
            super().__init__()
            self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(n))

    t5, clip = Encoder(256, 4).requires_grad_(False), Encoder(64, 2).requires_grad_(False)  # frozen, as they cache
    sizes = [memory.module_bytes(t5), memory.module_bytes(clip)]
    layer = memory.module_bytes(t5.layers[0])
    free = sum(sizes) + ENCODE_MARGIN - layer  # one T5 layer too many for the card
    monkeypatch.setattr(memory, "free_memory", lambda device: free)
    logs: list = []
    swaps = memory.encoders_onto([clip, t5], ["CLIP-L", "T5-XXL"], "cpu", logs.append)
    assert len(swaps) == 1 and swaps[0].blocks == list(t5.layers), logs
    assert logs and "T5-XXL's 4 layers visiting cpu in turn" in logs[0] and "CLIP" not in logs[0]
    assert all(p.numel() > 0 for p in clip.parameters())
    swaps[0].restore()


def test_the_encoder_fingerprint_samples_tensors_of_any_size():
    """CLIP-L's token embedding has 49408 × 768 > 2^24 values: float32 steps would index past its end."""
    from types import SimpleNamespace

    from loratui.engine.text_cache import encoder_fingerprint

    class Encoder(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.config = SimpleNamespace(to_dict=lambda: {"n": n})
            self.embed = torch.nn.Embedding(n, 1)

    big = Encoder(2**24 + 8)  # its last index, 2^24 + 7, is 2^24 + 8 in float32
    first = encoder_fingerprint([big], [])
    assert first == encoder_fingerprint([big], []) and len(first) == 32
    with torch.no_grad():
        big.embed.weight[-1] += 1.0  # the last value is among the samples
    assert encoder_fingerprint([big], []) != first
