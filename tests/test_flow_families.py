"""SD3/3.5 and FLUX.1: sd-scripts' flow-matching formulas, detection, full-size LoRA module
names and counts on the meta device, fused-qkv files exactly equal to the trained parts, and
tiny models trained end to end from split single files and diffusers folders."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flow_files import sd35_medium_header_file, write_flux_split_files, write_hub_t5_tokenizer  # noqa: E402
from tiny_runs import tiny_profile  # noqa: E402

from loratui.engine import flow_matching as fm  # noqa: E402
from loratui.engine.events import Finished  # noqa: E402
from loratui.engine.families import get_family, guess_family  # noqa: E402
from loratui.engine.schema import ModelSettings  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    from loratui.engine.tiny import save_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-flow")
    return {f: save_tiny_pipeline(root / f, f) for f in ("flux", "sd3")}


@pytest.fixture
def data(tmp_path):
    from loratui.engine.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path / "images", {"2_toy": 4}, size=(64, 64))


def _gen():
    return torch.Generator().manual_seed(7)


# --------------------------------------------------------------------------- formulas


def test_weighting_densities_and_loss_weights_follow_their_formulas():
    u = fm.density("logit_normal", 64, _gen(), "cpu", logit_mean=0.3, logit_std=1.7)
    assert torch.allclose(u, torch.sigmoid(0.3 + 1.7 * torch.randn(64, generator=_gen())))
    v = torch.rand(64, generator=_gen())
    assert torch.allclose(fm.density("mode", 64, _gen(), "cpu", mode_scale=1.29),
                          1 - v - 1.29 * (torch.cos(math.pi * v / 2) ** 2 - 1 + v))
    assert torch.equal(fm.density("none", 64, _gen(), "cpu"), v)
    s = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(fm.loss_weighting("sigma_sqrt", s), s**-2)
    assert torch.allclose(fm.loss_weighting("cosmap", s), 2 / (math.pi * (1 - 2 * s + 2 * s**2)))
    assert torch.equal(fm.loss_weighting("logit_normal", s), torch.ones(3))


def test_flux_timestep_sampling_follows_sd_scripts():
    n, hw = 32, (64, 48)
    base = fm.FlowSettings()
    z = torch.randn(n, generator=_gen())
    assert torch.equal(fm.flux_sigmas(fm.FlowSettings(timestep_sampling="uniform"), n, hw, _gen(), "cpu"),
                       torch.rand(n, generator=_gen()))
    sig = torch.sigmoid(2.0 * z)
    assert torch.allclose(fm.flux_sigmas(fm.FlowSettings(timestep_sampling="sigmoid", sigmoid_scale=2.0), n, hw, _gen(), "cpu"), sig)
    shifted = fm.flux_sigmas(fm.FlowSettings(timestep_sampling="shift", sigmoid_scale=2.0, discrete_flow_shift=3.1582), n, hw, _gen(), "cpu")
    assert torch.allclose(shifted, 3.1582 * sig / (1 + 2.1582 * sig))
    assert fm.flux_mu(256) == pytest.approx(0.5) and fm.flux_mu(4096) == pytest.approx(1.15)
    mu = fm.flux_mu(32 * 24)
    got = fm.flux_sigmas(fm.FlowSettings(timestep_sampling="flux_shift", sigmoid_scale=2.0), n, hw, _gen(), "cpu")
    assert torch.allclose(got, math.exp(mu) / (math.exp(mu) + (1 / sig - 1)))
    # "sigma": u -> index into the 1000-step schedule shifted by discrete_flow_shift
    idx = (torch.rand(n, generator=_gen()) * 1000).long()
    t = (1000 - idx).float() / 1000
    assert torch.allclose(fm.flux_sigmas(base, n, hw, _gen(), "cpu"), 3.0 * t / (1 + 2.0 * t))
    assert bool(((shifted > 0) & (shifted < 1)).all())


def test_sd3_timesteps_and_prediction_types():
    s = fm.FlowSettings(weighting_scheme="logit_normal", logit_mean=0.0, logit_std=1.0, training_shift=3.0)
    u = torch.sigmoid(torch.randn(16, generator=_gen()))
    u = 3.0 * u / (1 + 2.0 * u)
    assert torch.equal(fm.sd3_sigmas(s, 16, _gen(), "cpu"), (u * 1000).long().float() / 1000)
    pred, x, sig = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2), torch.tensor([0.25, 0.75])
    assert torch.equal(fm.apply_prediction_type("raw", pred, x, sig), pred)
    assert torch.equal(fm.apply_prediction_type("additive", pred, x, sig), pred + x)
    assert torch.allclose(fm.apply_prediction_type("sigma_scaled", pred, x, sig), -sig.view(2, 1, 1, 1) * pred + x)
    lat, noise = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    assert torch.allclose(fm.noisy(lat, noise, sig), (1 - sig.view(2, 1, 1, 1)) * lat + sig.view(2, 1, 1, 1) * noise)


# --------------------------------------------------------------------------- full size, meta device


def _meta_models(family: str, folder: str):
    import diffusers
    import transformers

    from loratui.engine.configs import config_dir

    fam, d = get_family(family), config_dir(folder)
    cls = getattr(diffusers, fam.denoiser_class)
    with torch.device("meta"):
        tr = cls.from_config(cls.load_config(str(d / "transformer")))
        tes = []
        for spec in fam.text_encoders:
            tcls = getattr(transformers, spec.model_class)
            tes.append(tcls(tcls.config_class.from_pretrained(str(d / spec.subfolder))))
    return tr, tes


def _saved_names(family, tr, tes, **net):
    from loratui.engine.lora import find_targets
    from loratui.engine.lora_fused import base_name

    keep = get_family(family).lora_target_filter(SimpleNamespace(**{"train_t5xxl": False, "train_blocks": "all", **net}))
    return list(dict.fromkeys(base_name(n) for n in find_targets(tr, tes, family) if keep(n)))


def _by_part(names):
    out: dict[str, int] = {}
    for n in names:
        out[n.split("_")[1]] = out.get(n.split("_")[1], 0) + 1
    return out


def test_full_size_flux_dev_has_sd_scripts_376_modules():
    tr, tes = _meta_models("flux", "flux")
    assert sum(p.numel() for p in tr.parameters()) == 11_901_408_320  # FLUX.1-dev transformer
    assert sum(p.numel() for p in tes[1].parameters()) == 4_762_310_656  # T5-XXL encoder
    names = _saved_names("flux", tr, tes)
    assert len(names) == 376 and _by_part(names) == {"unet": 304, "te1": 72}
    for n in ("lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_double_blocks_18_txt_mlp_2",
              "lora_unet_double_blocks_0_img_mod_lin", "lora_unet_single_blocks_0_linear1",
              "lora_unet_single_blocks_37_modulation_lin", "lora_te1_text_model_encoder_layers_11_self_attn_q_proj"):
        assert n in names
    assert len(_saved_names("flux", tr, tes, train_blocks="single")) == 72 + 38 * 3
    assert len(_saved_names("flux", tr, tes, train_blocks="double")) == 72 + 19 * 10
    with_t5 = _saved_names("flux", tr, tes, train_t5xxl=True)
    assert len(with_t5) == 376 + 24 * 7 and "lora_te2_encoder_block_0_layer_0_SelfAttention_q" in with_t5


def test_blocks_to_swap_counts_as_sd_scripts_on_full_size_models():
    """sd-scripts' FLUX: blocks_to_swap N = the last N // 2 double-stream and (N - N // 2) * 2
    single-stream blocks, two of each kept (at most 35); SD3: the last N, all but two. The
    estimate books the weights of exactly those blocks."""
    from loratui.engine.estimate.resources import swap_fraction

    fam = get_family("flux")
    tr, _ = _meta_models("flux", "flux")
    chosen = fam.blocks_swapped(tr, 16)
    assert chosen == [*tr.transformer_blocks[-8:], *tr.single_transformer_blocks[-16:]]
    assert fam.max_blocks_to_swap([19, 38]) == 35 and fam.blocks_swapped(tr, 36) is None
    assert fam.blocks_swapped(tr, 35) == [*tr.transformer_blocks[-17:], *tr.single_transformer_blocks[-36:]]
    params = lambda blocks: sum(p.numel() for b in blocks for p in b.parameters())  # noqa: E731
    counted = SimpleNamespace(params={"unet": {"count": params([tr])}},
                              swap_groups=[[params([b]) for b in g] for g in fam.swap_groups(tr)])
    assert swap_fraction("flux", 16, counted) == pytest.approx(params(chosen) / params([tr]))
    assert 0.40 < swap_fraction("flux", 16, counted) < 0.45  # 8 + 16 of 19 + 38 blocks' weights
    assert swap_fraction("flux", 99, counted) == swap_fraction("flux", 35, counted)  # capped at what can swap

    sd3 = get_family("sd3")
    tr3, _ = _meta_models("sd3", "sd35-medium")
    assert sd3.blocks_swapped(tr3, 4) == list(tr3.transformer_blocks[-4:])
    assert sd3.max_blocks_to_swap([len(tr3.transformer_blocks)]) == len(tr3.transformer_blocks) - 2
    assert get_family("sdxl").max_blocks_to_swap([9]) == 9  # a U-Net: its down, mid and up blocks, any of them


def test_check_refuses_more_blocks_to_swap_than_the_model_has_before_loading(tiny_dirs, data, tmp_path):
    """A FLUX.1-sized config (19 double, 38 single blocks): 35 swap, 36 is named before any weight loads."""
    import shutil

    from loratui.engine.training.prepare import prepare_run

    folder = tmp_path / "flux-shaped"
    shutil.copytree(tiny_dirs["flux"], folder)
    cfg_path = folder / "transformer" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(num_layers=19, num_single_layers=38)
    cfg_path.write_text(json.dumps(cfg))
    for n, bad in ((35, False), (36, True)):
        p = tiny_profile(folder, data, tmp_path / f"out{n}", optimization__blocks_to_swap=n)
        found = [c for c in prepare_run(p).checks if c.key == "optimization.blocks_to_swap"]
        assert bool(found) == bad, (n, found)
    assert "is 36, more than this FLUX.1 denoiser (57 blocks) can swap" in found[0].message
    assert found[0].hint == "set it to at most 35"
    tiny = [c for c in prepare_run(tiny_profile(tiny_dirs["sd3"], data, tmp_path / "t", optimization__blocks_to_swap=1)).checks
            if c.key == "optimization.blocks_to_swap"]
    assert tiny and tiny[0].hint == "set it to 0 (off)"  # a 2-block SD3 keeps both on the GPU


@pytest.mark.parametrize("card_gb, swap_range", [(16, (1, 8)), (12, (12, 20)), (8, (24, 32))])
def test_fit_makes_the_24gb_flux_profile_fit_smaller_cards_as_sd_scripts_table_does(card_gb, swap_range):
    """sd-scripts' FLUX table (fp8 base): 16 GB batch 1 + block swap, 12 GB 16 swapped, 8 GB 28 —
    never a lower resolution or rank; the fewest blocks that fit."""
    from loratui.engine.estimate import estimate
    from loratui.engine.estimate.devices import vram_device
    from loratui.engine.estimate.fit import apply, reestimate, suggest
    from loratui.engine.plan import plan_steps
    from loratui.engine.schema.files import load_profile

    p = load_profile(Path(__file__).resolve().parents[1] / "profiles" / "flux-dev-24gb.toml")
    info = SimpleNamespace(family="flux", kind="config", path=None, prediction_type=None, size_bytes=None)
    est = estimate(p, vram_device(card_gb), info, plan_steps(200, batch_size=2, grad_accum=1, epochs=1), 20)
    changes = suggest(p, est)
    assert [c.key for c in changes] == ["optimization.train_batch_size", "optimization.gradient_accumulation_steps",
                                        "optimization.blocks_to_swap"]
    n = changes[-1].value
    assert swap_range[0] <= n <= swap_range[1], n
    assert reestimate(apply(p, changes), est).fits
    fewer = [*changes[:-1], ("optimization.blocks_to_swap", n - 1)]
    assert n == 1 or not reestimate(apply(p, fewer), est).fits


@pytest.mark.parametrize("folder, count, unet", [("sd35-large", 641, 377), ("sd35-medium", 527, 263)])
def test_full_size_sd35_module_counts(folder, count, unet):
    tr, tes = _meta_models("sd3", folder)
    if folder == "sd35-large":
        assert abs(sum(p.numel() for p in tr.parameters()) - 8.06e9) < 0.01e9  # "8.1B"
    names = _saved_names("sd3", tr, tes)
    assert len(names) == count and _by_part(names) == {"unet": unet, "te1": 72, "te2": 192}
    last = tr.config.num_layers - 1
    assert f"lora_unet_joint_blocks_{last}_context_block_adaLN_modulation_1" in names
    assert f"lora_unet_joint_blocks_{last}_context_block_attn_proj" not in names  # pre-only context block
    assert ("lora_unet_joint_blocks_0_x_block_attn2_qkv" in names) == (folder == "sd35-medium")


def test_a_sd35_medium_single_file_is_built_medium_from_its_header(tmp_path):
    """The bundled SD3 configs are large's; a medium file's header gives its own shape, so
    `check --modules` and the estimate list medium's 527 modules."""
    from loratui.engine.configs import config_dir
    from loratui.engine.lora_modules import denoiser_overrides, meta_models
    from loratui.engine.models import inspect_model

    path = sd35_medium_header_file(tmp_path / "sd3.5_medium.safetensors")
    assert path.stat().st_blocks * 512 < 1 << 20  # ~10 GB declared, nothing written
    ms = ModelSettings(base_model=str(path))
    info = inspect_model(ms)
    assert info.family == "sd3"
    over = denoiser_overrides(info, ms, get_family("sd3"))
    assert over["num_layers"] == 24 and over["dual_attention_layers"] == list(range(13))
    tr, tes = meta_models(get_family("sd3"), config_dir("sd35-large"), over)
    names = _saved_names("sd3", tr, tes)
    assert len(names) == 527 and _by_part(names) == {"unet": 263, "te1": 72, "te2": 192}


