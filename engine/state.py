"""Training state: save it, find it, check it against a profile, load it back.

A state is a folder ``<output_dir>/<output_name>-state-step00000123/`` holding
``lora.safetensors`` (fp32 weights), ``training.pt`` (optimizer, scheduler,
grad scaler and every RNG state) and ``state.json`` (epoch, step, the position
inside the epoch, the profile it ran with and a fingerprint of the dataset).
It is built under a temporary name and renamed when complete; older states are
pruned only afterwards, so a kill -9 at any moment leaves the newest complete
state resumable.

``--resume latest`` (or ``output.resume = "latest"``) picks the newest complete
state of the profile's output name.

While a run writes into an output folder it holds a shared lock on
``<output_dir>/.loratui.lock``; a run that finds no other live run there
removes the leftovers of interrupted saves before it starts (see
:class:`OutputDirLock`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratui.engine.schema import Profile, diff_profiles, profile_from_dict

STATE_VERSION = 1
STATE_MARK = "-state-step"
LATEST = "latest"
LOCK_NAME = ".loratui.lock"

# Settings that may change between the interrupted run and its resume: they do
# not change what is trained, only where/how often it is written or how much
# memory it takes.
HARMLESS_ON_RESUME = (
    "output.",
    "dataset.cache_latents",
    "optimization.gradient_checkpointing",
    "optimization.max_bad_steps",
    "dataset.cache_text_encoder_outputs",
    "optimization.blocks_to_swap",
    "optimization.cpu_offload_checkpointing",
    "compute.",  # another number of processes continues from the same place in the data (Checkpointer._reshard)
)
MAX_LISTED = 12


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


# --------------------------------------------------------------------------- names


def state_dir(profile: Profile, step: int) -> Path:
    return Path(profile.output.output_dir) / f"{profile.output.output_name}{STATE_MARK}{step:08d}"


def _state_step(name: str, output_name: str) -> int | None:
    prefix = f"{output_name}{STATE_MARK}"
    if not name.startswith(prefix):
        return None
    digits = name[len(prefix):]
    return int(digits) if len(digits) == 8 and digits.isdigit() else None


def list_states(profile: Profile) -> list[Path]:
    """Complete state folders of this output name, oldest first (a folder
    without its state.json is not complete)."""
    out = Path(profile.output.output_dir).expanduser()
    if not profile.output.output_name or not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        step = _state_step(p.name, profile.output.output_name)
        if step is not None and p.is_dir() and (p / "state.json").is_file():
            found.append((step, p))
    return [p for _, p in sorted(found)]


def latest_state(profile: Profile) -> Path | None:
    states = list_states(profile)
    return states[-1] if states else None


def resolve_resume(spec: str, profile: Profile) -> Path:
    """The state folder ``spec`` names: a path, or ``latest`` for the newest
    complete state of this profile's output name. StateError when none."""
    if spec.strip().lower() == LATEST:
        found = latest_state(profile)
        if found is None:
            raise StateError(
                f"latest: no saved state of {profile.output.output_name!r} in {profile.output.output_dir}",
                "states are saved on stop and, with output.save_state, at every save point; start without resume",
            )
        return found
    return Path(spec).expanduser()


# --------------------------------------------------------------------------- write / prune


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
    """Write the state folder atomically (temporary folder, fsync, rename)."""
    import torch
    from safetensors.torch import save_file

    from loratui.engine.fsutil import atomic_dir

    def fill(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in lora_sd.items()}, str(tmp / "lora.safetensors"))
        # Through a Python file object: a full disk then raises OSError(ENOSPC)
        # instead of torch's opaque "unexpected pos" RuntimeError.
        with open(tmp / "training.pt", "wb") as fh:
            torch.save(training, fh)
        meta = {
            "version": STATE_VERSION,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "step": step,
            "saved_at": time.time(),
            "profile": profile.to_dict(),
            "extra": extra or {},
        }
        (tmp / "state.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")

    return atomic_dir(folder, fill)


