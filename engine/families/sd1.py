"""Stable Diffusion 1.x: one CLIP ViT-L text encoder, a 4-channel U-Net, epsilon target."""

from __future__ import annotations

from loratui.engine.families.base import Family, TextEncoderSpec


class SD1(Family):
    name = "sd1"
    label = "SD 1.x"
    order = 10
    aliases = ("sd15", "sd1.5")
    ss_base_model_version = "sd_v1"
    modelspec_architecture = "stable-diffusion-v1"
    v_pred_unusual = "almost all SD 1.x models are epsilon-prediction"
    default_resolution = 512

    text_encoders = (
        TextEncoderSpec("text encoder", "text_encoder", "tokenizer", "CLIPTextModel", "clip", ("cond_stage_model.transformer.",)),
    )
    cross_attention_width = 768
    text_encoder_act = "quick_gelu"
    config_folder = "sd15"
    lora_text_encoder_width = 768


FAMILY = SD1()
