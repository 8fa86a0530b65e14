"""Base model inspection and loading (engine/models.py, engine/configs).

Everything runs offline on the tiny models: tiny diffusers folders are
converted to single-file LDM/SGM checkpoints by tests/ldm_convert.py and the
loader must give back exactly the folder's weights.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ldm_convert  # noqa: E402

from loratui.engine.configs import config_dir  # noqa: E402
from loratui.engine.loading import load_components  # noqa: E402
from loratui.engine.models import ModelLoadError, detect_family_from_keys, inspect_model  # noqa: E402
from loratui.engine.schema import ModelSettings  # noqa: E402


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sd1_file(tiny_sd1_dir, tmp_path_factory) -> Path:
    return ldm_convert.save_single_file(
        tiny_sd1_dir, "sd1", tmp_path_factory.mktemp("sf") / "tiny-sd1.safetensors"
    )


@pytest.fixture(scope="module")
def sdxl_file(tiny_sdxl_dir, tmp_path_factory) -> Path:
    return ldm_convert.save_single_file(
        tiny_sdxl_dir, "sdxl", tmp_path_factory.mktemp("sf") / "tiny-sdxl.safetensors"
    )


@pytest.fixture(scope="module")
def sd1_ref(tiny_sd1_dir):
    return load_components(ModelSettings(base_model=str(tiny_sd1_dir)))


def _assert_same_weights(a, b):
    pairs = [("unet", a.unet, b.unet), ("vae", a.vae, b.vae)]
    pairs += [(f"text_encoder{i}", x, y) for i, (x, y) in enumerate(zip(a.text_encoders, b.text_encoders))]
    assert len(a.text_encoders) == len(b.text_encoders)
    for name, x, y in pairs:
        sx, sy = x.state_dict(), y.state_dict()
        assert sx.keys() == sy.keys(), name
        for k in sx:
            assert sx[k].dtype == sy[k].dtype, (name, k)
            assert torch.equal(sx[k], sy[k]), f"{name}.{k} differs"


def _write_safetensors_header(path: Path, tensors: dict[str, tuple[int, ...]], metadata=None) -> Path:
    """A valid safetensors file with zero-filled F16 tensors of these shapes."""
    save_file({k: torch.zeros(s, dtype=torch.float16) for k, s in tensors.items()}, str(path), metadata=metadata)
    return path


# --------------------------------------------------------------------------- bundled configs


def test_bundled_config_folders_are_complete():
    for fam, extra in [("sd15", []), ("sd2", []), ("sd2-v", []), ("sdxl", ["text_encoder_2", "tokenizer_2"])]:
        d = config_dir(fam)
        for rel in ["model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                    "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
                    "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json"]:
            assert (d / rel).is_file(), f"{fam}/{rel}"
        for sub in extra:
            assert (d / sub).is_dir()
    assert config_dir("sd1") == config_dir("sd15")
    with pytest.raises(ValueError):
        config_dir("sd4")  # flux and sd3 have bundled configs now (test_flow_families)
    sched = lambda f: json.loads((config_dir(f) / "scheduler" / "scheduler_config.json").read_text())  # noqa: E731
    assert sched("sd15")["prediction_type"] == "epsilon"
    assert sched("sd2")["prediction_type"] == "epsilon"
    assert sched("sd2-v")["prediction_type"] == "v_prediction"
    assert sched("sdxl")["prediction_type"] == "epsilon"
    vae = json.loads((config_dir("sdxl") / "vae" / "config.json").read_text())
    assert vae["scaling_factor"] == 0.13025 and vae["force_upcast"] is True


def test_bundled_configs_have_the_published_sizes():
    """Full-size models built on the meta device from the bundled configs have
    exactly the published parameter counts."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def count(m):
        return sum(p.numel() for p in m.parameters())

    with init_empty_weights():
        unet = lambda f: UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir(f) / "unet"))  # noqa: E731
        te = lambda f, s="text_encoder", c=CLIPTextModel: c(CLIPTextConfig.from_pretrained(config_dir(f) / s))  # noqa: E731
        assert count(unet("sd15")) == 859_520_964
        assert count(unet("sd2-v")) == 865_910_724
        assert count(unet("sdxl")) == 2_567_463_684
        assert count(te("sd15")) == 123_060_480  # CLIP ViT-L/14 text tower
        assert count(te("sd2")) == 340_387_840  # OpenCLIP ViT-H/14, 23 of 24 layers
        assert count(te("sdxl", "text_encoder_2", CLIPTextModelWithProjection)) == 694_659_840  # bigG


