"""Stable Diffusion 2.x: OpenCLIP ViT-H text encoder; 512 models predict epsilon, 768-v models v."""

from __future__ import annotations

from loratui.engine.families.base import Family


class SD2(Family):
    name = "sd2"
    label = "SD 2.x"
    order = 20
    ss_base_model_version = "sd_v2"
    modelspec_architecture = "stable-diffusion-v2-512"
    modelspec_architecture_v = "stable-diffusion-v2-768-v"
    sd_scripts_flags = ("v2",)
    default_resolution = 768


FAMILY = SD2()