@pytest.mark.parametrize("family, folder, over, arch", [
    ("flux", "flux", {}, "flux-1-dev/lora"),
    ("flux", "flux", {"guidance_embeds": False}, "flux-1-schnell/lora"),
    ("sd3", "sd35-large", {}, "stable-diffusion-3-5-large/lora"),
    ("sd3", "sd35-medium", {}, "stable-diffusion-3-5-medium/lora"),
    ("sd3", "sd3-medium", {}, "stable-diffusion-3-medium/lora"),
])
def test_modelspec_architecture_names_the_variant_as_sd_scripts_does(family, folder, over, arch):
    """sd-scripts' model types: SD3 medium (no q/k norm), SD3.5 medium (MMDiT-X blocks), SD3.5
    large; Flux schnell (no guidance embedding) and dev. FLUX files carry no prediction type."""
    import diffusers

    from loratui.engine.configs import config_dir
    from loratui.engine.metadata import modelspec
    from loratui.engine.schema import Profile

    fam = get_family(family)
    cls = getattr(diffusers, fam.denoiser_class)
    config = SimpleNamespace(**{**cls.load_config(str(config_dir(folder) / "transformer")), **over})
    spec = modelspec(Profile(), family=family, timestamp=0.0, output_name="x", denoiser_config=config)
    assert spec["modelspec.architecture"] == arch
    assert ("modelspec.prediction_type" in spec) == (family == "sd3")


