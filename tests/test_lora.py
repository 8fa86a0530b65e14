"""The LoRA network and its kohya-format file, on the tiny SD 1.x / SDXL models.

Round trip: what we save, diffusers' ``load_lora_weights`` loads into a fresh
pipeline with the same outputs; and so does our own continue-from-weights path,
including files whose modules have other ranks and alphas than the profile.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from loratui.engine.lora import ADAPTER_NAME, LoRANetwork
from loratui.engine.lora_file import LoRAWeightsError, read_lora_file

ATOL = 1e-5


def _load_pipe(folder: Path, family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _text_encoders(pipe):
    return [pipe.text_encoder] + ([pipe.text_encoder_2] if getattr(pipe, "text_encoder_2", None) is not None else [])


def _outputs(pipe, family: str):
    """Text-encoder hidden states and a U-Net prediction for fixed inputs."""
    g = torch.Generator().manual_seed(123)
    ids = torch.randint(0, 500, (2, 77), generator=g)
    ctx_dim = 64 if family == "sdxl" else 32
    ctx = torch.randn(2, 77, ctx_dim, generator=g)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    kwargs = {}
    if family == "sdxl":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, 32, generator=g),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2),
        }
    with torch.no_grad():
        te = [enc(ids).last_hidden_state for enc in _text_encoders(pipe)]
        unet = pipe.unet(sample, torch.tensor([500, 20]), encoder_hidden_states=ctx, **kwargs).sample
    return te, unet


def _assert_same(a, b, atol=ATOL):
    (te_a, u_a), (te_b, u_b) = a, b
    assert len(te_a) == len(te_b)
    for x, y in zip(te_a, te_b):
        torch.testing.assert_close(x, y, atol=atol, rtol=1e-4)
    torch.testing.assert_close(u_a, u_b, atol=atol, rtol=1e-4)


def _assert_differs(a, b):
    (te_a, u_a), (te_b, u_b) = a, b
    assert (u_a - u_b).abs().max() > 1e-3
    for x, y in zip(te_a, te_b):
        assert (x - y).abs().max() > 1e-3


def _randomize(net: LoRANetwork, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules:
            m.down.weight.copy_(torch.randn(m.down.weight.shape, generator=g) * 0.2)
            m.up.weight.copy_(torch.randn(m.up.weight.shape, generator=g) * 0.2)


def _dirs(family, tiny_sd1_dir, tiny_sdxl_dir):
    return tiny_sdxl_dir if family == "sdxl" else tiny_sd1_dir


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize(("family", "locon"), [("sd1", True), ("sdxl", False), ("sdxl", True)])
def test_diffusers_loads_our_file_with_same_outputs(family, locon, tiny_sd1_dir, tiny_sdxl_dir, tmp_path):
    folder = _dirs(family, tiny_sd1_dir, tiny_sdxl_dir)
    pipe = _load_pipe(folder, family)
    base = _outputs(pipe, family)
    net = LoRANetwork.create(
        pipe.unet, _text_encoders(pipe), family, rank=4, alpha=2,
        conv_rank=2 if locon else None, conv_alpha=1 if locon else None,
    )
    _randomize(net, seed=1)
    ours = _outputs(pipe, family)
    _assert_differs(ours, base)

    path = net.save(tmp_path / "out.safetensors", {"ss_network_dim": "4"}, dtype=torch.float32)
    fresh = _load_pipe(folder, family)
    fresh.load_lora_weights(str(path))
    _assert_same(_outputs(fresh, family), ours)

    sd, meta = read_lora_file(path)
    assert len(sd) == 3 * net.num_modules
    prefixes = {"sd1": {"lora_unet", "lora_te"}, "sdxl": {"lora_unet", "lora_te1", "lora_te2"}}[family]
    assert {k.split("_text_model")[0] if "_te" in k.split(".")[0][:8] else "lora_unet" for k in sd} == prefixes


def _merge_into_base(pipe, family: str, sd: dict) -> None:
    """Reference for the kohya semantics, independent of peft: add
    (up @ down) * alpha / rank to each targeted layer's weight, as
    AUTOMATIC1111 and sd-scripts' merge do."""
    from loratui.engine.lora import find_targets
    from loratui.engine.lora_file import parse_kohya_state_dict

    targets = find_targets(pipe.unet, _text_encoders(pipe), family)
    with torch.no_grad():
        for name, fm in parse_kohya_state_dict(sd).items():
            layer = targets[name].module
            down, up = fm.down.double(), fm.up.double()
            if down.ndim == 2:
                delta = up @ down
            else:
                delta = torch.einsum("or,rihw->oihw", up[:, :, 0, 0], down)
            layer.weight += (delta * (fm.alpha / fm.rank)).reshape(layer.weight.shape).to(layer.weight.dtype)


