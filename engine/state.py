"""Training state: save it, find it, check it against a profile, load it back.

A state is a folder ``<output_dir>/<output_name>-state-step00000123/`` holding
``lora.safetensors`` (fp32 weights), ``training.pt`` (optimizer, scheduler,
grad scaler and every RNG state) and ``state.json`` (epoch, step, the position
inside the epoch and the profile it ran with).  It is built under a temporary
name and renamed when complete; older states are pruned only afterwards.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.schema import Profile, diff_profiles, profile_from_dict

STATE_VERSION = 1
STATE_RE = re.compile(r"-state-step(\d{8})$")

# Settings that may change between the interrupted run and its resume: they do
# not change what is trained, only where/how often it is written.
HARMLESS_ON_RESUME = ("output.", "dataset.cache_latents")


class StateError(Exception):
    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


@dataclass
class TrainingState:
    folder: Path
    epoch: int  # the epoch to continue in (1-based)
    batch_in_epoch: int  # batches of that epoch already trained
    step: int  # optimizer steps done
    profile: dict[str, Any]
    extra: dict[str, Any]


def state_dir(profile: Profile, step: int) -> Path:
    return Path(profile.output.output_dir) / f"{profile.output.output_name}-state-step{step:08d}"


def list_states(profile: Profile) -> list[Path]:
    """Complete state folders of this output name, oldest first."""
    out = Path(profile.output.output_dir)
    if not out.is_dir():
        return []
    prefix = f"{profile.output.output_name}-state-step"
    found = []
    for p in out.iterdir():
        m = STATE_RE.search(p.name)
        if p.is_dir() and p.name.startswith(prefix) and m and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def write_state(
    folder: Path,
    *,
    lora_sd: dict,
    training: dict[str, Any],
    epoch: int,
    batch_in_epoch: int,
    step: int,
    profile: Profile,
    extra: dict[str, Any] | None = None,
) -> Path:
    import torch
    from safetensors.torch import save_file

    from engine.fsutil import atomic_dir

    def fill(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in lora_sd.items()}, str(tmp / "lora.safetensors"))
        torch.save(training, tmp / "training.pt")
        meta = {
            "version": STATE_VERSION,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "step": step,
            "profile": profile.to_dict(),
            "extra": extra or {},
        }
        (tmp / "state.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")

    return atomic_dir(folder, fill)


def prune_states(profile: Profile, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` states (0 = keep all)."""
    if keep <= 0:
        return []
    states = list_states(profile)
    doomed = states[:-keep]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def read_state(folder: str | Path) -> TrainingState:
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise StateError(f"{folder}: no such state folder", "point output.resume / --resume at a <name>-state-stepNNNNNNNN folder")
    meta_path = folder / "state.json"
    if not folder.is_dir() or not meta_path.is_file():
        raise StateError(f"{folder}: not a loratui state folder (no state.json)",
                         "point --resume at a <name>-state-stepNNNNNNNN folder written with save_state")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("version") != STATE_VERSION:
            raise StateError(f"{folder}: state version {meta.get('version')} is not supported (expected {STATE_VERSION})")
        for name in ("lora.safetensors", "training.pt"):
            if not (folder / name).is_file():
                raise StateError(f"{folder}: {name} is missing; the state is incomplete", "resume from an older state")
        return TrainingState(
            folder=folder,
            epoch=int(meta["epoch"]),
            batch_in_epoch=int(meta["batch_in_epoch"]),
            step=int(meta["step"]),
            profile=meta["profile"],
            extra=meta.get("extra", {}),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise StateError(f"{folder}/state.json is damaged ({exc})", "resume from an older state") from None


def resume_differences(state: TrainingState, profile: Profile) -> list[str]:
    """Settings that changed since the state was saved and that change training."""
    try:
        old = profile_from_dict(state.profile, f"{state.folder}/state.json")
    except Exception as exc:  # noqa: BLE001 - a state from a different schema
        return [f"the state's profile cannot be read: {exc}"]
    out = []
    for dotted, was, now in diff_profiles(old, profile):
        if dotted.startswith(HARMLESS_ON_RESUME):
            continue
        out.append(f"{dotted}: {was!r} in the state, {now!r} now")
    return out


def load_training(folder: Path) -> dict[str, Any]:
    import torch

    try:
        return torch.load(folder / "training.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise StateError(f"{folder}/training.pt cannot be read ({type(exc).__name__})", "resume from an older state") from None
