"""The profile schema: every training setting, declared once.

Each setting is a pydantic field carrying its default, bounds, help text, unit,
the kohya_ss / sd-scripts name it maps to and the section it lives in.  TOML
load/save, validation messages, ``--set key=value``, the TUI form, the kohya_ss
import map and the ``ss_*`` metadata are all derived from these declarations.

This module is imported by the UI before its first frame: it must stay cheap
(no torch, no diffusers).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# --------------------------------------------------------------------------- helpers


def setting(
    default: Any,
    help: str,
    *,
    kohya: str | None = None,
    unit: str | None = None,
    kind: str | None = None,
    advanced: bool = False,
    ge: float | None = None,
    le: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
) -> Any:
    """Declare one setting.

    ``kind`` refines the widget/validation for strings: ``dir``, ``file``,
    ``path`` (file or dir) or ``model`` (file, dir or Hub repo id).
    ``advanced`` settings are shown folded in the form.
    """
    extra = {"kohya": kohya, "unit": unit, "kind": kind, "advanced": advanced}
    return Field(default, description=help, ge=ge, le=le, gt=gt, lt=lt, json_schema_extra=extra)


class _Section(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", validate_assignment=True)

    def checks(self) -> list[tuple[str, str]]:
        """(key, message) for problems that involve more than one field."""
        return []

    @model_validator(mode="after")
    def _cross_checks(self) -> "_Section":
        problems = self.checks()
        if problems:
            # One ValueError listing "key: message" lines; the loader splits them
            # back into one problem each, prefixed with the section.
            raise ValueError("\n".join(f"{key}: {msg}" for key, msg in problems))
        return self


MODEL_FAMILIES = ("auto", "sd1", "sd2", "sdxl")
OPTIMIZERS = ("AdamW", "AdamW8bit", "Lion", "Lion8bit", "Prodigy", "Adafactor", "DAdaptAdam")
EIGHT_BIT_OPTIMIZERS = ("AdamW8bit", "Lion8bit")
SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
NETWORK_TYPES = ("lora", "locon")


# --------------------------------------------------------------------------- sections


class ModelSettings(_Section):
    base_model: str = setting(
        "",
        "Base checkpoint: a .safetensors/.ckpt file, a diffusers folder, or a Hugging Face "
        "repo id such as stable-diffusion-v1-5/stable-diffusion-v1-5.",
        kohya="pretrained_model_name_or_path",
        kind="model",
    )
    vae: str = setting(
        "",
        "Separate VAE (file, folder or repo id). Empty: the base model's own VAE.",
        kohya="vae",
        kind="model",
    )
    family: Literal["auto", "sd1", "sd2", "sdxl"] = setting(
        "auto",
        "Model family. auto: detected from the weights (SD 1.x, SD 2.x or SDXL).",
        kohya="sdxl/v2",
    )
    v_parameterization: bool = setting(
        False,
        "Train with v-prediction. Needed for SD 2.x 768-v models (stable-diffusion-2-1).",
        kohya="v_parameterization",
    )
    clip_skip: int = setting(
        1,
        "Use the output of the n-th last text encoder layer. 1 = normal, 2 = common for anime models.",
        kohya="clip_skip",
        ge=1,
        le=12,
    )
    model_config_dir: str = setting(
        "",
        "Diffusers config folder for a single-file model of a non-standard shape. "
        "Empty: the configs bundled for the detected family.",
        kind="dir",
        advanced=True,
    )


class DatasetSettings(_Section):
    train_data_dir: str = setting(
        "",
        "Folder holding one or more <repeats>_<name> concept folders, e.g. images/10_mychar.",
        kohya="train_data_dir",
        kind="dir",
    )
    reg_data_dir: str = setting(
        "",
        "Optional regularization folder, same <repeats>_<name> layout. Empty: none.",
        kohya="reg_data_dir",
        kind="dir",
    )
    prior_loss_weight: float = setting(
        1.0, "Loss weight of regularization images.", kohya="prior_loss_weight", ge=0, le=10
    )
    resolution: int = setting(
        512,
        "Training resolution (width; square unless a height is set). SD 1.x 512, SD 2.x 768, SDXL 1024.",
        kohya="max_resolution",
        unit="px",
        ge=64,
        le=4096,
    )
    resolution_height: int = setting(
        0,
        "Training height when not square. 0: same as the resolution.",
        kohya="max_resolution",
        unit="px",
        ge=0,
        le=4096,
        advanced=True,
    )
    enable_bucket: bool = setting(
        True,
        "Aspect-ratio buckets: train images at their own aspect ratio instead of cropping to a square.",
        kohya="enable_bucket",
    )
    min_bucket_reso: int = setting(
        256, "Smallest bucket side.", kohya="min_bucket_reso", unit="px", ge=64, le=4096
    )
    max_bucket_reso: int = setting(
        1024, "Largest bucket side.", kohya="max_bucket_reso", unit="px", ge=64, le=8192
    )
    bucket_reso_steps: int = setting(
        64, "Bucket sides are multiples of this.", kohya="bucket_reso_steps", unit="px", ge=8, le=512
    )
    bucket_no_upscale: bool = setting(
        False,
        "Never upscale an image to fit a bucket; small images get smaller buckets.",
        kohya="bucket_no_upscale",
    )
    caption_extension: str = setting(
        ".txt", "Caption files are <image name><this>.", kohya="caption_extension"
    )
    shuffle_caption: bool = setting(
        False,
        "Shuffle comma-separated tags each step (after the first keep_tokens).",
        kohya="shuffle_caption",
    )
    keep_tokens: int = setting(
        0,
        "Number of leading tags never shuffled or dropped (your trigger word).",
        kohya="keep_tokens",
        ge=0,
        le=75,
    )
    caption_dropout_rate: float = setting(
        0.0,
        "Chance of training a step with an empty caption.",
        kohya="caption_dropout_rate",
        ge=0,
        le=1,
    )
    flip_aug: bool = setting(
        False,
        "Randomly mirror images left-right. Off for asymmetric subjects (text, logos, hair parts).",
        kohya="flip_aug",
    )
    cache_latents: Literal["memory", "disk", "off"] = setting(
        "memory",
        "Encode images once before training. disk: keep the cache beside the images for the next run. "
        "off: encode every step (needed for flip augmentation variety, slower).",
        kohya="cache_latents/cache_latents_to_disk",
    )
    balance_concepts: bool = setting(
        False,
        "Adjust repeats so every concept gets about the same number of steps per epoch.",
    )

    def checks(self) -> list[tuple[str, str]]:
        out = []
        step = self.bucket_reso_steps
        for key in ("resolution", "resolution_height"):
            value = getattr(self, key)
            if value and value % 64:
                out.append((key, f"{value} must be a multiple of 64 (e.g. {max(64, value // 64 * 64)})"))
        if self.min_bucket_reso > self.max_bucket_reso:
            out.append(("min_bucket_reso", f"{self.min_bucket_reso} is larger than max_bucket_reso {self.max_bucket_reso}"))
        for key in ("min_bucket_reso", "max_bucket_reso"):
            value = getattr(self, key)
            if value % step:
                out.append((key, f"{value} must be a multiple of bucket_reso_steps ({step})"))
        if self.caption_extension and not self.caption_extension.startswith("."):
            out.append(("caption_extension", f"must start with a dot, e.g. '.{self.caption_extension}'"))
        return out


class NetworkSettings(_Section):
    network_type: Literal["lora", "locon"] = setting(
        "lora",
        "lora: attention and MLP layers. locon: also the 3x3 convolutions (uses conv rank/alpha).",
        kohya="LoRA_type",
    )
    network_dim: int = setting(
        8,
        "LoRA rank. 4 light, 8 standard, 16 detailed, 32-64 heavy. Larger files, more VRAM.",
        kohya="network_dim",
        ge=1,
        le=1024,
    )
    network_alpha: float = setting(
        8.0,
        "Scales the LoRA by alpha/rank. Same as rank = no scaling; half the rank is also common.",
        kohya="network_alpha",
        gt=0,
        le=1024,
    )
    conv_dim: int = setting(
        4, "Rank of the 3x3 convolutions (locon only).", kohya="conv_dim", ge=1, le=1024
    )
    conv_alpha: float = setting(
        1.0, "Alpha of the 3x3 convolutions (locon only).", kohya="conv_alpha", gt=0, le=1024
    )
    train_unet: bool = setting(True, "Train the U-Net.", kohya="network_train_text_encoder_only")
    train_text_encoder: bool = setting(
        True,
        "Train the text encoder(s) too. Off = U-Net only (common for SDXL).",
        kohya="network_train_unet_only",
    )
    network_weights: str = setting(
        "",
        "Continue training from an existing LoRA .safetensors (rank and alpha taken from the file).",
        kohya="network_weights",
        kind="file",
    )

    def checks(self) -> list[tuple[str, str]]:
        if not self.train_unet and not self.train_text_encoder:
            return [("train_unet", "nothing to train: enable train_unet or train_text_encoder")]
        return []


class OptimizationSettings(_Section):
    optimizer: Literal[
        "AdamW", "AdamW8bit", "Lion", "Lion8bit", "Prodigy", "Adafactor", "DAdaptAdam"
    ] = setting(
        "AdamW",
        "AdamW8bit/Lion8bit save VRAM (CUDA only). Prodigy/DAdaptAdam find the LR themselves (use LR 1).",
        kohya="optimizer",
    )
    optimizer_args: str = setting(
        "",
        "Extra optimizer arguments, space separated: weight_decay=0.1 betas=0.9,0.99",
        kohya="optimizer_args",
        advanced=True,
    )
    learning_rate: float = setting(
        1e-4, "Learning rate (used where the U-Net/text encoder rates are unset).", kohya="learning_rate", gt=0, le=10
    )
    unet_lr: float | None = setting(
        None, "U-Net learning rate. Unset: the learning rate.", kohya="unet_lr", gt=0, le=10
    )
    text_encoder_lr: float | None = setting(
        5e-5,
        "Text encoder learning rate. Unset: the learning rate.",
        kohya="text_encoder_lr",
        gt=0,
        le=10,
    )
    lr_scheduler: Literal[
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
    ] = setting("cosine", "How the learning rate changes over the run.", kohya="lr_scheduler")
    lr_warmup_steps: float = setting(
        0,
        "Warm-up: steps, or a fraction of all steps when below 1 (0.05 = 5 %).",
        kohya="lr_warmup_steps",
        ge=0,
    )
    lr_scheduler_num_cycles: int = setting(
        1, "Restarts for cosine_with_restarts.", kohya="lr_scheduler_num_cycles", ge=1, le=1000
    )
    lr_scheduler_power: float = setting(
        1.0, "Power of the polynomial scheduler.", kohya="lr_scheduler_power", gt=0, le=10
    )
    max_train_epochs: int = setting(
        10,
        "Epochs. 10-20 images: 10-20 epochs; 30-50: 5-10; 100+: 2-5.",
        kohya="max_train_epochs",
        ge=1,
        le=10000,
    )
    max_train_steps: int = setting(
        0, "Stop after this many steps. 0: run all epochs.", kohya="max_train_steps", ge=0
    )
    train_batch_size: int = setting(
        1,
        "Images per step. At 512px: 6 GB 1, 8 GB 1-2, 12 GB 2-4, 16 GB 4-6, 24 GB+ 8.",
        kohya="train_batch_size",
        ge=1,
        le=256,
    )
    gradient_accumulation_steps: int = setting(
        1,
        "Accumulate this many batches per optimizer step (a bigger batch without the VRAM).",
        kohya="gradient_accumulation_steps",
        ge=1,
        le=1024,
    )
    gradient_checkpointing: bool = setting(
        False, "Recompute activations in the backward pass: much less VRAM, ~20 % slower.",
        kohya="gradient_checkpointing",
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = setting(
        "fp16",
        "fp16 for most cards, bf16 for RTX 30xx/40xx/A100/H100. Falls back to no on a CPU.",
        kohya="mixed_precision",
    )
    seed: int = setting(42, "Random seed. Same seed + same profile = same LoRA.", kohya="seed", ge=0, le=2**32 - 1)
    max_grad_norm: float = setting(
        1.0, "Clip gradients to this norm. 0: no clipping.", kohya="max_grad_norm", ge=0, advanced=True
    )
    max_bad_steps: int = setting(
        0,
        "Steps with a NaN/inf loss to skip (no update) before the run stops. 0: stop at the first one.",
        ge=0,
        le=1000,
        advanced=True,
    )
    min_snr_gamma: float = setting(
        0.0, "Min-SNR weighting gamma (5 is typical). 0: off.", kohya="min_snr_gamma", ge=0, le=100
    )
    noise_offset: float = setting(
        0.0,
        "Noise offset (0.05-0.1) helps very dark/bright images. 0: off.",
        kohya="noise_offset",
        ge=0,
        le=1,
    )

    def checks(self) -> list[tuple[str, str]]:
        w = self.lr_warmup_steps
        if w >= 1 and not float(w).is_integer():
            return [("lr_warmup_steps", "use a whole number of steps, or a fraction below 1")]
        return []


class OutputSettings(_Section):
    output_dir: str = setting("", "Folder the LoRA files are written to.", kohya="output_dir", kind="dir")
    output_name: str = setting(
        "",
        "File name without extension: <name>.safetensors, <name>-000004.safetensors.",
        kohya="output_name",
    )
    save_every_n_epochs: int = setting(
        1,
        "Save an intermediate LoRA every N epochs. 0: only the final file.",
        kohya="save_every_n_epochs",
        ge=0,
    )
    save_every_n_steps: int = setting(
        0, "Save an intermediate LoRA every N steps. 0: off.", kohya="save_every_n_steps", ge=0
    )
    save_precision: Literal["fp16", "bf16", "float"] = setting(
        "fp16", "Precision of the saved weights. fp16 is what everyone uses.", kohya="save_precision"
    )
    save_state: bool = setting(
        False,
        "Also save the full training state (optimizer, RNG, step) so the run can be resumed.",
        kohya="save_state",
    )
    save_last_n_states: int = setting(
        2, "Keep this many saved states. 0: keep all.", kohya="save_last_n_steps_state", ge=0, advanced=True
    )
    resume: str = setting(
        "", "Resume from a saved state folder, or latest (the newest state of this output name). Empty: start fresh.", kohya="resume", kind="dir"
    )
    metadata_title: str = setting("", "Title stored in the LoRA (modelspec.title).", kohya="metadata_title", advanced=True)
    metadata_author: str = setting("", "Author stored in the LoRA.", kohya="metadata_author", advanced=True)
    metadata_description: str = setting(
        "", "Description stored in the LoRA.", kohya="metadata_description", advanced=True
    )
    metadata_tags: str = setting("", "Comma-separated tags stored in the LoRA.", kohya="metadata_tags", advanced=True)
    trigger_words: str = setting(
        "", "Words that activate the LoRA in a prompt (modelspec.trigger_phrase).", kohya="training_comment"
    )

    def checks(self) -> list[tuple[str, str]]:
        name = self.output_name
        if name and any(c in name for c in '/\\:*?"<>|'):
            return [("output_name", f"{name!r} must be a plain file name without / \\ : * ? \" < > |")]
        return []


SECTION_TITLES = {
    "model": "Model",
    "dataset": "Dataset",
    "network": "Network",
    "optimization": "Optimization",
    "output": "Output",
}


class Profile(BaseModel):
    """A complete, validated training profile."""

    model_config = ConfigDict(strict=True, extra="forbid", validate_assignment=True)

    model: ModelSettings = Field(default_factory=ModelSettings)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    optimization: OptimizationSettings = Field(default_factory=OptimizationSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)

    # -- convenience -------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict; unset optional values are left out (TOML has no null)."""
        out: dict[str, dict[str, Any]] = {}
        for section in SECTION_TITLES:
            values = getattr(self, section).model_dump()
            out[section] = {k: v for k, v in values.items() if v is not None}
        return out

    def get(self, dotted: str) -> Any:
        section, key = dotted.split(".", 1)
        return getattr(getattr(self, section), key)


