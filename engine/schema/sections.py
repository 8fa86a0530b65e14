"""The profile's sections: every training setting, declared once (the model and
dataset sections in ``model_settings``, network and optimization in
``training_settings``, compute in ``compute``; output and the ``Profile`` here).

Each setting is a pydantic field made by :func:`~loratui.engine.schema.declare.setting`
carrying its default, bounds, help text, unit, its kohya_ss GUI and sd-scripts
names, the converter of kohya's values and the section it lives in. Choices that
are lists of things come from the registries (optimizers, schedulers, network
types, precisions) and the family registry.

This module is imported by the UI before its first frame: it must stay cheap
(no torch, no diffusers).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from loratui.engine.registries import SAVE_PRECISIONS
import loratui.engine.schema.coerce as coerce
from loratui.engine.samples.samplers import SAMPLERS
from loratui.engine.schema.compute import ComputeSettings
from loratui.engine.schema.declare import SettingInfo, _Section, choice, section_infos, setting
from loratui.engine.schema.model_settings import FAMILY_CHOICES, DatasetSettings, ModelSettings
from loratui.engine.schema.training_settings import DYNAMO_BACKENDS, NetworkSettings, OptimizationSettings

__all__ = ["FAMILY_CHOICES", "DYNAMO_BACKENDS", "LOG_WITH", "ModelSettings", "DatasetSettings", "NetworkSettings",
           "OptimizationSettings", "OutputSettings", "ComputeSettings", "Profile", "SECTION_TITLES", "settings",
           "setting_info"]

LOG_WITH = ("none", "tensorboard", "wandb", "all")

# --------------------------------------------------------------------------- sections


class OutputSettings(_Section):
    output_dir: str = setting("", "Folder the LoRA files are written to.", kohya="output_dir", kind="dir", required=True, label="Output dir")
    output_name: str = setting(
        "",
        "File name without extension: <name>.safetensors, <name>-000004.safetensors.",
        kohya="output_name",
        required=True,
        label="Output name",
    )
    save_every_n_epochs: int = setting(
        1,
        "Save an intermediate LoRA every N epochs. 0: only the final file.",
        kohya="save_every_n_epochs",
        ge=0,
        label="Save every N epochs",
    )
    save_every_n_steps: int = setting(
        0, "Save an intermediate LoRA every N steps. 0: off.", kohya="save_every_n_steps", sd_omit=0, ge=0,
        label="Save every N steps",
    )
    save_precision: choice(SAVE_PRECISIONS) = setting(  # type: ignore[valid-type]
        "fp16",
        "Precision of the saved weights. fp16 is what everyone uses.",
        kohya="save_precision",
        convert=coerce.save_precision,
        kohya_blank="empty: fp16",
        label="Save precision",
    )
    save_state: bool = setting(
        False,
        "Also save the full training state (optimizer, RNG, step) so the run can be resumed.",
        kohya="save_state",
        label="Save state",
    )
    # the kohya_ss GUI counts steps of states; sd-scripts' save_last_n_epochs_state counts saves,
    # as loratui does (engine/kohya converts; export writes both, import reads both)
    save_last_n_states: int = setting(
        2,
        "Keep this many saved states. 0: keep all.",
        kohya="save_last_n_steps_state",
        sd_scripts="save_last_n_epochs_state",
        special=True,
        ge=0,
        advanced=True,
        label="Save last N states",
    )
    resume: str = setting(
        "", "Resume from a saved state folder, or latest (the newest state of this output name). Empty: start fresh.", kohya="resume", kind="dir",
        label="Resume",
    )
    metadata_title: str = setting("", "Title stored in the LoRA (modelspec.title).", kohya="metadata_title", advanced=True, label="Metadata title")
    metadata_author: str = setting("", "Author stored in the LoRA.", kohya="metadata_author", advanced=True, label="Metadata author")
    metadata_description: str = setting(
        "", "Description stored in the LoRA.", kohya="metadata_description", advanced=True,
        label="Metadata description",
    )
    metadata_tags: str = setting("", "Comma-separated tags stored in the LoRA.", kohya="metadata_tags", advanced=True, label="Metadata tags")
    trigger_words: str = setting(
        "", "Words that activate the LoRA in a prompt (modelspec.trigger_phrase).",
        kohya="training_comment", convert=coerce.trigger_words, ss=True,
        label="Trigger words",
    )
    # -- samples: sample images while training, and logs other tools read
    sample_every_n_epochs: int = setting(
        0, "Render the sample prompts every N epochs with the LoRA being trained. 0: off.",
        kohya="sample_every_n_epochs", sd_omit=0, ge=0, label="Sample every N epochs",
    )
    sample_every_n_steps: int = setting(
        0, "Render the sample prompts every N steps. 0: off.", kohya="sample_every_n_steps", sd_omit=0, ge=0,
        label="Sample every N steps",
    )
    sample_prompts: str = setting(
        "",
        "Sample prompts: a .txt/.toml/.json prompt file in sd-scripts' format, or prompts typed here, one a line "
        "(options --n negative, --w/--h size, --d seed, --l CFG, --s steps, --g guidance, --ss sampler).",
        kohya="sample_prompts", convert=coerce.sample_prompts, special="export", label="Sample prompts",
    )
    sample_sampler: choice(SAMPLERS) = setting(  # type: ignore[valid-type]
        "euler_a",
        "Sampler of the sample images (sd-scripts' names): euler_a, ddim, dpmsolver++, euler, ... A prompt's --ss overrides it.",
        kohya="sample_sampler", convert=coerce.lower_text, kohya_blank="empty: euler_a", label="Sample sampler",
    )
    sample_at_first: bool = setting(
        False, "Also render the samples before the first step (the base model, for comparison).",
        kohya="sample_at_first", label="Sample at first",
    )
    log_with: choice(LOG_WITH) = setting(  # type: ignore[valid-type]
        "none",
        "Also log loss, learning rate, speed and samples to: tensorboard, wandb (needs the wandb package) or all. "
        "none: tensorboard when a logging dir is set, else nothing.",
        kohya="log_with", convert=coerce.lower_text, kohya_blank="empty: tensorboard when logging_dir is set",
        sd_omit="none", advanced=True, label="Log with",
    )
    logging_dir: str = setting(
        "", "Folder for TensorBoard logs; each run writes <dir>/<log prefix><date-time>. Empty: no TensorBoard.",
        kohya="logging_dir", kind="dir", advanced=True, label="Logging dir",
    )
    log_prefix: str = setting(
        "", "Prefix of the run's folder name in the logging dir (sd-scripts' log_prefix).", kohya="log_prefix",
        advanced=True, label="Log prefix",
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
    "compute": "Compute",
}


class Profile(BaseModel):
    """A complete, validated training profile."""

    model_config = ConfigDict(strict=True, extra="forbid", validate_assignment=True, defer_build=True)

    model: ModelSettings = Field(default_factory=ModelSettings)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    optimization: OptimizationSettings = Field(default_factory=OptimizationSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    compute: ComputeSettings = Field(default_factory=ComputeSettings)

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


_SETTINGS: tuple[SettingInfo, ...] | None = None


def settings() -> list[SettingInfo]:
    """Every setting, in declaration order."""
    global _SETTINGS
    if _SETTINGS is None:
        out: list[SettingInfo] = []
        for section in SECTION_TITLES:
            cls = Profile.model_fields[section].default_factory
            out += section_infos(section, cls)  # type: ignore[arg-type]
        _SETTINGS = tuple(out)
    return list(_SETTINGS)


def setting_info(dotted: str) -> SettingInfo:
    for s in settings():
        if s.dotted == dotted:
            return s
    raise KeyError(dotted)
