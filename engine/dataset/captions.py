"""Caption text: reading a caption file as the scan does, and the caption a
training step sees (dropout, tag shuffling after the kept tokens)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loratui.engine.schema import DatasetSettings


def read_caption(path: str | Path) -> tuple[str | None, str | None]:
    """(caption, warning). The caption is the first non-empty line, stripped;
    ``None`` when the file has no usable text. Non-UTF-8 files are decoded as
    Windows-1252 (or Latin-1) with a warning instead of failing."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, f"{path}: caption cannot be read ({exc.strerror or exc}); using the class tokens"
    warning = None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = raw.decode("utf-16")
        except UnicodeDecodeError:
            return None, f"{path}: caption is not readable text; using the class tokens"
        warning = f"{path}: caption is UTF-16; read it, but other tools expect UTF-8 — save it as UTF-8"
    elif b"\x00" in raw:
        return None, f"{path}: caption is not a text file; using the class tokens"
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            try:
                text = raw.decode("cp1252")
                enc = "Windows-1252"
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
                enc = "Latin-1"
            warning = f"{path}: caption is not UTF-8; read it as {enc} — check its accents and save it as UTF-8"
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line, warning
    return None, warning


def process_caption(
    caption: str,
    settings: "DatasetSettings | None" = None,
    rng: random.Random | None = None,
    *,
    shuffle: bool | None = None,
    keep_tokens: int | None = None,
    dropout_rate: float | None = None,
) -> str:
    """The caption a training step sees: dropped (→ "") with
    ``caption_dropout_rate``, else its comma-separated tags shuffled after the
    first ``keep_tokens`` (as sd-scripts). ``rng`` makes it reproducible; the
    keyword arguments override ``settings``."""
    if shuffle is None:
        shuffle = bool(settings and settings.shuffle_caption)
    if keep_tokens is None:
        keep_tokens = settings.keep_tokens if settings else 0
    if dropout_rate is None:
        dropout_rate = settings.caption_dropout_rate if settings else 0.0
    rng = rng or random.Random()
    if dropout_rate > 0 and rng.random() < dropout_rate:
        return ""
    if not shuffle:
        return caption
    tokens = [t.strip() for t in caption.strip().split(",")]
    tokens = [t for t in tokens if t]
    fixed, flex = tokens[:keep_tokens], tokens[keep_tokens:]
    rng.shuffle(flex)
    return ", ".join(fixed + flex)
