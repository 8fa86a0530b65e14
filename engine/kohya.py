"""kohya_ss / sd-scripts interop: import their configs, export ours.

Import reads
  * a kohya_ss GUI LoRA config (``.json``, the LoRA tab's "Save" file),
  * an sd-scripts ``--config_file`` TOML (flat or in sections, as sd-scripts
    itself flattens them), with the ``--dataset_config`` TOML it names,
  * an sd-scripts ``--dataset_config`` TOML on its own,
and returns an :class:`ImportResult`: the profile as a nested dict plus every key
of the file accounted for — mapped to a setting, *ignored* (no effect here, e.g.
``xformers``) or *unsupported* (changes training and loratui has no equivalent)
— never dropped silently.

The 1:1 mappings come from the ``kohya`` names declared on the settings in
:mod:`engine.schema`; only the special cases live here.

Export writes an sd-scripts ``--config_file`` TOML and ``--dataset_config`` TOML
(or the equivalent ``accelerate launch train_network.py ...`` command line).
Settings sd-scripts has no key for (the model family, dataset balancing, ...) are
written as ``# loratui: key = value`` comment lines, which sd-scripts skips and
the importer reads back, so import → export → import gives the same profile.

Cheap to import: no torch, no diffusers.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loratui.engine.schema import (
    NETWORK_TYPES,
    OPTIMIZERS,
    SCHEDULERS,
    Profile,
    ProfileError,
    profile_from_dict,
    settings,
)

GUI_JSON = "kohya_ss GUI config"
SD_SCRIPTS_CONFIG = "sd-scripts config_file"
SD_SCRIPTS_DATASET = "sd-scripts dataset_config"

CONCEPT_DIR = re.compile(r"^(\d+)_(.+)$")
LORATUI_COMMENT = re.compile(r"^\s*#\s*loratui:\s*(?P<assign>\w+\s*=.*)$")


class KohyaImportError(Exception):
    """The file could not be read as a kohya_ss / sd-scripts config at all."""


Entry = tuple[str, Any, str]  # (key as written in the file, value as written, reason / target)


@dataclass
class ImportResult:
    profile_dict: dict[str, dict[str, Any]]
    ignored: list[Entry] = field(default_factory=list)  # no effect here
    unsupported: list[Entry] = field(default_factory=list)  # changes training, no equivalent
    notes: list[str] = field(default_factory=list)
    mapped: list[Entry] = field(default_factory=list)  # (key, value, "section.setting")
    source: str = ""
    kind: str = ""

    def problems(self) -> list[str]:
        """Validation problems of the imported profile (empty: it can train)."""
        try:
            profile_from_dict(self.profile_dict, self.source or "<import>")
        except ProfileError as exc:
            return [_friendlier(p) for p in exc.problems]
        return []

    def profile(self) -> Profile:
        """The validated profile. Raises ProfileError (e.g. an unsupported network type)."""
        try:
            return profile_from_dict(self.profile_dict, self.source or "<import>")
        except ProfileError as exc:
            raise ProfileError([_friendlier(p) for p in exc.problems]) from None

    def report(self) -> str:
        """The human-readable import report the CLI prints."""
        lines = [f"Imported {self.source} ({self.kind}): {len(self.mapped)} settings mapped."]
        if self.ignored:
            lines.append(f"\nIgnored, no effect here ({len(self.ignored)}):")
            lines += [f"  {k} = {_show(v)}: {why}" for k, v, why in self.ignored]
        if self.unsupported:
            lines.append(f"\nNot supported, changes training ({len(self.unsupported)}):")
            lines += [f"  {k} = {_show(v)}: {why}" for k, v, why in self.unsupported]
        if self.notes:
            lines.append("\nNotes:")
            lines += [f"  - {n}" for n in self.notes]
        problems = self.problems()
        if problems:
            lines.append("\nThis profile cannot be trained until you change:")
            lines += [f"  {p}" for p in problems]
        return "\n".join(lines)


def import_header(result: ImportResult) -> str:
    """The comment block written at the top of an imported profile."""
    lines = [f"Imported by `loratui import` from {result.source} ({result.kind})."]
    if result.unsupported:
        lines.append("Not supported (changes training):")
        lines += [f"  {k} = {_show(v)}: {why}" for k, v, why in result.unsupported]
    if result.ignored:
        lines.append(f"{len(result.ignored)} keys with no effect here were ignored (see the import report).")
    return "\n".join(lines)


def save_import(result: ImportResult, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write the imported profile atomically (engine.schema.save_profile), with the
    import report's unsupported keys as a header. A profile the schema refuses (an
    unsupported network type kept as given) is written as well, so the user can open
    and change it. Raises FileExistsError when ``path`` exists and not ``overwrite``."""
    from loratui.engine.fsutil import atomic_write_text
    from loratui.engine.schema import save_profile

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(str(path))
    header = import_header(result)
    try:
        profile = result.profile()
    except ProfileError:
        import tomli_w

        body = "".join(f"# {line}\n" for line in header.splitlines()) + "\n" + tomli_w.dumps(result.profile_dict)
        atomic_write_text(path, body)
        return path
    return save_profile(profile, path, header=header)


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)


# --------------------------------------------------------------------------- network types

# kohya_ss GUI LoRA_type values (and sd-scripts / LyCORIS module+algo names) → our name.
_LORA_TYPES = {
    "standard": "lora",
    "lora": "lora",
    "kohya locon": "locon",
    "locon": "locon",
    "lycoris/locon": "locon",
    "kohya dylora": "dylora",
    "lycoris/dylora": "dylora",
    "lycoris/loha": "loha",
    "lycoris/lokr": "lokr",
    "lycoris/ia3": "ia3",
    "lycoris/(ia)^3": "ia3",
    "lycoris/glora": "glora",
    "lycoris/native fine-tuning": "full",
    "lycoris/boft": "boft",
    "lycoris/diag-oft": "diag-oft",
    "lora-fa": "lora-fa",
}
_NETWORK_LABELS = {
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


_LYCORIS_LOCON_NOTE = (
    "LyCORIS LoCon is trained as loratui's LoCon (kohya networks.lora with conv layers); "
    "the file format is the same, LyCORIS-only options do not apply"
)


def _network_slug(text: str) -> str:
    t = str(text).strip()
    if t.lower() in _LORA_TYPES:
        return _LORA_TYPES[t.lower()]
    t = t.split("/")[-1].strip().lower()
    return re.sub(r"[^a-z0-9]+", "-", t).strip("-") or "unknown"


def network_type_message(value: str) -> str | None:
    """A helpful refusal for a network type loratui cannot train (None if it can)."""
    if value in NETWORK_TYPES:
        return None
    label = _NETWORK_LABELS.get(value, value)
    return (
        f"network.network_type: {label} networks ({value!r}) cannot be trained by loratui yet; "
        "set network_type to 'lora', or 'locon' to also train the 3x3 convolutions"
    )


def _friendlier(problem: str) -> str:
    """Replace schema messages for values an import writes as given with clearer ones."""
    m = re.search(r"network\.network_type: '([^']*)' is not one of", problem)
    if m:
        src = problem[: m.start()]
        return src + (network_type_message(m.group(1)) or problem[m.start():])
    for dotted, what in (
        ("optimization.optimizer", "optimizer"),
        ("optimization.lr_scheduler", "learning-rate scheduler"),
        ("optimization.mixed_precision", "mixed precision"),
    ):
        m = re.search(re.escape(dotted) + r": '([^']*)' is not one of: (.*)$", problem)
        if m:
            return (
                problem[: m.start()]
                + f"{dotted}: the {what} {m.group(1)!r} from the imported config is not available in loratui; "
                f"choose one of: {m.group(2)}"
            )
    return problem


# --------------------------------------------------------------------------- value coercion


class _Bad(ValueError):
    pass


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip() == "")


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        t = v.strip().lower()
        if t in ("true", "yes", "on", "1"):
            return True
        if t in ("false", "no", "off", "0", "none"):
            return False
    raise _Bad(f"{v!r} is not true or false")


def _to_float(v: Any) -> float:
    if isinstance(v, bool):
        raise _Bad(f"{v!r} is not a number")
    if isinstance(v, (int, float)):
        x = float(v)
    elif isinstance(v, str):
        try:
            x = float(v.strip())
        except ValueError:
            raise _Bad(f"{v!r} is not a number") from None
    else:
        raise _Bad(f"{v!r} is not a number")
    if not math.isfinite(x):
        raise _Bad(f"{v!r} is not a finite number")
    return x


def _to_int(v: Any) -> int:
    x = _to_float(v)
    if not x.is_integer():
        raise _Bad(f"{v!r} is not a whole number")
    return int(x)


def _num_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


# --------------------------------------------------------------------------- choice spellings

_OPTIMIZER_SPELLINGS = {o.lower(): o for o in OPTIMIZERS} | {
    "adam8bit": "AdamW8bit",
    "8bitadamw": "AdamW8bit",
    "prodigyopt": "Prodigy",
}
# Spellings we map to a close equivalent, with the reason shown to the user.
_OPTIMIZER_NEAR = {
    "dadaptation": ("DAdaptAdam", "sd-scripts' DAdaptation is DAdaptAdamPreprint; loratui uses DAdaptAdam (LR around 1.0 either way)"),
    "dadaptadampreprint": ("DAdaptAdam", "loratui uses DAdaptAdam, the released version of the preprint optimizer"),
    "pagedadamw8bit": ("AdamW8bit", "paged variant: the same updates, only the optimizer state paging differs"),
    "pagedadamw": ("AdamW", "paged variant: the same updates, only the optimizer state paging differs"),
    "pagedadamw32bit": ("AdamW", "paged variant: the same updates, only the optimizer state paging differs"),
    "adamw32bit": ("AdamW", "32-bit AdamW is plain AdamW"),
    "pagedlion8bit": ("Lion8bit", "paged variant: the same updates, only the optimizer state paging differs"),
}


