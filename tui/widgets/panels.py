"""Dashboard pieces rendered as text: the status line, the GPU panel, the saved list."""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual.widgets import Static

from loratui.engine.console import fmt_duration, fmt_size
from loratui.engine.gpu import GB, GpuSample
from loratui.engine.events import Phase
from loratui.engine.runstate import FAILED, PHASE_TITLES, STARTING, STOPPED, RunState

PHASE_STYLES = {
    Phase.TRAINING: "bold green",
    Phase.PAUSED: "bold yellow",
    Phase.DONE: "bold green",
    FAILED: "bold red",
    STOPPED: "bold yellow",
    Phase.SAVING: "bold cyan",
}


def bar(fraction: float, width: int) -> str:
    fraction = min(1.0, max(0.0, fraction))
    full = int(fraction * width)
    return "█" * full + "░" * (width - full)


def status_text(state: RunState, width: int = 120) -> Text:
    """'TRAINING  epoch 3/10  step 1,245/1,840  ████░░ 68%  2.41 it/s  8m36s  ETA 4m07s'."""
    phase = state.display_phase
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(PHASE_TITLES.get(phase, phase.upper().replace("_", " ")), style=PHASE_STYLES.get(phase, "bold cyan"))
    if state.requested:
        t.append(f" ({state.requested})", style="yellow")
    if phase == FAILED and state.failed is not None:
        t.append("  " + state.failed.message.splitlines()[0], style="red")
        return t
    if phase in (Phase.DONE, STOPPED) and state.finished is not None:
        f = state.finished
        if f.path:
            t.append(f"  {f.path}", style="bold")
        else:
            last = f.summary.get("last_saved", "")
            t.append("  " + (f"last saved {last}" if last else "nothing saved"))
        t.append(f"  {f.steps:,} steps in {fmt_duration(f.elapsed)}", style="dim")
        return t
    if phase in (STARTING, Phase.PREPARING, Phase.LOADING_MODEL, Phase.COMPILING, Phase.SAVING) or (
        phase == Phase.CACHING_LATENTS and not state.total
    ):
        if state.detail:
            t.append("  " + state.detail, style="dim")
        if phase != Phase.SAVING or not state.total_steps:
            return t
    if phase == Phase.CACHING_LATENTS:
        frac = state.current / state.total if state.total else 0
        t.append(f"  {state.current:,}/{state.total:,}  ")
        t.append(bar(frac, 20), style="cyan")
        t.append(f" {frac:4.0%}")
        return t
    head = t.copy()
    full = _progress(head.copy(), state, phase, width, compact=False)
    return full if len(full.plain) <= width - 2 else _progress(head, state, phase, width, compact=True)


def _progress(t: Text, state: RunState, phase: str, width: int, compact: bool) -> Text:
    total = state.total_steps
    frac = state.step / total if total else 0.0
    if compact:
        t.append(f"  ep {state.epoch}/{state.epochs}  {state.step:,}/{total:,}  ")
    else:
        t.append(f"  epoch {state.epoch}/{state.epochs}  step {state.step:,}/{total:,}  ")
    bar_w = 8 if compact else max(8, min(28, width - len(t.plain) - 58))
    t.append(bar(frac, bar_w), style="green" if phase != Phase.PAUSED else "yellow")
    t.append(f" {frac:4.0%}")
    if state.losses:
        t.append(f"  loss {state.smoothed:.3f}" if compact else f"  loss {state.smoothed:.4f}")
    if state.its >= 100:
        t.append(f"  {state.its:.0f} it/s")
    else:
        t.append(f"  {state.its:.1f} it/s" if compact else f"  {state.its:.2f} it/s")
    if not compact:
        t.append(f"  {fmt_duration(state.elapsed)}", style="dim")
    if state.norms is not None and not compact:
        scaled, mean, top = state.norms
        t.append(f"  max-norm {scaled} scaled, mean {mean:.3g} max {top:.3g}", style="dim")
    if state.eta and phase == Phase.TRAINING:
        t.append(f"  ETA {fmt_duration(state.eta)}")
    return t


def _picked(samples: list[GpuSample], indices: list[int]) -> list[GpuSample]:
    by_index = {s.index: s for s in samples}
    return [by_index[i] for i in indices if i in by_index]


def gpus_text(samples: list[GpuSample], width: int = 36) -> Text:
    """Every GPU of a multi-GPU run, a line each: number, use, memory, temperature."""
    t = Text(no_wrap=True, overflow="crop")
    names = {s.short_name() for s in samples}
    t.append((f"{len(samples)} × {names.pop()}" if len(names) == 1 else f"{len(samples)} GPUs")[: width - 1] + "\n", style="bold")
    bw = max(3, width - 31)
    for s in samples:
        t.append(f"{s.index:>2} ", style="dim")
        if s.util is not None:
            t.append(bar(s.util / 100, bw), style="green")
            t.append(f" {s.util:3d}%")
        else:
            t.append("n/a".ljust(bw + 5), style="dim")
        mem = f" {s.mem_used / GB:4.1f}/{s.mem_total / GB:.0f}G" if s.mem_fraction is not None else " n/a"
        t.append(mem, style="red" if (s.mem_fraction or 0) >= 0.9 else "")
        t.append(f" {s.temp}°C" if s.temp is not None else "", style="dim")
        t.append("\n")
    t.rstrip()
    return t