def _mixed_file(src: LoRANetwork, seed: int, *, vary_alpha: bool):
    """The network's weights as a file whose modules have other ranks (every
    3rd), other alphas or no alpha at all, and that lacks every 7th module.
    Returns (state_dict, {name: (rank, alpha)})."""
    sd = src.kohya_state_dict()
    g = torch.Generator().manual_seed(seed)
    expected: dict[str, tuple[int, float]] = {}
    for i, m in enumerate(src.modules):
        if i % 7 == 6:
            for s in ("lora_down.weight", "lora_up.weight", "alpha"):
                del sd[f"{m.name}.{s}"]
            continue
        rank, alpha = m.rank, m.alpha
        if i % 3 == 0:
            rank = 3
            down, up = sd[f"{m.name}.lora_down.weight"], sd[f"{m.name}.lora_up.weight"]
            sd[f"{m.name}.lora_down.weight"] = torch.randn((3, *down.shape[1:]), generator=g) * 0.2
            sd[f"{m.name}.lora_up.weight"] = torch.randn((up.shape[0], 3, *up.shape[2:]), generator=g) * 0.2
            if vary_alpha:
                alpha = 0.75
                sd[f"{m.name}.alpha"] = torch.tensor(alpha)
        elif vary_alpha and i % 3 == 1 and i % 2 == 0:  # an old file without alpha: alpha = rank
            del sd[f"{m.name}.alpha"]
            alpha = float(rank)
        expected[m.name] = (rank, alpha)
    return sd, expected


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_continue_from_file_with_other_ranks_and_alphas(family, tiny_sd1_dir, tiny_sdxl_dir, tmp_path):
    """Each module takes its rank and alpha from the file, not from the profile."""
    from safetensors.torch import save_file

    folder = _dirs(family, tiny_sd1_dir, tiny_sdxl_dir)
    pipe = _load_pipe(folder, family)
    src = LoRANetwork.create(pipe.unet, _text_encoders(pipe), family, rank=4, alpha=2, conv_rank=2, conv_alpha=1)
    _randomize(src, seed=2)
    sd, expected = _mixed_file(src, seed=3, vary_alpha=True)
    path = tmp_path / "mixed.safetensors"
    save_file(sd, str(path))

    pipe2 = _load_pipe(folder, family)
    net = LoRANetwork.create(pipe2.unet, _text_encoders(pipe2), family, rank=8, alpha=8, weights=path)
    assert {m.name: (m.rank, m.alpha) for m in net.modules} == expected
    assert len({r for r, _ in expected.values()}) == 3 and len({a for _, a in expected.values()}) == 4
    for m in net.modules:
        assert m.down.weight.shape[0] == m.rank
        assert m.layer.scaling[ADAPTER_NAME] == pytest.approx(m.alpha / m.rank)
    # Saved again unchanged, tensor for tensor.
    again = net.kohya_state_dict()
    for k, v in sd.items():
        torch.testing.assert_close(again[k], v, atol=0, rtol=0)

    reference = _load_pipe(folder, family)
    _merge_into_base(reference, family, sd)
    _assert_same(_outputs(pipe2, family), _outputs(reference, family), atol=1e-4)


