"""LoRA module names and counts as sd-scripts writes them.

Full-size SD 1.5, SD 2.x and SDXL models are built on the meta device from the
bundled configs (engine/configs), so no weights are allocated."""

from __future__ import annotations

import re

import pytest

from loratui.engine.families import guess_family, normalize_family, unet_lora_name
from loratui.engine.kohya_names import SGMLayout, text_encoder_lora_name, text_encoder_prefix

SDXL_CONFIG = {
    "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}


# ----------------------------------------------------------------- pure mapping


@pytest.mark.parametrize(
    ("diffusers", "sgm"),
    [
        ("down_blocks.0.resnets.0.conv1", "input_blocks.1.0.in_layers.2"),
        ("down_blocks.0.resnets.1.conv2", "input_blocks.2.0.out_layers.3"),
        ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
        ("down_blocks.1.resnets.0.time_emb_proj", "input_blocks.4.0.emb_layers.1"),
        ("down_blocks.1.resnets.0.conv_shortcut", "input_blocks.4.0.skip_connection"),
        ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "input_blocks.4.1.transformer_blocks.0.attn1.to_q"),
        ("down_blocks.1.attentions.1.proj_in", "input_blocks.5.1.proj_in"),
        ("down_blocks.1.downsamplers.0.conv", "input_blocks.6.0.op"),
        ("down_blocks.2.attentions.0.transformer_blocks.9.ff.net.2", "input_blocks.7.1.transformer_blocks.9.ff.net.2"),
        ("down_blocks.2.attentions.1.proj_out", "input_blocks.8.1.proj_out"),
        ("mid_block.resnets.0.conv1", "middle_block.0.in_layers.2"),
        ("mid_block.attentions.0.transformer_blocks.3.attn2.to_k", "middle_block.1.transformer_blocks.3.attn2.to_k"),
        ("mid_block.resnets.1.conv2", "middle_block.2.out_layers.3"),
        ("up_blocks.0.resnets.0.conv1", "output_blocks.0.0.in_layers.2"),
        ("up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0", "output_blocks.0.1.transformer_blocks.0.attn1.to_out.0"),
        ("up_blocks.0.attentions.2.proj_out", "output_blocks.2.1.proj_out"),
        ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
        ("up_blocks.1.attentions.0.proj_in", "output_blocks.3.1.proj_in"),
        ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
        ("up_blocks.2.resnets.0.conv_shortcut", "output_blocks.6.0.skip_connection"),
        ("up_blocks.2.resnets.2.conv2", "output_blocks.8.0.out_layers.3"),
    ],
)
def test_sdxl_diffusers_paths_map_to_sgm(diffusers, sgm):
    assert SGMLayout.from_config(SDXL_CONFIG).map(diffusers) == sgm


def test_sgm_upsampler_of_block_without_attention_sits_at_position_1():
    # An SD-1-shaped U-Net in the SGM layout: the last up block has no attention.
    cfg = {
        "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    }
    layout = SGMLayout.from_config(cfg)
    assert layout.map("up_blocks.0.upsamplers.0.conv") == "output_blocks.1.1.conv"
    assert layout.map("down_blocks.0.downsamplers.0.conv") == "input_blocks.2.0.op"
    assert layout.map("up_blocks.1.attentions.1.proj_in") == "output_blocks.3.1.proj_in"


def test_unet_and_text_encoder_names():
    layout = SGMLayout.from_config(SDXL_CONFIG)
    path = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    assert unet_lora_name(path, "sdxl", layout) == "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    assert unet_lora_name("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "sd1") == (
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    )
    assert unet_lora_name("mid_block.attentions.0.proj_in", "sd2") == "lora_unet_mid_block_attentions_0_proj_in"
    # transformers 5.x CLIPTextModel paths lack "text_model."; the names never do.
    assert text_encoder_lora_name("encoder.layers.0.self_attn.q_proj", text_encoder_prefix(0, 1)) == (
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    )
    assert text_encoder_lora_name("text_model.encoder.layers.3.mlp.fc2", text_encoder_prefix(1, 2)) == (
        "lora_te2_text_model_encoder_layers_3_mlp_fc2"
    )
    assert text_encoder_prefix(0, 2) == "lora_te1"
    with pytest.raises(ValueError):
        unet_lora_name(path, "sdxl")  # SDXL needs the layout
    assert normalize_family("sd15") == "sd1" and normalize_family("sd2-v") == "sd2"
    with pytest.raises(ValueError, match="unknown model family"):
        normalize_family("sd4")  # flux is a family now (test_flow_families)