# --------------------------------------------------------------------------- cross-field rules


def profile_warnings(p: Profile) -> list[str]:
    """Things that are allowed but probably not what the user wants."""
    out: list[str] = []
    n = p.network
    if n.network_alpha > n.network_dim:
        out.append(
            f"network.network_alpha: {n.network_alpha:g} is larger than the rank {n.network_dim}; "
            "the LoRA is scaled up by alpha/rank and may overcook (alpha ≤ rank is usual)"
        )
    if n.network_type == "locon" and n.conv_alpha > n.conv_dim:
        out.append(f"network.conv_alpha: {n.conv_alpha:g} is larger than conv_dim {n.conv_dim}")
    for dotted in ("model.base_model", "model.vae", "dataset.train_data_dir", "dataset.reg_data_dir", "output.output_dir", "output.output_name"):
        value = p.get(dotted)
        if value and (" " in value or not value.isascii()):
            out.append(f"{dotted}: {value!r} contains spaces or non-ASCII characters; some other tools trip on such paths")
    o = p.optimization
    if o.optimizer in ("Prodigy", "DAdaptAdam") and o.learning_rate < 0.1:
        out.append(f"optimization.learning_rate: {o.optimizer} expects a learning rate around 1.0, not {o.learning_rate:g}")
    return out


