"""Concept folders' repeats: find a folder, rename ``10_x`` → ``6_x``, apply a
balancing plan — each refusing rather than replacing another folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from loratui.engine.dataset import CONCEPT_DIR_RE, parse_concept_dir
from loratui.engine.inspection.errors import InspectError
from loratui.engine.inspection.guidance import MAX_REPEATS


def parse_concept_folder(path: str | Path) -> tuple[int, str]:
    """(repeats, class tokens) of a ``<repeats>_<name>`` folder. Raises InspectError."""
    name = Path(path).name
    parsed = parse_concept_dir(name)
    if parsed is None:
        raise InspectError(f"{path}: the folder name has no <repeats>_ prefix", f"rename it e.g. to 10_{name}")
    return parsed


def find_concept(root: str | Path, spec: str) -> Path:
    """The concept folder under ``root`` that ``spec`` names: its folder name
    ("10_mychar"), its class tokens ("mychar") or a path. Raises InspectError."""
    root = Path(root).expanduser()
    p = Path(spec).expanduser()
    if p.is_absolute() or os.sep in spec:
        cand = p if p.is_absolute() else root / p
        if cand.is_dir():
            return cand
        if p.is_dir():
            return p
        raise InspectError(f"{spec}: no such concept folder", f"see the concept folders with `loratui dataset {root}`")
    if not root.is_dir():
        raise InspectError(f"{root} is not a folder", "give the folder holding the <repeats>_<name> folders")
    folders = sorted(e for e in root.iterdir() if e.is_dir() and not e.name.startswith(".") and CONCEPT_DIR_RE.match(e.name))
    direct = [f for f in folders if f.name == spec]
    if direct:
        return direct[0]
    by_name = [f for f in folders if parse_concept_dir(f.name)[1] == spec]  # type: ignore[index]
    if len(by_name) == 1:
        return by_name[0]
    known = ", ".join(f.name for f in folders) or "none"
    if len(by_name) > 1:
        raise InspectError(
            f"{spec!r} names {len(by_name)} folders in {root} ({', '.join(f.name for f in by_name)})",
            "give the full folder name",
        )
    raise InspectError(f"no concept folder {spec!r} in {root} (there are: {known})", "give a folder name from the list")


def check_repeats(repeats: Any) -> int:
    if isinstance(repeats, bool) or not isinstance(repeats, int):
        try:
            repeats = int(str(repeats).strip())
        except ValueError:
            raise InspectError(f"repeats: {repeats!r} is not a whole number", "e.g. 10") from None
    if repeats < 1 or repeats > MAX_REPEATS:
        raise InspectError(f"repeats: {repeats} is out of range", f"use 1 to {MAX_REPEATS}")
    return repeats


def repeats_target(folder: str | Path, repeats: int) -> Path:
    """The folder ``folder`` becomes with ``repeats`` (no change on disk)."""
    repeats = check_repeats(repeats)
    _old, name = parse_concept_folder(folder)
    return Path(folder).with_name(f"{repeats}_{name}")


def set_repeats(folder: str | Path, repeats: int) -> Path:
    """Rename the concept folder ``10_x`` → ``<repeats>_x``; returns the new path
    (the same one when nothing changes). Refuses when the target exists."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InspectError(f"{folder}: no such concept folder", "rescan the dataset")
    target = repeats_target(folder, repeats)
    if target == folder:
        return folder
    if os.path.lexists(target):
        raise InspectError(
            f"{target} already exists; {folder.name} was not renamed",
            "move its images into one folder first, or pick another number",
        )
    try:
        os.rename(folder, target)
    except OSError as exc:
        raise InspectError(f"{folder}: cannot be renamed to {target.name} ({exc.strerror or exc})") from None
    return target


def apply_balance(plan: dict[Path, tuple[int, int]]) -> dict[Path, Path]:
    """Rename every folder of ``plan`` (``DatasetInspection.balance_plan()``) to its
    balanced repeats. All targets are checked before anything is renamed."""
    moves: dict[Path, Path] = {}
    for folder, (_old, new) in plan.items():
        folder = Path(folder)
        if not folder.is_dir():
            raise InspectError(f"{folder}: no such concept folder", "rescan the dataset")
        target = repeats_target(folder, new)
        if target != folder:
            moves[folder] = target
    sources = set(moves)
    for src, dst in moves.items():
        if os.path.lexists(dst) and dst not in sources:
            raise InspectError(f"{dst} already exists; nothing was renamed", f"merge it with {src.name} first")
        if dst in sources:
            raise InspectError(
                f"{src.name} → {dst.name} would replace another concept folder being renamed; nothing was renamed",
                "rename these folders by hand",
            )
    done: dict[Path, Path] = {}
    for src, dst in moves.items():
        try:
            done[src] = set_repeats(src, parse_concept_folder(dst)[0])
        except InspectError as exc:
            undo = ", ".join(f"{d.name} (was {s.name})" for s, d in done.items())
            raise InspectError(exc.message + (f"; already renamed: {undo}" if undo else ""), exc.hint) from None
    return done