def test_bundled_tokenizers_are_clip_bpe():
    from transformers import CLIPTokenizer

    expected = [49406, 320, 1125, 539, 320, 2368, 49407]  # "a photo of a cat"
    for fam, sub, pad_id in [("sd15", "tokenizer", 49407), ("sd2", "tokenizer", 0), ("sd2-v", "tokenizer", 0),
                             ("sdxl", "tokenizer", 49407), ("sdxl", "tokenizer_2", 0)]:
        tok = CLIPTokenizer.from_pretrained(config_dir(fam) / sub)
        assert len(tok) == 49408
        assert tok("a photo of a cat").input_ids == expected
        assert tok("Hello, World jekyll").input_ids == [49406, 3306, 267, 1002, 49405, 49407]
        padded = tok("a cat", padding="max_length", max_length=77).input_ids
        assert len(padded) == 77 and padded[4] == pad_id, (fam, sub)


# --------------------------------------------------------------------------- single files


def test_single_file_sd1_equals_its_diffusers_folder(sd1_file, tiny_sd1_dir, sd1_ref):
    ms = ModelSettings(base_model=str(sd1_file), model_config_dir=str(tiny_sd1_dir))
    info = inspect_model(ms)
    assert info.ok and info.kind == "file" and info.family == "sd1" and info.format == "safetensors"
    assert info.summary().startswith("SD 1.x · single file · fp32")
    steps: list[str] = []
    comps = load_components(ms, on_progress=steps.append)
    assert comps.family == "sd1" and comps.prediction_type == "epsilon"
    assert comps.noise_scheduler.config.prediction_type == "epsilon"
    assert type(comps.noise_scheduler).__name__ == "DDPMScheduler"
    assert comps.vae_needs_fp32 is False and comps.vae_scale_factor == pytest.approx(0.18215)
    assert comps.source.startswith("SD 1.x · single file")
    assert any("Reading tiny-sd1.safetensors" in s for s in steps)
    _assert_same_weights(comps, sd1_ref)
    assert not any(p.requires_grad for p in comps.unet.parameters())
    ids = comps.tokenizers[0]("the", return_tensors="pt").input_ids
    ref_ids = sd1_ref.tokenizers[0]("the", return_tensors="pt").input_ids
    assert torch.equal(ids, ref_ids)


def test_single_file_sdxl_equals_its_diffusers_folder(sdxl_file, tiny_sdxl_dir):
    ms = ModelSettings(base_model=str(sdxl_file), model_config_dir=str(tiny_sdxl_dir))
    info = inspect_model(ms)
    assert info.ok and info.family == "sdxl"
    comps = load_components(ms, dtype=torch.float16)
    ref = load_components(ModelSettings(base_model=str(tiny_sdxl_dir)), dtype=torch.float16)
    assert comps.family == "sdxl" and len(comps.text_encoders) == 2 and len(comps.tokenizers) == 2
    # SDXL's own VAE overflows in fp16: it stays fp32 while the rest is fp16.
    assert comps.vae_needs_fp32 is True
    assert next(comps.vae.parameters()).dtype == torch.float32
    assert next(comps.unet.parameters()).dtype == torch.float16
    assert type(comps.text_encoders[1]).__name__ == "CLIPTextModelWithProjection"
    _assert_same_weights(comps, ref)