def _optimizer_key(text: str) -> str:
    t = str(text).strip().split(".")[-1]
    return re.sub(r"[\s_\-]", "", t).lower()


def _norm_optimizer(v: Any) -> tuple[str, str | None, bool]:
    """(name, note, supported)."""
    key = _optimizer_key(v)
    if key in _OPTIMIZER_SPELLINGS:
        return _OPTIMIZER_SPELLINGS[key], None, True
    if key in _OPTIMIZER_NEAR:
        name, why = _OPTIMIZER_NEAR[key]
        return name, why, True
    return str(v).strip(), None, False


def _norm_scheduler(v: Any) -> tuple[str, bool]:
    t = str(v).strip().lower().replace(" ", "_")
    return (t, True) if t in SCHEDULERS else (str(v).strip(), False)


def _norm_mixed(v: Any) -> tuple[str, bool]:
    t = str(v).strip().lower()
    t = {"fp32": "no", "float": "no", "float32": "no", "none": "no", "": "no", "float16": "fp16", "bfloat16": "bf16"}.get(t, t)
    return (t, True) if t in ("no", "fp16", "bf16") else (str(v).strip(), False)


def _norm_save_precision(v: Any) -> str:
    t = str(v).strip().lower()
    t = {"fp32": "float", "float32": "float", "float16": "fp16", "bfloat16": "bf16"}.get(t, t)
    if t not in ("fp16", "bf16", "float"):
        raise _Bad(f"{v!r} is not fp16, bf16 or float")
    return t


# --------------------------------------------------------------------------- keys we do not map

_NO_EFFECT: dict[str, str] = {}
for _k in ("xformers", "sdpa", "mem_eff_attn", "attn_mode"):
    _NO_EFFECT[_k] = "attention kernel choice; loratui uses PyTorch's scaled-dot-product attention"
for _k in (
    "num_cpu_threads_per_process", "num_processes", "num_machines", "multi_gpu", "gpu_ids",
    "main_process_port", "dynamo_backend", "dynamo_mode", "dynamo_use_dynamic", "dynamo_use_fullgraph",
    "extra_accelerate_launch_args", "ddp_timeout", "ddp_gradient_as_bucket_view", "ddp_static_graph",
):
    _NO_EFFECT[_k] = "accelerate / multi-GPU launch option; loratui trains on one GPU"
for _k in ("max_data_loader_n_workers", "persistent_data_loader_workers"):
    _NO_EFFECT[_k] = "data-loader workers: speed only"
for _k in (
    "logging_dir", "log_prefix", "log_with", "log_tracker_name", "log_tracker_config", "log_config",
    "use_wandb", "wandb_api_key", "wandb_run_name", "console_log_level", "console_log_file", "console_log_simple",
):
    _NO_EFFECT[_k] = "logging; loratui shows progress in its own dashboard and run log"
for _k in (
    "huggingface_path_in_repo", "huggingface_repo_id", "huggingface_repo_type", "huggingface_repo_visibility",
    "huggingface_token", "async_upload", "save_state_to_huggingface", "resume_from_huggingface",
):
    _NO_EFFECT[_k] = "Hugging Face upload; loratui writes local files only"
for _k in ("sample_every_n_epochs", "sample_every_n_steps", "sample_prompts", "sample_sampler", "sample_at_first"):
    _NO_EFFECT[_k] = "sample images during training are not generated; no effect on the LoRA"
for _k in ("save_last_n_steps", "save_last_n_epochs"):
    _NO_EFFECT[_k] = "removes older intermediate LoRA files; loratui keeps them all"
_NO_EFFECT.update(
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
        "cpu_offload_checkpointing": "memory placement only",
        "full_path": "kohya_ss GUI internal",
        "max_token_length_hint": "kohya_ss GUI internal",
    }
)

_LYCORIS_OPTIONS = {
    "LyCORIS_preset", "factor", "use_cp", "use_tucker", "use_scalar", "decompose_both", "train_norm",
    "rescaled", "constrain", "bypass_mode", "dora_wd", "train_on_input", "unit", "conv_dims", "conv_alphas",
}