def test_guess_family_from_keys_shapes_and_metadata():
    assert guess_family({"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768)}) == "sdxl"
    k = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"
    assert guess_family({k: (4, 768)}) == "sd1"
    assert guess_family({k: (4, 1024)}) == "sd2"
    assert guess_family({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 1024)}) == "sd2"
    assert guess_family({"x.lora_down.weight": (4, 3)}, {"ss_base_model_version": "sd_v1"}) == "sd1"
    assert guess_family({"x.lora_down.weight": (4, 3)}) is None
    # Tiny/unknown widths: only the layout is known.
    assert guess_family({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 32)}) == "sd1-or-sd2"


# ----------------------------------------------------------- full size, on meta


def _meta_models(family: str):
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from loratui.engine.configs import config_dir

    folder = config_dir(family)
    names = ["text_encoder", "text_encoder_2"] if family == "sdxl" else ["text_encoder"]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        tes = [
            (CLIPTextModelWithProjection if i else CLIPTextModel)(CLIPTextConfig.from_pretrained(folder / n))
            for i, n in enumerate(names)
        ]
    return unet, tes


def _count(names, prefix):
    return sum(n.startswith(prefix + "_") for n in names)


def test_full_size_sd15_names_and_counts():
    from loratui.engine.lora import LoRANetwork

    unet, tes = _meta_models("sd15")
    net = LoRANetwork.create(unet, tes, "sd1", rank=8, alpha=4)
    names = net.module_names
    assert net.num_modules == 264
    assert _count(names, "lora_te") == 72 and _count(names, "lora_unet") == 192
    assert len(set(names)) == len(names)
    for expected in [
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "lora_unet_down_blocks_0_attentions_0_proj_in",
        "lora_unet_down_blocks_2_attentions_1_transformer_blocks_0_attn2_to_out_0",
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj",
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2",
        "lora_unet_up_blocks_1_attentions_0_proj_out",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
        "lora_te_text_model_encoder_layers_11_mlp_fc2",
    ]:
        assert expected in names, expected
    # Each transformer block: attn1 q/k/v/out + attn2 q/k/v/out + ff 2; each Transformer2DModel + proj_in/out.
    per_block = {
        re.sub(r"_transformer_blocks_\d+_.*|_proj_(in|out)$", "", n) for n in names if n.startswith("lora_unet_")
    }
    assert len(per_block) == 16
    # SD 1.5 proj_in/out are 1x1 convs; they get the main rank.
    m = next(m for m in net.modules if m.name == "lora_unet_down_blocks_0_attentions_0_proj_in")
    assert m.kind == "conv1x1" and (m.rank, m.alpha) == (8, 4.0)
    assert tuple(m.down.weight.shape) == (8, 320, 1, 1) and tuple(m.up.weight.shape) == (320, 8, 1, 1)


def test_full_size_sd15_locon_adds_resnet_and_sampler_layers():
    from loratui.engine.lora import LoRANetwork

    unet, tes = _meta_models("sd15")
    net = LoRANetwork.create(unet, tes, "sd1", rank=8, alpha=4, conv_rank=4, conv_alpha=1, train_text_encoder=False)
    names = set(net.module_names)
    # 22 ResnetBlock2D x (conv1, conv2, time_emb_proj) + 14 conv_shortcut (1x1: 2 down, 12 up) + 3 down/3 upsamplers.
    assert len(net.unet_modules) == 192 + 22 * 3 + 14 + 6 == 278
    assert not net.text_encoder_modules
    by_name = {m.name: m for m in net.modules}
    conv = by_name["lora_unet_down_blocks_0_resnets_0_conv1"]
    assert conv.kind == "conv" and (conv.rank, conv.alpha) == (4, 1.0)
    assert tuple(conv.down.weight.shape) == (4, 320, 3, 3) and tuple(conv.up.weight.shape) == (320, 4, 1, 1)
    assert (by_name["lora_unet_down_blocks_0_resnets_0_time_emb_proj"].rank) == 8
    assert (by_name["lora_unet_up_blocks_0_resnets_0_conv_shortcut"].rank) == 8
    assert {"lora_unet_down_blocks_2_downsamplers_0_conv", "lora_unet_up_blocks_2_upsamplers_0_conv"} <= names