@pytest.mark.parametrize("family", ["sdxl"])
def test_continue_from_file_matches_diffusers(family, tiny_sd1_dir, tiny_sdxl_dir, tmp_path):
    # Mixed ranks, one alpha: diffusers 0.42 drops per-module alphas of some
    # attention layers (to_k/to_v) when they vary, so it cannot be the reference there.
    from safetensors.torch import save_file

    folder = _dirs(family, tiny_sd1_dir, tiny_sdxl_dir)
    pipe = _load_pipe(folder, family)
    src = LoRANetwork.create(pipe.unet, _text_encoders(pipe), family, rank=4, alpha=2, conv_rank=4, conv_alpha=2)
    _randomize(src, seed=11)
    sd, expected = _mixed_file(src, seed=12, vary_alpha=False)
    path = tmp_path / "mixed-ranks.safetensors"
    save_file(sd, str(path))

    pipe2 = _load_pipe(folder, family)
    net = LoRANetwork.create(pipe2.unet, _text_encoders(pipe2), family, rank=8, alpha=8, weights=path)
    assert {m.name: (m.rank, m.alpha) for m in net.modules} == expected
    fresh = _load_pipe(folder, family)
    fresh.load_lora_weights(str(path))
    _assert_same(_outputs(pipe2, family), _outputs(fresh, family))


def test_continue_keeps_file_modules_and_adds_missing_parts(tiny_sd1_dir, tmp_path):
    from safetensors.torch import save_file

    pipe = _load_pipe(tiny_sd1_dir, "sd1")
    src = LoRANetwork.create(pipe.unet, _text_encoders(pipe), "sd1", rank=4, alpha=4)
    _randomize(src, seed=4)
    full = src.kohya_state_dict()
    unet_only = {k: v for k, v in full.items() if k.startswith("lora_unet_")}
    save_file(unet_only, str(tmp_path / "unet_only.safetensors"))
    save_file(full, str(tmp_path / "full.safetensors"))

    # The file has no text-encoder modules: trained text encoder gets fresh ones from the profile.
    p1 = _load_pipe(tiny_sd1_dir, "sd1")
    net = LoRANetwork.create(p1.unet, _text_encoders(p1), "sd1", rank=2, alpha=1, weights=tmp_path / "unet_only.safetensors")
    assert {(m.rank, m.alpha) for m in net.unet_modules} == {(4, 4.0)}
    assert {(m.rank, m.alpha) for m in net.text_encoder_modules} == {(2, 1.0)}
    assert len(net.text_encoder_modules) == len(src.text_encoder_modules)
    assert all(not m.up.weight.any() for m in net.text_encoder_modules)  # fresh: up is zero

    # U-Net only run from a file with text-encoder modules: they are kept (frozen) and saved again.
    p2 = _load_pipe(tiny_sd1_dir, "sd1")
    net2 = LoRANetwork.create(p2.unet, _text_encoders(p2), "sd1", rank=2, alpha=1, train_text_encoder=False,
                              weights=tmp_path / "full.safetensors")
    assert net2.text_encoder_parameters() == []
    assert len(net2.unet_parameters()) == 2 * len(net2.unet_modules)
    assert all(not m.up.weight.requires_grad for m in net2.text_encoder_modules)
    assert set(net2.kohya_state_dict()) == set(full)


