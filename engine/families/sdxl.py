"""SDXL: two text encoders (CLIP ViT-L + OpenCLIP ViT-bigG), size/crop conditioning, epsilon target."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loratui.engine.families.base import LABEL_EMB_PREFIX, Family, TextEncoderSpec, any_prefix


class SDXL(Family):
    name = "sdxl"
    label = "SDXL"
    order = 30
    swap_block_count = 7  # 3 down, mid, 3 up
    ss_base_model_version = "sdxl_base_v1-0"
    ss_v_suffix = False
    ss_base_model_prefix = "sdxl"
    modelspec_architecture = "stable-diffusion-xl-v1-base"
    modelspec_implementation = "https://github.com/Stability-AI/generative-models"
    sd_scripts_script = "sdxl_train_network.py"
    sd_scripts_flags = ("sdxl",)
    sd_scripts_memory_args = ("cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk")
    v_pred_unusual = "only a few SDXL models (v-pred fine-tunes) use it"
    default_resolution = 1024

    text_encoders = (
        TextEncoderSpec("text encoder", "text_encoder", "tokenizer", "CLIPTextModel", "clip", ("conditioner.embedders.0.transformer.",)),
        TextEncoderSpec(
            "text encoder 2", "text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection", "open_clip",
            ("conditioner.embedders.1.model.",),
        ),
    )
    cross_attention_width = 2048
    config_folder = "sdxl"
    vae_overflows_in_fp16 = True
    uses_clip_skip = False
    lora_unet_layout = "sgm"  # sd-scripts' SDXL U-Net has the original layout
    pipeline_class = "StableDiffusionXLPipeline"

    # ---- detection

    def match_checkpoint(self, keys, shapes) -> int | None:
        if any_prefix(keys, "conditioner.embedders.1."):
            return 0
        if any_prefix(keys, LABEL_EMB_PREFIX):
            return 2
        return None

    def reject_checkpoint(self, keys, shapes=None) -> str | None:
        if (
            not any_prefix(keys, "conditioner.embedders.1.")
            and any_prefix(keys, "conditioner.embedders.0.model.")
            and any_prefix(keys, LABEL_EMB_PREFIX)
        ):
            return "is an SDXL refiner. LoRAs are trained on the SDXL base model; choose that instead."
        if "edm_mean" in keys or "edm_vpred.sigma_max" in keys:  # Playground v2.5 (EDM), CosXL (EDM v-pred)
            return ("is an EDM-trained SDXL model (Playground v2.5 or CosXL): loratui trains SDXL with the DDPM "
                    "schedule (epsilon or v-prediction), which would train it wrong; choose another SDXL model")
        return None

    def match_diffusers(self, folder: Path, index: Mapping, unet: Mapping, text_encoder: Mapping) -> int | None:
        cls = str(index.get("_class_name", ""))
        if "transformer" in index:  # SD3/FLUX pipelines also have a text_encoder_2
            return None
        if "XL" in cls or (folder / "text_encoder_2").is_dir() or "text_encoder_2" in index:
            return 0
        if unet.get("addition_embed_type") == "text_time":
            return 0
        return None

    # ---- text: the penultimate layer of both encoders, concatenated; the pooled output of the second

    def encode_text(self, text_encoders: list, ids: list, clip_skip: int, device) -> tuple[Any, Any]:
        import torch

        te1, te2 = text_encoders
        o1 = te1(ids[0].to(device), output_hidden_states=True)
        o2 = te2(ids[1].to(device), output_hidden_states=True)
        hidden = torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], dim=-1)
        return hidden, o2.text_embeds

    def unet_kwargs(self, pooled, crops: list[tuple], device, dtype) -> dict[str, Any]:
        """Size/crop conditioning: (original size, crop top-left, target size) per image."""
        import torch

        rows = [list(orig) + list(top_left) + list(target) for orig, top_left, target in crops]
        from loratui.engine.training.fastpath import to_device

        time_ids = to_device(torch.tensor(rows, dtype=dtype), device)  # pinned, non-blocking on CUDA
        return {"added_cond_kwargs": {"text_embeds": pooled.to(dtype), "time_ids": time_ids}}

    def pipeline_extras(self) -> dict[str, Any]:
        return {}


FAMILY = SDXL()
