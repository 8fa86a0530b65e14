"""`loratui convert LORA --to diffusers`: an SD3/FLUX kohya-format LoRA rewritten under
diffusers' names. Checked against the kohya file's own meaning: loaded by diffusers and fused,
every weight of the model, in sd-scripts' (SAI / BFL) layout, moves by exactly
alpha / rank · up @ down of the file's module of that name, and nothing else moves."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flow_files import flux_to_bfl, sd3_to_sai  # noqa: E402

from loratui.engine.cli import run_command  # noqa: E402
from loratui.engine.families import get_family  # noqa: E402
from loratui.engine.schema import ModelSettings  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    from loratui.engine.tiny import save_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-convert")
    return {f: save_tiny_pipeline(root / f, f) for f in ("flux", "sd3")}


def _kohya_file(folder: Path, family: str, path: Path, dense: bool) -> Path:
    """A LoRA on every module sd-scripts trains (T5 too), random weights; ``dense``: the fused
    modules' up as sd-scripts trains it (one full matrix), not loratui's block-diagonal one."""
    from loratui.engine.loading import load_components
    from loratui.engine.lora import LoRANetwork

    comp = load_components(ModelSettings(base_model=str(folder)))
    net = LoRANetwork.create(comp.unet, comp.text_encoders, family, rank=4, alpha=2)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in net.modules:
            m.up.weight.copy_(torch.randn(m.up.weight.shape, generator=g) * 0.05)
            m.down.weight.copy_(torch.randn(m.down.weight.shape, generator=g))
    net.save(path, metadata={"ss_network_module": get_family(family).lora_network_module})
    if dense:
        with safe_open(str(path), "pt") as f:
            sd, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
        fused = [k for k in sd if k.endswith(("qkv.lora_up.weight", "linear1.lora_up.weight"))]
        assert fused
        for k in fused:
            sd[k] = torch.randn(sd[k].shape, generator=g) * 0.05
        save_file(sd, str(path), metadata=meta)
    return path


def _deltas(path: Path) -> dict[str, torch.Tensor]:
    """{module name: alpha / rank · up @ down}: what the kohya file adds to each weight."""
    with safe_open(str(path), "pt") as f:
        sd = {k: f.get_tensor(k).float() for k in f.keys()}
    out = {}
    for k, down in sd.items():
        if k.endswith(".lora_down.weight"):
            name = k[: -len(".lora_down.weight")]
            out[name] = float(sd[f"{name}.alpha"]) / down.shape[0] * (sd[f"{name}.lora_up.weight"] @ down)
    return out


def _te_weights(te, prefix: str) -> dict[str, torch.Tensor]:
    from loratui.engine.kohya_names import text_encoder_lora_name

    return {text_encoder_lora_name(n, prefix): m.weight.detach().clone()
            for n, m in te.named_modules() if isinstance(m, torch.nn.Linear)}


@pytest.mark.parametrize("dense", [False, True], ids=["loratui-file", "sd-scripts-file"])
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_diffusers_loads_the_converted_file_as_the_kohya_file_means(tiny_dirs, family, dense, tmp_path, capsys):
    from loratui.engine.loading import load_components

    src = _kohya_file(tiny_dirs[family], family, tmp_path / "toy.safetensors", dense)
    want = _deltas(src)
    assert run_command(["convert", str(src), "--to", "diffusers"]) == 0
    out = tmp_path / "toy-diffusers.safetensors"
    said = capsys.readouterr().out
    assert f"Wrote {out}" in said and "T5-XXL modules (trained with train_t5xxl) were left out" in said
    with safe_open(str(out), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert all(k.startswith(("transformer.", "text_encoder.", "text_encoder_2.")) for k in keys)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert meta["loratui_converted_from"] == "kohya" and not any(k.startswith("sshs_") for k in meta)

    comp = load_components(ModelSettings(base_model=str(tiny_dirs[family])))
    to_kohya = sd3_to_sai if family == "sd3" else flux_to_bfl
    before = to_kohya(comp.unet)
    tes = [(te, f"lora_te{i + 1}") for i, te in enumerate(comp.text_encoders)]
    te_before = [_te_weights(te, p) for te, p in tes]
    pipe = get_family(family).pipeline(comp)
    pipe.load_lora_weights(str(out))
    pipe.fuse_lora(components=pipe._lora_loadable_modules)  # FLUX fuses only its transformer by default
    pipe.unload_lora_weights()  # keeps the fused weights: plain modules again, in diffusers' names
    after = to_kohya(pipe.transformer)
    moved = 0
    for key, w in before.items():
        if not key.endswith(".weight"):
            assert torch.equal(after[key], w), key
            continue
        name = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
        delta = want.get(name, torch.zeros_like(w))
        assert torch.allclose(after[key] - w, delta, atol=2e-6), key
        moved += name in want
    assert moved == sum(n.startswith("lora_unet_") for n in want)
    for (te, prefix), was in zip(tes, te_before):
        now = _te_weights(te, prefix)
        for name, w in was.items():
            t5 = te is comp.text_encoders[-1]
            delta = torch.zeros_like(w) if t5 else want.get(name, torch.zeros_like(w))
            assert torch.allclose(now[name] - w, delta, atol=2e-6), name
        assert t5 or any(n in want for n in was)


def test_sd3_trained_run_converted_gives_the_trained_model_in_diffusers(tiny_dirs, tmp_path):
    from loratui.engine.events import Finished
    from loratui.engine.loading import load_components
    from loratui.engine.lora import LoRANetwork
    from loratui.engine.synthetic import write_synthetic_dataset
    from loratui.engine.train import run_training
    from tiny_runs import tiny_profile

    data = write_synthetic_dataset(tmp_path / "images", {"2_toy": 4}, size=(64, 64))
    profile = tiny_profile(tiny_dirs["sd3"], data, tmp_path / "out", optimization__max_train_epochs=1,
                           model__t5xxl_max_token_length=8, output__save_precision="float")
    result = run_training(profile, lambda e: None)
    assert isinstance(result, Finished), result
    assert run_command(["convert", str(result.path), "--to", "diffusers", "-o", str(tmp_path / "d.safetensors")]) == 0

    g = torch.Generator().manual_seed(0)
    kw = dict(hidden_states=torch.randn(1, 16, 8, 8, generator=g), encoder_hidden_states=torch.randn(1, 8, 64, generator=g),
              pooled_projections=torch.randn(1, 64, generator=g), timestep=torch.tensor([500.0]), return_dict=False)
    ours = load_components(profile.model)
    LoRANetwork.create(ours.unet, ours.text_encoders, "sd3", rank=4, alpha=2, weights=result.path)
    pipe = get_family("sd3").pipeline(load_components(profile.model))
    with torch.no_grad():
        base = pipe.transformer(**kw)[0]
    pipe.load_lora_weights(str(tmp_path / "d.safetensors"))
    ids = pipe.tokenizer(["a toy"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        trained, loaded = ours.unet(**kw)[0], pipe.transformer(**kw)[0]
        te_ours = ours.text_encoders[1](ids, output_hidden_states=True).hidden_states[-2]
        te_loaded = pipe.text_encoder_2(ids, output_hidden_states=True).hidden_states[-2]
    assert not torch.allclose(base, trained, atol=1e-6)
    assert torch.allclose(loaded, trained, atol=1e-5)
    assert torch.allclose(te_loaded, te_ours, atol=1e-5)


def test_convert_says_what_is_wrong(tmp_path, capsys):
    from loratui.engine.lora import LoRANetwork
    from loratui.engine.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd1")
    sd1 = LoRANetwork.create(pipe.unet, [pipe.text_encoder], "sd1", rank=2, alpha=1).save(tmp_path / "sd1.safetensors")
    assert run_command(["convert", str(sd1), "--to", "diffusers"]) == 2
    err = capsys.readouterr().err
    assert "sd1.safetensors: not an SD3 or FLUX.1 LoRA;" in err  # the tiny U-Net: SD 1.x or 2.x
    assert "diffusers loads kohya-format SD 1.x, SD 2.x and SDXL LoRAs as they are" in err
    assert not (tmp_path / "sd1-diffusers.safetensors").exists()

    assert run_command(["convert", str(tmp_path / "nope.safetensors"), "--to", "diffusers"]) == 2
    assert "nope.safetensors: file not found" in capsys.readouterr().err

    peft = tmp_path / "peft.safetensors"
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 8)}, str(peft))
    assert run_command(["convert", str(peft), "--to", "diffusers"]) == 2
    assert "peft.safetensors: is in the diffusers (PEFT) format already" in capsys.readouterr().err

    odd = tmp_path / "odd.safetensors"  # sd-scripts' emb_dims: an embedder module beside the blocks
    save_file({"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": torch.zeros(2, 8),
               "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": torch.zeros(24, 2),
               "lora_unet_context_embedder.lora_down.weight": torch.zeros(2, 8),
               "lora_unet_context_embedder.lora_up.weight": torch.zeros(8, 2)}, str(odd))
    assert run_command(["convert", str(odd), "--to", "diffusers"]) == 2
    assert "odd.safetensors: module lora_unet_context_embedder is none of the SD3" in capsys.readouterr().err
    assert not (tmp_path / "odd-diffusers.safetensors").exists()

    assert run_command(["convert", str(sd1), "--to", "diffusers", "-o", str(sd1)]) == 2
    assert "is the LoRA itself" in capsys.readouterr().err
    assert run_command(["convert", str(sd1), "--to", "diffusers", "-o", str(tmp_path / "x.pt")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err


def test_convert_keeps_an_existing_file_unless_told(tiny_dirs, tmp_path, capsys):
    src = _kohya_file(tiny_dirs["sd3"], "sd3", tmp_path / "a.safetensors", dense=False)
    out = tmp_path / "a-diffusers.safetensors"
    out.write_bytes(b"mine")
    assert run_command(["convert", str(src), "--to", "diffusers"]) == 1
    assert "already exists; use --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"mine"
    assert run_command(["convert", str(src), "--to", "diffusers", "--overwrite"]) == 0
    with safe_open(str(out), "pt") as f:
        assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in set(f.keys())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


@pytest.mark.parametrize("family, folder, over, counts", [
    ("sd3", "sd35-large", {"num_layers": 24, "dual_attention_layers": list(range(13))}, (527, 649)),  # SD3.5 medium
    ("sd3", "sd35-large", {}, (641, 793)),
    ("flux", "flux", {}, (376, 566)),
])
def test_full_size_files_convert_onto_the_diffusers_models_layers(family, folder, over, counts, tmp_path, capsys):
    """A rank-1 LoRA on every module sd-scripts trains by default, full size (built on the meta
    device): every converted key is a Linear of the full-size diffusers model, in its shape."""
    from loratui.engine.configs import config_dir
    from loratui.engine.lora import LoRANetwork
    from loratui.engine.lora_fused import fuse
    from loratui.engine.lora_modules import meta_models

    fam = get_family(family)
    tr, tes = meta_models(fam, config_dir(folder), over)
    net = LoRANetwork.create(tr, tes, family, rank=1, alpha=1, target_filter=fam.lora_target_filter(None))
    sd = {}
    for m in net.modules:
        base = m.layer.base_layer
        sd[f"{m.name}.lora_down.weight"] = torch.ones(1, base.in_features)
        sd[f"{m.name}.lora_up.weight"] = torch.ones(base.out_features, 1)
        sd[f"{m.name}.alpha"] = torch.tensor(1.0)
    sd = fuse(sd)
    assert len({k.split(".")[0] for k in sd}) == counts[0]
    save_file(sd, str(tmp_path / "full.safetensors"))
    assert run_command(["convert", str(tmp_path / "full.safetensors"), "--to", "diffusers"]) == 0
    assert f"{counts[0]} kohya modules as {counts[1]} in diffusers' layout" in capsys.readouterr().out
    models = {"transformer": tr, **{spec.subfolder: te for spec, te in zip(fam.text_encoders, tes)}}
    with safe_open(str(tmp_path / "full-diffusers.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert len(keys) == 2 * counts[1]
        for key in keys:
            component, path = key.split(".", 1)
            path, model = path.rsplit(".", 2)[0], models[component]
            if not hasattr(model, "text_model"):  # transformers 5's CLIPTextModel (diffusers drops the level too)
                path = path.removeprefix("text_model.")
            layer = model.get_submodule(path)
            layer = getattr(layer, "base_layer", layer)
            shape = (1, layer.in_features) if ".lora_A." in key else (layer.out_features, 1)
            assert tuple(f.get_slice(key).get_shape()) == shape, key


def test_train_says_how_diffusers_loads_an_sd3_lora(tiny_dirs, tmp_path, capsys):
    from loratui.engine.commands.train import _diffusers_note
    from loratui.engine.schema.files import save_profile
    from loratui.engine.synthetic import write_synthetic_dataset
    from tiny_runs import tiny_profile

    data = write_synthetic_dataset(tmp_path / "images", {"1_toy": 2}, size=(64, 64))
    profile = tiny_profile(tiny_dirs["sd3"], data, tmp_path / "out", optimization__max_train_steps=1,
                           model__t5xxl_max_token_length=8)
    assert run_command(["train", str(save_profile(profile, tmp_path / "p.toml"))]) == 0
    out, err = capsys.readouterr()
    final = str(tmp_path / "out" / "tiny.safetensors")
    assert out.rstrip().splitlines()[-1] == final  # the path stays the last line
    assert f"`loratui convert {final} --to diffusers` writes a copy it reads" in err, err[-400:]
    flux = tmp_path / "flux.safetensors"  # diffusers reads FLUX files as they are: no note
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(1.0)}, str(flux),
              metadata={"ss_base_model_version": "flux1"})
    _diffusers_note(str(flux))
    _diffusers_note(str(tmp_path / "gone.safetensors"))  # missing or unreadable: no note, no error
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    _diffusers_note(str(tmp_path / "bad.safetensors"))
    assert capsys.readouterr().err == ""