def test_single_file_with_bundled_configs_reports_shape_mismatch(sd1_file):
    # Without model_config_dir the full-size SD 1.5 configs are used: the tiny
    # weights cannot fit them, and the message says what to do.
    ms = ModelSettings(base_model=str(sd1_file))
    with pytest.raises(ModelLoadError) as e:
        load_components(ms)
    msg = str(e.value)
    assert str(sd1_file) in msg and "model_config_dir" in msg and "U-Net" in msg


def test_ckpt_round_trip(tiny_sd1_dir, tmp_path, sd1_ref):
    ckpt = ldm_convert.save_single_file(tiny_sd1_dir, "sd1", tmp_path / "tiny.ckpt")
    ms = ModelSettings(base_model=str(ckpt), model_config_dir=str(tiny_sd1_dir))
    info = inspect_model(ms)
    assert info.ok and info.format == "ckpt" and info.family == "sd1"
    _assert_same_weights(load_components(ms), sd1_ref)


class _Evil:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({self.target!r}, 'w').write('pwned')",))


def test_ckpt_that_needs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned.txt"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "payload": _Evil(str(marker))}, ckpt)
    ms = ModelSettings(base_model=str(ckpt))
    info = inspect_model(ms)
    assert not info.ok
    assert "builtins.exec" in str(info.problems[0]) and "weights_only=True" in str(info.problems[0])
    assert "refused" in str(info.problems[0]) and ".safetensors" in str(info.problems[0])
    # The loader itself refuses too (torch.load(weights_only=True)), with the same explanation.
    from loratui.engine.loading import load_state_dict_file

    with pytest.raises(ModelLoadError) as e:
        load_state_dict_file(ckpt)
    assert "refused" in str(e.value) and "exec" in str(e.value) and str(ckpt) in str(e.value)
    assert not marker.exists()


