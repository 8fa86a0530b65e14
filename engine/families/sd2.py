"""Stable Diffusion 2.x: OpenCLIP ViT-H text encoder; 512 models predict epsilon, 768-v models v."""

from __future__ import annotations

import re
from pathlib import Path

from loratui.engine.families.base import Family, TextEncoderSpec

_SGM_TEXT = "conditioner.embedders.0.model."  # SD 2.x saved in the SGM layout
_LDM_TEXT = "cond_stage_model.model."
# ComfyUI's test: in 768-v models this LayerNorm bias has a clearly larger
# spread (std > 0.09) than in epsilon models.
_VPRED_PROBE = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"


class SD2(Family):
    name = "sd2"
    label = "SD 2.x"
    order = 20
    aliases = ("sd2-v", "sd2v")
    ss_base_model_version = "sd_v2"
    modelspec_architecture = "stable-diffusion-v2-512"
    modelspec_architecture_v = "stable-diffusion-v2-768-v"
    sd_scripts_flags = ("v2",)
    default_resolution = 768

    text_encoders = (
        TextEncoderSpec("text encoder", "text_encoder", "tokenizer", "CLIPTextModel", "open_clip", (_LDM_TEXT, _SGM_TEXT)),
    )
    cross_attention_width = 1024
    text_encoder_act = "gelu"
    config_folder = "sd2"
    config_folder_v = "sd2-v"
    lora_text_encoder_width = 1024
    prediction_ambiguous = True

    def prediction_warning(self, spec: str, guess: str | None, setting: str) -> str:
        """What to say when a single file does not declare its prediction type
        and ``setting`` (model.v_parameterization) is false."""
        if guess == "v_prediction":
            return (
                f"{spec} looks like an SD 2.x 768-v model (v-prediction), but "
                f"{setting} is false. A 768-v model trained with epsilon gives a broken "
                f"LoRA: set {setting} = true (and resolution 768) unless this is a 512 "
                f"epsilon model."
            )
        hint = " It looks like an epsilon (512-base) model." if guess == "epsilon" else ""
        return (
            f"SD 2.x single files do not say whether they are v-prediction (768-v, e.g. "
            f"v2-1_768-ema-pruned) or epsilon (512-base).{hint} Training with epsilon because "
            f"{setting} is false; set it to true for a 768-v model."
        )

    def guess_prediction(self, path: Path, read_tensor) -> str | None:
        return (read_tensor and _weight_guess(read_tensor)) or _guess_from_name(path)

    def normalize_checkpoint(self, sd: dict) -> dict:
        """The SGM layout keeps the OpenCLIP under conditioner.embedders.0.model.*:
        map it to cond_stage_model.model.*."""
        if any(k.startswith("cond_stage_model.") for k in sd):
            return sd
        return {(_LDM_TEXT + k[len(_SGM_TEXT):]) if k.startswith(_SGM_TEXT) else k: v for k, v in sd.items()}


def _weight_guess(read_tensor) -> str | None:
    try:
        vals = read_tensor(_VPRED_PROBE)
    except (OSError, KeyError):
        return None
    if not vals:
        return None
    m = sum(vals) / len(vals)
    std = (sum((v - m) ** 2 for v in vals) / len(vals)) ** 0.5
    return "v_prediction" if std > 0.09 else "epsilon"


def _guess_from_name(path: Path) -> str | None:
    n = path.name.lower()
    if re.search(r"768[-_]?v\b|v[-_]?pred|vpred|[-_]v[-_]pred", n) or "768-v" in n:
        return "v_prediction"
    if "768" in n and "512" not in n:
        return "v_prediction"
    if "512" in n or "base" in n:
        return "epsilon"
    return None


FAMILY = SD2()
