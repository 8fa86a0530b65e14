"""SDXL: two text encoders (CLIP ViT-L + OpenCLIP ViT-bigG), size/crop conditioning, epsilon target."""

from __future__ import annotations

from loratui.engine.families.base import Family


class SDXL(Family):
    name = "sdxl"
    label = "SDXL"
    order = 30
    ss_base_model_version = "sdxl_base_v1-0"
    ss_v_suffix = False
    modelspec_architecture = "stable-diffusion-xl-v1-base"
    modelspec_implementation = "https://github.com/Stability-AI/generative-models"
    sd_scripts_script = "sdxl_train_network.py"
    sd_scripts_flags = ("sdxl",)
    default_resolution = 1024


FAMILY = SDXL()