# Options loratui lacks: (the value that means "off", what it is). Off → ignored; on → unsupported.
_OFF_VALUES: dict[str, tuple[Any, str]] = {
    "color_aug": (False, "color augmentation"),
    "random_crop": (False, "random crop augmentation"),
    "weighted_captions": (False, "weighted captions"),
    "full_fp16": (False, "full fp16 training"),
    "full_bf16": (False, "full bf16 training"),
    "fp8_base": (False, "fp8 base model"),
    "fp8_base_unet": (False, "fp8 base U-Net"),
    "caption_dropout_every_n_epochs": (0, "caption dropout every N epochs"),
    "caption_tag_dropout_rate": (0, "tag dropout"),
    "multires_noise_iterations": (0, "multires noise"),
    "adaptive_noise_scale": (0, "adaptive noise scale"),
    "noise_offset_random_strength": (False, "random noise offset strength"),
    "ip_noise_gamma": (0, "input perturbation noise"),
    "ip_noise_gamma_random_strength": (False, "random input perturbation strength"),
    "min_timestep": (0, "minimum timestep"),
    "max_timestep": (1000, "maximum timestep"),
    "scale_weight_norms": (0, "max-norm regularization"),
    "network_dropout": (0, "network dropout"),
    "rank_dropout": (0, "rank dropout"),
    "module_dropout": (0, "module dropout"),
    "rank_dropout_scale": (False, "rank dropout scaling"),
    "debiased_estimation_loss": (False, "debiased estimation loss"),
    "loss_type": ("l2", "loss type"),
    "masked_loss": (False, "masked loss"),
    "alpha_mask": (False, "alpha-channel mask"),
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
    "lr_scheduler_args": ("", "scheduler arguments"),
    "lr_scheduler_type": ("", "custom scheduler class"),
    "lr_decay_steps": (0, "learning-rate decay steps"),
    "lr_scheduler_timescale": (0, "scheduler timescale"),
    "lr_scheduler_min_lr_ratio": (0, "scheduler minimum LR ratio"),
    "stop_text_encoder_training": (0, "stopping text encoder training early"),
    "stop_text_encoder_training_pct": (0, "stopping text encoder training early"),
    "max_token_length": (75, "longer prompts (150/225 tokens)"),
    "block_dims": ("", "per-block ranks"),
    "block_alphas": ("", "per-block alphas"),
    "conv_block_dims": ("", "per-block conv ranks"),
    "conv_block_alphas": ("", "per-block conv alphas"),
    "block_lr_zero_threshold": ("", "per-block learning rates"),
    "down_lr_weight": ("", "per-block learning rates"),
    "mid_lr_weight": ("", "per-block learning rates"),
    "up_lr_weight": ("", "per-block learning rates"),
    "sdxl_cache_text_encoder_outputs": (False, "cached text encoder outputs (freezes the text encoder and captions)"),
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


def _is_off(value: Any, off: Any) -> bool:
    if _blank(value) or value is False:
        return True
    if off is None:
        return False
    try:
        if isinstance(off, bool):
            return _to_bool(value) == off
        if isinstance(off, (int, float)):
            return _to_float(value) == float(off)
    except _Bad:
        return False
    return str(value).strip().lower() == str(off).lower()


# --------------------------------------------------------------------------- the builder


class _Builder:
    def __init__(self, source: str, kind: str):
        self.source, self.kind = source, kind
        self.info = {s.dotted: s for s in settings()}
        self.by_kohya = {s.kohya: s for s in settings() if s.kohya and "/" not in s.kohya and s.kohya not in _SPECIAL_KOHYA}
        self.values: dict[str, Any] = {}
        self.setter: dict[str, int] = {}  # dotted → index in mapped
        self.mapped: list[Entry] = []
        self.ignored: list[Entry] = []
        self.unsupported: list[Entry] = []
        self.notes: list[str] = []
        self.as_given: set[str] = set()

    # records
    def ignore(self, key: str, value: Any, why: str) -> None:
        self.ignored.append((key, value, why))

    def unsupported_(self, key: str, value: Any, why: str) -> None:
        self.unsupported.append((key, value, why))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def _store(self, dotted: str, value: Any, key: str, raw: Any) -> None:
        if dotted in self.setter:
            i = self.setter[dotted]
            old = self.mapped[i]
            if old is not None and old[0] != key:
                self.ignored.append((old[0], old[1], f"overridden by {key} = {_show(raw)}"))
                self.mapped[i] = None  # type: ignore[call-overload]
        self.values[dotted] = value
        self.mapped.append((key, raw, dotted))
        self.setter[dotted] = len(self.mapped) - 1

    def given(self, dotted: str, value: Any, key: str, raw: Any, why: str) -> None:
        """Write a value loratui cannot use as given, so validation refuses until changed."""
        self._store(dotted, value, key, raw)
        self.as_given.add(dotted)
        self.unsupported_(key, raw, why)

    def put(self, dotted: str, raw: Any, key: str, value: Any = ...) -> bool:
        """Coerce ``value`` (default: ``raw``) to the setting's type and bounds and store it."""
        info = self.info[dotted]
        v = raw if value is ... else value
        try:
            if v is None and info.optional:
                out = None
            elif info.type == "bool":
                out = _to_bool(v)
            elif info.type == "int":
                out = _to_int(v)
            elif info.type == "float":
                out = _to_float(v)
            elif info.type == "str":
                if isinstance(v, (bool, dict, list)):
                    raise _Bad(f"{v!r} is not text")
                out = v if isinstance(v, str) else _num_text(v)
            else:  # choice
                if v not in info.choices:
                    raise _Bad(f"{v!r} is not one of {', '.join(info.choices)}")
                out = v
            if isinstance(out, (int, float)) and not isinstance(out, bool):
                for name, ok in (("ge", lambda a, b: a >= b), ("le", lambda a, b: a <= b), ("gt", lambda a, b: a > b), ("lt", lambda a, b: a < b)):
                    limit = getattr(info, name)
                    if limit is not None and not ok(out, limit):
                        sign = {"ge": "≥", "le": "≤", "gt": ">", "lt": "<"}[name]
                        raise _Bad(f"{_num_text(out)} is out of range for {dotted} (must be {sign} {_num_text(limit)})")
        except _Bad as exc:
            self.unsupported_(key, raw, f"{exc}; kept the default {info.default!r}")
            return False
        self._store(dotted, out, key, raw)
        return True

    def result(self) -> ImportResult:
        self._repair()
        return ImportResult(
            profile_dict=self.result_dict(),
            ignored=self.ignored,
            unsupported=self.unsupported,
            notes=self.notes,
            mapped=[m for m in self.mapped if m is not None],
            source=self.source,
            kind=self.kind,
        )

    def _repair(self) -> None:
        """Fix what the schema's cross-field rules refuse (multiples of 64, bucket sizes), then
        fall back to defaults for anything else that still fails, except the values written
        as given on purpose (unsupported network type, optimizer, ...)."""
        d = self.values
        ds = self.info
        step = d.get("dataset.bucket_reso_steps", ds["dataset.bucket_reso_steps"].default)
        for dotted in ("dataset.min_bucket_reso", "dataset.max_bucket_reso"):
            v = d.get(dotted)
            if v is not None and v % step:
                new = math.ceil(v / step) * step if dotted.endswith("min_bucket_reso") else max(step, v // step * step)
                self._adjust(dotted, new, f"{v} is not a multiple of bucket_reso_steps {step}; imported as {new}")
        for _ in range(4):
            try:
                p = self.result_dict()
                profile_from_dict(p, "import")
                return
            except ProfileError as exc:
                fixed = False
                for problem in exc.problems:
                    m = re.match(r"import:(\w+)\.(\w+)[.:]", problem)
                    if not m:
                        continue
                    dotted = f"{m.group(1)}.{m.group(2)}"
                    if dotted in self.as_given or dotted not in d:
                        continue
                    default = self.info[dotted].default
                    msg = problem.split(":", 2)[-1].strip()
                    self._adjust(dotted, default, f"{msg}; kept the default {default!r}")
                    fixed = True
                if not fixed:
                    return

    def result_dict(self) -> dict[str, dict[str, Any]]:
        base = Profile().to_dict()
        for dotted, v in self.values.items():
            section, key = dotted.split(".")
            if v is None:
                base[section].pop(key, None)
            else:
                base[section][key] = v
        return base

    def _adjust(self, dotted: str, new: Any, why: str) -> None:
        i = self.setter.get(dotted)
        key, raw = (self.mapped[i][0], self.mapped[i][1]) if i is not None and self.mapped[i] else (dotted, self.values.get(dotted))
        if i is not None:
            self.mapped[i] = None  # type: ignore[call-overload]
            del self.setter[dotted]
        self.values[dotted] = new
        if new == self.info[dotted].default:
            self.values.pop(dotted)
        self.unsupported_(key, raw, why)


# kohya names declared in the schema that need special handling here.
_SPECIAL_KOHYA = {
    "max_resolution", "LoRA_type", "network_train_unet_only", "network_train_text_encoder_only",
    "max_train_epochs", "lr_warmup_steps", "unet_lr", "text_encoder_lr", "learning_rate",
    "save_last_n_steps_state", "conv_dim", "conv_alpha", "optimizer", "lr_scheduler", "mixed_precision",
    "save_precision", "seed", "caption_extension", "noise_offset", "optimizer_args", "max_train_steps",
}

# Keys that sd-scripts ignores when a dataset_config is given.
_DATASET_DIR_KEYS = ("train_data_dir", "reg_data_dir", "in_json")


# --------------------------------------------------------------------------- reading files


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise KohyaImportError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise KohyaImportError(f"{path}: is a folder, not a config file") from None
    except UnicodeDecodeError:
        raise KohyaImportError(f"{path}: is not a text file (expected a kohya_ss .json or sd-scripts .toml config)") from None
    except OSError as exc:
        raise KohyaImportError(f"{path}: cannot be read ({exc.strerror})") from None


def _load(path: Path) -> tuple[dict[str, Any], str]:
    text = _read_text(path)
    suffix = path.suffix.lower()
    looks_json = suffix == ".json" or (suffix != ".toml" and text.lstrip().startswith("{"))
    if looks_json:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KohyaImportError(f"{path}: is not valid JSON ({exc.msg}, line {exc.lineno}); expected a kohya_ss GUI config") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise KohyaImportError(f"{path}: is not valid TOML ({exc}); expected an sd-scripts config_file or dataset_config") from None
    if not isinstance(data, dict) or not data:
        raise KohyaImportError(f"{path}: holds no settings (expected a table of kohya_ss / sd-scripts keys)")
    return data, text if not looks_json else ""


def _loratui_comments(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for line in text.splitlines():
        m = LORATUI_COMMENT.match(line)
        if m:
            try:
                out.update(tomllib.loads(m.group("assign")))
            except tomllib.TOMLDecodeError:
                pass
    return out


def _resolve(ref: str, base_dir: Path) -> Path | None:
    p = Path(os.path.expanduser(ref))
    for cand in (p, base_dir / p) if not p.is_absolute() else (p,):
        if cand.is_file():
            return cand
    return None


# --------------------------------------------------------------------------- import


def import_kohya(path: str | Path, dataset_config: str | Path | None = None) -> ImportResult:
    """Import a kohya_ss GUI ``.json`` or an sd-scripts ``.toml`` (config_file or
    dataset_config). ``dataset_config`` overrides the one the config names.
    Raises KohyaImportError when the file cannot be read at all."""
    path = Path(path)
    data, text = _load(path)
    base_dir = path.parent
    if text and ("datasets" in data or ("general" in data and isinstance(data["general"], dict))) and "pretrained_model_name_or_path" not in data:
        b = _Builder(str(path), SD_SCRIPTS_DATASET)
        _map_dataset_config(data, b, path, prefix="")
        _apply_comments(_loratui_comments(text), b)
        return b.result()

    gui = not text
    b = _Builder(str(path), GUI_JSON if gui else SD_SCRIPTS_CONFIG)
    flat: dict[str, Any] = {}
    if gui:
        flat = dict(data)
    else:
        # sd-scripts flattens every section into one namespace
        for k, v in data.items():
            if isinstance(v, dict):
                flat.update(v)
            else:
                flat[k] = v

    ds_ref = str(dataset_config) if dataset_config is not None else flat.get("dataset_config")
    ds_path: Path | None = None
    if dataset_config is not None:
        ds_path = Path(dataset_config)
        if not ds_path.is_file():
            raise KohyaImportError(f"{dataset_config}: no such dataset config file")
    elif not _blank(ds_ref):
        ds_path = _resolve(str(ds_ref), base_dir)
        if ds_path is None:
            b.unsupported_(
                "dataset_config", ds_ref,
                f"the dataset config file was not found (looked beside the working folder and {base_dir}); "
                "import it with --dataset-config PATH, or set dataset.train_data_dir yourself",
            )
    if "dataset_config" in flat and (ds_path is not None or _blank(ds_ref)):
        if _blank(flat["dataset_config"]):
            b.ignore("dataset_config", flat["dataset_config"], "empty: the dataset comes from train_data_dir")
        else:
            b.mapped.append(("dataset_config", flat["dataset_config"], f"read {ds_path}"))
    flat.pop("dataset_config", None)

    # GUI free-form "additional_parameters": parse --key=value items like sd-scripts' CLI
    extra = flat.pop("additional_parameters", None)
    _map_flat(flat, b, gui=gui, uses_dataset_config=ds_path is not None)
    if extra is not None:
        _map_additional(extra, b, uses_dataset_config=ds_path is not None)
    if ds_path is not None:
        try:
            ds_data, _ = _load(ds_path)
        except KohyaImportError as exc:
            raise KohyaImportError(f"{path}: its dataset config {exc}") from None
        _map_dataset_config(ds_data, b, ds_path, prefix=f"{ds_path.name}:")
    if text:
        _apply_comments(_loratui_comments(text), b)
    return b.result()


def _apply_comments(values: dict[str, Any], b: _Builder) -> None:
    """``# loratui: key = value`` lines written by our export."""
    for key, value in values.items():
        hits = [d for d in b.info if d.split(".")[1] == key]
        if len(hits) == 1:
            b.put(hits[0], value, f"# loratui: {key}")


def _map_additional(extra: Any, b: _Builder, uses_dataset_config: bool) -> None:
    if _blank(extra):
        b.ignore("additional_parameters", extra, "empty")
        return
    try:
        tokens = shlex.split(str(extra))
    except ValueError as exc:
        b.unsupported_("additional_parameters", extra, f"could not be parsed ({exc}); apply these options by hand")
        return
    parsed: dict[str, Any] = {}
    key = None
    for tok in tokens:
        if tok.startswith("--"):
            name, eq, val = tok[2:].partition("=")
            key = name.replace("-", "_")
            parsed[key] = val if eq else True
            if eq:
                key = None
        elif key is not None:
            cur = parsed[key]
            parsed[key] = tok if cur is True else (cur if isinstance(cur, list) else [cur]) + [tok]
        else:
            b.unsupported_("additional_parameters", tok, "a value without an --option before it; apply it by hand")
    if parsed:
        _map_flat(parsed, b, gui=False, uses_dataset_config=uses_dataset_config, prefix="additional_parameters --")


def _map_flat(cfg: dict[str, Any], b: _Builder, *, gui: bool, uses_dataset_config: bool, prefix: str = "") -> None:
    cfg = dict(cfg)
    K = lambda k: prefix + k  # noqa: E731  (the key as reported)

    def take(k: str) -> Any:
        return cfg.pop(k, None)

    # ---- model family: sdxl / v2 flags
    has_sdxl, has_v2 = "sdxl" in cfg, "v2" in cfg
    sdxl, v2 = take("sdxl"), take("v2")
    try:
        sdxl_on = False if _blank(sdxl) else _to_bool(sdxl)
        v2_on = False if _blank(v2) else _to_bool(v2)
    except _Bad:
        sdxl_on = v2_on = False
        b.unsupported_(K("sdxl/v2"), [sdxl, v2], "not true/false; the model family will be detected from the weights")
    if sdxl_on and v2_on:
        b.unsupported_(K("v2"), v2, "both sdxl and v2 are set; imported as SDXL")
    if sdxl_on:
        b.put("model.family", sdxl, K("sdxl"), "sdxl")
        if has_v2:
            b.ignore(K("v2"), v2, "SDXL model")
    elif v2_on:
        b.put("model.family", v2, K("v2"), "sd2")
        if has_sdxl:
            b.ignore(K("sdxl"), sdxl, "SD 2.x model")
    elif gui and (has_sdxl or has_v2):
        key = "v2" if has_v2 else "sdxl"
        b.put("model.family", v2 if has_v2 else sdxl, K(key), "sd1")
        if has_v2 and has_sdxl:
            b.ignore(K("sdxl"), sdxl, "false: SD 1.x model")
    else:
        if has_sdxl:
            b.ignore(K("sdxl"), sdxl, "false; the model family is detected from the weights")
        if has_v2:
            b.ignore(K("v2"), v2, "false; the model family is detected from the weights")
        if not gui and not prefix:
            b.note(
                "sd-scripts configs do not say whether the model is SDXL (that is the script you ran); "
                "model.family is 'auto': detected from the weights"
            )

    # ---- resolution
    for rk in ("max_resolution", "resolution"):
        if rk in cfg:
            _map_resolution(b, K(rk), take(rk))

    # ---- network type
    _map_network(cfg, b, K, gui)

    # ---- train U-Net / text encoder, learning rates
    _map_lrs(cfg, b, K)

    # ---- optimizer
    use8 = take("use_8bit_adam")
    lion = take("use_lion_optimizer")
    opt_key = "optimizer" if "optimizer" in cfg else ("optimizer_type" if "optimizer_type" in cfg else None)
    if opt_key:
        raw = take(opt_key)
        if _blank(raw):
            b.ignore(K(opt_key), raw, "empty: AdamW")
        else:
            name, why, ok = _norm_optimizer(raw)
            if ok:
                b.put("optimization.optimizer", raw, K(opt_key), name)
                if why:
                    b.note(f"{K(opt_key)} {raw!r} imported as {name}: {why}")
            else:
                b.given(
                    "optimization.optimizer", name, K(opt_key), raw,
                    f"loratui has no {name} optimizer; written as given so training refuses until you choose one of: "
                    + ", ".join(OPTIMIZERS),
                )
    for k, v, name in (("use_8bit_adam", use8, "AdamW8bit"), ("use_lion_optimizer", lion, "Lion")):
        if v is None:
            continue
        try:
            on = _to_bool(v)
        except _Bad:
            on = False
        if on and not opt_key:
            b.put("optimization.optimizer", v, K(k), name)
        else:
            b.ignore(K(k), v, "off" if not on else f"overridden by {opt_key}")
    if "optimizer_args" in cfg:
        raw = take("optimizer_args")
        if _blank(raw) or raw == []:
            b.ignore(K("optimizer_args"), raw, "empty")
        else:
            text = " ".join(str(x) for x in raw) if isinstance(raw, list) else str(raw)
            b.put("optimization.optimizer_args", raw, K("optimizer_args"), " ".join(text.split()))

    # ---- scheduler
    if "lr_scheduler" in cfg:
        raw = take("lr_scheduler")
        if _blank(raw):
            b.ignore(K("lr_scheduler"), raw, "empty: sd-scripts' default constant is not loratui's default; set it")
        else:
            name, ok = _norm_scheduler(raw)
            if ok:
                b.put("optimization.lr_scheduler", raw, K("lr_scheduler"), name)
            else:
                b.given(
                    "optimization.lr_scheduler", name, K("lr_scheduler"), raw,
                    "loratui has no such scheduler; written as given so training refuses until you choose one of: "
                    + ", ".join(SCHEDULERS),
                )
    _map_warmup(cfg, b, K, gui)

    # ---- epochs / steps
    _map_epochs(cfg, b, K, gui)

    # ---- precision
    if "mixed_precision" in cfg:
        raw = take("mixed_precision")
        name, ok = _norm_mixed(raw)
        if ok:
            b.put("optimization.mixed_precision", raw, K("mixed_precision"), name)
        else:
            b.given("optimization.mixed_precision", name, K("mixed_precision"), raw,
                    "loratui trains in no, fp16 or bf16 mixed precision; written as given so training refuses until changed")
    if "save_precision" in cfg:
        raw = take("save_precision")
        if _blank(raw):
            b.ignore(K("save_precision"), raw, "empty: fp16")
        else:
            try:
                b.put("output.save_precision", raw, K("save_precision"), _norm_save_precision(raw))
            except _Bad as exc:
                b.unsupported_(K("save_precision"), raw, f"{exc}; kept fp16")

    # ---- caching
    cl, cld = take("cache_latents"), take("cache_latents_to_disk")
    if cl is not None or cld is not None:
        try:
            on = False if _blank(cl) else _to_bool(cl)
            disk = False if _blank(cld) else _to_bool(cld)
            mode = "disk" if disk else ("memory" if on else "off")
            key = "cache_latents_to_disk" if disk else "cache_latents"
            b.put("dataset.cache_latents", cld if disk else cl, K(key), mode)
            other = "cache_latents" if disk else "cache_latents_to_disk"
            if (cl if disk else cld) is not None:
                b.mapped.append((K(other), cl if disk else cld, "dataset.cache_latents"))
        except _Bad as exc:
            b.unsupported_(K("cache_latents"), [cl, cld], f"{exc}; kept 'memory'")

    # ---- seed, caption extension, noise offset
    if "seed" in cfg:
        raw = take("seed")
        if _blank(raw):
            b.ignore(K("seed"), raw, "unset (a random seed each run in kohya_ss); loratui uses a fixed seed, 42")
        else:
            b.put("optimization.seed", raw, K("seed"))
    if "caption_extension" in cfg:
        raw = take("caption_extension")
        if _blank(raw):
            b.ignore(K("caption_extension"), raw, "empty: loratui reads .txt captions (sd-scripts would look for .caption files)")
        else:
            ext = str(raw).strip()
            if not ext.startswith("."):
                ext = "." + ext
            b.put("dataset.caption_extension", raw, K("caption_extension"), ext)
            if "none" in ext.lower() or "foldername" in ext.lower():
                b.note(f"{K('caption_extension')} {raw!r}: no captions will be found, so each concept folder's name is the caption (as in kohya_ss)")
    noise_type = take("noise_offset_type")
    multires = str(noise_type or "").strip().lower() == "multires"
    if noise_type is not None:
        if multires:
            b.ignore(K("noise_offset_type"), noise_type, "see multires_noise_iterations")
        else:
            b.ignore(K("noise_offset_type"), noise_type, "Original: the plain noise offset")
    if "noise_offset" in cfg:
        raw = take("noise_offset")
        if multires:
            b.ignore(K("noise_offset"), raw, "not used with noise_offset_type Multires")
        elif _blank(raw):
            b.ignore(K("noise_offset"), raw, "empty: off")
        else:
            b.put("optimization.noise_offset", raw, K("noise_offset"))
    iters = cfg.get("multires_noise_iterations")
    multires_on = not _is_off(iters, 0) and (multires or not gui)
    if "multires_noise_iterations" in cfg and not multires_on:
        why = "off" if _is_off(iters, 0) else "not used with noise_offset_type Original"
        b.ignore(K("multires_noise_iterations"), take("multires_noise_iterations"), why)
    if "multires_noise_discount" in cfg:
        why = "see multires_noise_iterations" if multires_on else "multires noise is off"
        b.ignore(K("multires_noise_discount"), take("multires_noise_discount"), why)
    loss = cfg.get("loss_type")
    huber_on = not _blank(loss) and str(loss).strip().lower() != "l2"
    for k in ("huber_c", "huber_schedule", "huber_scale"):
        if k in cfg:
            b.ignore(K(k), take(k), "see loss_type" if huber_on else "only used by the Huber loss")

    # ---- saving states
    _map_state_keeping(cfg, b, K)

    # ---- continue from weights (GUI name)
    if "lora_network_weights" in cfg:
        raw = take("lora_network_weights")
        if _blank(raw):
            b.ignore(K("lora_network_weights"), raw, "empty: a new LoRA")
        else:
            b.put("network.network_weights", raw, K("lora_network_weights"))

    if "save_model_as" in cfg:
        raw = take("save_model_as")
        if _blank(raw) or str(raw).lower() == "safetensors":
            b.ignore(K("save_model_as"), raw, "loratui always writes .safetensors")
        else:
            b.unsupported_(K("save_model_as"), raw, "loratui writes .safetensors only (what AUTOMATIC1111, Forge and ComfyUI load)")

    # ---- everything else: 1:1 by the schema's kohya names, or reported
    lycoris = b.values.get("network.network_type") not in (None, "lora", "locon")
    for key in list(cfg):
        raw = cfg.pop(key)
        if uses_dataset_config and key in _DATASET_DIR_KEYS:
            b.ignore(K(key), raw, "sd-scripts ignores it when a dataset_config is given")
            continue
        info = b.by_kohya.get(key)
        if info is not None:
            if _blank(raw) and info.type != "str":
                b.ignore(K(key), raw, f"empty: the default {info.default!r}")
            else:
                b.put(info.dotted, raw, K(key))
                if key == "training_comment" and not _blank(raw):
                    b.note(f"{K(key)} imported as {info.dotted} (written as modelspec.trigger_phrase in the LoRA); "
                           "clear it there if it is a comment rather than trigger words")
            continue
        if key in _NO_EFFECT:
            b.ignore(K(key), raw, _NO_EFFECT[key])
        elif key in _LYCORIS_OPTIONS:
            if key == "dora_wd" and not _is_off(raw, False):
                b.unsupported_(K(key), raw, "DoRA (weight-decomposed LoRA) is not supported yet")
            else:
                b.ignore(K(key), raw, "LyCORIS option" + ("" if lycoris else "; not used by LoRA / LoCon"))
        elif key in _OFF_VALUES:
            off, what = _OFF_VALUES[key]
            if _is_off(raw, off):
                b.ignore(K(key), raw, f"off: loratui has no {what}")
            else:
                b.unsupported_(K(key), raw, f"loratui has no {what}; trained without it")
        elif _blank(raw) or raw is False or raw == 0 or raw == []:
            b.ignore(K(key), raw, "unknown to loratui; off or empty")
        else:
            b.unsupported_(K(key), raw, "unknown to loratui; may change training")


def _map_resolution(b: _Builder, key: str, raw: Any) -> None:
    try:
        if isinstance(raw, (list, tuple)):
            parts = [_to_int(x) for x in raw]
        elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
            parts = [_to_int(raw)]
        else:
            parts = [_to_int(x) for x in re.split(r"[,x×\s]+", str(raw).strip()) if x]
        if not 1 <= len(parts) <= 2:
            raise _Bad(f"{raw!r} is not WIDTH or WIDTH,HEIGHT")
    except _Bad as exc:
        b.unsupported_(key, raw, f"{exc}; kept the default resolution")
        return
    w = parts[0]
    h = parts[1] if len(parts) == 2 else w
    fixed = []
    for side in (w, h):
        if side % 64:
            new = max(64, round(side / 64) * 64)
            fixed.append((side, new))
    if fixed:
        msg = ", ".join(f"{a} is not a multiple of 64, imported as {c}" for a, c in fixed)
        b.unsupported_(key, raw, msg)
        w = max(64, round(w / 64) * 64)
        h = max(64, round(h / 64) * 64)
    b.put("dataset.resolution", raw, key, w)
    if h != w:
        b.put("dataset.resolution_height", raw, key, h)
    else:
        b.values.pop("dataset.resolution_height", None)


def _map_network(cfg: dict[str, Any], b: _Builder, K, gui: bool) -> None:
    lt = cfg.pop("LoRA_type", None)
    module = cfg.pop("network_module", None)
    nargs = cfg.pop("network_args", None)
    conv_dim, conv_alpha = cfg.pop("conv_dim", None), cfg.pop("conv_alpha", None)
    has_conv_dim, has_conv_alpha = conv_dim is not None, conv_alpha is not None

    args: dict[str, str] = {}
    if nargs is not None:
        items = nargs if isinstance(nargs, list) else str(nargs).split()
        for item in items:
            k, eq, v = str(item).partition("=")
            if eq:
                args[k.strip()] = v.strip()
            else:
                b.unsupported_(K("network_args"), item, "not key=value")

    net: str | None = None
    key_used = None
    if lt is not None:
        if _blank(lt):
            b.ignore(K("LoRA_type"), lt, "empty: Standard LoRA")
            net = "lora"
        else:
            net = _network_slug(lt)
            key_used = ("LoRA_type", lt)
    if module is not None:
        mod = str(module).strip()
        if mod in ("networks.lora", "networks.lora_sd3", ""):
            mnet = "locon" if "conv_dim" in args else "lora"
        elif mod.startswith("lycoris"):
            algo = args.pop("algo", "lora").lower()
            mnet = {"lora": "locon", "locon": "locon"}.get(algo, _network_slug(algo))
            if mnet == "locon":
                b.note(_LYCORIS_LOCON_NOTE)
        elif mod == "networks.dylora":
            mnet = "dylora"
        elif mod == "networks.oft":
            mnet = "oft"
        else:
            mnet = _network_slug(mod)
        if net is None:
            net, key_used = mnet, ("network_module", module)
        elif mnet != net:
            b.ignore(K("network_module"), module, f"LoRA_type {lt!r} decides")
        else:
            b.mapped.append((K("network_module"), module, "network.network_type"))
    if net is not None:
        raw = key_used[1] if key_used else lt
        k = K(key_used[0]) if key_used else K("LoRA_type")
        if net in NETWORK_TYPES:
            b.put("network.network_type", raw, k, net)
            if isinstance(raw, str) and raw.lower().startswith("lycoris/locon"):
                b.note(_LYCORIS_LOCON_NOTE)
        else:
            b.given("network.network_type", net, k, raw, network_type_message(net) or "")

    locon = b.values.get("network.network_type") == "locon"
    # conv rank/alpha: GUI keys, or network_args conv_dim=/conv_alpha=
    for name, value, present in (("conv_dim", conv_dim, has_conv_dim), ("conv_alpha", conv_alpha, has_conv_alpha)):
        arg_val = args.pop(name, None)
        if arg_val is not None:
            if locon:
                b.put(f"network.{name}", arg_val, K(f"network_args {name}"))
            else:
                b.ignore(K(f"network_args {name}"), arg_val, "only used by LoCon")
        if present:
            if locon and arg_val is None and not _blank(value):
                b.put(f"network.{name}", value, K(name))
            else:
                b.ignore(K(name), value, "only used by LoCon" if not locon else "network_args decides")
    if "conv_rank" in args:
        v = args.pop("conv_rank")
        if locon and "network.conv_dim" not in b.values:
            b.put("network.conv_dim", v, K("network_args conv_rank"))
        else:
            b.ignore(K("network_args conv_rank"), v, "only used by LoCon")
    for k, v in args.items():
        if k in ("preset",) or k in {x.lower() for x in _LYCORIS_OPTIONS}:
            b.ignore(K(f"network_args {k}"), v, "LyCORIS option")
        elif k == "dropout" or k.endswith("_dropout"):
            if _is_off(v, 0):
                b.ignore(K(f"network_args {k}"), v, "off")
            else:
                b.unsupported_(K(f"network_args {k}"), v, "loratui has no network dropout; trained without it")
        else:
            b.unsupported_(K(f"network_args {k}"), v, "loratui has no such network option; trained without it")


def _map_lrs(cfg: dict[str, Any], b: _Builder, K) -> None:
    def flag(k: str) -> bool | None:
        if k not in cfg:
            return None
        raw = cfg.pop(k)
        try:
            on = False if _blank(raw) else _to_bool(raw)
        except _Bad:
            b.unsupported_(K(k), raw, "not true/false; ignored")
            return None
        b.mapped.append((K(k), raw, "network.train_text_encoder" if k == "network_train_unet_only" else "network.train_unet"))
        return on

    unet_only = flag("network_train_unet_only")
    te_only = flag("network_train_text_encoder_only")

    def lr(k: str) -> tuple[bool, float | None, Any]:
        """(present, value or None when unset, raw)."""
        if k not in cfg:
            return False, None, None
        raw = cfg.pop(k)
        if _blank(raw):
            return True, None, raw
        try:
            return True, _to_float(raw), raw
        except _Bad as exc:
            b.unsupported_(K(k), raw, f"{exc}; treated as unset")
            return True, None, raw

    has_lr, base, base_raw = lr("learning_rate")
    has_u, unet, unet_raw = lr("unet_lr")
    has_t, te, te_raw = lr("text_encoder_lr")
    if has_lr:
        if base is None or base == 0:
            b.ignore(K("learning_rate"), base_raw, "empty or 0: the U-Net / text encoder rates decide")
        else:
            b.put("optimization.learning_rate", base_raw, K("learning_rate"), base)
    # kohya_ss GUI: a rate of 0 means "don't train that part"; both 0 means "use learning_rate".
    if has_u and has_t and unet == 0 and te == 0:
        b.ignore(K("unet_lr"), unet_raw, "0 with text_encoder_lr 0: learning_rate is used for both")
        b.ignore(K("text_encoder_lr"), te_raw, "0 with unet_lr 0: learning_rate is used for both")
        unet = te = None
        has_u = has_t = False
    if has_u:
        if unet == 0:
            b.put("network.train_unet", unet_raw, K("unet_lr"), False)
            b.note(f"{K('unet_lr')} is 0: the U-Net is not trained")
        elif unet is None:
            b.ignore(K("unet_lr"), unet_raw, "empty: the learning rate is used")
        else:
            b.put("optimization.unet_lr", unet_raw, K("unet_lr"), unet)
    if has_t:
        if te == 0:
            b.put("network.train_text_encoder", te_raw, K("text_encoder_lr"), False)
            b.note(f"{K('text_encoder_lr')} is 0: the text encoder is not trained")
        elif te is None:
            b.ignore(K("text_encoder_lr"), te_raw, "empty: the learning rate is used")
        else:
            b.put("optimization.text_encoder_lr", te_raw, K("text_encoder_lr"), te)
    if "optimization.text_encoder_lr" not in b.values and (has_t or has_lr):
        # unset in the file = "the learning rate"; a profile cannot hold "unset" for this
        # setting (its default is 5e-5), so write the learning rate itself.
        value = b.values.get("optimization.learning_rate", b.info["optimization.learning_rate"].default)
        b.values["optimization.text_encoder_lr"] = value
        if te != 0:
            b.note(f"text encoder learning rate unset in the file: set to the learning rate, {value:g}")
    if unet_only:
        b.values["network.train_text_encoder"] = False
    if te_only:
        b.values["network.train_unet"] = False


def _map_warmup(cfg: dict[str, Any], b: _Builder, K, gui: bool) -> None:
    steps_raw = cfg.pop("lr_warmup_steps", None)
    pct_raw = cfg.pop("lr_warmup", None)
    steps = pct = None
    try:
        steps = None if _blank(steps_raw) else _to_float(steps_raw)
        pct = None if _blank(pct_raw) else _to_float(pct_raw)
    except _Bad as exc:
        b.unsupported_(K("lr_warmup"), [pct_raw, steps_raw], f"{exc}; no warm-up")
        return
    if steps:
        b.put("optimization.lr_warmup_steps", steps_raw, K("lr_warmup_steps"), steps)
        if pct:
            b.ignore(K("lr_warmup"), pct_raw, "lr_warmup_steps decides (as in kohya_ss)")
        elif pct_raw is not None:
            b.ignore(K("lr_warmup"), pct_raw, "0: lr_warmup_steps decides")
        return
    if steps_raw is not None:
        b.put("optimization.lr_warmup_steps", steps_raw, K("lr_warmup_steps"), 0.0)
    if pct is not None:
        if pct == 0:
            if steps_raw is not None:
                b.mapped.append((K("lr_warmup"), pct_raw, "optimization.lr_warmup_steps"))
            else:
                b.put("optimization.lr_warmup_steps", pct_raw, K("lr_warmup"), 0.0)
        elif 0 < pct < 100:
            b.put("optimization.lr_warmup_steps", pct_raw, K("lr_warmup"), pct / 100)
            b.note(f"{K('lr_warmup')} {_num_text(pct)} % of the steps imported as lr_warmup_steps {pct / 100:g} (a fraction of all steps)")
        else:
            b.unsupported_(K("lr_warmup"), pct_raw, "a warm-up of 100 % or more leaves no training; no warm-up imported")


def _map_epochs(cfg: dict[str, Any], b: _Builder, K, gui: bool) -> None:
    ep_raw = cfg.pop("epoch", None)
    mx_raw = cfg.pop("max_train_epochs", None)
    st_raw = cfg.pop("max_train_steps", None)
    try:
        ep = None if _blank(ep_raw) else _to_int(ep_raw)
    except _Bad as exc:
        b.unsupported_(K("epoch"), ep_raw, f"{exc}; ignored")
        ep = None
    try:
        mx = None if _blank(mx_raw) else _to_int(mx_raw)
    except _Bad as exc:
        b.unsupported_(K("max_train_epochs"), mx_raw, f"{exc}; ignored")
        mx = None
    # kohya_ss GUI: "max_train_epochs" (when set) overrides "epoch".
    if mx:
        b.put("optimization.max_train_epochs", mx_raw, K("max_train_epochs"), mx)
        if ep_raw is not None:
            if ep == mx:
                b.mapped.append((K("epoch"), ep_raw, "optimization.max_train_epochs"))
            else:
                b.ignore(K("epoch"), ep_raw, "max_train_epochs decides (as in kohya_ss)")
    else:
        if ep:
            b.put("optimization.max_train_epochs", ep_raw, K("epoch"), ep)
        elif ep_raw is not None:
            b.ignore(K("epoch"), ep_raw, "empty or 0")
        if mx_raw is not None:
            b.ignore(K("max_train_epochs"), mx_raw, "empty or 0: epoch decides" if ep else "empty or 0")
    if st_raw is not None:
        if _blank(st_raw):
            b.ignore(K("max_train_steps"), st_raw, "empty: all epochs")
        else:
            ok = b.put("optimization.max_train_steps", st_raw, K("max_train_steps"))
            if ok and b.values.get("optimization.max_train_steps") and mx:
                # sd-scripts: max_train_epochs overrides max_train_steps
                b.values["optimization.max_train_steps"] = 0
                b.note(f"{K('max_train_steps')} {st_raw} is overridden by max_train_epochs {mx} (as in sd-scripts); imported as 0")


def _map_state_keeping(cfg: dict[str, Any], b: _Builder, K) -> None:
    ep_raw = cfg.pop("save_last_n_epochs_state", None)
    st_raw = cfg.pop("save_last_n_steps_state", None)
    if ep_raw is not None and not _blank(ep_raw):
        # sd-scripts: keep the states of the last N saves (epoch-based saving)
        b.put("output.save_last_n_states", ep_raw, K("save_last_n_epochs_state"))
        if st_raw is not None:
            b.ignore(K("save_last_n_steps_state"), st_raw, "save_last_n_epochs_state decides")
        return
    if st_raw is None:
        return
    try:
        n = 0 if _blank(st_raw) else _to_int(st_raw)
    except _Bad as exc:
        b.unsupported_(K("save_last_n_steps_state"), st_raw, f"{exc}; ignored")
        return
    if n == 0:
        b.put("output.save_last_n_states", st_raw, K("save_last_n_steps_state"), 0)
        return
    every = b.values.get("output.save_every_n_steps") or _int_or_zero(cfg.get("save_every_n_steps"))
    if every:
        # sd-scripts keeps the states of the last N *steps*; loratui counts states
        keep = max(1, math.ceil(n / every))
        b.put("output.save_last_n_states", st_raw, K("save_last_n_steps_state"), keep)
        b.note(f"{K('save_last_n_steps_state')} {n} steps with a state every {every} steps: keeps the last {keep} states")
    else:
        b.ignore(K("save_last_n_steps_state"), st_raw, "no step-based saving in this config")


def _int_or_zero(v: Any) -> int:
    try:
        return 0 if _blank(v) else _to_int(v)
    except _Bad:
        return 0


# --------------------------------------------------------------------------- dataset config

_SUBSET_OPTIONS = {
    # sd-scripts subset option → profile setting
    "shuffle_caption": "dataset.shuffle_caption",
    "keep_tokens": "dataset.keep_tokens",
    "caption_extension": "dataset.caption_extension",
    "flip_aug": "dataset.flip_aug",
    "caption_dropout_rate": "dataset.caption_dropout_rate",
}
_DATASET_OPTIONS = {
    "batch_size": "optimization.train_batch_size",
    "enable_bucket": "dataset.enable_bucket",
    "min_bucket_reso": "dataset.min_bucket_reso",
    "max_bucket_reso": "dataset.max_bucket_reso",
    "bucket_reso_steps": "dataset.bucket_reso_steps",
    "bucket_no_upscale": "dataset.bucket_no_upscale",
}


def _map_dataset_config(data: dict[str, Any], b: _Builder, path: Path, prefix: str) -> None:
    general = data.get("general") if isinstance(data.get("general"), dict) else {}
    datasets = data.get("datasets") if isinstance(data.get("datasets"), list) else []
    for k, v in data.items():
        if k not in ("general", "datasets"):
            b.unsupported_(f"{prefix}{k}", v, "not a dataset_config table ([general] or [[datasets]])")
    if not datasets:
        b.unsupported_(f"{prefix}datasets", None, "no [[datasets]] table: no images to train on")
        return
    for i, extra in enumerate(datasets[1:], start=1):
        subs = [s.get("image_dir") for s in extra.get("subsets", []) if isinstance(s, dict)]
        b.unsupported_(
            f"{prefix}datasets[{i}]", subs,
            "loratui trains one dataset (one resolution and batch size); only datasets[0] was imported — "
            "move these folders beside the others to train them",
        )
    ds = datasets[0] if isinstance(datasets[0], dict) else {}
    subsets = [s for s in ds.get("subsets", []) if isinstance(s, dict)]

    # dataset-level settings: the dataset's value beats [general]
    layers = [("general", general), ("datasets[0]", {k: v for k, v in ds.items() if k != "subsets"})]
    seen: dict[str, tuple[str, Any]] = {}
    for where, table in layers:
        for k, v in table.items():
            if k in seen and where == "datasets[0]":
                prev_where, prev_v = seen[k]
                b.ignore(f"{prefix}{prev_where}.{k}", prev_v, f"overridden by datasets[0].{k}")
            seen[k] = (where, v)
    subset_level = {}
    for k, (where, v) in seen.items():
        key = f"{prefix}{where}.{k}"
        if k == "resolution":
            _map_resolution(b, key, v)
        elif k in _DATASET_OPTIONS:
            b.put(_DATASET_OPTIONS[k], v, key)
        elif k in _SUBSET_OPTIONS or k in ("num_repeats", "class_tokens", "is_reg", "image_dir") or k in _OFF_VALUES or k in ("color_aug", "random_crop"):
            subset_level[k] = (key, v)  # a default for the subsets
        else:
            _report_other(b, key, v)

    train = [s for s in subsets if not _truthy(s.get("is_reg"))]
    reg = [s for s in subsets if _truthy(s.get("is_reg"))]
    for idx, sub in enumerate(subsets):
        if "is_reg" in sub:
            b.mapped.append((f"{prefix}datasets[0].subsets[{idx}].is_reg", sub["is_reg"],
                             "dataset.reg_data_dir" if _truthy(sub["is_reg"]) else "a training concept"))
    if not train:
        b.unsupported_(f"{prefix}datasets[0].subsets", None, "no training subset (all are regularization or none given)")

    # subset options loratui applies to every concept: the first training subset decides
    for opt, dotted in _SUBSET_OPTIONS.items():
        values = []
        for idx, s in enumerate(subsets):
            if opt in s:
                values.append((f"{prefix}datasets[0].subsets[{idx}].{opt}", s[opt], s in train))
        default = subset_level.pop(opt, None)
        chosen = None
        if train and opt in train[0]:
            chosen = (f"{prefix}datasets[0].subsets[{subsets.index(train[0])}].{opt}", train[0][opt])
        elif default is not None:
            chosen = default
        if chosen is None:
            for key, v, _ in values:
                b.unsupported_(key, v, f"only on some subsets; loratui applies one {opt} to all concepts and kept its default")
            continue
        if not (opt == "caption_extension" and _blank(chosen[1])):
            if _blank(chosen[1]):
                b.ignore(chosen[0], chosen[1], "empty")
            elif opt == "caption_extension":
                ext = str(chosen[1]).strip()
                b.put(dotted, chosen[1], chosen[0], ext if ext.startswith(".") else "." + ext)
            else:
                b.put(dotted, chosen[1], chosen[0])
        else:
            b.ignore(chosen[0], chosen[1], "empty: loratui reads .txt captions")
        if default is not None and default is not chosen:
            b.ignore(default[0], default[1], f"overridden by {chosen[0]}")
        for key, v, is_train in values:
            if key == chosen[0]:
                continue
            if _same(v, chosen[1]):
                b.mapped.append((key, v, dotted))
            elif not is_train:
                b.ignore(key, v, "regularization subset; loratui uses the training subsets' setting")
            else:
                b.unsupported_(key, v, f"differs from {chosen[0]} = {_show(chosen[1])}; loratui applies one value to all concepts")

    for k, (key, v) in subset_level.items():
        if k == "num_repeats":
            b.mapped.append((key, v, "(default repeats of the subsets)"))
        elif k in _OFF_VALUES or k in ("color_aug", "random_crop"):
            _report_other(b, key, v)
        else:
            b.ignore(key, v, "a subset default; see the subsets")

    default_repeats = subset_level.get("num_repeats", (None, 1))[1]
    train_dir = _map_subsets(b, train, subsets, prefix, default_repeats, reg=False)
    reg_dir = _map_subsets(b, reg, subsets, prefix, default_repeats, reg=True)
    if train_dir is not None:
        b.values["dataset.train_data_dir"] = train_dir
    if reg_dir is not None:
        b.values["dataset.reg_data_dir"] = reg_dir


def _truthy(v: Any) -> bool:
    try:
        return False if _blank(v) else _to_bool(v)
    except _Bad:
        return False


def _same(a: Any, b: Any) -> bool:
    if a == b:
        return True
    try:
        return _to_float(a) == _to_float(b)
    except _Bad:
        return str(a).strip() == str(b).strip()


def _report_other(b: _Builder, key: str, v: Any) -> None:
    name = key.rsplit(".", 1)[-1]
    if name in _NO_EFFECT:
        b.ignore(key, v, _NO_EFFECT[name])
    elif name in _OFF_VALUES:
        off, what = _OFF_VALUES[name]
        if _is_off(v, off):
            b.ignore(key, v, f"off: loratui has no {what}")
        else:
            b.unsupported_(key, v, f"loratui has no {what}; trained without it")
    elif _blank(v) or v is False or v == 0:
        b.ignore(key, v, "unknown to loratui; off or empty")
    else:
        b.unsupported_(key, v, "unknown to loratui; may change training")


def _map_subsets(b: _Builder, group: list[dict], subsets: list[dict], prefix: str, default_repeats: Any, reg: bool) -> str | None:
    """Map subsets onto one <root>/<repeats>_<name> folder; returns the root (as written)."""
    kind = "regularization" if reg else "training"
    root: str | None = None
    listed: set[str] = set()
    for s in group:
        idx = subsets.index(s)
        where = f"{prefix}datasets[0].subsets[{idx}]"
        image_dir = s.get("image_dir")
        handled = {"image_dir", "num_repeats", "class_tokens", "is_reg", *_SUBSET_OPTIONS}
        for k, v in s.items():
            if k not in handled:
                _report_other(b, f"{where}.{k}", v)
        if _blank(image_dir):
            b.unsupported_(f"{where}.image_dir", image_dir,
                           "no image_dir (fine-tuning metadata subsets are not supported); this subset was not imported")
            continue
        text = str(image_dir).rstrip("/\\")
        name = re.split(r"[/\\]", text)[-1]
        parent = text[: len(text) - len(name)].rstrip("/\\") or "."
        repeats_raw = s.get("num_repeats", default_repeats)
        try:
            repeats = 1 if _blank(repeats_raw) else _to_int(repeats_raw)
        except _Bad:
            repeats = 1
        tokens = s.get("class_tokens")
        m = CONCEPT_DIR.match(name)
        if not m:
            suggestion = f"{repeats}_{tokens if not _blank(tokens) else name}"
            b.unsupported_(
                f"{where}.image_dir", image_dir,
                f"loratui reads the repeats from folder names like <repeats>_<name>; rename this folder to "
                f"'{suggestion}' (inside {parent}) to train it",
            )
            continue
        folder_repeats, folder_name = int(m.group(1)), m.group(2)
        if root is None:
            root = parent
            b.mapped.append((f"{where}.image_dir", image_dir, "dataset.reg_data_dir" if reg else "dataset.train_data_dir"))
        elif os.path.normpath(parent) != os.path.normpath(root):
            b.unsupported_(
                f"{where}.image_dir", image_dir,
                f"loratui reads every {kind} concept from one folder ({root}); move this folder into it to train it",
            )
            continue
        else:
            b.mapped.append((f"{where}.image_dir", image_dir, "dataset.reg_data_dir" if reg else "dataset.train_data_dir"))
        listed.add(name)
        if "num_repeats" in s:
            if repeats == folder_repeats:
                b.mapped.append((f"{where}.num_repeats", s["num_repeats"], f"folder name {name}"))
            else:
                b.unsupported_(
                    f"{where}.num_repeats", s["num_repeats"],
                    f"loratui takes the repeats from the folder name ({folder_repeats} in {name!r}); "
                    f"rename the folder to '{repeats}_{folder_name}' to train with {repeats} repeats",
                )
        elif folder_repeats != repeats:
            b.note(f"{where}: repeats {folder_repeats} come from the folder name {name!r} (the config gave none)")
        if "class_tokens" in s:
            if _blank(tokens) or str(tokens).strip() == folder_name:
                b.mapped.append((f"{where}.class_tokens", tokens, f"folder name {name}"))
            else:
                b.unsupported_(
                    f"{where}.class_tokens", tokens,
                    f"loratui uses the folder name ({folder_name!r}) as the caption of images without one; "
                    f"rename the folder to '{folder_repeats}_{tokens}' to use these class tokens",
                )
    if root is not None:
        on_disk = Path(os.path.expanduser(root))
        if on_disk.is_dir():
            extra = sorted(p.name for p in on_disk.iterdir() if p.is_dir() and CONCEPT_DIR.match(p.name) and p.name not in listed)
            if extra:
                b.note(f"{root} also holds concept folders the dataset config does not list ({', '.join(extra)}); "
                       "loratui trains every <repeats>_<name> folder in it")
    return root


# =========================================================================== export


def _concepts_on_disk(root: str) -> list[tuple[str, int, str]]:
    """(folder path as written, repeats, name) for each <repeats>_<name> folder under root."""
    if not root:
        return []
    p = Path(os.path.expanduser(root))
    if not p.is_dir():
        return []
    out = []
    for child in sorted(p.iterdir()):
        m = CONCEPT_DIR.match(child.name)
        if child.is_dir() and m:
            out.append((os.path.join(root, child.name), int(m.group(1)), m.group(2)))
    return out


_DEFAULT_CONV = (Profile().network.conv_dim, Profile().network.conv_alpha)


def _family_script(family: str) -> str:
    return "sdxl_train_network.py" if family == "sdxl" else "train_network.py"


def _resolution_text(p: Profile) -> str:
    d = p.dataset
    h = d.resolution_height or d.resolution
    return f"{d.resolution},{h}"


def sd_scripts_args(p: Profile, *, dataset_config: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """The sd-scripts arguments (``--config_file`` keys) for a profile, and the
    loratui settings that have no sd-scripts key (as ``key = value`` TOML text)."""
    m, d, n, o, out = p.model, p.dataset, p.network, p.optimization, p.output
    a: dict[str, Any] = {}
    extra: list[str] = []

    import tomli_w

    def keep(key: str, value: Any) -> None:
        extra.append(tomli_w.dumps({key: value}).strip())

    # model
    a["pretrained_model_name_or_path"] = m.base_model
    if m.vae:
        a["vae"] = m.vae
    if m.family == "sd2":
        a["v2"] = True
    a["v_parameterization"] = m.v_parameterization
    if m.clip_skip > 1:
        a["clip_skip"] = m.clip_skip
    if m.family != "sd2":
        keep("family", m.family)  # sd1 / sdxl / auto: told by the script, not the file
    if m.model_config_dir:
        keep("model_config_dir", m.model_config_dir)

    # dataset
    if dataset_config:
        a["dataset_config"] = dataset_config
        if d.reg_data_dir and not _concepts_on_disk(d.reg_data_dir):
            keep("reg_data_dir", d.reg_data_dir)
    else:
        a["train_data_dir"] = d.train_data_dir
        if d.reg_data_dir:
            a["reg_data_dir"] = d.reg_data_dir
        a["resolution"] = _resolution_text(p)
        a["enable_bucket"] = d.enable_bucket
        a["min_bucket_reso"] = d.min_bucket_reso
        a["max_bucket_reso"] = d.max_bucket_reso
        a["bucket_reso_steps"] = d.bucket_reso_steps
        a["bucket_no_upscale"] = d.bucket_no_upscale
        a["caption_extension"] = d.caption_extension
        a["shuffle_caption"] = d.shuffle_caption
        a["keep_tokens"] = d.keep_tokens
        a["caption_dropout_rate"] = d.caption_dropout_rate
        a["flip_aug"] = d.flip_aug
        a["train_batch_size"] = o.train_batch_size
    a["prior_loss_weight"] = d.prior_loss_weight
    a["cache_latents"] = d.cache_latents != "off"
    a["cache_latents_to_disk"] = d.cache_latents == "disk"
    if d.balance_concepts:
        keep("balance_concepts", True)

    # network
    a["network_module"] = "networks.lora"
    a["network_dim"] = n.network_dim
    a["network_alpha"] = n.network_alpha
    if n.network_type == "locon":
        a["network_args"] = [f"conv_dim={n.conv_dim}", f"conv_alpha={_num_text(n.conv_alpha)}"]
    elif n.network_type == "lora":
        # networks.lora would train the convolutions if given conv_dim: keep them as comments
        if n.conv_dim != _DEFAULT_CONV[0]:
            keep("conv_dim", n.conv_dim)
        if n.conv_alpha != _DEFAULT_CONV[1]:
            keep("conv_alpha", n.conv_alpha)
    else:
        raise ValueError(f"network type {n.network_type!r} cannot be exported")
    if n.network_weights:
        a["network_weights"] = n.network_weights
    if not n.train_text_encoder:
        a["network_train_unet_only"] = True
    if not n.train_unet:
        a["network_train_text_encoder_only"] = True

    # optimization
    a["optimizer_type"] = o.optimizer
    if o.optimizer_args.strip():
        a["optimizer_args"] = o.optimizer_args.split()
    a["learning_rate"] = o.learning_rate
    if o.unet_lr is not None:
        a["unet_lr"] = o.unet_lr
    if o.text_encoder_lr is not None:
        a["text_encoder_lr"] = o.text_encoder_lr
    a["lr_scheduler"] = o.lr_scheduler
    w = o.lr_warmup_steps
    a["lr_warmup_steps"] = int(w) if float(w).is_integer() else w
    a["lr_scheduler_num_cycles"] = o.lr_scheduler_num_cycles
    a["lr_scheduler_power"] = o.lr_scheduler_power
    if o.max_train_steps:
        # sd-scripts lets max_train_epochs override max_train_steps; loratui lets the steps cap
        a["max_train_steps"] = o.max_train_steps
        keep("max_train_epochs", o.max_train_epochs)
    else:
        a["max_train_epochs"] = o.max_train_epochs
    a["gradient_accumulation_steps"] = o.gradient_accumulation_steps
    a["gradient_checkpointing"] = o.gradient_checkpointing
    a["mixed_precision"] = o.mixed_precision
    a["seed"] = o.seed
    a["max_grad_norm"] = o.max_grad_norm
    if o.min_snr_gamma:
        a["min_snr_gamma"] = o.min_snr_gamma
    if o.noise_offset:
        a["noise_offset"] = o.noise_offset
    a["sdpa"] = True

    # output
    a["output_dir"] = out.output_dir
    a["output_name"] = out.output_name
    a["save_model_as"] = "safetensors"
    a["save_precision"] = out.save_precision
    a["save_every_n_epochs"] = out.save_every_n_epochs
    if out.save_every_n_steps:
        a["save_every_n_steps"] = out.save_every_n_steps
    a["save_state"] = out.save_state
    a["save_last_n_epochs_state"] = out.save_last_n_states
    if out.save_every_n_steps and out.save_last_n_states:
        a["save_last_n_steps_state"] = out.save_last_n_states * out.save_every_n_steps
    if out.resume:
        a["resume"] = out.resume
    for key in ("metadata_title", "metadata_author", "metadata_description", "metadata_tags"):
        value = getattr(out, key)
        if value:
            a[key] = value
    if out.trigger_words:
        a["training_comment"] = out.trigger_words
    # empty strings are "unset" for sd-scripts
    a = {k: v for k, v in a.items() if not (isinstance(v, str) and v == "")}
    return a, extra


def dataset_config_dict(p: Profile) -> tuple[dict[str, Any], list[str]]:
    """An sd-scripts dataset_config for the profile's concept folders (read from disk)
    and notes. Raises ValueError when the training folder holds no concept folders."""
    d, o = p.dataset, p.optimization
    train = _concepts_on_disk(d.train_data_dir)
    if not train:
        raise ValueError(f"{d.train_data_dir or '(dataset.train_data_dir is empty)'}: no <repeats>_<name> concept folders found")
    notes: list[str] = []
    general = {
        "caption_extension": d.caption_extension,
        "shuffle_caption": d.shuffle_caption,
        "keep_tokens": d.keep_tokens,
        "caption_dropout_rate": d.caption_dropout_rate,
        "flip_aug": d.flip_aug,
    }
    h = d.resolution_height or d.resolution
    dataset: dict[str, Any] = {
        "resolution": d.resolution if h == d.resolution else [d.resolution, h],
        "batch_size": o.train_batch_size,
        "enable_bucket": d.enable_bucket,
        "min_bucket_reso": d.min_bucket_reso,
        "max_bucket_reso": d.max_bucket_reso,
        "bucket_reso_steps": d.bucket_reso_steps,
        "bucket_no_upscale": d.bucket_no_upscale,
        "subsets": [],
    }
    for folder, repeats, name in train:
        dataset["subsets"].append({"image_dir": folder, "num_repeats": repeats, "class_tokens": name})
    reg = _concepts_on_disk(d.reg_data_dir)
    if d.reg_data_dir and not reg:
        notes.append(f"{d.reg_data_dir}: no <repeats>_<name> folders found; no regularization subsets written")
    for folder, repeats, name in reg:
        dataset["subsets"].append({"image_dir": folder, "num_repeats": repeats, "class_tokens": name, "is_reg": True})
    if d.balance_concepts:
        notes.append("balance_concepts has no sd-scripts equivalent: the folders' own repeats were exported")
    return {"general": general, "datasets": [dataset]}, notes


def _toml_with_comments(data: dict[str, Any], header: list[str]) -> str:
    import tomli_w

    return "".join(f"# {line}\n" if line else "#\n" for line in header) + "\n" + tomli_w.dumps(data)


@dataclass
class ExportResult:
    config_path: Path
    dataset_path: Path | None
    script: str
    command: str
    notes: list[str]


def export_problems(p: Profile) -> list[str]:
    """Why a profile cannot be exported at all."""
    if p.network.network_type not in ("lora", "locon"):
        return [network_type_message(p.network.network_type) or ""]
    return []


def export_warnings(p: Profile) -> list[str]:
    """Exported anyway, but sd-scripts will stop on these."""
    out = []
    if not p.model.base_model:
        out.append("model.base_model is empty: set pretrained_model_name_or_path before running sd-scripts")
    if not p.dataset.train_data_dir:
        out.append("dataset.train_data_dir is empty: set the image folder before running sd-scripts")
    if p.model.family == "auto":
        out.append("model.family is auto: written for train_network.py (SD 1.x/2.x); run sdxl_train_network.py for an SDXL model")
    return out


def export_sd_scripts(p: Profile, out_dir: str | Path, *, source: str = "", overwrite: bool = False,
                      names: tuple[str, str] = ("config.toml", "dataset.toml")) -> ExportResult:
    """Write ``config.toml`` (``--config_file``) and, when the concept folders can be
    listed, ``dataset.toml`` (``--dataset_config``) into ``out_dir``, atomically.
    Raises FileExistsError (without writing) when a file exists and not ``overwrite``."""
    from loratui.engine.fsutil import atomic_write_text

    out_dir = Path(out_dir)
    cfg_path = out_dir / names[0]
    ds_path = out_dir / names[1]
    notes: list[str] = []
    try:
        ds, ds_notes = dataset_config_dict(p)
        notes += ds_notes
    except ValueError as exc:
        ds = None
        if p.dataset.train_data_dir:
            notes.append(f"{exc}: the dataset is given as train_data_dir in {names[0]} instead of a dataset config")
    targets = [cfg_path] + ([ds_path] if ds is not None else [])
    if not overwrite:
        existing = [str(t) for t in targets if t.exists()]
        if existing:
            raise FileExistsError(", ".join(existing))
    ds_ref = str(ds_path.resolve()) if ds is not None else None
    args, extra = sd_scripts_args(p, dataset_config=ds_ref)
    script = _family_script(p.model.family)
    notes += export_warnings(p)
    header = [
        f"sd-scripts --config_file exported by loratui{f' from {source}' if source else ''}.",
        f"Run: accelerate launch {script} --config_file {shlex.quote(str(cfg_path.resolve()))}",
        "",
        "Settings sd-scripts has no option for (loratui reads them back on import):",
    ] + [f"loratui: {line}" for line in extra]
    if ds is not None:
        atomic_write_text(ds_path, _toml_with_comments(ds, [f"sd-scripts --dataset_config exported by loratui{f' from {source}' if source else ''}."]))
    atomic_write_text(cfg_path, _toml_with_comments(args, header))
    command = f"accelerate launch {script} --config_file {shlex.quote(str(cfg_path.resolve()))}"
    return ExportResult(cfg_path, ds_path if ds is not None else None, script, command, notes)


def sd_scripts_command(p: Profile) -> str:
    """The equivalent ``accelerate launch train_network.py ...`` command line."""
    args, extra = sd_scripts_args(p)
    parts = ["accelerate", "launch", "--num_cpu_threads_per_process", "1", _family_script(p.model.family)]
    for key, value in args.items():
        if isinstance(value, bool):
            if value:
                parts.append(f"--{key}")
        elif isinstance(value, list):
            parts.append(f"--{key}")
            parts += [shlex.quote(str(x)) for x in value]
        else:
            parts.append(f"--{key}={shlex.quote(str(value))}")
    return " ".join(parts)