# --------------------------------------------------------------------------- introspection


@dataclass(frozen=True)
class SettingInfo:
    section: str
    key: str
    type: str  # "bool" | "int" | "float" | "str" | "choice"
    default: Any
    help: str
    kohya: str | None
    unit: str | None
    kind: str | None  # "dir" | "file" | "model" | "path" | None
    choices: tuple[str, ...]
    optional: bool
    advanced: bool
    ge: float | None
    le: float | None
    gt: float | None
    lt: float | None

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def label(self) -> str:
        return self.key.replace("_", " ").capitalize()


def _type_info(annotation: Any) -> tuple[str, tuple[str, ...], bool]:
    optional = False
    args = get_args(annotation)
    if args and type(None) in args:
        optional = True
        annotation = next(a for a in args if a is not type(None))
    if get_origin(annotation) is Literal:
        return "choice", tuple(get_args(annotation)), optional
    return {bool: "bool", int: "int", float: "float", str: "str"}[annotation], (), optional


def _bound(field: Any, name: str) -> float | None:
    for m in field.metadata:
        if hasattr(m, name):
            return getattr(m, name)
    return None


def settings() -> list[SettingInfo]:
    """Every setting, in declaration order."""
    out = []
    for section in SECTION_TITLES:
        cls = Profile.model_fields[section].default_factory  # type: ignore[union-attr]
        for key, field in cls.model_fields.items():
            typ, choices, optional = _type_info(field.annotation)
            extra = field.json_schema_extra or {}
            out.append(
                SettingInfo(
                    section=section,
                    key=key,
                    type=typ,
                    default=field.default,
                    help=field.description or "",
                    kohya=extra.get("kohya"),
                    unit=extra.get("unit"),
                    kind=extra.get("kind"),
                    choices=choices,
                    optional=optional,
                    advanced=bool(extra.get("advanced")),
                    ge=_bound(field, "ge"),
                    le=_bound(field, "le"),
                    gt=_bound(field, "gt"),
                    lt=_bound(field, "lt"),
                )
            )
    return out