def gpu_text(samples: list[GpuSample] | None, reason: str, width: int = 36, index: int = 0,
             indices: list[int] | None = None) -> Text:
    """The GPU box: the run's GPU (``index``), or each of ``indices`` when the run uses several."""
    t = Text(no_wrap=True, overflow="crop")
    if samples is None:
        t.append("reading the GPU…", style="dim italic")
        return t
    if not samples:
        t.append(reason or "no GPU", style="dim")
        t.append("\ntraining runs on the CPU", style="dim")
        return t
    if indices and len(indices) > 1 and _picked(samples, indices):
        return gpus_text(_picked(samples, indices), width)
    s = samples[min(index, len(samples) - 1)]
    bw = max(6, width - 20)
    t.append(f"{s.short_name()[: width - 2]}\n", style="bold")
    t.append("util  ", style="dim")
    if s.util is not None:
        t.append(bar(s.util / 100, bw), style="green")
        t.append(f" {s.util:3d} %\n")
    else:
        t.append("n/a\n", style="dim")
    t.append("VRAM  ", style="dim")
    if s.mem_fraction is not None:
        t.append(bar(s.mem_fraction, bw), style="magenta" if s.mem_fraction < 0.9 else "red")
        t.append(f" {s.mem_used / GB:.1f}/{s.mem_total / GB:.0f} GB\n")
    else:
        t.append("n/a\n", style="dim")
    t.append("temp  ", style="dim")
    t.append(f"{s.temp} °C" if s.temp is not None else "n/a")
    t.append("   power ", style="dim")
    if s.power is not None:
        t.append(f"{s.power:.0f}" + (f"/{s.power_limit:.0f}" if s.power_limit else "") + " W")
    else:
        t.append("n/a")
    return t


def gpu_line(samples: list[GpuSample] | None, reason: str, index: int = 0, indices: list[int] | None = None) -> Text:
    """The one-line GPU summary of the 80×24 dashboard."""
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append("GPU ", style="dim")
    if samples is None:
        t.append("…", style="dim")
    elif not samples:
        t.append(reason or "no GPU", style="dim")
    elif indices and len(indices) > 1 and _picked(samples, indices):
        picked = _picked(samples, indices)
        parts = [f"×{len(picked)}"]
        utils = [s.util for s in picked if s.util is not None]
        if utils:
            parts.append(f"{min(utils)}–{max(utils)}%")
        mems = [s for s in picked if s.mem_fraction is not None]
        if mems:
            worst = max(mems, key=lambda s: s.mem_fraction)
            parts.append(f"max {worst.mem_used / GB:.1f}/{worst.mem_total / GB:.0f} GB (GPU {worst.index})")
        temps = [s.temp for s in picked if s.temp is not None]
        if temps:
            parts.append(f"≤{max(temps)}°C")
        t.append(f"{picked[0].short_name()}  " + "  ".join(parts))
    else:
        s = samples[min(index, len(samples) - 1)]
        parts = []
        if s.util is not None:
            parts.append(f"{s.util}%")
        if s.mem_used is not None and s.mem_total:
            parts.append(f"{s.mem_used / GB:.1f}/{s.mem_total / GB:.0f} GB")
        if s.temp is not None:
            parts.append(f"{s.temp}°C")
        if s.power is not None:
            parts.append(f"{s.power:.0f} W")
        t.append(f"{s.short_name()}  " + "  ".join(parts))
    return t


def ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m ago"


def saved_text(state: RunState, now: float | None = None, limit: int = 8) -> Text:
    now = time.time() if now is None else now
    t = Text(no_wrap=True, overflow="ellipsis")
    if not state.checkpoints:
        t.append("nothing saved yet", style="dim")
        return t
    shown = list(reversed(state.checkpoints))[:limit]
    for i, c in enumerate(shown):
        name = Path(c.path).name.removesuffix(".safetensors")
        style = "bold green" if c.kind == "final" else ""
        t.append(f"{name}", style=style)
        t.append(f"  {fmt_size(c.size)}  {ago(now - c.time)}", style="dim")
        if i < len(shown) - 1:
            t.append("\n")
    if len(state.checkpoints) > limit:
        t.append(f"\n… {len(state.checkpoints) - limit} more", style="dim")
    return t


class TextPanel(Static):
    """A Static that redraws only when its text really changed."""

    def __init__(self, *args, **kw):
        super().__init__("", *args, **kw)
        self._shown: tuple | None = None
        self.redraws = 0

    def show(self, text: Text) -> bool:
        key = (text.plain, tuple((s.start, s.end, str(s.style)) for s in text.spans))
        if key == self._shown:
            return False
        self._shown = key
        self.redraws += 1
        self.update(text, layout=False)
        return True
