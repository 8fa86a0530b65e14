"""Editing one image's caption file: where it is, its text, saving it atomically."""

from __future__ import annotations

import os
from pathlib import Path

from loratui.engine.dataset import read_caption
from loratui.engine.imagefile import IMAGE_EXTENSIONS
from loratui.engine.inspection.errors import InspectError


def caption_file(image: str | Path, caption_extension: str = ".txt") -> Path:
    """Where ``image``'s caption lives: an existing file whose name differs only in
    case (as the scan accepts) or else ``<stem><caption_extension>``."""
    image = Path(image)
    want = image.stem + caption_extension
    exact = image.with_name(want)
    if exact.exists():
        return exact
    try:
        for e in os.scandir(image.parent):
            if e.name.lower() == want.lower() and e.is_file():
                return Path(e.path)
    except OSError:
        pass
    return exact


def load_caption(image: str | Path, caption_extension: str = ".txt") -> tuple[str, str | None]:
    """(the whole caption file's text, a warning or None) for editing. "" when
    there is no caption. A file that is not UTF-8 is read as the scan reads it,
    with a warning that saving writes UTF-8."""
    if not caption_extension:
        return "", "no caption extension is set (dataset.caption_extension), so images have no caption files"
    path = caption_file(image, caption_extension)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return "", None
    except OSError as exc:
        return "", f"{path}: cannot be read ({exc.strerror or exc})"
    try:
        return raw.decode("utf-8-sig").rstrip("\r\n"), None
    except UnicodeDecodeError:
        text, warning = read_caption(path)
        return text or "", warning or f"{path}: not UTF-8 text"


def save_caption(image: str | Path, text: str, caption_extension: str = ".txt") -> Path:
    """Write ``text`` as ``image``'s caption, atomically (the old file stays whole
    until the new one is complete; its permissions are kept). Returns the path."""
    from loratui.engine.fsutil import atomic_write_text

    image = Path(image)
    if not caption_extension.startswith(".") or len(caption_extension) < 2:
        raise InspectError(f"caption extension {caption_extension!r} must be a dot and a name", "e.g. .txt")
    if caption_extension.lower() in IMAGE_EXTENSIONS:
        raise InspectError(f"caption extension {caption_extension} is an image extension", "use .txt or .caption")
    if not image.parent.is_dir():
        raise InspectError(f"{image.parent} does not exist", "rescan the dataset")
    path = caption_file(image, caption_extension)
    if path.is_dir():
        raise InspectError(f"{path} is a folder, not a caption file", "rename that folder")
    body = "\n".join(line.rstrip() for line in text.strip().splitlines())
    try:
        atomic_write_text(path, body + "\n" if body else "")
    except OSError as exc:
        raise InspectError(f"{path}: cannot be written ({exc.strerror or exc})", "check the folder's permissions and free space") from None
    return path