def setting_info(dotted: str) -> SettingInfo:
    for s in settings():
        if s.dotted == dotted:
            return s
    raise KeyError(dotted)


# --------------------------------------------------------------------------- errors, load, save


class ProfileError(Exception):
    """A profile could not be used. ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _describe(err: dict[str, Any]) -> str:
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown setting (check the spelling; `loratui check` lists valid keys)"
    if kind == "literal_error":
        return f"{value!r} is not one of: {ctx.get('expected', '')}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        sign = {"greater_than_equal": "≥", "less_than_equal": "≤", "greater_than": ">", "less_than": "<"}[kind]
        limit = next(iter(ctx.values()))
        return f"{value!r} is out of range: must be {sign} {limit}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        want = kind.split("_")[0]
        want = {"int": "a whole number", "float": "a number", "bool": "true or false", "string": "a string (in quotes)", "model": "a table"}.get(want, want)
        return f"{value!r} is not {want}"
    if kind == "missing":
        return "is required"
    return err["msg"]


def _problems_from(exc: ValidationError, source: str) -> list[str]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "value_error":
            # cross-field problems of a section: "key: message" lines
            msg = err["msg"].removeprefix("Value error, ")
            out.extend(f"{source}:{loc}.{line}" for line in msg.splitlines())
            continue
        if len(err["loc"]) == 1 and err["type"] == "extra_forbidden":
            out.append(f"{source}:{loc}: unknown section (sections: {', '.join(SECTION_TITLES)})")
            continue
        msg = _describe(err)
        if loc == "network.network_type" and err["type"] == "literal_error":
            msg += (
                f" — loratui trains LoRA and LoCon; {err.get('input')!r} cannot be trained here yet."
                " Set network.network_type to \"lora\" or \"locon\" to train"
            )
        out.append(f"{source}:{loc}: {msg}")
    return out


def profile_from_dict(data: dict[str, Any], source: str = "<profile>") -> Profile:
    """Validate a nested dict. Raises ProfileError with every problem at once."""
    if not isinstance(data, dict):
        raise ProfileError([f"{source}: a profile must be a table of sections"])
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(_problems_from(exc, source)) from None


def load_profile(path: str | Path, overrides: list[str] | None = None) -> Profile:
    """Read, apply ``--set`` overrides and validate a TOML profile."""
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ProfileError([f"{source}: no such file"]) from None
    except IsADirectoryError:
        raise ProfileError([f"{source}: is a folder, not a profile .toml file"]) from None
    except OSError as exc:
        raise ProfileError([f"{source}: cannot be read ({exc.strerror})"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProfileError([f"{source}: is not a text file (a profile is TOML text)"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError([f"{source}: is not valid TOML: {exc}"]) from None
    if overrides:
        apply_overrides(data, overrides)
    return profile_from_dict(data, source)


def parse_override(item: str) -> tuple[str, str, Any]:
    """``section.key=value`` → (section, key, value). The value is read as a
    TOML value when it parses as one (16, 1e-4, true, "x"), else as a string."""
    if "=" not in item:
        raise ProfileError([f"--set {item}: expected section.key=value"])
    dotted, raw = item.split("=", 1)
    dotted = dotted.strip()
    if dotted.count(".") != 1:
        raise ProfileError([f"--set {item}: the key must be section.key, e.g. network.network_dim=16"])
    section, key = dotted.split(".")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        section, key, value = parse_override(item)
        info = None
        try:
            info = setting_info(f"{section}.{key}")
        except KeyError:
            pass
        if info is not None and info.type == "str" and not isinstance(value, str):
            value = item.split("=", 1)[1]
        if info is not None and info.type == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        data.setdefault(section, {})[key] = value
    return data


def profile_to_toml(p: Profile, header: str | None = None) -> str:
    import tomli_w

    body = tomli_w.dumps(p.to_dict())
    if header:
        body = "".join(f"# {line}\n" for line in header.splitlines()) + "\n" + body
    return body


def save_profile(p: Profile, path: str | Path, header: str | None = None) -> Path:
    """Write atomically (temp file in the same folder, fsync, rename)."""
    from loratui.engine.fsutil import atomic_write_text

    path = Path(path)
    atomic_write_text(path, profile_to_toml(p, header))
    return path


def diff_profiles(a: Profile, b: Profile) -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every setting that differs."""
    out = []
    for s in settings():
        va, vb = a.get(s.dotted), b.get(s.dotted)
        if va != vb and not (isinstance(va, float) and isinstance(vb, float) and math.isclose(va, vb)):
            out.append((s.dotted, va, vb))
    return out


def resolve_paths(p: Profile) -> Profile:
    """A copy with ``~`` expanded in every path setting (files, folders, models)."""
    data = p.to_dict()
    for s in settings():
        if s.kind in ("dir", "file", "path", "model"):
            value = data[s.section].get(s.key)
            if isinstance(value, str) and value.startswith("~"):
                data[s.section][s.key] = str(Path(value).expanduser())
    return Profile.model_validate(data)