def test_full_size_sd2_text_encoder_names():
    from transformers import CLIPTextConfig

    from loratui.engine.configs import config_dir
    from loratui.engine.lora import LoRANetwork

    unet, tes = _meta_models("sd2")
    net = LoRANetwork.create(unet, tes, "sd2", rank=4, alpha=4)
    layers = CLIPTextConfig.from_pretrained(config_dir("sd2") / "text_encoder").num_hidden_layers
    assert len(net.text_encoder_modules) == 6 * layers
    assert len(net.unet_modules) == 192
    assert "lora_unet_down_blocks_0_attentions_0_proj_in" in net.module_names
    # SD 2.x uses linear projections.
    assert net._by_name["lora_unet_down_blocks_0_attentions_0_proj_in"].kind == "linear"


def test_full_size_sdxl_names_and_counts():
    from loratui.engine.lora import LoRANetwork

    unet, tes = _meta_models("sdxl")
    net = LoRANetwork.create(unet, tes, "sdxl", rank=8, alpha=4)
    names = net.module_names
    assert net.num_modules == 986
    assert (_count(names, "lora_te1"), _count(names, "lora_te2"), _count(names, "lora_unet")) == (72, 192, 722)
    assert _count(names, "lora_te") == 0
    for expected in [
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "lora_unet_input_blocks_8_1_transformer_blocks_9_ff_net_2",
        "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k",
        "lora_unet_middle_block_1_proj_in",
        "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_out_0",
        "lora_unet_output_blocks_5_1_proj_out",
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
        "lora_te2_text_model_encoder_layers_31_mlp_fc2",
    ]:
        assert expected in names, expected
    # Transformer depth per SGM block, as in sd-scripts' SdxlUNet2DConditionModel.
    depth: dict[str, int] = {}
    for n in names:
        m = re.match(r"lora_unet_(input_blocks_\d+|middle_block|output_blocks_\d+)_1_transformer_blocks_(\d+)_", n)
        if m:
            depth[m[1]] = max(depth.get(m[1], 0), int(m[2]) + 1)
    assert depth == {
        "input_blocks_4": 2, "input_blocks_5": 2, "input_blocks_7": 10, "input_blocks_8": 10,
        "middle_block": 10,
        "output_blocks_0": 10, "output_blocks_1": 10, "output_blocks_2": 10,
        "output_blocks_3": 2, "output_blocks_4": 2, "output_blocks_5": 2,
    }


def test_full_size_sdxl_locon_names():
    from loratui.engine.lora import LoRANetwork

    unet, tes = _meta_models("sdxl")
    net = LoRANetwork.create(unet, tes, "sdxl", rank=8, alpha=8, conv_rank=4, conv_alpha=2, train_text_encoder=False)
    names = set(net.module_names)
    # 17 ResBlocks x (in_layers_2, out_layers_3, emb_layers_1) + 11 skip_connection + 2 op + 2 upsample conv.
    assert len(net.unet_modules) == 722 + 17 * 3 + 11 + 4 == 788
    for expected in [
        "lora_unet_input_blocks_1_0_in_layers_2",
        "lora_unet_input_blocks_1_0_emb_layers_1",
        "lora_unet_input_blocks_3_0_op",
        "lora_unet_input_blocks_4_0_skip_connection",
        "lora_unet_input_blocks_6_0_op",
        "lora_unet_middle_block_2_out_layers_3",
        "lora_unet_output_blocks_2_2_conv",
        "lora_unet_output_blocks_5_2_conv",
        "lora_unet_output_blocks_8_0_skip_connection",
    ]:
        assert expected in names, expected
    assert not any("upsamplers" in n or "downsamplers" in n or "resnets" in n for n in names)
    by_name = net._by_name
    assert (by_name["lora_unet_input_blocks_3_0_op"].rank, by_name["lora_unet_input_blocks_3_0_op"].alpha) == (4, 2.0)
    assert by_name["lora_unet_input_blocks_1_0_emb_layers_1"].rank == 8
    assert by_name["lora_unet_input_blocks_4_0_skip_connection"].rank == 8
