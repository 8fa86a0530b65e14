"""kohya_ss / sd-scripts key tables: what each key of their configs means here.

The one-to-one keys are not listed: they come from the settings' declarations
(``setting(kohya=..., sd_scripts=..., sd_dataset=...)`` in :mod:`loratui.engine.schema`),
read by :func:`flat_keys`, :func:`dataset_keys` and :func:`subset_keys`. Listed here:
network types by their GUI / module names, keys with no effect in loratui, options
loratui lacks (with the value that means "off"), LyCORIS options.

Cheap to import: no torch.
"""

from __future__ import annotations

import json
import re
from typing import Any

from loratui.engine.dataset.concepts import parse_concept_dir
from loratui.engine.registries import NETWORK_TYPES
from loratui.engine.schema import SettingInfo, settings

GUI_JSON = "kohya_ss GUI config"
SD_SCRIPTS_CONFIG = "sd-scripts config_file"
SD_SCRIPTS_DATASET = "sd-scripts dataset_config"



def concept_dir(name: str) -> tuple[int, str] | None:
    """(repeats, name) of a ``<repeats>_<name>`` folder kohya_ss can train
    (repeats ≥ 0, a name), else None — the dataset scanner's own pattern."""
    parsed = parse_concept_dir(name)
    return parsed if parsed is not None and parsed[0] >= 0 and parsed[1] else None

LORATUI_COMMENT = re.compile(r"^\s*#\s*loratui:\s*(?P<assign>\w+\s*=.*)$")



def show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)


# --------------------------------------------------------------------------- network types

# kohya_ss GUI LoRA_type values (and sd-scripts / LyCORIS module+algo names) → our name:
# the trainable ones from the network-type registry, then those loratui cannot train (yet).
LORA_TYPES = {t: n.name for n in NETWORK_TYPES.values() for t in (n.name, *n.gui_lora_types)} | {
    "lora-fa": "lora-fa",
}
NETWORK_LABELS = {
    "loha": "LoHa",
    "lokr": "LoKr",
    "dylora": "DyLoRA",
    "ia3": "(IA)^3",
    "glora": "GLoRA",
    "full": "native fine-tuning",
    "boft": "BOFT",
    "diag-oft": "Diag-OFT",
    "oft": "OFT",
    "lora-fa": "LoRA-FA",
    "dora": "DoRA",
}


def network_slug(text: str) -> str:
    t = str(text).strip()
    if t.lower() in LORA_TYPES:
        return LORA_TYPES[t.lower()]
    t = t.split("/")[-1].strip().lower()
    return re.sub(r"[^a-z0-9]+", "-", t).strip("-") or "unknown"


def network_type_refusal(value: str) -> str | None:
    """Why a network type cannot be trained, with what to do (None if it can)."""
    if value in NETWORK_TYPES:
        return None
    label = NETWORK_LABELS.get(value, value)
    return (
        f"{label} networks ({value!r}) cannot be trained by loratui yet; "
        "set network_type to 'lora', or 'locon' to also train the 3x3 convolutions"
        f" (or a LyCORIS type: {', '.join(n for n in NETWORK_TYPES if n not in ('lora', 'locon'))})"
    )


def network_type_message(value: str) -> str | None:
    """``network.network_type: <refusal>`` for a network type loratui cannot train (None if it can)."""
    refusal = network_type_refusal(value)
    return None if refusal is None else f"network.network_type: {refusal}"


# --------------------------------------------------------------------------- keys we do not map

NO_EFFECT: dict[str, str] = {}
for _k in ("xformers", "sdpa", "mem_eff_attn", "attn_mode"):
    NO_EFFECT[_k] = "attention kernel choice; loratui uses PyTorch's scaled-dot-product attention"
for _k in (
    "num_cpu_threads_per_process", "dynamo_backend", "dynamo_mode", "dynamo_use_dynamic", "dynamo_use_fullgraph",
    "extra_accelerate_launch_args", "ddp_gradient_as_bucket_view", "ddp_static_graph",
):
    NO_EFFECT[_k] = "accelerate launch / DDP tuning option; loratui starts its processes itself (see [compute])"
NO_EFFECT["multi_gpu"] = "implied by num_processes > 1 (compute.processes)"
for _k in ("max_data_loader_n_workers", "persistent_data_loader_workers"):
    NO_EFFECT[_k] = "data-loader workers: speed only"
for _k in (
    "log_tracker_name", "log_tracker_config", "log_config",
    "use_wandb", "wandb_api_key", "wandb_run_name", "console_log_level", "console_log_file", "console_log_simple",
):
    NO_EFFECT[_k] = "logging; loratui shows progress in its own dashboard and run log"
for _k in (
    "huggingface_path_in_repo", "huggingface_repo_id", "huggingface_repo_type", "huggingface_repo_visibility",
    "huggingface_token", "async_upload", "save_state_to_huggingface", "resume_from_huggingface",
):
    NO_EFFECT[_k] = "Hugging Face upload; loratui writes local files only"
for _k in ("save_last_n_steps", "save_last_n_epochs"):
    NO_EFFECT[_k] = "removes older intermediate LoRA files; loratui keeps them all"
