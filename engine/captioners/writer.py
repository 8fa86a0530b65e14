"""Writing caption files next to their images, without ever losing one.

``<image stem><caption_extension>`` (img001.png -> img001.txt), one line, UTF-8,
written atomically (engine.fsutil).  Modes for an image that already has a
caption:

- ``skip`` (default): leave it alone;
- ``overwrite``: replace it (only when the user chose this);
- ``append``: add the new tags that are not in it yet (compared ignoring case
  and underscores) to the end of its first line — the line sd-scripts reads —
  keeping the rest of the file as it was.

An empty (or whitespace-only) caption file counts as no caption: there is
nothing in it to lose.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from loratui.engine.captioners.common import SEPARATOR, WRITE_MODES, split_tags, tag_key
from loratui.engine.fsutil import atomic_write_text

# What happened to one caption file.
WRITTEN = "written"  # there was none (or an empty one)
OVERWRITTEN = "overwritten"
APPENDED = "appended"
UNCHANGED = "unchanged"  # overwrite/append had nothing new to write
SKIPPED = "skipped"  # mode skip and a caption exists


class CaptionFileError(Exception):
    """An existing caption that cannot be read safely (so it is left alone)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class WriteOutcome:
    path: Path
    status: str
    text: str  # the caption now in the file ("" when skipped)


def caption_path(image: str | Path, caption_extension: str = ".txt") -> Path:
    image = Path(image)
    return image.with_name(image.stem + caption_extension)


def read_caption(path: str | Path) -> str | None:
    """The text of a caption file; None when there is none. Raises
    CaptionFileError when it exists but cannot be read as UTF-8 text."""
    path = Path(path)
    if not os.path.lexists(path):
        return None
    if path.is_dir():
        raise CaptionFileError(path, "is a folder, not a caption file")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CaptionFileError(path, "is not UTF-8 text; left as it is") from None
    except OSError as exc:
        raise CaptionFileError(path, f"cannot be read ({exc.strerror or exc})") from None


def has_caption(image: str | Path, caption_extension: str = ".txt") -> bool:
    """True when the image has a non-empty caption file (or one we cannot read,
    which must be left alone just the same)."""
    try:
        text = read_caption(caption_path(image, caption_extension))
    except CaptionFileError:
        return True
    return bool(text and text.strip())


def merge_tags(existing: str, new_tags: list[str], separator: str = SEPARATOR) -> str | None:
    """``existing`` with the new tags its first line lacks appended to that line;
    None when there is nothing to add. Other lines are kept as they are."""
    lines = existing.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        return separator.join(new_tags) if new_tags else None
    have = {tag_key(t) for t in split_tags(lines[first])}
    add: list[str] = []
    for t in new_tags:
        k = tag_key(t)
        if k and k not in have:
            have.add(k)
            add.append(t)
    if not add:
        return None
    head = lines[first].rstrip()
    head = head.rstrip(",").rstrip() if head.rstrip().endswith(",") else head
    lines[first] = head + separator + separator.join(add)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    """Atomically; the file gets the old caption's mode, or the umask's (engine.fsutil)."""
    atomic_write_text(path, text.rstrip("\n") + "\n")


def write_caption(
    image: str | Path,
    caption: str | list[str],
    *,
    mode: str = "skip",
    caption_extension: str = ".txt",
    separator: str = SEPARATOR,
) -> WriteOutcome:
    """Write ``caption`` (text, or tags joined by ``separator``) for ``image``.
    Raises CaptionFileError when an existing caption cannot be read (it is kept)."""
    if mode not in WRITE_MODES:
        raise ValueError(f"mode must be one of {WRITE_MODES}, not {mode!r}")
    tags = split_tags(caption) if isinstance(caption, str) and mode == "append" else caption
    text = caption if isinstance(caption, str) else separator.join(caption)
    text = text.strip()
    path = caption_path(image, caption_extension)
    existing = read_caption(path)
    if existing is None or not existing.strip():
        _write(path, text)
        return WriteOutcome(path, WRITTEN, text)
    if mode == "skip":
        return WriteOutcome(path, SKIPPED, "")
    if mode == "overwrite":
        if existing.strip() == text:
            return WriteOutcome(path, UNCHANGED, text)
        _write(path, text)
        return WriteOutcome(path, OVERWRITTEN, text)
    merged = merge_tags(existing, list(tags), separator)
    if merged is None:
        return WriteOutcome(path, UNCHANGED, existing.strip())
    _write(path, merged)
    return WriteOutcome(path, APPENDED, merged)
