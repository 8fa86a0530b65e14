"""The samples of a run as a grid: one row per prompt, one column per epoch (or
step) it was rendered at. Arrow keys move, enter shows one sample large, escape
goes back. Pictures are half blocks (``tui.widgets.sample_view``)."""

from __future__ import annotations

from pathlib import Path

from rich.segment import Segment
from rich.style import Style
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Label

from loratui.tui.widgets.keybar import KeyBar
from loratui.tui.widgets.sample_view import SampleView, _load_rgb, halfblock_rows, sample_label

CELL_W, CELL_H = 18, 8  # one thumbnail: 18 × 16 pixels, plus a caption line


def when_label(ev) -> str:
    return f"e{ev.epoch}" if ev.epoch else (f"s{ev.step}" if ev.step else "start")


class SampleGrid:
    """Samples by (prompt index, time point); the newest file of a cell wins."""

    def __init__(self, samples: list) -> None:
        self.rows = sorted({ev.index for ev in samples})
        self.cols: list[tuple[int, int]] = []
        for ev in samples:
            k = (ev.epoch, ev.step)
            if k not in self.cols:
                self.cols.append(k)
        self.cells = {(self.rows.index(ev.index), self.cols.index((ev.epoch, ev.step))): ev for ev in samples}
        self.prompts = {ev.index: ev.prompt for ev in samples}

    def get(self, r: int, c: int):
        return self.cells.get((r, c))


class GridView(Widget, can_focus=True):
    DEFAULT_CSS = "GridView { width: 1fr; height: 1fr; }"

    def __init__(self, grid: SampleGrid, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.grid = grid
        self.row = 0
        self.col = max(0, len(grid.cols) - 1)  # the newest epoch first
        self._frame: list[Strip] = []
        self._key: tuple = ()

    def move(self, dr: int, dc: int) -> None:
        self.row = min(max(0, self.row + dr), len(self.grid.rows) - 1)
        self.col = min(max(0, self.col + dc), len(self.grid.cols) - 1)
        self.refresh()

    def _window(self, sel: int, n: int, fits: int) -> range:
        start = min(max(0, sel - fits + 1), max(0, n - fits)) if sel >= fits else 0
        return range(start, min(n, start + fits))

    def _build(self) -> list[Strip]:
        w, h = self.size.width, self.size.height
        fits_c, fits_r = max(1, (w - 6) // (CELL_W + 1)), max(1, h // (CELL_H + 1))
        cols = self._window(self.col, len(self.grid.cols), fits_c)
        rows = self._window(self.row, len(self.grid.rows), fits_r)
        lines: list[list[Segment]] = []
        for r in rows:
            block = [[Segment(f"#{self.grid.rows[r] + 1:<4} " if i == 0 else " " * 6, Style(bold=(r == self.row)))]
                     for i in range(CELL_H + 1)]
            for c in cols:
                ev = self.grid.get(r, c)
                pic = self._thumb(ev)
                selected = (r, c) == (self.row, self.col)
                for i in range(CELL_H):
                    block[i] += pic[i] + [Segment(" ")]
                cap = when_label(_Point(*self.grid.cols[c]))
                style = Style(reverse=True, bold=True) if selected else Style(dim=True)
                block[CELL_H] += [Segment(cap.center(CELL_W)[:CELL_W], style), Segment(" ")]
            lines += block
        return [Strip(line).crop(0, w) for line in lines[:h]]

    def _thumb(self, ev) -> list[list[Segment]]:
        if ev is None:
            return [[Segment("·".center(CELL_W) if i == CELL_H // 2 else " " * CELL_W, Style(dim=True))] for i in range(CELL_H)]
        try:
            return halfblock_rows(_load_rgb(ev.path, Path(ev.path).stat().st_mtime), CELL_W, CELL_H)
        except Exception:  # noqa: BLE001 - a missing or broken file is shown as such
            return [[Segment(("missing" if i == CELL_H // 2 else "").center(CELL_W), Style(dim=True))] for i in range(CELL_H)]

    def render_line(self, y: int) -> Strip:
        key = (self.row, self.col, self.size.width, self.size.height)
        if key != self._key:
            self._key, self._frame = key, self._build()
        return self._frame[y] if y < len(self._frame) else Strip.blank(self.size.width)


class _Point:
    def __init__(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step


class GalleryScreen(Screen):
    """Every sample of the run; ``samples``: SampleSaved events."""

    DEFAULT_CSS = """
    GalleryScreen #gallery-title { height: 1; padding: 0 1; }
    GalleryScreen #gallery-prompt { height: 1; padding: 0 1; color: $text-muted; }
    GalleryScreen #gallery-box { height: 1fr; border: round $primary 50%; }
    """
    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "back", id="gallery.back"),
        Binding("left", "move(0,-1)", "earlier", id="gallery.left", show=False),
        Binding("right", "move(0,1)", "later", id="gallery.right", show=False),
        Binding("up", "move(-1,0)", "prompt above", id="gallery.up", show=False),
        Binding("down", "move(1,0)", "prompt below", id="gallery.down", show=False),
        Binding("enter", "enlarge", "enlarge", id="gallery.enlarge"),
    ]

    def __init__(self, samples: list) -> None:
        super().__init__(id="gallery-screen")
        self.grid = SampleGrid(samples)

    def compose(self) -> ComposeResult:
        yield Label("", id="gallery-title", markup=False)
        yield Label("", id="gallery-prompt", markup=False)
        with Vertical(id="gallery-box"):
            yield GridView(self.grid, id="grid")
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one("#gallery-box").border_title = "samples ── ←→ epochs · ↑↓ prompts · enter enlarge"
        self.query_one(GridView).focus()
        self._caption()

    @property
    def view(self) -> GridView:
        return self.query_one(GridView)

    def selected(self):
        v = self.view
        return self.grid.get(v.row, v.col)

    def _caption(self) -> None:
        v, g = self.view, self.grid
        ev = self.selected()
        head = f" {len(g.rows)} prompts × {len(g.cols)} samplings"
        self.query_one("#gallery-title", Label).update(head + (f"  ── {sample_label(ev)}  {Path(ev.path).name}" if ev else ""))
        self.query_one("#gallery-prompt", Label).update(f" #{g.rows[v.row] + 1}: {g.prompts[g.rows[v.row]]}")

    def action_move(self, dr: int, dc: int) -> None:
        self.view.move(dr, dc)
        self._caption()

    def action_enlarge(self) -> None:
        ev = self.selected()
        if ev is not None:
            self.app.push_screen(EnlargedSample(ev))


class EnlargedSample(ModalScreen[None]):
    DEFAULT_CSS = """
    EnlargedSample { align: center middle; }
    EnlargedSample > Vertical { width: 90%; height: 95%; border: round $accent; background: $surface; }
    EnlargedSample #big-caption { height: auto; padding: 0 1; color: $text-muted; }
    """
    BINDINGS = [Binding("escape,enter,q", "app.pop_screen", "back", id="sample.back")]

    def __init__(self, ev) -> None:
        super().__init__()
        self.ev = ev

    def compose(self) -> ComposeResult:
        with Vertical():
            yield SampleView(self.ev.path, id="big")
            yield Label(f"{sample_label(self.ev)} · seed {self.ev.seed} · {self.ev.width}×{self.ev.height}\n{self.ev.prompt}",
                        id="big-caption", markup=False)

    def on_mount(self) -> None:
        self.query_one(Vertical).border_title = Path(self.ev.path).name
