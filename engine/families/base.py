"""The interface between the engine and a model family.

The declarative part (names, metadata strings, kohya_ss flags) is plain class
attributes, read without torch. The behaviour (detection from a checkpoint's
header, loading, text encoding, the training target, extra conditioning, LoRA
targets and kohya key names, the sampling pipeline) is methods that import
their libraries when called.
"""

from __future__ import annotations

from typing import ClassVar


class Family:
    name: ClassVar[str]  # model.family, e.g. "sdxl"
    label: ClassVar[str]  # shown to people, e.g. "SDXL"
    order: ClassVar[int] = 100  # position in lists (auto-detection tries families in this order)
    # ss_base_model_version as sd-scripts writes it; v-prediction models get "_v" appended where sd-scripts does
    ss_base_model_version: ClassVar[str]
    ss_v_suffix: ClassVar[bool] = True
    # modelspec.architecture (without the "/lora" suffix) for eps and v-prediction models
    modelspec_architecture: ClassVar[str]
    modelspec_architecture_v: ClassVar[str | None] = None
    modelspec_implementation: ClassVar[str] = "diffusers"
    # sd-scripts: the training script, and the boolean flags that select this family
    sd_scripts_script: ClassVar[str] = "train_network.py"
    sd_scripts_flags: ClassVar[tuple[str, ...]] = ()  # e.g. ("v2",) or ("sdxl",)
    default_resolution: ClassVar[int] = 512

    def base_model_version(self, v_pred: bool) -> str:
        return self.ss_base_model_version + ("_v" if v_pred and self.ss_v_suffix else "")

    def architecture(self, v_pred: bool) -> str:
        arch = self.modelspec_architecture_v if v_pred and self.modelspec_architecture_v else self.modelspec_architecture
        return arch + "/lora"

    def __repr__(self) -> str:
        return f"<family {self.name}>"