def test_load_kohya_state_dict_round_trip_and_mismatch(tiny_sd1_dir):
    pipe = _load_pipe(tiny_sd1_dir, "sd1")
    net = LoRANetwork.create(pipe.unet, _text_encoders(pipe), "sd1", rank=4, alpha=2)
    _randomize(net, seed=5)
    sd = net.kohya_state_dict()
    out = _outputs(pipe, "sd1")

    other_pipe = _load_pipe(tiny_sd1_dir, "sd1")
    other = LoRANetwork.create(other_pipe.unet, _text_encoders(other_pipe), "sd1", rank=4, alpha=2)
    assert sorted(other.load_kohya_state_dict(sd)) == sorted(net.module_names)
    _assert_same(_outputs(other_pipe, "sd1"), out)

    bad = dict(sd)
    name = net.modules[0].name
    bad[f"{name}.alpha"] = torch.tensor(3.0)
    with pytest.raises(LoRAWeightsError, match=f"{name}: alpha 3 in the file, 2 in the network"):
        other.load_kohya_state_dict(bad)
    partial = {k: v for k, v in sd.items() if not k.startswith(name + ".")}
    with pytest.raises(LoRAWeightsError, match="missing from the file"):
        other.load_kohya_state_dict(partial)
    assert other.load_kohya_state_dict(partial, strict=False)


# ------------------------------------------------------------------- bad files


@pytest.fixture(scope="module")
def lora_files(tiny_sd1_dir, tiny_sdxl_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    out = {}
    for family, src in (("sd1", tiny_sd1_dir), ("sdxl", tiny_sdxl_dir)):
        pipe = _load_pipe(src, family)
        net = LoRANetwork.create(pipe.unet, _text_encoders(pipe), family, rank=4, alpha=2)
        _randomize(net, seed=6)
        out[family] = net.save(folder / f"{family}.safetensors", {"ss_network_dim": "4"})
    return out


def test_sdxl_file_into_sd1_model_is_refused(tiny_sd1_dir, lora_files):
    pipe = _load_pipe(tiny_sd1_dir, "sd1")
    with pytest.raises(LoRAWeightsError) as info:
        LoRANetwork.create(pipe.unet, _text_encoders(pipe), "sd1", rank=4, alpha=4, weights=lora_files["sdxl"])
    msg = str(info.value)
    assert str(lora_files["sdxl"]) in msg
    assert "made for SDXL" in msg and "base model is SD 1.x" in msg
    assert "do not exist in this SD 1.x model" in msg
    # Nothing was injected: the model can still be used for a new network.
    LoRANetwork.create(pipe.unet, _text_encoders(pipe), "sd1", rank=4, alpha=4)


def test_sd1_file_into_sdxl_model_is_refused(tiny_sdxl_dir, lora_files):
    pipe = _load_pipe(tiny_sdxl_dir, "sdxl")
    with pytest.raises(LoRAWeightsError, match=r"made for SD 1\.x or 2\.x but the base model is SDXL"):
        LoRANetwork.create(pipe.unet, _text_encoders(pipe), "sdxl", rank=4, alpha=4, weights=lora_files["sd1"])


def test_shape_mismatch_names_module_and_layer(tiny_sd1_dir, lora_files, tmp_path):
    from safetensors.torch import save_file

    sd, _ = read_lora_file(lora_files["sd1"])
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    sd[f"{key}.lora_down.weight"] = torch.zeros(4, 48)
    path = tmp_path / "wrong.safetensors"
    save_file(sd, str(path))
    pipe = _load_pipe(tiny_sd1_dir, "sd1")
    with pytest.raises(LoRAWeightsError) as info:
        LoRANetwork.create(pipe.unet, _text_encoders(pipe), "sd1", rank=4, alpha=4, weights=path)
    msg = str(info.value)
    assert str(path) in msg and key in msg and "[4, 48]" in msg and "Linear 32 -> 32" in msg


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("truncated", "truncated"),
        ("empty", "empty"),
        ("junk", "not a readable .safetensors file"),
        ("missing", "file not found"),
        ("diffusers", "not a kohya-format LoRA .* diffusers/PEFT-format"),
        ("loha", r"LoHa \(LyCORIS\)"),
        ("no_up", "has no lora_up.weight"),
    ],
)
def test_unusable_files_give_clear_errors(content, match, tiny_sd1_dir, lora_files, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / f"{content}.safetensors"
    data = Path(lora_files["sd1"]).read_bytes()
    if content == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif content == "empty":
        path.write_bytes(b"")
    elif content == "junk":
        path.write_bytes(b"<html>404 not found</html>" * 4)
    elif content == "diffusers":
        save_file({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 32)}, str(path))
    elif content == "loha":
        save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a": torch.zeros(4, 32)}, str(path))
    elif content == "no_up":
        save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}, str(path))
    pipe = _load_pipe(tiny_sd1_dir, "sd1")
    with pytest.raises(LoRAWeightsError, match=match) as info:
        LoRANetwork.create(pipe.unet, _text_encoders(pipe), "sd1", rank=4, alpha=4, weights=path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------- training behaviour


def test_init_is_identity_and_like_sd_scripts(tiny_sd1_dir):
    pipe = _load_pipe(tiny_sd1_dir, "sd1")
    base = _outputs(pipe, "sd1")
    torch.manual_seed(0)
    net = LoRANetwork.create(pipe.unet, _text_encoders(pipe), "sd1", rank=4, alpha=1)
    _assert_same(_outputs(pipe, "sd1"), base, atol=0)
    for m in net.modules:
        fan_in = m.down.weight[0].numel()
        assert not m.up.weight.any()
        assert m.down.weight.abs().max() <= 1 / fan_in**0.5 + 1e-7  # kaiming-uniform, a=sqrt(5)
        assert m.down.weight.std() > 0.2 / fan_in**0.5
        assert m.scale == 0.25 and m.layer.scaling[ADAPTER_NAME] == 0.25
    # Only LoRA parameters are trainable.
    trainable = {id(p) for p in net.parameters()}
    for model in [pipe.unet, *_text_encoders(pipe)]:
        for p in model.parameters():
            assert p.requires_grad == (id(p) in trainable)
    assert len(net.unet_parameters()) == 2 * len(net.unet_modules)
    assert len(net.text_encoder_parameters()) == 2 * len(net.text_encoder_modules)
    # Same seed, same initial weights.
    pipe2 = _load_pipe(tiny_sd1_dir, "sd1")
    torch.manual_seed(0)
    net2 = LoRANetwork.create(pipe2.unet, _text_encoders(pipe2), "sd1", rank=4, alpha=1)
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="already has LoRA layers"):
        LoRANetwork.create(pipe.unet, _text_encoders(pipe), "sd1", rank=4, alpha=1)


