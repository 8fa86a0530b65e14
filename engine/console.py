"""Plain progress output for the headless commands (no rich, no textual)."""

from __future__ import annotations

import sys
import time
from collections.abc import Collection
from typing import TextIO

from loratui.engine.events import (
    CheckpointSaved,
    Event,
    Failed,
    Finished,
    LogEvent,
    Phase,
    PhaseChanged,
    RunPlanned,
    StepEvent,
    WarningEvent,
)
from loratui.engine.plan import DatasetReport, StepPlan


def fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def fmt_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def report_lines(report: DatasetReport, plan: StepPlan | None, shown: Collection[str] = ()) -> list[str]:
    """The dataset report and the step plan as lines; warnings in ``shown``
    (already printed as they came) are left out."""
    lines = [f"dataset  {report.root}"]
    for c in report.concepts + report.reg_concepts:
        tag = " (reg)" if c.is_reg else ""
        caps = "✓ captions" if not c.missing_captions else f"{c.missing_captions} without caption (uses '{c.name}')"
        lines.append(f"  {c.repeats:>3} × {c.name:<20} {c.images:>4} images  {caps}{tag}")
        for bad in c.unreadable:
            lines.append(f"        skipped: {bad}")
    if plan is not None:
        lines.append(f"steps    {plan.describe()}")
    for w in report.warnings:
        if str(w) not in shown:
            lines.append(f"warning  {w}")
    for p in report.problems:
        lines.append(f"error    {p}")
    return lines


TTY_REDRAW = 0.1  # seconds between redraws of a terminal's progress line, at least


class ConsolePrinter:
    """Prints events: a redrawn progress line on a terminal, a line every few
    seconds otherwise (logs, pipes)."""

    def __init__(self, out: TextIO | None = None, every: float = 5.0):
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.every = every
        self._last = 0.0
        self._drawn = 0.0  # the progress line's last redraw (a terminal)
        self._line_open = False
        self._warned: set[str] = set()  # warnings printed, not repeated in the dataset report

    def _print(self, text: str) -> None:
        if self._line_open:
            self.out.write("\n")
            self._line_open = False
        self.out.write(text + "\n")
        self.out.flush()

    def __call__(self, ev: Event) -> None:
        if isinstance(ev, RunPlanned):
            for line in report_lines(ev.report, ev.plan, self._warned):
                self._print(line)
            self._print(f"device   {ev.device}")
        elif isinstance(ev, PhaseChanged):
            if ev.phase == Phase.CACHING_LATENTS and ev.total:
                if ev.current in (0, ev.total) or not self.tty:
                    if ev.current in (0, ev.total):
                        self._print(f"caching latents {ev.current}/{ev.total}")
                else:
                    self._progress(f"caching latents {ev.current}/{ev.total}")
            elif ev.phase in ("loading_model", "preparing"):
                self._print(f"{ev.phase.replace('_', ' ')}: {ev.detail}" if ev.detail else ev.phase.replace("_", " "))
        elif isinstance(ev, StepEvent):
            pct = ev.step / ev.total_steps if ev.total_steps else 0
            width = 24
            bar = "█" * int(pct * width) + "░" * (width - int(pct * width))
            text = (
                f"epoch {ev.epoch}/{ev.epochs} step {ev.step}/{ev.total_steps} {bar} {pct:4.0%} "
                f"loss {ev.smoothed_loss:.4f} lr {ev.lr:.2e} {ev.its:.2f} it/s "
                f"{fmt_duration(ev.elapsed)} ETA {fmt_duration(ev.eta)}"
            )
            now = time.monotonic()
            if self.tty:
                # at most ~10 redraws a second: `watch --plain` replaying 100k steps over SSH drew each one
                if now - self._drawn >= TTY_REDRAW or ev.step == ev.total_steps:
                    self._drawn = now
                    self._progress(text)
            elif now - self._last >= self.every or ev.step == ev.total_steps:
                self._last = now
                self._print(text)
        elif isinstance(ev, CheckpointSaved):
            self._print(f"saved    {ev.path} ({fmt_size(ev.size)})")
        elif isinstance(ev, WarningEvent):
            self._warned.add(ev.message)
            self._print(f"warning  {ev.message}")
        elif isinstance(ev, LogEvent):
            pass
        elif isinstance(ev, Failed):
            self._print(f"error    {ev.message}")
            if ev.hint:
                self._print(f"hint     {ev.hint}")
            if ev.last_saved:
                self._print(f"last saved {ev.last_saved}")
        elif isinstance(ev, Finished):
            if ev.stopped_early:
                self._print(f"stopped after {ev.steps} steps in {fmt_duration(ev.elapsed)}")
            else:
                self._print(f"done     {ev.steps} steps in {fmt_duration(ev.elapsed)}")

    def _progress(self, text: str) -> None:
        self.out.write("\r" + text[:200] + "\033[K")
        self.out.flush()
        self._line_open = True