def test_old_lightning_ckpt_loads_without_lightning(tiny_sd1_dir, tmp_path, sd1_ref):
    """Old training checkpoints carry a pickled PyTorch Lightning
    ModelCheckpoint; it is harmless data and must not block loading."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    mods = {n: types.ModuleType(n) for n in names}
    cls = type("ModelCheckpoint", (), {"__module__": names[-1]})
    mods[names[-1]].ModelCheckpoint = cls
    sys.modules.update(mods)
    try:
        cb = cls()
        cb.best_model_path = "x.ckpt"
        sd = ldm_convert.pipeline_to_ldm(ldm_convert.load_pipeline(tiny_sd1_dir, "sd1"), "sd1")
        ckpt = tmp_path / "lightning.ckpt"
        torch.save({"state_dict": sd, "epoch": 3, "callbacks": {cls: {"best_model_score": torch.tensor(0.5)}},
                    "cb": cb}, ckpt)
    finally:
        for n in names:
            sys.modules.pop(n, None)
    ms = ModelSettings(base_model=str(ckpt), model_config_dir=str(tiny_sd1_dir))
    assert inspect_model(ms).ok
    _assert_same_weights(load_components(ms), sd1_ref)


# --------------------------------------------------------------------------- bad paths


def _problem(spec: str, **kw) -> str:
    info = inspect_model(ModelSettings(base_model=spec, **kw))
    assert not info.ok, info
    with pytest.raises(ModelLoadError) as e:
        load_components(ModelSettings(base_model=spec, **kw))
    assert str(e.value) == "\n".join(map(str, info.problems))
    return str(info.problems[0])


def test_missing_path(tmp_path):
    (tmp_path / "realModel_v1.safetensors").write_bytes(b"")
    msg = _problem(str(tmp_path / "realModel_v2.safetensors"))
    assert "does not exist" in msg and "realModel_v1.safetensors" in msg
    msg = _problem(str(tmp_path / "nowhere" / "m.safetensors"))
    assert "does not exist" in msg and "nowhere" in msg
    msg = _problem("")
    assert msg.startswith("model.base_model: is empty — set it to a .safetensors/.ckpt file")


def test_model_path_that_is_an_image(tmp_path):
    from PIL import Image

    img = tmp_path / "cat.safetensors"  # the extension lies; the bytes tell
    Image.new("RGB", (8, 8)).save(img, format="PNG")
    msg = _problem(str(img))
    assert str(img) in msg and "PNG image" in msg and "not a base model" in msg
    jpg = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(jpg, format="JPEG")
    assert "JPEG image" in _problem(str(jpg))


def test_truncated_safetensors(sd1_file, tmp_path):
    cut = tmp_path / "cut.safetensors"
    data = sd1_file.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    msg = _problem(str(cut))
    assert "truncated" in msg and "download it again" in msg and str(cut) in msg
    # cut inside the header
    cut.write_bytes(data[:100])
    assert "truncated" in _problem(str(cut))


def test_garbage_empty_lfs_and_html_files(tmp_path):
    g = tmp_path / "model.ckpt"
    g.write_bytes(b"\x13\x37" * 500)
    assert "not a model file" in _problem(str(g))
    e = tmp_path / "empty.safetensors"
    e.write_bytes(b"")
    assert "empty (0 bytes)" in _problem(str(e))
    lfs = tmp_path / "lfs.safetensors"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    assert "git lfs pull" in _problem(str(lfs))
    html = tmp_path / "dl.safetensors"
    html.write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    assert "web page" in _problem(str(html))
    trunc_zip = tmp_path / "trunc.ckpt"
    torch.save({"state_dict": {"a.b": torch.zeros(100)}}, trunc_zip)
    trunc_zip.write_bytes(trunc_zip.read_bytes()[:300])
    assert "truncated or damaged" in _problem(str(trunc_zip))


def test_folder_that_is_not_a_model_points_at_the_file(tmp_path):
    (tmp_path / "myModel.safetensors").write_bytes(b"x")
    msg = _problem(str(tmp_path))
    assert "myModel.safetensors" in msg and "model_index.json" in msg


def test_incomplete_diffusers_folder(tiny_sd1_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_sd1_dir, d)
    shutil.rmtree(d / "text_encoder")
    assert "text_encoder/" in _problem(str(d))
    shutil.copytree(tiny_sd1_dir / "text_encoder", d / "text_encoder")
    w = d / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:-1000])
    assert "truncated" in _problem(str(d))


def test_family_setting_that_contradicts_the_weights(sd1_file, tiny_sd1_dir):
    msg = _problem(str(sd1_file), family="sdxl", model_config_dir=str(tiny_sd1_dir))
    assert "model.family = sdxl" in msg and "SD 1.x" in msg
    (p,) = inspect_model(ModelSettings(base_model=str(sd1_file), family="sdxl", model_config_dir=str(tiny_sd1_dir))).problems
    assert p.key == "model.family" and p.is_error  # the form marks the family field, not the model path


def test_bad_model_config_dir(sd1_file, tmp_path):
    assert _problem(str(sd1_file), model_config_dir=str(tmp_path / "nope")).startswith("model.model_config_dir: ")


# --------------------------------------------------------------------------- family detection


def test_family_detection_from_synthetic_headers(tmp_path):
    U = "model.diffusion_model."
    V = {"first_stage_model.encoder.conv_in.weight": (8, 3, 3, 3)}
    cases = {
        "sd1": {**V, U + "input_blocks.0.0.weight": (320, 4, 3, 3),
                "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768)},
        "sd2": {**V, U + "input_blocks.0.0.weight": (320, 4, 3, 3), "cond_stage_model.model.token_embedding.weight": (8, 4)},
        "sdxl": {**V, U + "input_blocks.0.0.weight": (320, 4, 3, 3), U + "label_emb.0.0.weight": (1280, 2816),
                 "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (768,),
                 "conditioner.embedders.1.model.positional_embedding": (77, 1280)},
    }
    for fam, tensors in cases.items():
        p = _write_safetensors_header(tmp_path / f"{fam}.safetensors", tensors)
        info = inspect_model(ModelSettings(base_model=str(p)))
        assert info.ok and info.family == fam and info.family_source == "weights", (fam, info.problems)
    # an SDXL file without its second text encoder is incomplete
    p = _write_safetensors_header(tmp_path / "half.safetensors", {
        k: v for k, v in cases["sdxl"].items() if not k.startswith("conditioner.embedders.1")} | {
        U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 2048)})
    info = inspect_model(ModelSettings(base_model=str(p)))
    assert info.family == "sdxl" and "text encoder 2" in str(info.problems[0])
    # shapes alone (U-Net only): cross-attention width 768 / 1024
    to_k = U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert detect_family_from_keys([to_k], {to_k: (320, 768)}) == ("sd1", None)
    assert detect_family_from_keys([to_k], {to_k: (320, 1024)}) == ("sd2", None)
    # SD 2.x saved in the SGM layout
    assert detect_family_from_keys([U + "x", "conditioner.embedders.0.model.ln_final.weight"])[0] == "sd2"
    # things that are not a base model
    wrong = {
        "LoRA": ["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"],
        "VAE only": ["encoder.conv_in.weight", "decoder.conv_out.weight"],
        "refiner": [U + "label_emb.0.0.weight", "conditioner.embedders.0.model.ln_final.weight"],
        "diffusers-layout": ["down_blocks.0.resnets.0.conv1.weight"],
    }
    for what, keys in wrong.items():
        fam, problem = detect_family_from_keys(keys)
        assert fam is None and problem, what
    assert "LoRA" in detect_family_from_keys(wrong["LoRA"])[1]
    assert "model.vae" in detect_family_from_keys(wrong["VAE only"])[1]
    assert "refiner" in detect_family_from_keys(wrong["refiner"])[1]
    for marker in ("edm_mean", "edm_vpred.sigma_max"):  # Playground v2.5, CosXL: as ComfyUI tells them
        fam, problem = detect_family_from_keys([*cases["sdxl"], marker])
        assert fam is None and "is an EDM-trained SDXL model" in problem, problem
    assert detect_family_from_keys(list(cases["sdxl"])) == ("sdxl", None)
    inp = U + "input_blocks.0.0.weight"
    assert "inpainting" in detect_family_from_keys([inp, "cond_stage_model.transformer.x"], {inp: (320, 9, 3, 3)})[1]


def _sd2_file(path: Path, *, metadata=None, probe_std: float | None = None, extra=()) -> Path:
    tensors = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
        "cond_stage_model.model.token_embedding.weight": torch.zeros(8, 4),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(8, 3, 3, 3),
    }
    if probe_std is not None:
        g = torch.Generator().manual_seed(0)
        v = torch.randn(320, generator=g)
        tensors["model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"] = v / v.std(unbiased=False) * probe_std
    for k in extra:
        tensors[k] = torch.zeros(1)
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_sd2_v_prediction_detect_or_warn(tmp_path):
    # Nothing declares it: a warning saying what to set.
    f = _sd2_file(tmp_path / "sd2-finetune.safetensors")
    info = inspect_model(ModelSettings(base_model=str(f)))
    assert info.ok and info.family == "sd2" and info.prediction_type is None
    assert any("model.v_parameterization" in w and "768-v" in w for w in map(str, info.warnings))
    # The weights look like 768-v (ComfyUI's norm statistic): a stronger warning.
    f = _sd2_file(tmp_path / "sd2-model.safetensors", probe_std=0.2)
    info = inspect_model(ModelSettings(base_model=str(f)))
    assert info.prediction_guess == "v_prediction"
    assert any("looks like an SD 2.x 768-v model" in w for w in map(str, info.warnings))
    f = _sd2_file(tmp_path / "sd2-other.safetensors", probe_std=0.03)
    assert inspect_model(ModelSettings(base_model=str(f))).prediction_guess == "epsilon"
    # With the flag set: no warning, v-prediction.
    info = inspect_model(ModelSettings(base_model=str(f), v_parameterization=True))
    assert info.ok and not info.warnings
    # Declared by metadata or a v_pred marker: detected, used, and said.
    from loratui.engine.models import resolve_prediction

    for f in (
        _sd2_file(tmp_path / "a.safetensors", metadata={"modelspec.prediction_type": "v"}),
        _sd2_file(tmp_path / "b.safetensors", metadata={"modelspec.architecture": "stable-diffusion-v2-768-v"}),
        _sd2_file(tmp_path / "c.safetensors", extra=["v_pred"]),
    ):
        ms = ModelSettings(base_model=str(f))
        info = inspect_model(ms)
        assert info.prediction_type == "v_prediction", f
        pt, warnings = resolve_prediction(info, ms)
        assert pt == "v_prediction" and "model.v_parameterization = true" in str(warnings[0])


def test_v_parameterization_flag_sets_the_noise_scheduler(sd1_file, tiny_sd1_dir):
    ms = ModelSettings(base_model=str(sd1_file), model_config_dir=str(tiny_sd1_dir), v_parameterization=True)
    comps = load_components(ms)
    assert comps.prediction_type == "v_prediction"
    assert comps.noise_scheduler.config.prediction_type == "v_prediction"
    assert comps.source.startswith("SD 1.x v-pred")
    assert any("SD 1.x" in w for w in map(str, comps.warnings))


def test_diffusers_folder_prediction_type_comes_from_its_scheduler(tiny_sd1_dir, tmp_path):
    d = tmp_path / "vpred"
    shutil.copytree(tiny_sd1_dir, d)
    cfg_path = d / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["prediction_type"] = "v_prediction"
    cfg_path.write_text(json.dumps(cfg))
    comps = load_components(ModelSettings(base_model=str(d)), dtype=torch.bfloat16)
    assert comps.prediction_type == "v_prediction"
    assert comps.noise_scheduler.config.prediction_type == "v_prediction"
    assert next(comps.unet.parameters()).dtype == torch.bfloat16
    assert any("v-prediction model" in w for w in map(str, comps.warnings))


# --------------------------------------------------------------------------- separate VAE


def test_separate_vae_file_and_folder(sd1_file, tiny_sd1_dir, tmp_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_sd1_dir / "vae")
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.5)
    vae_dir = tmp_path / "my-vae"
    vae.save_pretrained(vae_dir)
    ldm_vae = tmp_path / "my-vae.safetensors"  # the usual download: LDM layout, no prefix
    save_file({k: v.contiguous() for k, v in ldm_convert.vae_to_ldm(vae).items()}, str(ldm_vae))
    expected = vae.state_dict()
    for spec in (ldm_vae, vae_dir):
        ms = ModelSettings(base_model=str(sd1_file), model_config_dir=str(tiny_sd1_dir), vae=str(spec))
        info = inspect_model(ms)
        assert info.ok and info.vae is not None and info.vae.kind in ("file", "folder")
        got = load_components(ms).vae.state_dict()
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in got), spec
    # a VAE setting that is not a VAE
    ms = ModelSettings(base_model=str(sd1_file), model_config_dir=str(tiny_sd1_dir), vae=str(sd1_file.parent / "nope.safetensors"))
    assert [p.key for p in inspect_model(ms).problems] == ["model.vae"]
    assert str(inspect_model(ms).problems[0]).startswith("model.vae: ")
    lora = _write_safetensors_header(tmp_path / "lora.safetensors", {"lora_unet_x.lora_down.weight": (4, 4)})
    ms = ModelSettings(base_model=str(sd1_file), model_config_dir=str(tiny_sd1_dir), vae=str(lora))
    (p,) = inspect_model(ms).problems
    assert p.key == "model.vae" and "is a LoRA, not a VAE" in p.message and p.hint


def test_sdxl_fp16_fixed_vae_is_not_upcast(sdxl_file, tiny_sdxl_dir, tmp_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_sdxl_dir / "vae")
    fixed = tmp_path / "sdxl-vae-fp16-fix.safetensors"
    save_file({k: v.contiguous() for k, v in ldm_convert.vae_to_ldm(vae).items()}, str(fixed))
    ms = ModelSettings(base_model=str(sdxl_file), model_config_dir=str(tiny_sdxl_dir), vae=str(fixed))
    comps = load_components(ms, dtype=torch.float16)
    assert comps.vae_needs_fp32 is False
    assert next(comps.vae.parameters()).dtype == torch.float16


# --------------------------------------------------------------------------- Hub ids


def _fake_hub_cache(root: Path, repo: str, src: Path) -> Path:
    org, name = repo.split("/")
    base = root / f"models--{org}--{name}"
    rev = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(src, base / "snapshots" / rev)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(rev)
    return base


def test_hub_repo_id_from_the_local_cache_offline(tiny_sdxl_dir, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "tiny-org/tiny-sdxl", tiny_sdxl_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ms = ModelSettings(base_model="tiny-org/tiny-sdxl")
    info = inspect_model(ms)
    assert info.ok and info.kind == "hub" and info.family == "sdxl" and info.size_bytes
    comps = load_components(ms)
    assert comps.family == "sdxl" and comps.source.startswith("SDXL · Hub tiny-org/tiny-sdxl")
    _assert_same_weights(comps, load_components(ModelSettings(base_model=str(tiny_sdxl_dir))))
    # A repo id that is not cached, while offline: a clear problem, no network.
    msg = _problem("someone/not-cached-model")
    assert "Hub: someone/not-cached-model" in inspect_model(ModelSettings(base_model="someone/not-cached-model")).describe()
    assert "HF_HUB_OFFLINE" in msg and "someone/not-cached-model" in msg


def test_inspect_is_cheap_and_does_not_import_torch(sd1_file, tmp_path):
    import subprocess

    code = (
        "import sys; from loratui.engine.schema import ModelSettings; from loratui.engine.models import inspect_model; "
        f"i = inspect_model(ModelSettings(base_model={str(sd1_file)!r})); "
        "assert i.family == 'sd1', i; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_single_file_without_vae_needs_model_vae(tiny_sd1_dir, tmp_path, sd1_ref):
    sd = ldm_convert.pipeline_to_ldm(ldm_convert.load_pipeline(tiny_sd1_dir, "sd1"), "sd1")
    no_vae = tmp_path / "no-vae.safetensors"
    save_file({k: v for k, v in sd.items() if not k.startswith("first_stage_model.")}, str(no_vae))
    msg = _problem(str(no_vae), model_config_dir=str(tiny_sd1_dir))
    assert "no VAE weights" in msg and "model.vae" in msg
    vae_file = tmp_path / "vae.safetensors"
    save_file({k[len("first_stage_model."):]: v for k, v in sd.items() if k.startswith("first_stage_model.")},
              str(vae_file))
    ms = ModelSettings(base_model=str(no_vae), model_config_dir=str(tiny_sd1_dir), vae=str(vae_file))
    assert inspect_model(ms).ok
    _assert_same_weights(load_components(ms), sd1_ref)


def test_fp16_variant_folder(tiny_sd1_dir, tmp_path):
    from loratui.engine.loading import _variant

    d = tmp_path / "variant"
    shutil.copytree(tiny_sd1_dir, d)
    for comp in ("unet", "vae", "text_encoder"):
        for f in (d / comp).glob("*.safetensors"):
            f.rename(f.with_name(f.name.replace(".safetensors", ".fp16.safetensors")))
    assert _variant(d / "unet") == "fp16" and _variant(tiny_sd1_dir / "unet") is None
    assert inspect_model(ModelSettings(base_model=str(d))).ok
    comps = load_components(ModelSettings(base_model=str(d)))
    assert comps.family == "sd1"


@pytest.fixture(scope="module")
def tiny_sd2_dir(tmp_path_factory) -> Path:
    """A tiny SD 2.x-shaped pipeline: linear projections in the U-Net and an
    OpenCLIP-like (gelu) text encoder, as in stable-diffusion-2-1."""
    import tempfile

    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from loratui.engine import tiny

    torch.manual_seed(2)
    tok = CLIPTokenizer.from_pretrained(tiny.write_tiny_tokenizer(Path(tempfile.mkdtemp(prefix="tok-"))))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=tiny.TINY_TEXT["hidden_size"], attention_head_dim=(2, 4), use_linear_projection=True,
        norm_num_groups=16,
    )
    pipe = StableDiffusionPipeline(
        vae=tiny.tiny_vae(), text_encoder=CLIPTextModel(tiny._text_config(len(tok), hidden_act="gelu")),
        tokenizer=tok, unet=unet, scheduler=DDIMScheduler(**tiny.tiny_scheduler_config()),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    out = tmp_path_factory.mktemp("tiny-sd2") / "model"
    pipe.save_pretrained(out)
    return out


def test_single_file_sd2_openclip_layout(tiny_sd2_dir, tmp_path):
    ref = load_components(ModelSettings(base_model=str(tiny_sd2_dir)))
    assert ref.family == "sd2"
    sd = ldm_convert.pipeline_to_ldm(ldm_convert.load_pipeline(tiny_sd2_dir, "sd2"), "sd2")
    assert any(k.startswith("cond_stage_model.model.transformer.resblocks.") for k in sd)
    f = tmp_path / "sd2.safetensors"
    save_file(sd, str(f))
    ms = ModelSettings(base_model=str(f), model_config_dir=str(tiny_sd2_dir), v_parameterization=True)
    info = inspect_model(ms)
    assert info.ok and info.family == "sd2" and not info.warnings
    comps = load_components(ms)
    assert comps.family == "sd2" and comps.prediction_type == "v_prediction"
    _assert_same_weights(comps, ref)
    # The same model saved in the SGM layout (OpenCLIP under conditioner.embedders.0.model.)
    sgm = tmp_path / "sd2-sgm.safetensors"
    p = "cond_stage_model.model."
    save_file({("conditioner.embedders.0.model." + k[len(p):]) if k.startswith(p) else k: v
               for k, v in sd.items()}, str(sgm))
    ms = ModelSettings(base_model=str(sgm), model_config_dir=str(tiny_sd2_dir))
    info = inspect_model(ms)
    assert info.ok and info.family == "sd2"
    assert any("model.v_parameterization" in w for w in map(str, info.warnings))  # SD 2.x: can't tell, warn
    comps = load_components(ms)
    assert comps.prediction_type == "epsilon" and comps.warnings
    _assert_same_weights(comps, ref)


def test_a_weight_in_the_runs_dtype_is_filled_as_is_not_copied():
    """A mapped .safetensors tensor already in the run's dtype becomes the weight itself (a view of
    the file: no RAM of its own); accelerate would otherwise copy it to the meta model's float32
    -- twice a bf16 FLUX file in RAM (bench/load_ram.py: 2.01 of the file before, 0.015 now)."""
    from pathlib import Path

    import torch
    from accelerate import init_empty_weights

    from loratui.engine.loading import _fill_model

    with init_empty_weights():
        layer = torch.nn.Linear(4, 4)
    state = {"weight": torch.randn(4, 4).to(torch.bfloat16), "bias": torch.randn(4).to(torch.float16)}
    _fill_model(layer, state, torch.bfloat16, what="test", path=Path("x.safetensors"), hint="")
    assert layer.weight.dtype == layer.bias.dtype == torch.bfloat16
    assert layer.weight.data_ptr() == state["weight"].data_ptr()  # the same memory
    assert torch.equal(layer.bias, state["bias"].to(torch.bfloat16))  # another dtype: converted
