"""What a run looks like from outside: its events folded into one ``RunState``.

The dashboard draws a ``RunState``; ``loratui watch`` and the app fold the same
events into it, whether they come from a run in this process or from a metrics
file.  No UI code here: the TUI's bridge only decides when to redraw.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from dataclasses import dataclass, field, fields

from loratui.engine.console import fmt_duration, fmt_size, report_lines
from loratui.engine.events import (
    CheckpointSaved,
    Event,
    Failed,
    Finished,
    LogEvent,
    Phase,
    PhaseChanged,
    Request,
    RunPlanned,
    SampleSaved,
    StepEvent,
    WarningEvent,
)

# The phases a run shows: the engine's ``Phase`` values, plus the states only an
# observer sees (before the first event, and the three ways a run ends).
STARTING, FAILED, STOPPED = "starting", "failed", "stopped"

PHASE_TITLES = {
    STARTING: "STARTING",
    **{p.value: p.label.upper() for p in Phase},
    FAILED: "FAILED",
    STOPPED: "STOPPED",
}

# what a pending request reads like until the engine has done it
REQUEST_LABELS = {
    Request.SAVE: "save at the next step",
    Request.STOP: "stopping: saving at the next step",
    Request.ABORT: "aborting",
}

REQUEST_LOG = {
    Request.PAUSE: ("paused: the run waits before its next step", "info"),
    Request.RESUME: ("resumed", "info"),
    Request.SAVE: ("save requested: an intermediate LoRA is written after the next step", "info"),
    Request.ABORT: ("abort requested: ending without saving", "warning"),
}

MAX_LOG = 1000


@dataclass
class RunState:
    """Everything the dashboard shows, folded from events."""

    profile_name: str = ""
    run_name: str = ""
    readonly: bool = False  # watching a run started elsewhere
    controllable: bool = False  # ... and its requests go through the run's control file
    phase: str = STARTING  # a Phase, or STARTING / FAILED
    detail: str = "loading torch…"
    current: int = 0
    total: int = 0
    device: str = ""
    planned: RunPlanned | None = None
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    total_steps: int = 0
    its: float = 0.0
    elapsed: float = 0.0
    eta: float = 0.0
    loss: float = 0.0
    smoothed: float = 0.0
    lr: float = 0.0
    losses: list[float] = field(default_factory=list)
    smoothed_losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    loss_steps: list[int] = field(default_factory=list)  # the step of each point of the series above
    norms: tuple[int, float, float] | None = None  # max-norm of the last step: (keys scaled, mean norm, max norm)
    checkpoints: list[CheckpointSaved] = field(default_factory=list)
    samples: list[SampleSaved] = field(default_factory=list)  # in the order they were written
    log: deque = field(default_factory=lambda: deque(maxlen=MAX_LOG))  # (time, level, text)
    log_count: int = 0  # lines ever added (a widget appends the new ones)
    finished: Finished | None = None
    failed: Failed | None = None
    paused: bool = False  # the UI asked for a pause
    pending: Request | None = None  # what the user asked for and the engine has not done yet
    version: int = 0
    events: int = 0
    last_event_at: float = 0.0  # wall clock of the last event

    @property
    def done(self) -> bool:
        return self.finished is not None or self.failed is not None

    @property
    def requested(self) -> str:
        """The pending request in words ("" when none)."""
        return REQUEST_LABELS.get(self.pending, "") if self.pending is not None else ""

    @property
    def display_phase(self) -> str:
        if self.failed is not None:
            return FAILED
        if self.finished is not None:
            return STOPPED if self.finished.stopped_early else Phase.DONE
        if self.paused and self.phase == Phase.TRAINING:
            return Phase.PAUSED
        return self.phase

    def reset(self) -> None:
        """Start over (a new run of the same name replaced the metrics file):
        everything but the names and ``readonly`` back to its default (``version``
        goes on counting)."""
        keep = {"profile_name", "run_name", "readonly", "controllable", "version"}
        fresh = RunState()
        for f in fields(self):
            if f.name not in keep:
                setattr(self, f.name, getattr(fresh, f.name))
        self.version += 1

    def add_log(self, text: str, level: str = "info", at: float | None = None) -> None:
        for line in text.splitlines() or [""]:
            self.log.append((at or time.time(), level, line))
            self.log_count += 1
        self.version += 1

    def ask(self, req: Request, reason: str = "") -> None:
        """Note what the user asked of the run (``Control.request`` does it)."""
        req = Request(req)
        if req in (Request.PAUSE, Request.RESUME):
            self.paused = req is Request.PAUSE
        if req is Request.STOP:
            self.paused = False
        if req in REQUEST_LABELS:
            self.pending = req
        if req is Request.STOP:
            self.add_log(f"{reason or 'stop requested'}: saving at the next step boundary, then ending")
        else:
            text, level = REQUEST_LOG[req]
            self.add_log(text, level)

    def apply(self, ev: Event) -> None:
        self.events += 1
        self.version += 1
        self.last_event_at = ev.time
        if isinstance(ev, StepEvent):
            self._step(ev)
        elif isinstance(ev, PhaseChanged):
            self._phase(ev)
        elif isinstance(ev, RunPlanned):
            self._planned(ev)
        elif isinstance(ev, CheckpointSaved):
            self.checkpoints.append(ev)
            self.add_log(f"saved {ev.path} ({fmt_size(ev.size)})", at=ev.time)
            if self.pending is Request.SAVE:
                self.pending = None
        elif isinstance(ev, SampleSaved):
            self.samples.append(ev)
            self.add_log(f"sample {ev.index + 1} saved: {ev.path}", at=ev.time)
        elif isinstance(ev, WarningEvent):
            self.add_log(ev.message, "warning", at=ev.time)
        elif isinstance(ev, LogEvent):
            self.add_log(ev.message, at=ev.time)
        elif isinstance(ev, Finished):
            self._finished(ev)
        elif isinstance(ev, Failed):
            self._failed(ev)

    def _step(self, ev: StepEvent) -> None:
        if self.loss_steps and ev.step <= self.loss_steps[-1]:  # a resumed run goes on in the same file from earlier
            cut = bisect.bisect_left(self.loss_steps, ev.step)  # (skipped steps have no point: not by index)
            for series in (self.loss_steps, self.losses, self.smoothed_losses, self.lrs):
                del series[cut:]
        self.loss_steps.append(ev.step)
        self.phase = Phase.TRAINING
        self.epoch, self.epochs = ev.epoch, ev.epochs
        self.step, self.total_steps = ev.step, ev.total_steps
        self.its, self.elapsed, self.eta = ev.its, ev.elapsed, ev.eta
        self.loss, self.smoothed, self.lr = ev.loss, ev.smoothed_loss, ev.lr
        self.losses.append(ev.loss)
        self.smoothed_losses.append(ev.smoothed_loss)
        self.lrs.append(ev.lr)
        if ev.keys_scaled is not None:
            self.norms = (ev.keys_scaled, ev.mean_norm or 0.0, ev.max_norm or 0.0)

    def _phase(self, ev: PhaseChanged) -> None:
        phase = Phase(ev.phase)
        if phase != self.phase or ev.detail != self.detail:
            said = phase is Phase.PAUSED and self.paused  # this app asked for it and logged it already
            if phase not in (Phase.TRAINING, Phase.DONE) and not (phase is Phase.CACHING_LATENTS and ev.current) and not said:
                self.add_log(f"{phase.label}: {ev.detail}" if ev.detail else phase.label, at=ev.time)
        self.phase, self.detail = phase, ev.detail
        self.current, self.total = ev.current, ev.total
        if phase is Phase.TRAINING and ev.total:
            self.total_steps = ev.total
        if self.pending is Request.SAVE and phase is Phase.TRAINING and self.checkpoints:
            self.pending = None

    def _planned(self, ev: RunPlanned) -> None:
        # the metrics file of a resumed run holds the earlier attempt's end: this one is live again
        self.finished = self.failed = None
        self.pending = None
        self.planned = ev
        self.device = ev.device
        self.total_steps = ev.plan.total_steps
        self.epochs = ev.plan.epochs
        self.run_name = self.run_name or ev.output_name
        for line in report_lines(ev.report, ev.plan):
            self.add_log(line, "error" if line.startswith("error") else "info", at=ev.time)
        self.add_log(f"device   {ev.device}", at=ev.time)

    def _finished(self, ev: Finished) -> None:
        self.finished = ev
        self.phase = Phase.DONE
        self.pending = None
        self.paused = False
        if ev.path:
            extra = ""
            if isinstance(ev.summary.get("final_loss"), (int, float)):
                extra += f" · final loss {ev.summary['final_loss']:.4f}"
            if isinstance(ev.summary.get("its"), (int, float)) and ev.summary["its"]:
                extra += f" · {ev.summary['its']:.2f} it/s"
            self.add_log(f"done: {ev.path} — {ev.steps} steps in {fmt_duration(ev.elapsed)}{extra}", "done", at=ev.time)
        else:
            last = ev.summary.get("last_saved", "")
            self.add_log(
                f"stopped after {ev.steps} steps" + (f"; last saved {last}" if last else "; nothing saved"),
                "warning",
                at=ev.time,
            )

    def _failed(self, ev: Failed) -> None:
        self.failed = ev
        self.phase = FAILED
        self.pending = None
        self.paused = False
        self.add_log(ev.message, "error", at=ev.time)
        if ev.hint:
            self.add_log(f"hint: {ev.hint}", "hint", at=ev.time)
        if ev.last_saved:
            self.add_log(f"last saved: {ev.last_saved}", "info", at=ev.time)
