"""The files a run writes, and the error a user can fix. No torch here."""

from __future__ import annotations

from pathlib import Path

from loratui.engine.schema import Profile


class TrainingError(Exception):
    """A problem the user can fix; ``hint`` says how."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint


def final_path(profile: Profile) -> Path:
    return Path(profile.output.output_dir) / f"{profile.output.output_name}.safetensors"


def epoch_path(profile: Profile, epoch: int) -> Path:
    return Path(profile.output.output_dir) / f"{profile.output.output_name}-{epoch:06d}.safetensors"


def step_path(profile: Profile, step: int) -> Path:
    return Path(profile.output.output_dir) / f"{profile.output.output_name}-step{step:08d}.safetensors"


def log_path(profile: Profile) -> Path:
    return Path(profile.output.output_dir) / f"{profile.output.output_name}.log"
