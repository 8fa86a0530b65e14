"""The plan panel's estimate rows (VRAM, RAM, disk, time) and the changes that make a run fit.

``EstimateView`` is what the panel shows; ``compute`` makes it from a
``prepare_run`` result in the panel's worker thread (engine.estimate counts
the model on the meta device: seconds the first time a configuration is seen,
then cached).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class EstimateView:
    rows: list[tuple[str, str, bool | None]] = field(default_factory=list)  # (label, value, fits)
    changes: list[Any] = field(default_factory=list)  # engine.estimate.fit.Change, in order
    lines: list[str] = field(default_factory=list)  # the changes as text
    why: str = ""  # no estimate: why (the rows stay "—")
    short_fail: bool = False  # even all the changes are not enough
    assumed: str = ""  # the model is not here yet: the shape it was counted as ("FLUX.1-dev")


def compute(prepared, monitor, busy=lambda: False) -> EstimateView:
    """The estimate of ``prepared`` on this machine's GPU (``monitor``: the app's
    NVML monitor, False when telemetry is off). Not made, or stopped, while
    ``busy()`` (a run trains: the CPU is its). Never raises."""
    from loratui.engine.estimate.meta import abort_when

    if busy():
        return EstimateView(why="a run is training")
    with abort_when(busy):
        return _compute(prepared, monitor)


def _compute(prepared, monitor) -> EstimateView:
    from loratui.engine.estimate.cli import estimate_for
    from loratui.engine.estimate.devices import local_device
    from loratui.engine.estimate.fit import suggest
    from loratui.engine.estimate.report import change_lines, rows

    try:
        device = local_device(monitor) if monitor is not False else None
    except Exception:  # noqa: BLE001 - no telemetry: an estimate for an unknown card
        device = None
    est, why = estimate_for(prepared, device)
    if est is None:
        return EstimateView(why=why)
    try:
        changes = suggest(prepared.profile, est)
    except Exception as exc:  # noqa: BLE001 - the figures stand without suggestions
        return EstimateView(rows(est), why=f"no suggestions: {exc}")
    lines = change_lines(prepared.profile, changes)
    fail = bool(changes) and est.vram.have is not None and changes[-1].vram > est.vram.have
    return EstimateView(rows(est), changes, lines, short_fail=fail, assumed=est.assumed)


def add_rows(t, row, view: EstimateView | None, width: int) -> None:
    """The estimate rows into the panel's text ``t`` (``row(label, value, style)``)."""
    if view is None or not view.rows:
        row("est. time", "—", style="dim")
        row("est. VRAM", "—", style="dim")
        return
    by = {label: (value, fits) for label, value, fits in view.rows}
    for label in ("est. time", "est. VRAM", "est. RAM", "est. disk"):
        if label in by:
            value, fits = by[label]
            row(label, value, style="green" if fits else "red" if fits is False else "")
    if view.assumed:
        t.append(f"counted as {view.assumed}: the model is not here yet\n", style="dim italic")
    if view.changes:
        t.append("to fit (ctrl+f applies the first):\n", style="yellow")
        for line in view.lines[:6]:
            t.append(f" · {line}\n", style="yellow")
        if view.short_fail:
            t.append(" · still too big for this card\n", style="red")


def first_change(view: EstimateView | None) -> list:
    """The change ctrl+f applies: the first, with its pair (batch 1 goes with its accumulation)."""
    if view is None or not view.changes:
        return []
    first = view.changes[0]
    pair = {"optimization.train_batch_size", "optimization.gradient_accumulation_steps"}
    out = [first]
    if first.key in pair:
        out += [c for c in view.changes[1:2] if c.key in pair]
    return out
