"""Bytes/s and ETA of a download from its successive byte counts (smoothed)."""

from __future__ import annotations

import time

from loratui.engine.modelfiles import format_size


class Rate:
    def __init__(self, window: float = 0.5) -> None:
        self.window = window
        self.rate = 0.0
        self.mark: tuple[float, int] | None = None

    def update(self, done: int, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if self.mark is None or done < self.mark[1]:
            self.mark = (now, done)
            return self.rate
        t0, d0 = self.mark
        if now - t0 >= self.window:
            inst = (done - d0) / (now - t0)
            self.rate = inst if not self.rate else 0.7 * self.rate + 0.3 * inst
            self.mark = (now, done)
        return self.rate

    def eta(self, done: int, total: int) -> float | None:
        return (total - done) / self.rate if self.rate > 0 and total > done else None

    def text(self, done: int, total: int) -> str:
        """"1.2 GB / 6.9 GB  45 MB/s  ETA 2m07s" (rate and ETA once known)."""
        out = f"{format_size(done)} / {format_size(total)}" if total else format_size(done)
        if self.rate > 0:
            out += f"  {format_size(int(self.rate))}/s"
        eta = self.eta(done, total)
        if eta is not None:
            out += f"  ETA {duration(eta)}"
        return out


def duration(s: float) -> str:
    s = int(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"