# --------------------------------------------------------------------------- detection


def test_detected_from_headers_and_folders(tiny_dirs, tmp_path):
    from loratui.engine.models import detect_family_from_keys, inspect_model

    assert detect_family_from_keys({"double_blocks.0.img_attn.qkv.weight", "img_in.weight"}) == ("flux", None)
    aio = {"model.diffusion_model.double_blocks.0.img_attn.qkv.weight", "text_encoders.clip_l.transformer.x", "vae.encoder.x"}
    assert detect_family_from_keys(aio) == ("flux", None)
    assert detect_family_from_keys({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"}) == ("sd3", None)
    assert detect_family_from_keys({"joint_blocks.0.x_block.attn.qkv.weight"}) == ("sd3", None)
    # what no family matches is named as such, with every family loratui trains (SD3 and FLUX among them)
    for keys in ({"transformer_blocks.0.attn.to_q.weight"}, {"some.other.model.weight"}):
        family, why = detect_family_from_keys(keys)
        assert family is None and "is not a checkpoint of a family loratui trains" in why
        assert "(SD 1.x, SD 2.x, SDXL, SD3/3.5, FLUX.1)" in why
    for fam, folder in tiny_dirs.items():
        info = inspect_model(ModelSettings(base_model=str(folder)))
        assert info.ok and info.family == fam, info.problems
    assert guess_family({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (4, 8)}) == "flux"
    assert guess_family({"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": (4, 8),
                         "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 8)}) == "sd3"


def test_split_files_need_their_parts(tiny_dirs, tmp_path):
    from loratui.engine.models import inspect_model

    files = write_flux_split_files(tiny_dirs["flux"], tmp_path / "files")
    alone = inspect_model(ModelSettings(base_model=files["base_model"]))
    assert alone.family == "flux" and not alone.ok
    text = str(alone.problems[0])
    assert "VAE" in text and "CLIP-L" in text and "T5-XXL" in text
    ok = inspect_model(ModelSettings(**files))
    assert ok.ok and ok.family == "flux" and ok.dtype == "bf16", ok.problems
    bad = inspect_model(ModelSettings(**{**files, "t5xxl": str(tmp_path / "nope.safetensors")}))
    assert [p.key for p in bad.problems] == ["model.t5xxl"]


# --------------------------------------------------------------------------- fused modules


def _randomize(net):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in net.modules:
            m.up.weight.copy_(torch.randn(m.up.weight.shape, generator=g))
            m.down.weight.copy_(torch.randn(m.down.weight.shape, generator=g))


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_fused_module_is_exactly_the_trained_parts(tiny_dirs, family, tmp_path):
    from loratui.engine.loading import load_components
    from loratui.engine.lora import LoRANetwork

    comp = load_components(ModelSettings(base_model=str(tiny_dirs[family])))
    net = LoRANetwork.create(comp.unet, comp.text_encoders, family, rank=4, alpha=2)
    _randomize(net)
    sd = net.kohya_state_dict()
    by = {m.name: m for m in net.modules}
    fused = [n for n in net.saved_module_names if any(k.startswith(n + "#") for k in by)]
    assert fused and set(k.split(".")[0] for k in sd) == set(net.saved_module_names)
    for name in fused:
        delta = float(sd[f"{name}.alpha"]) / sd[f"{name}.lora_down.weight"].shape[0] * (
            sd[f"{name}.lora_up.weight"] @ sd[f"{name}.lora_down.weight"])
        parts = sorted((k for k in by if k.startswith(name + "#")), key=lambda k: k.split("#")[1])
        want = [m.scale * (m.up.weight @ m.down.weight) for m in (by[p] for p in parts)]
        if parts[0].endswith("#s"):  # SD3's last context adaLN: diffusers has its halves swapped
            a, b = want[0].chunk(2)
            want = [b, a]
        assert torch.allclose(delta, torch.cat(want, dim=0), atol=1e-5), name
    path = net.save(tmp_path / "lora.safetensors")
    fresh = load_components(ModelSettings(base_model=str(tiny_dirs[family])))
    again = LoRANetwork.create(fresh.unet, fresh.text_encoders, family, rank=4, alpha=2, weights=str(path))
    assert all(torch.equal(again._by_name[m.name].up.weight, m.up.weight) for m in net.modules)
    assert all(torch.equal(again._by_name[m.name].down.weight, m.down.weight) for m in net.modules)


# --------------------------------------------------------------------------- end to end


def _train(profile):
    from loratui.engine.train import run_training

    events = []
    result = run_training(profile, events.append)
    assert isinstance(result, Finished), result
    return result


def _transformer_out(model, family, g_seed=0):
    g = torch.Generator().manual_seed(g_seed)
    if family == "flux":
        kw = dict(hidden_states=torch.randn(1, 16, 64, generator=g), encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
                  pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.5]),
                  img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3), guidance=torch.tensor([1.0]))
    else:
        kw = dict(hidden_states=torch.randn(1, 16, 8, 8, generator=g), encoder_hidden_states=torch.randn(1, 8, 64, generator=g),
                  pooled_projections=torch.randn(1, 64, generator=g), timestep=torch.tensor([500.0]))
    with torch.no_grad():
        return model(**kw, return_dict=False)[0]


def test_flux_from_split_files_trains_and_loads_in_diffusers(tiny_dirs, data, tmp_path, monkeypatch):
    from loratui.engine.loading import load_components
    from loratui.engine.lora import LoRANetwork

    monkeypatch.setenv("HF_HUB_CACHE", str(write_hub_t5_tokenizer(tmp_path / "hub")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    files = write_flux_split_files(tiny_dirs["flux"], tmp_path / "files")
    model = {f"model__{k}": v for k, v in files.items() if k != "base_model"}
    # diffusers' kohya FLUX converter assumes full-size single blocks: train the double blocks here
    profile = tiny_profile(files["base_model"], data, tmp_path / "out", optimization__max_train_epochs=1,
                           model__t5xxl_max_token_length=8, model__timestep_sampling="shift",
                           model__model_prediction_type="raw", model__guidance_scale=1.0,
                           network__train_blocks="double", output__save_precision="float", **model)
    result = _train(profile)
    with safe_open(result.path, "pt") as f:
        keys, md = set(f.keys()), f.metadata()
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in keys
    assert "lora_unet_double_blocks_0_txt_attn_qkv.lora_up.weight" in keys
    assert not any(k.startswith(("lora_unet_single_blocks_", "lora_te2_")) for k in keys)
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_self_attn_q_proj") for k in keys)
    assert md["ss_network_module"] == "networks.lora_flux" and md["ss_base_model_version"] == "flux1"
    assert md["modelspec.architecture"] == "flux-1-dev/lora" and md["ss_timestep_sampling"] == "shift"
    assert "modelspec.prediction_type" not in md  # sd-scripts writes none for FLUX
    assert md["ss_model_prediction_type"] == "raw" and md["ss_network_args"] == '{"train_blocks": "double"}'
    # `check --modules` lists exactly the file's modules: fused ones as one, with the saved shape, rank and alpha
    from loratui.engine.lora_modules import plan_modules

    listed = {m.name: m for m in plan_modules(profile).modules}
    assert set(listed) == {k.rsplit(".", 2)[0] for k in keys}
    with safe_open(result.path, "pt") as f:
        for name, m in listed.items():
            down, up = f.get_slice(f"{name}.lora_down.weight").get_shape(), f.get_slice(f"{name}.lora_up.weight").get_shape()
            assert (m.rank, m.in_dim, m.out_dim) == (down[0], down[1], up[0]), name
            assert m.alpha == pytest.approx(f.get_tensor(f"{name}.alpha").item()), name
    assert listed["lora_unet_double_blocks_0_img_attn_qkv"].rank == 3 * 4  # q, k, v apart in memory: one module saved

    ms = profile.model
    base = _transformer_out(load_components(ms).unet, "flux")
    ours = load_components(ms)
    LoRANetwork.create(ours.unet, ours.text_encoders, "flux", rank=4, alpha=2, weights=result.path)
    trained = _transformer_out(ours.unet, "flux")
    fresh = load_components(ms)
    pipe = get_family("flux").pipeline(fresh)
    pipe.load_lora_weights(result.path)
    loaded = _transformer_out(pipe.transformer, "flux")
    assert not torch.allclose(base, trained, atol=1e-6)
    assert torch.allclose(loaded, trained, atol=1e-5)
    ids = fresh.tokenizers[0](["a toy"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(pipe.text_encoder(ids).pooler_output, ours.text_encoders[0](ids).pooler_output, atol=1e-5)

    # try it headless on the model as the profile gives it (clip_l, t5xxl, ae beside the transformer file)
    import numpy as np
    from PIL import Image

    from loratui.engine.cli import run_command
    from loratui.engine.schema.files import save_profile

    sheet = tmp_path / "sheet.png"
    args = ["sample", str(result.path), "--weights", "0,1", "--cpu", "--out", str(sheet), "--prompt", "toy --s 2 --w 64 --h 64"]
    assert run_command([*args, "--base", files["base_model"]]) == 2  # the transformer file alone lacks its parts
    assert run_command([*args, "--profile", str(save_profile(profile, tmp_path / "flux.toml"))]) == 0
    a = np.asarray(Image.open(sheet).convert("RGB")).astype(int)
    assert a.shape == (24 + 68, 160 + 2 * 68, 3)
    assert np.abs(a[24:88, 228:292] - a[24:88, 160:224]).max() > 0  # weight 1 differs from the base model


def test_flux_folder_all_blocks_trains_and_continues(tiny_dirs, data, tmp_path):
    first = _train(tiny_profile(tiny_dirs["flux"], data, tmp_path / "a", optimization__max_train_epochs=1,
                                model__t5xxl_max_token_length=8, network__train_text_encoder=False))
    with safe_open(first.path, "pt") as f:
        keys = set(f.keys())
    assert "lora_unet_single_blocks_1_linear1.lora_down.weight" in keys
    assert "lora_unet_double_blocks_0_img_mlp_0.lora_up.weight" in keys
    assert not any(k.startswith("lora_te") for k in keys)
    again = _train(tiny_profile(tiny_dirs["flux"], data, tmp_path / "b", optimization__max_train_epochs=1,
                                model__t5xxl_max_token_length=8, network__train_text_encoder=False,
                                network__network_weights=first.path, optimization__max_train_steps=1))
    with safe_open(again.path, "pt") as f:
        assert set(f.keys()) == keys


def test_sd3_folder_trains_continues_and_says_so_in_metadata(tiny_dirs, data, tmp_path):
    first = _train(tiny_profile(tiny_dirs["sd3"], data, tmp_path / "a", optimization__max_train_epochs=1,
                                model__weighting_scheme="logit_normal", model__t5xxl_max_token_length=8))
    with safe_open(first.path, "pt") as f:
        keys, md = set(f.keys()), f.metadata()
    for n in ("lora_unet_joint_blocks_0_x_block_attn_qkv", "lora_unet_joint_blocks_0_x_block_attn2_qkv",
              "lora_unet_joint_blocks_1_context_block_adaLN_modulation_1", "lora_te2_text_model_encoder_layers_0_mlp_fc1"):
        assert f"{n}.lora_down.weight" in keys
    assert not any(k.startswith("lora_te3_") for k in keys)
    assert md["ss_network_module"] == "networks.lora_sd3" and md["ss_base_model_version"] == "sd3"
    assert md["ss_weighting_scheme"] == "logit_normal"
    tiny = json.loads((tiny_dirs["sd3"] / "transformer" / "config.json").read_text())
    kind = "5-medium" if tiny.get("dual_attention_layers") else "5-large" if tiny.get("qk_norm") else "medium"
    assert md["modelspec.architecture"] == f"stable-diffusion-3-{kind}/lora" and md["modelspec.prediction_type"] == "epsilon"
    again = _train(tiny_profile(tiny_dirs["sd3"], data, tmp_path / "b", optimization__max_train_epochs=1,
                                model__t5xxl_max_token_length=8, network__network_weights=first.path, optimization__max_train_steps=1))
    with safe_open(again.path, "pt") as f:
        assert set(f.keys()) == keys


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_min_snr_gamma_warns_it_does_nothing_on_flow_models(tiny_dirs, data, tmp_path, family, capsys):
    from loratui.engine.cli import run_command
    from loratui.engine.schema.files import save_profile
    from loratui.engine.training.prepare import prepare_run

    profile = tiny_profile(tiny_dirs[family], data, tmp_path / "out", optimization__min_snr_gamma=5.0)
    prepared = prepare_run(profile)
    assert prepared.ok, prepared.problems  # a warning, not an error: sd-scripts trains with it ignored
    (w,) = [p for p in prepared.profile_warnings if p.key == "optimization.min_snr_gamma"]
    assert not w.is_error and "no effect on flow-matching models" in w.message and "weighting_scheme" in w.hint
    assert any(s.startswith("optimization.min_snr_gamma: is 5, but") for s in prepared.warnings)
    path = save_profile(profile, tmp_path / "p.toml")
    assert run_command(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "warning  optimization.min_snr_gamma: is 5, but min-SNR weighting has no effect" in out
    assert "model.weighting_scheme" in out and "ready to train" in out
    # U-Net families use it: no warning; a flow model without it: none either
    assert not [p for p in prepare_run(tiny_profile(tiny_dirs[family], data, tmp_path / "o2")).profile_warnings
                if p.key == "optimization.min_snr_gamma"]


def test_settings_of_another_family_are_warned_as_ignored():
    from loratui.engine.schema import profile_from_dict
    from loratui.engine.training.prepare import family_option_problems

    p = profile_from_dict({"model": {"base_model": "x.safetensors", "t5xxl": "t5.safetensors", "guidance_scale": 1.0,
                                     "v_parameterization": True, "clip_skip": 2}, "network": {"train_blocks": "single"}})
    sd1 = {w.key: w for w in family_option_problems(p, "sd1")}
    assert set(sd1) == {"model.t5xxl", "model.guidance_scale", "network.train_blocks"}
    assert not any(w.is_error for w in sd1.values())
    assert str(sd1["model.t5xxl"]) == ("model.t5xxl: is set, but SD 1.x models do not use it (only SD3/3.5 and FLUX.1): "
                                       "it is ignored — clear it for this model")
    assert sd1["model.guidance_scale"].hint == "set it back to 3.5 for this model"
    flux = {w.key: w for w in family_option_problems(p, "flux")}
    assert set(flux) == {"model.v_parameterization"}  # clip_skip: the family's own warning when the run starts
    assert flux["model.v_parameterization"].hint == "turn it off for this model"
    assert "only SD 1.x, SD 2.x and SDXL" in flux["model.v_parameterization"].message
    assert {w.key for w in family_option_problems(p, "sd3")} == {"model.guidance_scale", "network.train_blocks",
                                                                 "model.v_parameterization"}
    assert family_option_problems(p, None) == [] and family_option_problems(p, "auto") == []


def test_min_snr_gamma_is_no_warning_on_unet_families():
    from loratui.engine.schema import profile_from_dict
    from loratui.engine.training.prepare import family_option_problems

    p = profile_from_dict({"model": {"base_model": "x.safetensors"}, "optimization": {"min_snr_gamma": 5.0}})
    for fam in ("sd1", "sd2", "sdxl"):
        assert family_option_problems(p, fam) == []
    (w,) = family_option_problems(p, "flux")
    assert w.key == "optimization.min_snr_gamma" and not w.is_error


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_samples_during_training_render_with_flow_matching_euler(tiny_dirs, data, tmp_path, family):
    from PIL import Image

    from loratui.engine.events import SampleSaved
    from loratui.engine.train import run_training

    # a U-Net sampler name is asked for: SD3/FLUX render with their flow-matching Euler (as sd-scripts)
    profile = tiny_profile(tiny_dirs[family], data, tmp_path / "out", optimization__max_train_epochs=1,
                           optimization__max_train_steps=1, model__t5xxl_max_token_length=8,
                           output__sample_every_n_epochs=1, output__sample_sampler="ddim",
                           output__sample_prompts="a toy --n blue --s 2 --w 64 --h 64 --l 2 --d 3")
    events = []
    assert isinstance(run_training(profile, events.append), Finished)
    assert not [e for e in events if type(e).__name__ == "WarningEvent" and "sample" in e.message]
    (saved,) = [e for e in events if isinstance(e, SampleSaved)]
    image = Image.open(saved.path)
    assert image.size == (64, 64) and (saved.epoch, saved.seed) == (1, 3)
    assert "Sampler: euler," in image.text["parameters"] and "Steps: 2" in image.text["parameters"]
    assert Path(saved.path).parent == tmp_path / "out" / "sample"


# --------------------------------------------------------------------------- kohya_ss / sd-scripts


def test_kohya_flux_preset_imports_and_exports_to_flux_train_network():
    from loratui.engine.kohya.exporter import sd_scripts_args, sd_scripts_command
    from loratui.engine.kohya.importer import import_kohya
    from loratui.engine.schema import profile_from_dict

    from conftest import SHARED_FIXTURES

    r = import_kohya(SHARED_FIXTURES / "kohya_ss" / "flux1d_adamw8bit_fp8.json")
    m, n = r.profile_dict["model"], r.profile_dict["network"]
    assert m["family"] == "flux" and n["network_type"] == "lora" and n["train_blocks"] == "all"
    assert m["clip_l"].startswith("put the full path to clip_l") and m["ae"].startswith("put the full path to ae")
    assert (m["timestep_sampling"], m["model_prediction_type"], m["guidance_scale"]) == ("sigmoid", "raw", 1.0)
    assert (m["t5xxl_max_token_length"], m["apply_t5_attn_mask"], m["discrete_flow_shift"]) == (512, True, 3.0)
    assert not any("LoRA_type" in str(u) or "flux1_checkbox" in str(u) for u in r.unsupported)
    p = profile_from_dict({**r.profile_dict, "network": {**n, "train_blocks": "single", "train_t5xxl": True}})
    args, _extra = sd_scripts_args(p)
    assert args["network_module"] == "networks.lora_flux"
    assert args["network_args"] == ["train_blocks=single", "train_t5xxl=True"]
    assert args["timestep_sampling"] == "sigmoid" and args["guidance_scale"] == 1.0 and "clip_g" not in args
    assert " flux_train_network.py " in sd_scripts_command(p)
    # an SD 1.x export carries none of the flow-matching arguments train_network.py would refuse
    sd1, _ = sd_scripts_args(profile_from_dict({"model": {"base_model": "x.safetensors", "family": "sd1"}}))
    assert not {"timestep_sampling", "guidance_scale", "clip_l", "t5xxl", "weighting_scheme"} & set(sd1)
    sd3 = profile_from_dict({"model": {"base_model": "x.safetensors", "family": "sd3", "clip_g": "g.safetensors"}})
    a3, _ = sd_scripts_args(sd3)
    assert a3["network_module"] == "networks.lora_sd3" and a3["clip_g"] == "g.safetensors"
    assert " sd3_train_network.py " in sd_scripts_command(sd3)


@pytest.mark.parametrize("name, family, batch", [("flux-dev-24gb", "flux", 2), ("flux-dev-12gb", "flux", 1),
                                                 ("sd35-medium-16gb", "sd3", 1), ("sd35-large-24gb", "sd3", 1)])
def test_bundled_flow_profiles_load(name, family, batch):
    from loratui.engine.schema.files import load_profile

    path = Path(__file__).resolve().parents[1] / "profiles" / f"{name}.toml"
    p = load_profile(path)
    assert p.model.family == family and p.optimization.train_batch_size == batch
    assert p.optimization.gradient_checkpointing and p.optimization.mixed_precision == "bf16"
    text = path.read_text()
    assert "TODO" not in text and "guide" in text
    # the guides' memory settings: text-encoder outputs cached; fp8 base where they use it; block swap on 12 GB
    assert p.dataset.cache_text_encoder_outputs == "disk"
    assert p.model.fp8_base == (name in ("flux-dev-24gb", "flux-dev-12gb", "sd35-large-24gb"))
    assert p.optimization.blocks_to_swap == (16 if name == "flux-dev-12gb" else 0)  # sd-scripts guide: 16 on 12 GB
    if family == "flux":
        assert (p.model.timestep_sampling, p.model.model_prediction_type, p.model.guidance_scale) == ("shift", "raw", 1.0)


@pytest.mark.parametrize("name, card_gb", [("flux-dev-24gb", 24), ("flux-dev-12gb", 12), ("sd35-medium-16gb", 16),
                                            ("sd35-large-24gb", 24)])
def test_bundled_flow_profiles_fit_the_card_they_are_named_for(name, card_gb, tmp_path):
    """loratui's own estimate (the full-size model counted on the meta device) says each
    bundled profile fits the card in its name: what a user of that card sees first."""
    from loratui.engine.estimate import estimate
    from loratui.engine.estimate.devices import vram_device
    from loratui.engine.models import inspect_model
    from loratui.engine.plan import plan_steps
    from loratui.engine.schema.files import load_profile

    p = load_profile(Path(__file__).resolve().parents[1] / "profiles" / f"{name}.toml")
    if name == "sd35-medium-16gb":  # the bundled SD3 configs are large's: medium's shape comes from its header
        path = sd35_medium_header_file(tmp_path / "sd3.5_medium.safetensors")
        info = inspect_model(ModelSettings(base_model=str(path)))
        assert info.family == "sd3"
    else:  # the bundled configs are FLUX.1-dev's and SD3.5 large's
        info = SimpleNamespace(family=p.model.family, kind="config", path=None, prediction_type=None, size_bytes=None)
    plan = plan_steps(200, batch_size=p.optimization.train_batch_size, grad_accum=1, epochs=1)
    est = estimate(p, vram_device(card_gb), info, plan, 20)
    assert est.vram.fits, (name, est.vram.total / 2**30)
    assert est.vram.terms["transformer weights"] > 4 * 2**30  # the full-size model, not a tiny one


def test_flux_all_in_one_file_loads_the_same_model(tiny_dirs, tmp_path):
    from flow_files import write_flux_all_in_one

    from loratui.engine.loading import load_components
    from loratui.engine.models import inspect_model

    path = write_flux_all_in_one(tiny_dirs["flux"], tmp_path)
    # the tiny text encoders / VAE are not the bundled shapes: their configs (and both tokenizers) from the folder
    ms = ModelSettings(base_model=str(path), model_config_dir=str(tiny_dirs["flux"]))
    info = inspect_model(ms)
    assert info.ok and info.family == "flux" and info.dtype == "fp16", info.problems
    comp = load_components(ms)
    ref = load_components(ModelSettings(base_model=str(tiny_dirs["flux"])))
    for a, b in ((comp.unet, ref.unet), (comp.vae, ref.vae), *zip(comp.text_encoders, ref.text_encoders)):
        sa, sb = a.state_dict(), b.state_dict()
        assert set(sa) <= set(sb) and all(torch.allclose(sa[k], sb[k], atol=1e-2, rtol=1e-2) for k in sa)
    assert comp.tokenizers[1].model_max_length == 512  # FLUX dev's T5 length (guidance embedding present)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_pipeline_renders_a_64px_image(tiny_dirs, family):
    from loratui.engine.loading import load_components

    comp = load_components(ModelSettings(base_model=str(tiny_dirs[family]), t5xxl_max_token_length=8))
    pipe = get_family(family).pipeline(comp)
    pipe.set_progress_bar_config(disable=True)
    extra = {"max_sequence_length": 8}
    out = pipe("a toy", num_inference_steps=2, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(0), **extra)
    image = out.images[0]
    assert image.shape == (64, 64, 3) and float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def test_sd3_all_in_one_file_loads_the_same_model_and_trains(tiny_dirs, data, tmp_path):
    """A ComfyUI-style SD3.5 file (transformer in Stability AI's names, both CLIPs, T5, VAE):
    its shape read from the file, the same model as the diffusers folder, and a run trains from it."""
    from flow_files import write_sd3_all_in_one

    from loratui.engine.loading import load_components
    from loratui.engine.models import inspect_model

    path = write_sd3_all_in_one(tiny_dirs["sd3"], tmp_path)
    # the tiny text encoders / VAE are not the bundled shapes: their configs (and tokenizers) from the folder
    ms = ModelSettings(base_model=str(path), model_config_dir=str(tiny_dirs["sd3"]))
    info = inspect_model(ms)
    assert info.ok and info.family == "sd3", info.problems
    comp = load_components(ms)
    ref = load_components(ModelSettings(base_model=str(tiny_dirs["sd3"])))
    for a, b in ((comp.unet, ref.unet), (comp.vae, ref.vae), *zip(comp.text_encoders, ref.text_encoders)):
        sa, sb = a.state_dict(), b.state_dict()
        assert set(sa) <= set(sb)
        differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
        assert differ == (["text_projection.weight"] if a is comp.text_encoders[0] else []), differ
    # its clip_l has no projection (as the real files): the identity, as sd-scripts and ComfyUI take it
    proj = comp.text_encoders[0].text_projection.weight
    assert torch.equal(proj, torch.eye(*proj.shape, dtype=proj.dtype))
    result = _train(tiny_profile(str(path), data, tmp_path / "out", optimization__max_train_epochs=1,
                                 model__model_config_dir=str(tiny_dirs["sd3"]), model__t5xxl_max_token_length=8))
    with safe_open(result.path, "pt") as f:
        keys, md = set(f.keys()), f.metadata()
    assert "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight" in keys
    assert "lora_unet_joint_blocks_0_x_block_attn2_qkv.lora_up.weight" in keys  # the MMDiT-X block
    assert md["modelspec.architecture"] == "stable-diffusion-3-5-medium/lora"


def test_sd3_split_files_load_the_same_model(tiny_dirs, tmp_path):
    """The MMDiT + VAE file with clip_l, clip_g and t5xxl as separate files (model.clip_l ...)."""
    from flow_files import write_sd3_split_files

    from loratui.engine.loading import load_components
    from loratui.engine.models import inspect_model

    files = write_sd3_split_files(tiny_dirs["sd3"], tmp_path)
    alone = inspect_model(ModelSettings(base_model=files["base_model"]))
    assert alone.family == "sd3" and not alone.ok
    assert all(part in str(alone.problems[0]) for part in ("CLIP-L", "CLIP-G", "T5-XXL"))
    ms = ModelSettings(**files, model_config_dir=str(tiny_dirs["sd3"]))
    info = inspect_model(ms)
    assert info.ok, info.problems
    comp = load_components(ms)
    ref = load_components(ModelSettings(base_model=str(tiny_dirs["sd3"])))
    for a, b in ((comp.unet, ref.unet), (comp.vae, ref.vae), *zip(comp.text_encoders, ref.text_encoders)):
        sa, sb = a.state_dict(), b.state_dict()
        assert set(sa) <= set(sb)
        differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
        assert differ == (["text_projection.weight"] if a is comp.text_encoders[0] else []), differ
    proj = comp.text_encoders[0].text_projection.weight  # clip_l.safetensors has none: the identity
    assert torch.equal(proj, torch.eye(*proj.shape, dtype=proj.dtype))


def _scaled_fp8(sd: dict) -> dict:
    """ComfyUI's scaled fp8 layout: each 2-D weight stored as fp8(w / s) beside ``.scale_weight`` s."""
    out = {"scaled_fp8": torch.zeros(2, dtype=torch.float8_e4m3fn)}
    for k, v in sd.items():
        if k.endswith(".weight") and v.ndim == 2 and v.abs().max() > 0:
            s = v.float().abs().max() / 448
            out[k] = (v.float() / s).to(torch.float8_e4m3fn)
            out[k[: -len(".weight")] + ".scale_weight"] = s.reshape(())
        else:
            out[k] = v.contiguous()
    return out


def _relative_error(model, ref) -> float:
    sa, sb = model.state_dict(), ref.state_dict()
    return max(float((sa[k].float() - sb[k].float()).norm() / sb[k].float().norm()) for k in sa
               if k.endswith(".weight") and sb[k].ndim == 2 and sb[k].float().norm() > 0)


def test_fp8_and_scaled_fp8_files(tiny_dirs, tmp_path, monkeypatch):
    """An fp8 transformer read for an fp8 base stays fp8 (not upcast on the way in) and its LoRA
    trains in float32; ComfyUI's scaled fp8 files (sd3.5_large_fp8_scaled, t5xxl_fp8_e4m3fn_scaled)
    load as their real weights, the scale multiplied back."""
    from safetensors.torch import load_file, save_file

    from loratui.engine.loading import load_components
    from loratui.engine.lora import LoRANetwork

    monkeypatch.setenv("HF_HUB_CACHE", str(write_hub_t5_tokenizer(tmp_path / "hub")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = load_components(ModelSettings(base_model=str(tiny_dirs["flux"])))
    files = write_flux_split_files(tiny_dirs["flux"], tmp_path / "fp8", dtype=torch.float8_e4m3fn)
    parts = {k: v for k, v in files.items() if k != "base_model"}
    comp = load_components(ModelSettings(base_model=files["base_model"], fp8_base=True, **parts))
    linears = [m for m in comp.unet.modules() if type(m) is torch.nn.Linear]
    assert len(linears) > 20 and all(m.weight.dtype == torch.float8_e4m3fn for m in linears)
    assert _relative_error(comp.unet, ref.unet) < 0.1
    # the fp8 T5 file (t5xxl_fp8_e4m3fn) stays fp8 too, computed in the run's dtype: the same outputs as upcast
    import copy

    t5 = comp.text_encoders[1]
    t5_linears = {n: m for n, m in t5.named_modules() if type(m) is torch.nn.Linear}
    assert t5_linears and all((m.weight.dtype == torch.float8_e4m3fn) == (not n.endswith(".wo"))
                              for n, m in t5_linears.items())  # (T5's wo casts its input to its weight's dtype)
    upcast = copy.deepcopy(t5)
    for m in (m for m in upcast.modules() if type(m) is torch.nn.Linear):
        m.weight.data = m.weight.data.float()
        vars(m).pop("forward", None)
    ids = torch.randint(0, 32, (2, 8))
    with torch.no_grad():
        assert torch.equal(t5(ids).last_hidden_state, upcast(ids).last_hidden_state)
    net = LoRANetwork.create(comp.unet, comp.text_encoders, "flux", rank=4, alpha=4.0, train_text_encoder=False)
    assert net.parameters() and all(p.dtype == torch.float32 for p in net.parameters())
    downs = [m.down.weight for m in net.modules]
    assert all(d.abs().sum() > 0 for d in downs)  # initialised (kaiming) in float32, not fp8-rounded
    assert any(not torch.equal(d, d.to(torch.float8_e4m3fn).float()) for d in downs)
    from loratui.engine.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "images", {"2_toy": 2}, size=(64, 64))
    model = {f"model__{k}": v for k, v in parts.items()}
    result = _train(tiny_profile(files["base_model"], data, tmp_path / "out", optimization__max_train_epochs=1,
                                 model__t5xxl_max_token_length=8, model__fp8_base=True,
                                 network__train_blocks="double", **model))
    lora = load_file(result.path)
    assert any(k.endswith("lora_up.weight") and v.abs().sum() > 0 for k, v in lora.items())  # it learned

    files = write_flux_split_files(tiny_dirs["flux"], tmp_path / "scaled", t5_dtype=torch.float32)
    for key in ("base_model", "t5xxl"):
        save_file(_scaled_fp8(load_file(files[key])), files[key])
    parts = {k: v for k, v in files.items() if k != "base_model"}
    comp = load_components(ModelSettings(base_model=files["base_model"], **parts))
    assert _relative_error(comp.unet, ref.unet) < 0.1
    assert _relative_error(comp.text_encoders[1], ref.text_encoders[1]) < 0.1
    # what a plain fp8 read would have trained on: the weights over their scales
    plain = {k: v for k, v in load_file(files["base_model"]).items() if not k.endswith(".scale_weight")}
    save_file(plain, files["base_model"])
    wrong = load_components(ModelSettings(base_model=files["base_model"], **parts))
    assert _relative_error(wrong.unet, ref.unet) > 10


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_sample_prompts_are_encoded_with_the_cache_and_samples_reuse_them(tiny_dirs, data, tmp_path, family,
                                                                          monkeypatch):
    """With the text-encoder cache the encoders leave the GPU; the sample prompts were encoded
    while they were on it, and the samples replay those outputs: no encoder runs while they
    render, and the image is the one the encoders would have given."""
    import numpy as np
    from PIL import Image

    from loratui.engine.events import SampleSaved
    from loratui.engine.samples import text_memo
    from loratui.engine.train import run_training

    def run(out, **over):
        profile = tiny_profile(tiny_dirs[family], data, tmp_path / out, optimization__max_train_epochs=1,
                               optimization__max_train_steps=1, model__t5xxl_max_token_length=8,
                               network__train_text_encoder=False, output__sample_every_n_epochs=1,
                               output__sample_prompts="a toy --n blue --s 2 --w 64 --h 64 --l 2 --d 3", **over)
        events = []
        assert isinstance(run_training(profile, events.append), Finished)
        (saved,) = [e for e in events if isinstance(e, SampleSaved)]
        logs = [e.message for e in events if type(e).__name__ == "LogEvent"]
        return np.asarray(Image.open(saved.path).convert("RGB")), logs

    memos: list = []
    real = text_memo.record_sample_prompts
    monkeypatch.setattr(text_memo, "record_sample_prompts", lambda *a, **k: memos.append(real(*a, **k)) or memos[-1])
    reused, logs = run("cached", dataset__cache_text_encoder_outputs="memory")
    (memo,) = memos
    assert any(m.startswith("sample prompts encoded with the text encoders (1 prompt(s)") for m in logs), logs
    # prompt and negative prompt through each encoder: every output replayed, no encoder ran for the sample
    assert len(memo) >= 2 * len(memo.outputs) and memo.hits >= len(memo) and memo.misses == 0
    encoded, _ = run("encoded", dataset__cache_text_encoder_outputs="off")
    assert len(memos) == 1  # no cache, no memo: the encoders are there for the samples
    np.testing.assert_array_equal(reused, encoded)


@pytest.mark.parametrize(("extra", "img_in", "words"), [
    ({"distilled_guidance_layer.in_proj.weight": (5120, 64)}, 64, "is a Chroma model"),
    ({"single_stream_modulation.lin.weight": (18432, 3072)}, 64, "is a FLUX.2 model"),
    ({}, 384, "is a FLUX.1 Fill / Depth / Canny model (384 input features"),
    ({}, 128, "(128 input features, FLUX.1 has 64)"),
])
def test_flux_shaped_models_that_are_not_flux1_are_refused_by_name(extra, img_in, words):
    from loratui.engine.models import detect_family_from_keys

    shapes = {"double_blocks.0.img_attn.qkv.weight": (9216, 3072), "single_blocks.0.linear1.weight": (21504, 3072),
              "vector_in.in_layer.weight": (3072, 768), "img_in.weight": (3072, img_in), **extra}
    family, problem = detect_family_from_keys(set(shapes), shapes)
    assert family is None and words in problem and "choose one of those" in problem, problem
    ok = {**shapes, "img_in.weight": (3072, 64)}
    ok = {k: v for k, v in ok.items() if k not in extra}
    assert detect_family_from_keys(set(ok), ok) == ("flux", None)
