"""Every registered model family passes the same contract, on its tiny model:
it detects its own checkpoint (diffusers folder and single file), loads it,
encodes a caption, gives a training target of the latents' shape that the
U-Net's prediction matches, finds LoRA targets whose kohya names round-trip,
and renders a 64×64 image with its pipeline."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ldm_convert  # noqa: E402

from loratui.engine.families import families, get_family  # noqa: E402
from loratui.engine.schema import ModelSettings  # noqa: E402

ALL = list(families())
# The U-Net families' contract; SD3 and FLUX (flow-matching transformers) have theirs in test_flow_families.py.
NAMES = [n for n in ALL if not get_family(n).checkpoint_markers]


@pytest.fixture(scope="module", params=NAMES)
def tiny(request, tmp_path_factory):
    from loratui.engine.loading import load_components
    from loratui.engine.tiny import save_tiny_pipeline

    name = request.param
    folder = save_tiny_pipeline(tmp_path_factory.mktemp(f"tiny-{name}") / "model", name)
    return name, folder, load_components(ModelSettings(base_model=str(folder)))


def test_the_registry_holds_the_five_families():
    assert ALL == ["sd1", "sd2", "sdxl", "sd3", "flux"]
    assert NAMES == ["sd1", "sd2", "sdxl"]
    for name in ALL:
        fam = get_family(name)
        assert fam.name == name and fam.text_encoders and fam.config_dir("epsilon").is_dir()


def test_detects_its_own_checkpoint(tiny, tmp_path):
    from loratui.engine.models import detect_family_from_keys, inspect_model
    from loratui.engine.modelfiles import _read_safetensors_header

    name, folder, comp = tiny
    info = inspect_model(ModelSettings(base_model=str(folder)))
    assert info.ok and info.family == name and info.family_source == "config"
    single = ldm_convert.save_single_file(folder, name, tmp_path / "model.safetensors")
    hdr, problem = _read_safetensors_header(single, single.stat().st_size)
    assert problem is None
    assert detect_family_from_keys(hdr.keys, {k: v[1] for k, v in hdr.keys.items()}) == (name, None)
    assert comp.family == name and len(comp.text_encoders) == len(get_family(name).text_encoders)


def test_encodes_a_caption_and_gives_a_target_the_unet_predicts(tiny):
    name, _folder, comp = tiny
    fam = get_family(name)
    ids = fam.tokenize(comp.tokenizers, ["a toy, on a table"])
    assert len(ids) == len(comp.tokenizers)
    with torch.no_grad():
        hidden, pooled = fam.encode_text(comp.text_encoders, ids, 1, "cpu")
    assert hidden.shape[0] == 1 and hidden.shape[-1] == comp.unet.config.cross_attention_dim
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn((1, 4, 8, 8), generator=gen)
    noise = torch.randn(latents.shape, generator=gen)
    noisy, timesteps = fam.noisy_input(comp.noise_scheduler, latents, noise, gen)
    target = fam.target(comp.noise_scheduler, latents, noise, timesteps, comp.prediction_type)
    assert noisy.shape == latents.shape and target.shape == latents.shape and timesteps.shape == (1,)
    crops = [((64, 64), (0, 0), (64, 64))]
    with torch.no_grad():
        pred = fam.predict(comp.unet, noisy, timesteps, hidden, pooled, crops, "cpu", torch.float32)
    assert pred.shape == target.shape
    w = fam.min_snr_weights(comp.noise_scheduler, timesteps, 5.0, comp.prediction_type)
    assert w.shape == (1,) and bool(torch.isfinite(w).all())
    # The same generator state draws the same input: the loop's determinism rests on it.
    state = gen.get_state()
    first = fam.noisy_input(comp.noise_scheduler, latents, noise, gen)
    gen.set_state(state)
    second = fam.noisy_input(comp.noise_scheduler, latents, noise, gen)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_lora_targets_and_kohya_names_round_trip(tiny, tmp_path):
    from loratui.engine.kohya_names import text_encoder_prefix
    from loratui.engine.lora import LoRANetwork, find_targets
    from loratui.engine.lora_file import read_lora_file

    name, folder, _ = tiny
    from loratui.engine.loading import load_components

    comp = load_components(ModelSettings(base_model=str(folder)))  # a fresh copy: LoRA layers get injected
    targets = find_targets(comp.unet, comp.text_encoders, name)
    count = len(comp.text_encoders)
    prefixes = {"lora_unet"} | {text_encoder_prefix(i, count) for i in range(count)}
    assert {next(p for p in prefixes if t.name.startswith(p + "_")) for t in targets.values()} == prefixes
    net = LoRANetwork.create(comp.unet, comp.text_encoders, name, rank=4, alpha=2)
    path = net.save(tmp_path / "lora.safetensors")
    sd, _ = read_lora_file(path)
    assert {k.split(".")[0] for k in sd} == set(net.module_names)
    assert set(net.module_names) <= set(targets)
    fresh = load_components(ModelSettings(base_model=str(folder)))
    net2 = LoRANetwork.create(fresh.unet, fresh.text_encoders, name, rank=4, alpha=2, weights=str(path))
    assert all(torch.equal(a, b) for a, b in zip(net.kohya_state_dict().values(), net2.kohya_state_dict().values()))


def test_pipeline_renders_a_64px_image(tiny):
    name, _folder, comp = tiny
    pipe = get_family(name).pipeline(comp)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a toy", num_inference_steps=2, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(0))
    image = out.images[0]
    assert image.shape == (64, 64, 3) and float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def test_families_declare_the_settings_they_use():
    from loratui.engine.families import family_specific_settings, settings_unused_by
    from loratui.engine.schema import settings

    assert family_specific_settings() <= {s.dotted for s in settings()}  # every name a real setting
    sd1, flux, sd3, sdxl = (settings_unused_by(f) for f in ("sd1", "flux", "sd3", "sdxl"))
    assert {"model.t5xxl", "model.guidance_scale", "model.timestep_sampling", "network.train_blocks"} <= sd1
    assert {"model.v_parameterization", "model.clip_skip", "optimization.min_snr_gamma", "model.clip_g"} <= flux
    assert "model.guidance_scale" in sd3 and "model.clip_g" not in sd3 and "model.weighting_scheme" not in flux
    assert "model.clip_skip" in sdxl and "model.clip_skip" not in sd1  # SDXL always takes the penultimate layer
    assert settings_unused_by("sd15") == sd1 and settings_unused_by("sd1-or-sd2") == sd1 & settings_unused_by("sd2")
    assert settings_unused_by("auto") == settings_unused_by(None) == settings_unused_by("nonsense") == frozenset()
    # what no family lists is used by all: never hidden
    assert not {"model.base_model", "model.vae", "optimization.learning_rate", "model.fp8_base"} & (sd1 | flux | sd3)
