"""LyCORIS networks: every algorithm trains a tiny SD 1.x and SDXL model, saves
the key names LyCORIS loaders read with sd-scripts' module names, and the file
loaded by LyCORIS's own ``create_network_from_weights`` into a fresh model gives
the trained model's outputs; continue from a file; exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from loratui.engine.events import Finished, LogEvent, StepEvent
from loratui.engine.train import run_training
from tiny_runs import tiny_profile

# network_type, settings, the tensor suffixes every module of the file has (DoRA: also dora_scale)
ALGOS = {
    "lycoris-locon": ({}, {"lora_down.weight", "lora_up.weight", "alpha"}),
    "dora": ({"network_type": "lycoris-locon", "dora_wd": True}, {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"}),
    "loha": ({}, {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}),
    "lokr": ({"factor": 4}, {"lokr_w1", "alpha"}),
    "ia3": ({}, {"weight", "on_input"}),
    "glora": ({}, {"a1.weight", "a2.weight", "b1.weight", "b2.weight", "alpha"}),
    "diag-oft": ({"constrain": 0.1, "rescaled": True}, {"oft_blocks", "alpha", "rescale"}),
    "boft": ({}, {"oft_blocks", "alpha"}),
    "full": ({"lycoris_preset": "attn-only"}, {"diff"}),
    "dylora": ({"dylora_unit": 2}, {"lora_down.weight", "lora_up.weight", "alpha"}),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models train fastest on one thread


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from loratui.engine.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("lyco") / "images", {"1_toy": 2}, size=(64, 64))


def _profile(model, data, out, name, **over):
    settings, _ = ALGOS[name]
    net = {"network_type": name, **settings}
    kw = {f"network__{k}": v for k, v in net.items()}
    kw = {"optimization__max_train_steps": 2, "output__save_every_n_epochs": 0, "output__save_precision": "float",
          "network__conv_dim": 2, "network__conv_alpha": 1.0, **kw, **over}
    return tiny_profile(model, data, out, **kw)


def _train(profile, **kw):
    events: list = []
    result = run_training(profile, events.append, **kw)
    assert isinstance(result, Finished), result
    return result, events


def _fresh(model_dir, family):
    from loratui.engine.loading import load_components
    from loratui.engine.schema import profile_from_dict

    return load_components(profile_from_dict({"model": {"base_model": str(model_dir)}}).model, device="cpu",
                           dtype=torch.float32)


def _outputs(comp, seed=0):
    """The text encoders' hidden states and the U-Net's prediction for fixed inputs."""
    from loratui.engine.families import get_family

    fam = get_family(comp.family)
    g = torch.Generator().manual_seed(seed)
    ids = fam.tokenize(comp.tokenizers, ["a toy, red"])
    lat = torch.randn((1, 4, 8, 8), generator=g)
    t = torch.tensor([500])
    with torch.no_grad():
        hidden, pooled = fam.encode_text(comp.text_encoders, ids, 1, "cpu")
        pred = fam.predict(comp.unet, lat, t, hidden, pooled, [((64, 64), (0, 0), (64, 64))],
                           "cpu", torch.float32)
    return hidden, pred


def _load_with_lycoris(path, comp, name):
    """The file into a fresh model with LyCORIS's own loader. LyCORIS names modules by
    the model's own paths: sd-scripts' names are mapped back to these diffusers paths."""
    from lycoris.kohya import create_network_from_weights

    from loratui.engine.lycoris_net import _te_arg, kohya_names

    back = {v: k for k, v in kohya_names(comp.unet, comp.text_encoders, comp.family).items()}
    sd = load_file(str(path))
    renamed = {back[k.split(".", 1)[0]] + "." + k.split(".", 1)[1]: v for k, v in sd.items()}
    te = _te_arg(comp.text_encoders)
    if name == "ia3":
        # lycoris-lora 4.1.3's create_network_from_weights cannot rebuild (IA)³ modules
        # (IA3Module.make_module_from_state_dict takes other arguments): LyCORIS's network, then its load_state_dict
        from loratui.engine.lycoris_net import _kohya_class, resolve_preset

        klass = _kohya_class()
        klass.apply_preset(resolve_preset("full"))
        net = klass(te, comp.unet, multiplier=1.0, lora_dim=4, alpha=2.0, conv_lora_dim=2, conv_alpha=1.0,
                    network_module="ia3")
        net.apply_to(te, comp.unet, apply_text_encoder=True, apply_unet=True)
        missing, unexpected = net.load_state_dict(renamed, strict=False)
        assert not unexpected and not [k for k in missing if k.endswith((".weight", ".on_input"))]
    else:
        net, _ = create_network_from_weights(1.0, None, None, te, comp.unet, weights_sd=renamed)
        net.apply_to(te, comp.unet, apply_text_encoder=True, apply_unet=True)
    net.eval()
    return net, sd


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("name", list(ALGOS))
def test_each_algorithm_trains_saves_lycoris_keys_and_reloads_with_lycoris(name, family, tiny_sd1_dir, tiny_sdxl_dir,
                                                                          data, tmp_path):
    model = tiny_sd1_dir if family == "sd1" else tiny_sdxl_dir
    result, events = _train(_profile(model, data, tmp_path / "out", name))
    assert [e.step for e in events if isinstance(e, StepEvent)] == [1, 2]
    assert all(torch.isfinite(torch.tensor(e.loss)) for e in events if isinstance(e, StepEvent))
    log = [e.message for e in events if isinstance(e, LogEvent)]
    assert any(m.startswith("LyCORIS ") and " modules (" in m for m in log), log
    sd = load_file(result.path)
    modules = {k.split(".", 1)[0] for k in sd}
    suffixes = {k.split(".", 1)[1] for k in sd}
    _, want = ALGOS[name]
    assert want <= suffixes, suffixes
    # sd-scripts' module names
    te = ("lora_te1_text_model_", "lora_te2_text_model_") if family == "sdxl" else ("lora_te_text_model_",)
    assert all(m.startswith(("lora_unet_", *te)) for m in modules)
    for prefix in te:
        assert any(m.startswith(prefix) for m in modules), prefix
    if family == "sdxl":
        assert any(m.startswith("lora_unet_input_blocks_") for m in modules)
        assert not any(m.startswith("lora_unet_down_blocks_") for m in modules)
    with safe_open(result.path, "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "lycoris.kohya"
    args = json.loads(meta["ss_network_args"])
    algo = {"dora": "locon", "lycoris-locon": "locon"}.get(name, name)
    assert args["algo"] == algo and all(isinstance(v, str) for v in args.values())
    assert meta["sshs_model_hash"] and meta["sshs_legacy_hash"]
    if name == "dora":
        assert args["dora_wd"] == "True"

    # the trained LyCORIS modules changed something
    fresh = _fresh(model, family)
    h0, u0 = _outputs(fresh)
    net, _ = _load_with_lycoris(result.path, fresh, name)
    assert len(net.unet_loras) + len(net.text_encoder_loras) == len(modules)
    h1, u1 = _outputs(fresh)
    assert not torch.allclose(u0, u1)
    # ...and exactly what the trained network does: the run's network on a fresh model, from the same file
    from loratui.engine.lycoris_net import LycorisNetwork

    ours = _fresh(model, family)
    for m in [ours.unet, *ours.text_encoders]:
        m.requires_grad_(False)
    p = _profile(model, data, tmp_path / "x", name).network
    from loratui.engine.registries import lycoris_values

    opts = {k: v for k, v in lycoris_values(p).items() if k not in ("algo", "conv_dim", "conv_alpha")}
    mine = LycorisNetwork.create(ours.unet, ours.text_encoders, family, network_type=p.network_type, rank=p.network_dim,
                                 alpha=p.network_alpha, conv_rank=p.conv_dim, conv_alpha=p.conv_alpha, options=opts,
                                 weights=result.path)
    mine.net.eval()
    again = mine.kohya_state_dict()
    file_sd = load_file(result.path)
    assert again.keys() == file_sd.keys() and all(torch.equal(again[k], file_sd[k]) for k in file_sd)
    if name == "dylora":
        return  # LyCORIS's DyLoRA draws a random rank in every forward, even in eval: no fixed output to compare
    h2, u2 = _outputs(ours)
    torch.testing.assert_close(u2, u1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h2, h1, rtol=1e-4, atol=1e-5)
    if name in ("lycoris-locon", "dora"):
        _check_diffusers(model, family, result.path, h0, u0, h1, u1, dora=name == "dora")


def _check_diffusers(model, family, path, h0, u0, h1, u1, dora: bool):
    """diffusers' load_lora_weights: a LoRA gives LyCORIS's outputs; a DoRA file loads (diffusers'
    SD/SDXL loaders drop dora_scale themselves, with a warning, so its outputs are LoRA's)."""
    from types import SimpleNamespace

    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(model))
    tok = [pipe.tokenizer] + ([pipe.tokenizer_2] if family == "sdxl" else [])
    tes = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    comp = SimpleNamespace(family=family, tokenizers=tok, text_encoders=tes, unet=pipe.unet)
    torch.testing.assert_close(_outputs(comp)[1], u0)
    pipe.load_lora_weights(str(path))
    h3, u3 = _outputs(comp)
    assert not torch.allclose(u3, u0) and not torch.allclose(h3, h0)
    if not dora:
        torch.testing.assert_close(u3, u1, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(h3, h1, rtol=1e-4, atol=1e-5)


def test_lokr_full_dimension_and_continue_from_a_file(tiny_sd1_dir, data, tmp_path):
    # kohya_ss's "full dimension" LoKr: network_dim 100000 → no low-rank split of lokr_w2
    first, _ = _train(_profile(tiny_sd1_dir, data, tmp_path / "a", "lokr", network__network_dim=100000,
                               network__conv_dim=100000))
    sd = load_file(first.path)
    assert any(k.endswith(".lokr_w2") for k in sd) and not any(k.endswith(".lokr_w2_a") for k in sd)
    # continue training from it: starts from the file's tensors and changes them
    again, events = _train(_profile(tiny_sd1_dir, data, tmp_path / "b", "lokr", network__network_dim=100000,
                                    network__conv_dim=100000, network__network_weights=first.path))
    sd2 = load_file(again.path)
    assert sd.keys() == sd2.keys()
    assert any(not torch.equal(sd[k], sd2[k]) for k in sd)
    # a file of another algorithm is refused with a message naming it
    from loratui.engine.events import Failed

    other = run_training(_profile(tiny_sd1_dir, data, tmp_path / "c", "loha", network__network_weights=first.path),
                         lambda e: None)
    assert isinstance(other, Failed) and "algo=lokr" in other.message and first.path in other.message
    assert "'lokr'" in other.message or "lokr" in other.message.split("network_type to")[1]
    # the same algorithm with other settings: the tensors do not fit, and it says so
    other = run_training(_profile(tiny_sd1_dir, data, tmp_path / "d", "lokr", network__network_weights=first.path),
                         lambda e: None)
    assert isinstance(other, Failed) and "does not match" in other.message and "ss_network_args" in other.message


def test_loha_resume_is_exact(tiny_sd1_dir, data, tmp_path):
    from loratui.engine.events import Control

    over = {"optimization__max_train_steps": 4, "network__use_scalar": True, "network__train_norm": True}
    ref, _ = _train(_profile(tiny_sd1_dir, data, tmp_path / "ref", "loha", **over))
    profile = _profile(tiny_sd1_dir, data, tmp_path / "int", "loha", **over)
    control = Control()

    def emit(ev):
        if isinstance(ev, StepEvent) and ev.step == 2:
            control.stop()

    stopped = run_training(profile, emit, control)
    assert isinstance(stopped, Finished) and stopped.stopped_early
    resumed, events = _train(profile, resume="latest")
    assert [e.step for e in events if isinstance(e, StepEvent)] == [3, 4]
    a, b = load_file(ref.path), load_file(resumed.path)
    assert a.keys() == b.keys() and any(".w_norm" in k or "norm" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_our_kohya_lycoris_gui_config_imports_and_trains_one_step(tiny_sd1_dir, data, tmp_path):
    """(kohya_ss's own LyCORIS presets: tests/test_kohya_fixtures_train.py)"""
    from pathlib import Path

    from loratui.engine.kohya import import_kohya
    from loratui.engine.schema import profile_from_dict

    r = import_kohya(Path(__file__).parent / "fixtures" / "kohya" / "gui_sd15_lokr.json")
    assert r.problems() == []
    d = r.profile_dict
    net_type = d["network"]["network_type"]
    assert net_type in ("ia3", "loha", "lokr")
    # the tiny model and data; the imported network settings as they are
    d["model"] = {"base_model": str(tiny_sd1_dir)}
    d["dataset"].pop("resolution_height", None)
    d["dataset"].update(train_data_dir=str(data), resolution=64, enable_bucket=False,
                        min_bucket_reso=64, cache_latents="memory")
    d["output"].update(logging_dir=str(tmp_path / "logs"))  # a preset's ./test/logs would land in the cwd
    d["output"].update(output_dir=str(tmp_path / "out"), output_name="k", save_every_n_epochs=0, save_every_n_steps=0,
                       save_state=False)
    d["optimization"].update(max_train_steps=1, mixed_precision="no", gradient_accumulation_steps=1,
                             train_batch_size=1)
    result, events = _train(profile_from_dict(d))
    assert [e.step for e in events if isinstance(e, StepEvent)] == [1]
    with safe_open(result.path, "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"])["algo"] == net_type
    marker = {"ia3": ".on_input", "loha": ".hada_w1_a", "lokr": ".lokr_w1"}[net_type]
    assert any(k.endswith(marker) for k in keys)
