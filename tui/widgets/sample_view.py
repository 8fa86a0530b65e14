"""Sample images in the terminal.

Where the terminal has graphics (``loratui.tui.graphics``: kitty's protocol or
sixel) the picture is textual-image's, in full resolution. Everywhere else
(tmux, screen, plain SSH) it is Unicode half blocks: each cell is ``▀`` with the
upper pixel as its foreground and the lower one as its background, so a cell
holds two pixels. Colours are truecolor; Textual sends them as 256 colours where
the terminal has no truecolor. Deterministic (snapshots). Either way the
picture is drawn only when it or the size changes, so a slow SSH link sees the
bytes of a picture once per new sample.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from rich.segment import Segment
from rich.style import Style
from textual.app import ComposeResult
from textual.strip import Strip
from textual.widget import Widget

from loratui.tui import graphics

UPPER_HALF = "▀"


HALFBLOCK_MOST = 512  # pixels a side: more than any terminal's cells show in half blocks (2 pixels a cell)


@lru_cache(maxsize=64)
def _load_rgb(path: str, mtime: float):
    """The image at half-block sizes at most (a 2048² sample is 12 MB decoded; 64 of them cached)."""
    from PIL import Image

    with Image.open(path) as im:
        im.thumbnail((HALFBLOCK_MOST, HALFBLOCK_MOST), reducing_gap=2.0)
        return im.convert("RGB")


def halfblock_rows(image, cols: int, rows: int) -> list[list[Segment]]:
    """``image`` (PIL) fitted into ``cols`` × ``rows`` cells (aspect kept,
    centred), one list of segments per row."""
    from PIL import Image

    cols, rows = max(1, cols), max(1, rows)
    w, h = image.size
    scale = min(cols / w, (rows * 2) / h)
    pw, ph = max(1, round(w * scale)), max(2, round(h * scale))
    ph += ph % 2
    small = image.resize((pw, ph), Image.Resampling.BOX)
    px = small.load()
    pad_l = (cols - pw) // 2
    top_pad = (rows - ph // 2) // 2
    blank = Segment(" " * cols)
    out: list[list[Segment]] = [[blank] for _ in range(top_pad)]
    for y in range(0, ph, 2):
        segs = [Segment(" " * pad_l)] if pad_l else []
        for x in range(pw):
            (r1, g1, b1), (r2, g2, b2) = px[x, y], px[x, y + 1]
            segs.append(Segment(UPPER_HALF, Style(color=f"#{r1:02x}{g1:02x}{b1:02x}", bgcolor=f"#{r2:02x}{g2:02x}{b2:02x}")))
        rest = cols - pad_l - pw
        if rest > 0:
            segs.append(Segment(" " * rest))
        out.append(segs)
    while len(out) < rows:
        out.append([blank])
    return out[:rows]


class SampleView(Widget):
    """One sample image, fitted to the widget; ``show(path)`` changes it."""

    DEFAULT_CSS = """
    SampleView { width: 1fr; height: 1fr; align: center middle; }
    SampleView > .picture { width: auto; height: auto; }
    """

    def __init__(self, path: str = "", *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.path = path
        self._rows: list[Strip] = []
        self._key: tuple = ()
        self.draws = 0  # how often the picture was rebuilt (tests: once per new sample)
        self.graphics = graphics.mode()  # kitty / sixel: a textual-image child shows it
        self._picture = None

    def compose(self) -> ComposeResult:
        if self.graphics == "halfblock":
            return
        from textual_image.widget import SixelImage, TGPImage

        cls = TGPImage if self.graphics == "kitty" else SixelImage
        self._picture = cls(classes="picture")
        self._set_picture()
        yield self._picture

    def _set_picture(self) -> None:
        try:
            self._picture.image = self._readable()
        except Exception:  # noqa: BLE001 - a broken PNG is not the app's end
            self._picture.image = None

    def _readable(self) -> str | None:
        try:
            return self.path if self.path and Path(self.path).is_file() else None
        except OSError:
            return None

    def show(self, path: str) -> None:
        if path != self.path:
            self.path = path
            self._key = ()
            if self._picture is not None:
                self.draws += 1
                self._set_picture()
            self.refresh()

    def _strips(self) -> list[Strip]:
        w, h = self.size.width, self.size.height
        if self._picture is not None:
            # the picture is the child's; this widget only says when there is none
            if self._picture.image is not None or h <= 0:
                return []
            text = ("no sample yet" if not self.path else
                    "cannot read the sample" if self._readable() else "sample file missing")
            return [Strip([Segment(text[:w].center(w), Style(dim=True))])]
        try:
            mtime = Path(self.path).stat().st_mtime if self.path else 0.0
        except OSError:
            mtime = -1.0
        key = (self.path, mtime, w, h)
        if key != self._key:
            self._key = key
            self.draws += 1
            if not self.path or mtime < 0 or w <= 0 or h <= 0:
                text = "no sample yet" if not self.path else "sample file missing"
                self._rows = [Strip([Segment(text[:w].center(w), Style(dim=True))])] if h > 0 else []
            else:
                try:
                    rows = halfblock_rows(_load_rgb(self.path, mtime), w, h)
                except Exception:  # noqa: BLE001 - a broken PNG is not the app's end
                    rows = [[Segment("cannot read the sample"[:w])]]
                self._rows = [Strip(r) for r in rows]
        return self._rows

    def render_line(self, y: int) -> Strip:
        rows = self._strips()
        return rows[y] if y < len(rows) else Strip.blank(self.size.width)


def sample_label(ev) -> str:
    """``epoch 3 · #1``, ``step 120 · #2`` or ``before training · #1`` for a SampleSaved."""
    when = f"epoch {ev.epoch}" if ev.epoch else (f"step {ev.step}" if ev.step else "before training")
    return f"{when} · #{ev.index + 1}"