NO_EFFECT.update(
    {
        "model_list": "kohya_ss GUI model picker",
        "save_as_bool": "kohya_ss GUI internal",
        "vae_batch_size": "latent-caching batch size: speed only",
        "lowram": "memory placement only",
        "lowvram": "memory placement only",
        "sdxl_no_half_vae": "VAE precision while caching; loratui chooses a safe VAE precision itself",
        "no_half_vae": "VAE precision while caching; loratui chooses a safe VAE precision itself",
        "save_state_on_train_end": "loratui saves state as set by output.save_state",
        "dim_from_weights": "loratui always takes the rank from network weights when continuing",
        "metadata_license": "loratui has no license field; add it to the description if needed",
        "save_n_epoch_ratio": "changes only how often intermediate files are saved",
        "output_config": "sd-scripts option to write a config file",
        "config_file": "sd-scripts option naming this file",
        "tokenizer_cache_dir": "tokenizer download cache",
        "skip_cache_check": "cache bookkeeping: speed only",
        "deepspeed": "multi-GPU memory sharding",
        "full_path": "kohya_ss GUI internal",
        "max_token_length_hint": "kohya_ss GUI internal",
    }
)

LYCORIS_OPTIONS = {
    "LyCORIS_preset", "factor", "use_cp", "use_tucker", "use_scalar", "decompose_both", "train_norm",
    "rescaled", "constrain", "bypass_mode", "dora_wd", "train_on_input", "unit", "conv_dims", "conv_alphas",
}

# Options loratui lacks: (the value that means "off", what it is). Off → ignored; on → unsupported.
OFF_VALUES: dict[str, tuple[Any, str]] = {
    "color_aug": (False, "color augmentation"),
    "random_crop": (False, "random crop augmentation"),
    "weighted_captions": (False, "weighted captions"),
    "fp8_base_unet": (False, "fp8 base U-Net"),
    "caption_dropout_every_n_epochs": (0, "caption dropout every N epochs"),
    "caption_tag_dropout_rate": (0, "tag dropout"),
    "rank_dropout": (0, "rank dropout"),
    "module_dropout": (0, "module dropout"),
    "rank_dropout_scale": (False, "rank dropout scaling"),
    "v_pred_like_loss": (0, "v-prediction-like loss"),
    "scale_v_pred_loss_like_noise_pred": (False, "v-prediction loss scaling"),
    "zero_terminal_snr": (False, "zero terminal SNR"),
    "no_token_padding": (False, "no token padding"),
    "keep_tokens_separator": ("", "keep-tokens separator"),
    "secondary_separator": ("", "secondary caption separator"),
    "enable_wildcard": (False, "caption wildcards"),
    "caption_prefix": ("", "caption prefix"),
    "caption_suffix": ("", "caption suffix"),
    "face_crop_aug_range": ("", "face crop augmentation"),
    "token_warmup_min": (1, "token warm-up"),
    "token_warmup_step": (0, "token warm-up"),
    "lr_decay_steps": (0, "learning-rate decay steps"),
    "lr_scheduler_timescale": (0, "scheduler timescale"),
    "lr_scheduler_min_lr_ratio": (0, "scheduler minimum LR ratio"),
    "stop_text_encoder_training": (0, "stopping text encoder training early"),
    "stop_text_encoder_training_pct": (0, "stopping text encoder training early"),
    "block_dims": ("", "per-block ranks"),
    "block_alphas": ("", "per-block alphas"),
    "conv_block_dims": ("", "per-block conv ranks"),
    "conv_block_alphas": ("", "per-block conv alphas"),
    "block_lr_zero_threshold": ("", "per-block learning rates"),
    "down_lr_weight": ("", "per-block learning rates"),
    "mid_lr_weight": ("", "per-block learning rates"),
    "up_lr_weight": ("", "per-block learning rates"),
    "cache_text_encoder_outputs": (False, "cached text encoder outputs (freezes the text encoder and captions)"),
    "cache_text_encoder_outputs_to_disk": (False, "cached text encoder outputs (freezes the text encoder and captions)"),
    "initial_epoch": (0, "starting at a later epoch"),
    "initial_step": (0, "starting at a later step"),
    "in_json": ("", "fine-tuning metadata datasets"),
    "dataset_repeats": (1, "fine-tuning dataset repeats"),
    "network_multiplier": (1, "network multiplier while training"),
    "base_weights": ("", "merging other LoRAs into the base model"),
    "base_weights_multiplier": ("", "merging other LoRAs into the base model"),
    "optimizer_accumulation_steps": (0, "optimizer accumulation"),
    "fused_backward_pass": (False, "fused backward pass"),
}


# Keys that sd-scripts ignores when a dataset_config is given.
DATASET_DIR_KEYS = ("train_data_dir", "reg_data_dir", "in_json")


# --------------------------------------------------------------------------- from the declarations


def flat_keys() -> dict[str, SettingInfo]:
    """{kohya_ss GUI or sd-scripts key: setting} for the settings that map one to one."""
    out: dict[str, SettingInfo] = {}
    for s in settings():
        if s.special in (True, "import"):
            continue
        for name in (s.kohya, s.sd_scripts):
            if name:
                out.setdefault(name, s)
    return out


def dataset_keys() -> dict[str, str]:
    """sd-scripts dataset_config dataset-level key → setting (dotted), one to one."""
    return {s.sd_dataset[1]: s.dotted for s in settings() if s.sd_dataset and s.sd_dataset[0] == "dataset" and not s.special}


def subset_keys() -> dict[str, str]:
    """sd-scripts dataset_config subset option (or its [general] default) → setting (dotted):
    loratui applies one value to every concept."""
    return {s.sd_dataset[1]: s.dotted for s in settings() if s.sd_dataset and s.sd_dataset[0] == "general"}
