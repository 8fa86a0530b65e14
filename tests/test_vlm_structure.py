"""The full-size default BLIP-2 (Salesforce/blip2-opt-2.7b) and GIT (microsoft/git-large-coco)
built on the meta device from the published sizes (engine.captioners.vlm_configs): no weights,
no network. Their parameter counts, and what the loader in engine.captioners.vlm asks
transformers for on CUDA (fp16, 8-bit when short of memory) and on the CPU (fp32)."""

from __future__ import annotations

import pytest
import torch

from loratui.engine.captioners import CaptionSettings
from loratui.engine.captioners import vlm
from loratui.engine.captioners.vlm_configs import PUBLISHED, PUBLISHED_PARAMS, build_empty, parameter_count, published_config

CLASSES = {"blip2": "Blip2ForConditionalGeneration", "git": "GitForCausalLM"}


@pytest.fixture(scope="module")
def empty_models():
    return {k: build_empty(k) for k in ("blip2", "git")}


def test_the_published_sizes_build_on_the_meta_device(empty_models):
    blip2, git = empty_models["blip2"], empty_models["git"]
    assert type(blip2).__name__ == CLASSES["blip2"] and type(git).__name__ == CLASSES["git"]
    assert all(p.device.type == "meta" for m in (blip2, git) for p in m.parameters())
    n_blip2, n_git = parameter_count(blip2), parameter_count(git)
    assert n_blip2 == pytest.approx(3.74e9, rel=0.01) and n_blip2 == pytest.approx(PUBLISHED_PARAMS["blip2"], rel=0.001)
    assert n_git == pytest.approx(0.39e9, rel=0.02) and n_git == pytest.approx(PUBLISHED_PARAMS["git"], rel=0.001)
    # the parts: ViT-g (~1.0e9), Q-Former (~0.1e9), OPT-2.7b (~2.65e9, its output layer tied to the input)
    assert parameter_count(blip2.vision_model) == pytest.approx(0.985e9, rel=0.01)
    assert parameter_count(blip2.qformer) + blip2.query_tokens.numel() == pytest.approx(0.107e9, rel=0.03)
    assert parameter_count(blip2.language_model) == pytest.approx(2.65e9, rel=0.01)
    assert blip2.get_output_embeddings().weight is blip2.get_input_embeddings().weight
    assert blip2.language_projection.in_features == 768 and blip2.language_projection.out_features == 2560
    assert len(blip2.language_model.model.decoder.layers) == 32 and len(blip2.vision_model.encoder.layers) == 39
    # GIT-large: CLIP ViT-L/14 at 224 px (257 positions) and a 6-layer decoder
    vision = git.git.image_encoder.vision_model
    assert parameter_count(vision) == pytest.approx(0.303e9, rel=0.01)
    assert vision.embeddings.position_embedding.num_embeddings == 257 and len(git.git.encoder.layer) == 6
    assert blip2.config.model_type == vlm.KINDS["blip2"][2] and git.config.model_type == vlm.KINDS["git"][2]
    assert PUBLISHED == {"blip2": CaptionSettings(tagger="blip2").model_id(), "git": CaptionSettings(tagger="git").model_id()}


def test_model_kwargs_per_precision():
    import transformers

    assert vlm.model_kwargs("fp32") == {"dtype": torch.float32}
    assert vlm.model_kwargs("fp16") == {"dtype": torch.float16}
    eight = vlm.model_kwargs("8bit")
    assert eight["dtype"] == torch.float16 and eight["device_map"] == {"": 0}
    q = eight["quantization_config"]
    assert isinstance(q, transformers.BitsAndBytesConfig) and q.load_in_8bit and not q.load_in_4bit


def _fake_loading(monkeypatch, tmp_path, kind: str, device: str, free: int | None):
    """A folder with the published config and a (sparse) fp32 weight file of the published size;
    transformers' from_pretrained replaced by a meta-device build that records its arguments."""
    import transformers

    folder = tmp_path / kind
    published_config(kind).save_pretrained(folder)
    with open(folder / "model.safetensors", "wb") as fh:  # sparse: no disk used
        fh.truncate(int(PUBLISHED_PARAMS[kind]) * 4)
    calls, moved = [], []

    def from_pretrained(cls, path, **kwargs):
        calls.append((cls.__name__, path, kwargs))
        model = build_empty(kind, cls.config_class.from_pretrained(path))
        model.to = lambda *a, **k: (moved.append(a[0] if a else k), model)[1]  # meta weights cannot move
        return model

    for name in CLASSES.values():
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", classmethod(from_pretrained))
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", classmethod(lambda cls, path, **kw: object()))
    monkeypatch.setattr(vlm, "pick_device", lambda setting: device)
    if free is not None:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (free, 141 * 2**30))
    return folder, calls, moved


@pytest.mark.parametrize("kind", ["blip2", "git"])
@pytest.mark.parametrize(("device", "free_gib", "quantize", "want"), [
    ("cpu", None, "auto", "fp32"),
    ("cuda", 40, "auto", "fp16"),  # 7.5 GB of fp16 BLIP-2 fits
    ("cuda", 0.5, "auto", "8bit"),  # nor BLIP-2 nor GIT (0.8 GB fp16) fit in 0.5 GiB: 8-bit
    ("cuda", 40, "8bit", "8bit"),
    ("cuda", 0.5, "none", "fp16"),
])
def test_the_loader_picks_the_class_dtype_and_8bit_arguments(monkeypatch, tmp_path, kind, device, free_gib, quantize,
                                                            want):
    free = int(free_gib * 2**30) if free_gib is not None else None
    folder, calls, moved = _fake_loading(monkeypatch, tmp_path, kind, device, free)
    events = []
    cap = vlm.VlmCaptioner.load(CaptionSettings(tagger=kind, model=str(folder), quantize=quantize, device=device),
                                on_event=events.append)
    assert [(c[0], c[1]) for c in calls] == [(CLASSES[kind], str(folder))]
    kwargs = calls[0][2]
    assert cap.device == device and cap.kind == kind
    if want == "fp32":
        assert kwargs == {"dtype": torch.float32} and moved == ["cpu"] and cap.dtype == torch.float32
    elif want == "fp16":
        assert kwargs == {"dtype": torch.float16} and moved == ["cuda"] and cap.dtype == torch.float16
    else:
        assert set(kwargs) == {"dtype", "quantization_config", "device_map"} and kwargs["dtype"] == torch.float16
        assert kwargs["quantization_config"].load_in_8bit and kwargs["device_map"] == {"": 0}
        assert moved == []  # bitsandbytes placed it; .to() would fail on an 8-bit model
    log = [e.message for e in events if type(e).__name__ == "LogEvent"]
    assert log == [f"{vlm.KINDS[kind][1]} captioner {folder} on {device} ({want})"]
    warned = [e.message for e in events if type(e).__name__ == "WarningEvent"]
    assert bool(warned) == (want == "8bit" and quantize == "auto")
    if warned:
        assert "short for fp16" in warned[0] and "8-bit" in warned[0]


def test_8bit_without_bitsandbytes_says_what_to_do(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails
    from loratui.engine.captioners.common import CaptionError

    with pytest.raises(CaptionError, match="8-bit loading needs bitsandbytes") as exc:
        vlm.model_kwargs("8bit")
    assert "pip install bitsandbytes" in exc.value.hint and "quantize" in exc.value.hint