def prune_states(profile: Profile, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete states (0 = keep all).
    Call it only after the newest one is complete."""
    if keep <= 0:
        return []
    from loratui.engine.fsutil import TMP_PREFIX

    states = list_states(profile)
    doomed = states[:-keep]
    for p in doomed:
        # Renamed first (atomic), then deleted: a kill in the middle leaves a
        # leftover the next run removes, never a half-deleted state that
        # still looks complete.
        trash = p.with_name(f"{TMP_PREFIX}del-{p.name}")
        try:
            os.replace(p, trash)
        except OSError:
            continue
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


# --------------------------------------------------------------------------- read / check


def read_state(folder: str | Path) -> TrainingState:
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise StateError(
            f"{folder}: no such state folder",
            "point output.resume / --resume at a <name>-state-stepNNNNNNNN folder, or use 'latest'",
        )
    meta_path = folder / "state.json"
    if not folder.is_dir() or not meta_path.is_file():
        raise StateError(
            f"{folder}: not a loratui state folder (no state.json)",
            "point --resume at a <name>-state-stepNNNNNNNN folder written with save_state, or use 'latest'",
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
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
            extra=meta.get("extra") or {},
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise StateError(f"{folder}/state.json is damaged ({exc})", "resume from an older state") from None


def resume_differences(state: TrainingState, profile: Profile) -> list[str]:
    """Settings that changed since the state was saved and that change training
    (``output.*``, cache and memory settings may change)."""
    try:
        old = profile_from_dict(state.profile, f"{state.folder}/state.json")
    except Exception as exc:  # noqa: BLE001 - a state from a different schema
        return [f"the state's profile cannot be read: {exc}"]
    out = []
    for dotted, was, now in diff_profiles(old, profile):
        if dotted.startswith(HARMLESS_ON_RESUME):
            continue
        out.append(f"{dotted}: {was!r} in the state, {now!r} now")
    if len(out) > MAX_LISTED:
        out = out[:MAX_LISTED] + [f"... and {len(out) - MAX_LISTED} more"]
    return out


def dataset_fingerprint(items: list, total_steps: int, processes: int = 1) -> dict[str, Any]:
    """What the batches of a run depend on: every item's folder, file name,
    size, caption, repeats and bucket (cheap: one stat per image)."""
    h = hashlib.sha256()
    for it in items:
        try:
            size = it.path.stat().st_size
        except OSError:
            size = -1
        row = [Path(it.folder).name, it.path.name, size, it.caption, it.repeats, list(it.bucket), it.is_reg]
        h.update(json.dumps(row, ensure_ascii=False).encode("utf-8"))
    return {
        "images": len(items),
        "samples": sum(it.repeats for it in items),
        "total_steps": total_steps,
        "processes": processes,
        "digest": h.hexdigest()[:32],
    }


def dataset_differences(state: TrainingState, now: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(problems, warnings) comparing the dataset the state saw with today's."""
    was = state.extra.get("dataset")
    if not isinstance(was, dict) or was.get("digest") == now["digest"]:
        return [], []
    same_world = (was.get("processes") or 1) == (now.get("processes") or 1)  # else the steps differ by design
    if (same_world and was.get("total_steps") != now["total_steps"]) or was.get("samples") != now["samples"]:
        return [
            f"dataset: {was.get('images')} images ({was.get('samples')} samples per epoch, {was.get('total_steps')} steps) "
            f"when {state.folder.name} was saved, {now['images']} images ({now['samples']} samples, "
            f"{now['total_steps']} steps) now — restore the dataset as it was, or start a new run without resume"
        ], []
    return [], [
        "dataset: images or captions changed since the state was saved; the run continues, "
        "but it will not end exactly as an uninterrupted run would"
    ]


def load_training(folder: Path) -> dict[str, Any]:
    import torch

    try:
        return torch.load(folder / "training.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise StateError(f"{folder}/training.pt cannot be read ({type(exc).__name__})", "resume from an older state") from None


# --------------------------------------------------------------------------- the output folder


class OutputDirLock:
    """Marks a run writing into an output folder, and cleans up after crashes.

    ``acquire()`` takes an exclusive ``flock`` on ``<folder>/.loratui.lock``
    when it can: then no other run is writing there, and the leftovers of
    interrupted saves (``.loratui-tmp-*``) are safe to remove.  A state folder
    that a kill left renamed aside (``.loratui-tmp-old-<name>`` with no
    ``<name>``) is put back first.  The lock is then downgraded to a shared
    one, held until ``release()`` (or the process's death: the kernel drops
    it, so a kill -9 never leaves a stale lock).  Where ``flock`` does not
    exist, only leftovers older than an hour are removed."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._fh = None
        self.removed: list[Path] = []
        self.restored: list[Path] = []

    def acquire(self) -> "OutputDirLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            self._cleanup(min_age=3600.0)
            return self
        try:
            self._fh = open(self.folder / LOCK_NAME, "a+b")  # noqa: SIM115 - held for the run
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another run writes here now: leave its temporary files alone
            pass
        except OSError:  # no locks on this file system (some network shares): only old leftovers
            self.release()
            self._cleanup(min_age=3600.0)
            return self
        else:
            self._cleanup(min_age=0.0)
        with contextlib.suppress(OSError):
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_SH)
        return self

    @classmethod
    def put_back(cls, folder: str | Path) -> list[Path]:
        """Only the repair (no deletion), when no other run writes in ``folder``:
        a resume calls it before it looks for the newest state."""
        lock = cls(folder)
        try:
            import fcntl

            lock._fh = open(lock.folder / LOCK_NAME, "a+b")  # noqa: SIM115
            fcntl.flock(lock._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (ImportError, OSError):
            lock.release()
            return []
        try:
            lock._put_back(min_age=0.0)
        finally:
            lock.release()
        return lock.restored

    def _put_back(self, min_age: float) -> None:
        from loratui.engine.fsutil import TMP_PREFIX

        old_prefix = TMP_PREFIX + "old-"
        now = time.time()
        for p in sorted(self.folder.iterdir()):
            if not p.name.startswith(old_prefix):
                continue
            target = self.folder / p.name[len(old_prefix):]
            with contextlib.suppress(OSError):
                if min_age > 0 and now - p.stat().st_mtime <= min_age:
                    continue
            if p.is_dir() and (p / "state.json").is_file() and not target.exists():
                with contextlib.suppress(OSError):
                    os.replace(p, target)
                    self.restored.append(target)

    def _cleanup(self, min_age: float) -> None:
        from loratui.engine.fsutil import TMP_PREFIX, remove_leftovers

        now = time.time()
        self._put_back(min_age)
        if min_age <= 0:
            self.removed = remove_leftovers(self.folder)
            return
        for p in self.folder.iterdir():
            if p.name.startswith(TMP_PREFIX):
                with contextlib.suppress(OSError):
                    if now - p.stat().st_mtime > min_age:
                        shutil.rmtree(p) if p.is_dir() else p.unlink()
                        self.removed.append(p)

    def release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None
