"""A ``<repeats>_<name>`` kohya folder made from a flat folder of images (copied
or linked; the source is never changed)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from loratui.engine.imagefile import IMAGE_EXTENSIONS, DatasetError, probe_image
from loratui.engine.inspection.errors import InspectError
from loratui.engine.inspection.guidance import RepeatsSuggestion, suggest_repeats
from loratui.engine.inspection.repeats import check_repeats

LINK_MODES = ("copy", "hardlink", "symlink")


@dataclass
class MakeKohyaResult:
    folder: Path
    repeats: int
    images: int
    captions: int
    mode: str
    suggestion: RepeatsSuggestion
    skipped: list[str] = field(default_factory=list)  # "file: reason"


def flat_images(src: Path) -> list[Path]:
    try:
        return sorted(
            p for p in src.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
        )
    except OSError:
        return []


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise InspectError("name: empty", "give the class tokens / trigger word, e.g. --name mychar")
    if any(c in name for c in "/\\\0") or name in (".", ".."):
        raise InspectError(f"name: {name!r} cannot be part of a folder name (no / or \\)", "e.g. mychar")
    return name


def make_kohya_folder(
    src: str | Path,
    dest_root: str | Path,
    name: str,
    *,
    repeats: int | None = None,
    mode: str = "copy",
    caption_extension: str = ".txt",
    on_progress: Callable[[int, int], None] | None = None,
) -> MakeKohyaResult:
    """Make ``dest_root/<repeats>_<name>`` from the images directly in ``src``.

    Images are copied (``mode="copy"``), hard-linked (``"hardlink"``: no extra
    space, same filesystem only) or symlinked (``"symlink"``); caption files are
    always copied, so editing them later never changes ``src``. ``repeats``
    defaults to :func:`suggest_repeats` of the readable images. Unreadable images
    are left out (listed in ``skipped``). The folder is built under a temporary
    name and renamed into place when complete; an existing folder is never replaced."""
    from loratui.engine.fsutil import atomic_dir

    if mode not in LINK_MODES:
        raise InspectError(f"mode: {mode!r} is not one of {', '.join(LINK_MODES)}")
    name = _check_name(name)
    src = Path(src).expanduser()
    dest_root = Path(dest_root).expanduser()
    images = _source_images(src, dest_root)
    good, skipped = _readable(images)
    if not good:
        raise InspectError(f"none of the {len(images)} images in {src} can be read", "; ".join(skipped[:3]))
    suggestion = suggest_repeats(len(good))
    reps = suggestion.repeats if repeats is None else check_repeats(repeats)
    target = dest_root / f"{reps}_{name}"
    if os.path.lexists(target):
        raise InspectError(f"{target} already exists; nothing was written", "pick another --name, or remove that folder")
    if dest_root.exists() and not dest_root.is_dir():
        raise InspectError(f"{dest_root} is a file, not a folder", "give a folder for the dataset")
    names = {p.name.lower(): p for p in src.iterdir() if p.is_file()}
    pairs = [(p, names.get((p.stem + caption_extension).lower())) for p in good]
    fill = partial(_fill, pairs=pairs, mode=mode, dest_root=dest_root, caption_extension=caption_extension, on_progress=on_progress)
    try:
        dest_root.mkdir(parents=True, exist_ok=True)
        atomic_dir(target, fill, keep_file_modes=True)  # a copy keeps its image's mode, as cp does
    except InspectError:
        raise
    except OSError as exc:
        raise InspectError(
            f"{target}: cannot be written ({exc.strerror or exc}); nothing was left behind",
            "check the folder's permissions and free space",
        ) from None
    return MakeKohyaResult(
        folder=target,
        repeats=reps,
        images=len(good),
        captions=sum(1 for _, cap in pairs if cap is not None),
        mode=mode,
        suggestion=suggestion,
        skipped=skipped,
    )


def _source_images(src: Path, dest_root: Path) -> list[Path]:
    """The images directly in ``src``; InspectError when it is no folder of images
    or ``dest_root`` lies inside it."""
    if not src.exists():
        raise InspectError(f"{src} does not exist", "check the path of the folder of images")
    if not src.is_dir():
        raise InspectError(f"{src} is a file, not a folder", "give the folder that holds the images")
    s_real, d_real = os.path.realpath(src), os.path.realpath(dest_root)
    if d_real == s_real or d_real.startswith(s_real.rstrip(os.sep) + os.sep):
        raise InspectError(
            f"{dest_root} is inside the source folder {src}; the source is never changed",
            f"make it beside it, e.g. {src.parent / (src.name + '_kohya')}",
        )
    images = flat_images(src)
    if not images:
        sub = [p.name for p in src.iterdir() if p.is_dir() and flat_images(p)] if src.is_dir() else []
        hint = (
            f"its images are in sub-folders ({', '.join(sub[:3])}); give one of those" if sub else "put png/jpg/webp/bmp images in it"
        )
        raise InspectError(f"no images in {src}", hint)
    return images


def _readable(images: list[Path]) -> tuple[list[Path], list[str]]:
    """(images whose header reads, "file: reason" for the others)."""
    good: list[Path] = []
    skipped: list[str] = []
    for p in images:
        try:
            probe_image(p)
            good.append(p)
        except DatasetError as exc:
            skipped.append(f"{p.name}: {exc}")
    return good, skipped


def _fill(
    tmp: Path,
    *,
    pairs: list[tuple[Path, Path | None]],
    mode: str,
    dest_root: Path,
    caption_extension: str,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    """Put each (image, its caption file or None) into the folder being built."""
    for i, (p, cap) in enumerate(pairs, 1):
        out = tmp / p.name
        if mode == "copy":
            shutil.copy2(p, out)
        elif mode == "hardlink":
            try:
                os.link(p, out)
            except OSError as exc:
                raise InspectError(
                    f"cannot hard-link {p} into {dest_root} ({exc.strerror or exc})",
                    "hard links work only within one filesystem: use symbolic links or copies",
                ) from None
        else:
            os.symlink(os.path.realpath(p), out)
        if cap is not None:
            shutil.copyfile(cap, tmp / (p.stem + caption_extension))
        if on_progress:
            on_progress(i, len(pairs))
