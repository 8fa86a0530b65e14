"""`loratui check PROFILE --modules`: the LoRA modules a run trains, by their saved
names, built on the meta device from the checkpoint's header (no weights read)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loratui.engine.cli import run_command
from loratui.engine.lora_modules import plan_modules
from loratui.engine.schema import profile_from_dict, save_profile
from loratui.engine.synthetic import write_synthetic_dataset

# one tiny tensor under each part's prefix: the header says "a complete SDXL single file"
SDXL_HEADER_KEYS = ("model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.encoder.conv_in.weight",
                    "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
                    "conditioner.embedders.1.model.positional_embedding")


def _sdxl_header_file(path: Path) -> Path:
    save_file({k: torch.zeros(1) for k in SDXL_HEADER_KEYS}, str(path))
    return path


def _profile(tmp_path, model, **network):
    data = write_synthetic_dataset(tmp_path / "images", {"1_toy": 2}, size=(64, 64))
    return profile_from_dict({
        "model": {"base_model": str(model)},
        "dataset": {"train_data_dir": str(data), "resolution": 64, "enable_bucket": False, "min_bucket_reso": 64},
        "network": {"network_dim": 8, "network_alpha": 4.0, **network},
        "output": {"output_dir": str(tmp_path / "out"), "output_name": "x"},
    })


def test_full_size_sdxl_from_the_header_986_modules(tmp_path, capsys):
    model = _sdxl_header_file(tmp_path / "sdxl-header-only.safetensors")
    p = _profile(tmp_path, model)
    plan = plan_modules(p)
    assert not plan.problems, plan.problems
    assert plan.family == "sdxl" and len(plan.modules) == 986
    assert plan.by_component() == {"unet": 722, "te1": 72, "te2": 192}
    q = next(m for m in plan.modules if m.name == "lora_te2_text_model_encoder_layers_31_mlp_fc2")
    assert (q.kind, q.in_dim, q.out_dim, q.rank, q.alpha) == ("linear", 5120, 1280, 8, 4.0)

    prof = tmp_path / "p.toml"
    save_profile(p, prof)
    assert run_command(["check", str(prof), "--modules"]) == 0
    out = capsys.readouterr().out
    assert "modules  986 LoRA modules (lora_unet 722, lora_te1 72, lora_te2 192)" in out
    rows = [ln for ln in out.splitlines() if ln.startswith("  lora_")]
    assert len(rows) == 986
    row = next(r for r in rows if r.split()[0] == "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k")
    assert re.search(r"linear\s+2048 -> 640\s+rank 8\s+alpha 4$", row), row
    assert out.rstrip().endswith("ready to train")


def test_unet_only_locon_and_a_tiny_folder(tmp_path, tiny_sd1_dir):
    model = _sdxl_header_file(tmp_path / "sdxl.safetensors")
    plan = plan_modules(_profile(tmp_path, model, train_text_encoder=False, network_type="locon", conv_dim=4, conv_alpha=1.0))
    assert len(plan.modules) == 788 and set(plan.by_component()) == {"unet"}
    conv = next(m for m in plan.modules if m.name == "lora_unet_input_blocks_1_0_in_layers_2")
    assert (conv.kind, conv.kernel, conv.rank, conv.shape()) == ("conv", (3, 3), 4, "320 -> 320 3x3")
    tiny = plan_modules(_profile(tmp_path / "t", tiny_sd1_dir))
    assert tiny.family == "sd1" and len(tiny.modules) == 66


def test_modules_of_an_unreadable_model_are_not_listed(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    prof = tmp_path / "p.toml"
    save_profile(_profile(tmp_path, bad), prof)
    assert run_command(["check", str(prof), "--modules"]) == 1
    out = capsys.readouterr().out
    assert "LoRA modules" not in out and "not ready" in out


def test_a_lycoris_network_lists_its_modules_with_their_algorithm(tmp_path, tiny_sd1_dir):
    """network_type lokr: the modules LyCORIS builds (as the run does), each with its class."""
    from loratui.engine.lycoris_net import lycoris_network_for
    from loratui.engine.loading import load_components

    p = _profile(tmp_path, tiny_sd1_dir, network_type="lokr", conv_dim=4, conv_alpha=1.0)
    plan = plan_modules(p)
    assert not plan.problems, plan.problems
    assert {m.algo for m in plan.modules} == {"LokrModule"}
    assert plan.lines()[0].startswith(f"modules  {len(plan.modules)} LyCORIS modules: LokrModule (")
    comp = load_components(p.model)
    real = lycoris_network_for(p, comp.unet, comp.text_encoders, comp.family)
    assert [m.name for m in plan.modules] == real.module_names  # the run's modules, by their saved names
    conv = next(m for m in plan.modules if m.kind == "conv")
    assert conv.rank == 4 and conv.alpha == 1.0


@pytest.mark.parametrize("name, counts", [
    ("flux-dev-24gb", "376 LoRA modules (lora_unet 304, lora_te1 72)"),
    ("sd35-medium-16gb", "527 LoRA modules (lora_unet 263, lora_te1 72, lora_te2 192)"),
    ("sd35-large-24gb", "641 LoRA modules (lora_unet 377, lora_te1 72, lora_te2 192)"),
])
def test_a_model_not_downloaded_yet_lists_its_familys_full_size_modules(name, counts, capsys):
    """The bundled profiles before the download (their model files are not here): the modules
    of the shape model.family's bundled configs give (SD3: the one the file name says), as
    sd-scripts saves them (fused qkv / linear1 one module each) — sd-scripts' own counts."""
    from loratui.engine.userdirs import bundled_profiles_dir

    prof = str(bundled_profiles_dir() / f"{name}.toml")
    assert run_command(["check", prof, "--modules", "--set", "network.train_text_encoder=true"]) == 1
    out = capsys.readouterr().out
    assert "is not here yet)\n" in out and f"modules  {counts}\n" in out
    assert "#" not in out.split("modules  ", 1)[1]  # no in-memory part names
    # family auto: nothing says which model it is
    assert run_command(["check", prof, "--modules", "--set", "model.family=auto"]) == 1
    out = capsys.readouterr().out
    assert "modules  — (the base model has problems (see above))" in out and "LoRA modules" not in out
