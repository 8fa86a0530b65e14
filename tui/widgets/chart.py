"""A small braille line chart: several series, a y-axis label column, no dependencies.

Each terminal cell holds a 2×4 braille dot grid, so a 60×6 chart plots 120×24
points.  The chart redraws only when the plotted dots change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from rich.text import Text
from textual.widget import Widget

# Dot bits of a braille cell, by (x, y) inside the cell.
_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))


def columns(values: Sequence[float], n: int, x_max: int | None = None) -> list[float | None]:
    """``n`` pixel columns from ``values`` (value i sits at x = i / x_max of the width);
    each column is the mean of the values falling in it; None where none does."""
    if n <= 0:
        return []
    count = len(values)
    span = max(x_max or count, count, 1)
    sums = [0.0] * n
    nums = [0] * n
    for i, v in enumerate(values):
        if v is None or not math.isfinite(v):
            continue
        x = min(n - 1, int(i * n / span))
        sums[x] += v
        nums[x] += 1
    return [sums[i] / nums[i] if nums[i] else None for i in range(n)]


def plot(
    series: Sequence[tuple[Sequence[float], str]],
    width: int,
    height: int,
    *,
    x_max: int | None = None,
    lo: float | None = None,
    hi: float | None = None,
    log: bool = False,
) -> tuple[list[list[tuple[int, str]]], float, float]:
    """Cells [row][col] = (dot bits, style) and the y range used."""
    px_w, px_h = width * 2, height * 4
    cols = [(columns(vals, px_w, x_max), style) for vals, style in series]

    def tr(v: float) -> float:
        return math.log10(v) if log and v > 0 else v

    finite = [tr(v) for c, _ in cols for v in c if v is not None and (not log or v > 0)]
    if not finite:
        return [[(0, "")] * width for _ in range(height)], 0.0, 0.0
    ylo = tr(lo) if lo is not None else min(finite)
    yhi = tr(hi) if hi is not None else max(finite)
    if yhi - ylo < 1e-12:
        yhi, ylo = yhi + 0.5 * (abs(yhi) or 1), ylo - 0.5 * (abs(ylo) or 1)
    grid = [[[0, ""] for _ in range(width)] for _ in range(height)]

    def ypix(v: float) -> int:
        f = (tr(v) - ylo) / (yhi - ylo)
        return min(px_h - 1, max(0, round((1 - f) * (px_h - 1))))

    for col, style in cols:
        prev = None
        for x, v in enumerate(col):
            if v is None or (log and v <= 0):
                prev = None
                continue
            y = ypix(v)
            y0, y1 = (y, y) if prev is None else (min(prev, y), max(prev, y))
            # fill the vertical gap to the previous point so the line is continuous
            for yy in range(y0, y1 + 1):
                cell = grid[yy // 4][x // 2]
                cell[0] |= _BITS[x % 2][yy % 4]
                cell[1] = style
            prev = y
    out = [[(c[0], c[1]) for c in row] for row in grid]
    back = (lambda v: 10**v) if log else (lambda v: v)
    return out, back(ylo), back(yhi)


def nice_bounds(lo: float, hi: float) -> tuple[float, float]:
    """Round a range outwards to 2 significant digits of its span, so it changes
    only now and then as values come in (a stable range means a stable picture)."""
    span = hi - lo
    if span <= 0:
        span = abs(hi) or 1.0
    step = 10 ** math.floor(math.log10(span)) / 10 * 2
    return math.floor(lo / step) * step, math.ceil(hi / step) * step


def fmt_axis(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000 or a < 0.01:
        return f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")
    if a >= 10:
        return f"{v:.0f}"
    return f"{v:.3f}".rstrip("0").rstrip(".") if a < 1 else f"{v:.2f}"


class LineChart(Widget):
    """Call ``set_series([(values, style), ...], x_max=...)``; it refreshes only on change."""

    DEFAULT_CSS = """
    LineChart { height: 1fr; min-height: 3; }
    """

    def __init__(
        self,
        *,
        log_scale: bool = False,
        label: Callable[[float], str] = fmt_axis,
        empty: str = "",
        floor: float | None = None,
        **kw,
    ):
        super().__init__(**kw)
        self.log_scale = log_scale
        self.floor = floor  # a fixed bottom of the y range (0 for a learning rate)
        self.label = label
        self.empty = empty
        self._series: list[tuple[Sequence[float], str]] = []
        self._x_max: int | None = None
        self._cells: list[list[tuple[int, str]]] = []
        self._range = (0.0, 0.0)
        self._key: object = None
        self.redraws = 0

    def set_series(self, series: list[tuple[Sequence[float], str]], x_max: int | None = None) -> bool:
        """Store and re-plot; returns True when the picture changed (and a redraw was asked)."""
        self._series, self._x_max = series, x_max
        return self._replot()

    def _replot(self) -> bool:
        w, h = self.size.width, self.size.height
        if w <= 0 or h <= 0:
            return False
        lw = self._label_width()
        lo = hi = None
        values = [v for vals, _ in self._series for v in vals if v is not None and math.isfinite(v)]
        if values and not self.log_scale:
            lo, hi = nice_bounds(min(values) if self.floor is None else self.floor, max(values))
        cells, lo, hi = plot(self._series, max(1, w - lw), h, x_max=self._x_max, lo=lo, hi=hi, log=self.log_scale)
        labels = (self.label(hi), self.label(lo)) if values else ("", "")
        key = (w, h, labels)
        if key == self._key and cells == self._cells:
            return False
        old = self._cells if key == self._key else None
        self._key = key
        self._cells, self._range = cells, (lo, hi)
        self._labels = labels
        self.redraws += 1
        if old is None or len(old) != len(cells):
            self.refresh()
        else:
            # only the cells that changed: a line growing to the right touches a few
            from textual.geometry import Region

            for r, (a, b) in enumerate(zip(old, cells)):
                changed = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
                if changed:
                    self.refresh(Region(lw + changed[0], r, changed[-1] - changed[0] + 1, 1))
        return True

    def _label_width(self) -> int:
        return 7

    def on_resize(self) -> None:
        self._key = None
        self._replot()

    def render(self) -> Text:
        w, h = self.size.width, self.size.height
        if not self._cells or not any(len(v) for v, _ in self._series):
            return Text(self.empty, style="dim italic")
        lw = self._label_width()
        top, bottom = getattr(self, "_labels", ("", ""))
        t = Text(no_wrap=True, overflow="crop")
        for r, row in enumerate(self._cells):
            label = top if r == 0 else bottom if r == h - 1 else ""
            t.append(f"{label:>{lw - 1}} "[:lw], style="dim")
            # one styled run per series stretch: blank cells join the run they sit in,
            # so a line costs a few escape sequences, not one per cell
            run_style, run = None, []
            for bits, style in row:
                if bits and style != run_style and run:
                    t.append("".join(run), style=run_style or "")
                    run = []
                if bits:
                    run_style = style
                run.append(chr(0x2800 + bits) if bits else " ")
            if run:
                t.append("".join(run).rstrip() if run_style is None else "".join(run), style=run_style or "")
            if r < len(self._cells) - 1:
                t.append("\n")
        return t
