"""Stable Diffusion 1.x: one CLIP ViT-L text encoder, a 4-channel U-Net, epsilon target."""

from __future__ import annotations

from loratui.engine.families.base import Family


class SD1(Family):
    name = "sd1"
    label = "SD 1.x"
    order = 10
    ss_base_model_version = "sd_v1"
    modelspec_architecture = "stable-diffusion-v1"
    default_resolution = 512


FAMILY = SD1()