def test_unet_only_injects_nothing_into_text_encoder(tiny_sdxl_dir):
    pipe = _load_pipe(tiny_sdxl_dir, "sdxl")
    net = LoRANetwork.create(pipe.unet, _text_encoders(pipe), "sdxl", rank=4, alpha=4, train_text_encoder=False)
    assert net.text_encoder_modules == [] and net.text_encoder_parameters() == []
    assert all(n.startswith("lora_unet_") for n in net.kohya_state_dict())
    assert not any(p.requires_grad for te in _text_encoders(pipe) for p in te.parameters())


def test_lora_stays_float32_on_bf16_base(tiny_sd1_dir, tmp_path):
    pipe = _load_pipe(tiny_sd1_dir, "sd1")
    pipe.unet.to(torch.bfloat16)
    pipe.text_encoder.to(torch.bfloat16)
    net = LoRANetwork.create(pipe.unet, [pipe.text_encoder], "sd1", rank=4, alpha=4, conv_rank=2, conv_alpha=2)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert pipe.unet.conv_in.weight.dtype == torch.bfloat16
    _randomize(net, seed=7)
    ids = torch.randint(0, 500, (1, 77))
    ctx = pipe.text_encoder(ids).last_hidden_state
    assert ctx.dtype == torch.bfloat16
    out = pipe.unet(torch.randn(1, 4, 8, 8, dtype=torch.bfloat16), 10, encoder_hidden_states=ctx).sample
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    for p in net.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32
    sd = read_lora_file(net.save(tmp_path / "half.safetensors", {}, dtype=torch.float16))[0]
    assert {v.dtype for v in sd.values()} == {torch.float16}
    assert sd["lora_unet_down_blocks_0_resnets_0_conv1.alpha"].shape == ()


def test_gradient_checkpointing_keeps_lora_gradients(tiny_sd1_dir):
    def grads(checkpointing: bool):
        pipe = _load_pipe(tiny_sd1_dir, "sd1")
        torch.manual_seed(0)
        net = LoRANetwork.create(pipe.unet, [pipe.text_encoder], "sd1", rank=4, alpha=4, conv_rank=2, conv_alpha=2)
        _randomize(net, seed=8)
        if checkpointing:
            net.enable_gradient_checkpointing()
        pipe.unet.train()
        pipe.text_encoder.train()
        g = torch.Generator().manual_seed(9)
        ids = torch.randint(0, 500, (2, 77), generator=g)
        ctx = pipe.text_encoder(ids).last_hidden_state
        out = pipe.unet(torch.randn(2, 4, 8, 8, generator=g), 10, encoder_hidden_states=ctx).sample
        out.square().mean().backward()
        return {m.name: (m.down.weight.grad, m.up.weight.grad) for m in net.modules}, pipe

    plain, _ = grads(False)
    ckpt, pipe = grads(True)
    assert pipe.unet.is_gradient_checkpointing and pipe.text_encoder.is_gradient_checkpointing
    assert set(plain) == set(ckpt)
    for name, (down, up) in ckpt.items():
        assert down is not None and up is not None, name
        assert up.abs().sum() > 0, name
        torch.testing.assert_close(down, plain[name][0], atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(up, plain[name][1], atol=1e-6, rtol=1e-4)


def test_save_is_atomic_with_metadata_and_hashes(tiny_sd1_dir, tmp_path):
    pipe = _load_pipe(tiny_sd1_dir, "sd1")
    net = LoRANetwork.create(pipe.unet, [pipe.text_encoder], "sd1", rank=4, alpha=2)
    _randomize(net, seed=10)
    target = tmp_path / "out" / "my-lora.safetensors"
    target.parent.mkdir()
    target.write_bytes(b"old")
    meta = {"ss_network_dim": "4", "ss_network_alpha": "2.0", "ss_epoch": 3, "ss_v2": False,
            "ss_tag_frequency": {"shapes": {"red": 2}}, "modelspec.title": "mine"}
    assert net.save(target, meta, dtype="bf16") == target
    assert os.listdir(target.parent) == ["my-lora.safetensors"]
    sd, got = read_lora_file(target)
    assert got["ss_network_dim"] == "4" and got["ss_epoch"] == "3" and got["modelspec.title"] == "mine"
    assert got["ss_v2"] == "False" and json.loads(got["ss_tag_frequency"]) == {"shapes": {"red": 2}}
    # sd-scripts' hashes, computed here from scratch: the file re-serialised with only the ss_* metadata,
    # sha256 of its tensor bytes and the legacy 8-hex hash of its 64 KiB at offset 1 MiB
    from safetensors.torch import save as st_save

    data = st_save(sd, {k: v for k, v in got.items() if k.startswith("ss_")})
    n = int.from_bytes(data[:8], "little")
    assert got["sshs_model_hash"] == hashlib.sha256(data[8 + n:]).hexdigest()
    assert got["sshs_legacy_hash"] == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert len(got["sshs_model_hash"]) == 64 and len(got["sshs_legacy_hash"]) == 8
    ref = net.kohya_state_dict(torch.bfloat16)
    assert set(sd) == set(ref)
    for k in sd:
        assert torch.equal(sd[k], ref[k])
    assert float(sd[f"{net.modules[0].name}.alpha"]) == 2.0
