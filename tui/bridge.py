"""Engine events → Textual messages, coalesced.

The engine may report hundreds of steps a second; a terminal over a slow SSH
link wants a few redraws.  Events are folded into one ``RunState`` as they
arrive (cheap), and a ``RunUpdated`` message — which replaces any older one
still queued (toolong's ``can_replace``) — is posted at most ``interval``
seconds apart.  Terminal events (Finished, Failed) are posted at once.

Also here: ``MetricsTail`` (follow a run's metrics file for ``loratui watch``),
``find_live_run`` and ``continue_headless`` (after SIGHUP the run goes on and
its progress goes to the run's log instead of the dead terminal).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from textual.message import Message

from loratui.engine.console import fmt_duration, fmt_size, report_lines
from loratui.engine.events import (
    TERMINAL_EVENTS,
    CheckpointSaved,
    Event,
    Failed,
    Finished,
    LogEvent,
    PhaseChanged,
    RunPlanned,
    StepEvent,
    WarningEvent,
)

PHASE_TITLES = {
    "starting": "STARTING",
    "preparing": "PREPARING",
    "loading_model": "LOADING MODEL",
    "caching_latents": "CACHING LATENTS",
    "training": "TRAINING",
    "saving": "SAVING",
    "paused": "PAUSED",
    "done": "DONE",
    "failed": "FAILED",
    "stopped": "STOPPED",
}

MAX_LOG = 1000


@dataclass
class RunState:
    """Everything the dashboard shows, folded from events."""

    profile_name: str = ""
    run_name: str = ""
    readonly: bool = False  # watching a run started elsewhere
    phase: str = "starting"
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
    checkpoints: list[CheckpointSaved] = field(default_factory=list)
    log: deque = field(default_factory=lambda: deque(maxlen=MAX_LOG))  # (time, level, text)
    log_count: int = 0  # lines ever added (a widget appends the new ones)
    finished: Finished | None = None
    failed: Failed | None = None
    paused: bool = False  # the UI asked for a pause
    requested: str = ""  # what the user asked for and the engine has not done yet
    version: int = 0
    events: int = 0
    last_event_at: float = 0.0  # wall clock of the last event

    @property
    def done(self) -> bool:
        return self.finished is not None or self.failed is not None

    @property
    def display_phase(self) -> str:
        if self.failed is not None:
            return "failed"
        if self.finished is not None:
            return "stopped" if self.finished.stopped_early else "done"
        if self.paused and self.phase == "training":
            return "paused"
        return self.phase

    def add_log(self, text: str, level: str = "info", at: float | None = None) -> None:
        for line in text.splitlines() or [""]:
            self.log.append((at or time.time(), level, line))
            self.log_count += 1
        self.version += 1

    def apply(self, ev: Event) -> None:
        self.events += 1
        self.version += 1
        self.last_event_at = ev.time
        if isinstance(ev, StepEvent):
            self.phase = "training"
            self.epoch, self.epochs = ev.epoch, ev.epochs
            self.step, self.total_steps = ev.step, ev.total_steps
            self.its, self.elapsed, self.eta = ev.its, ev.elapsed, ev.eta
            self.loss, self.smoothed, self.lr = ev.loss, ev.smoothed_loss, ev.lr
            self.losses.append(ev.loss)
            self.smoothed_losses.append(ev.smoothed_loss)
            self.lrs.append(ev.lr)
        elif isinstance(ev, PhaseChanged):
            if ev.phase != self.phase or ev.detail != self.detail:
                if ev.phase not in ("training", "done") and not (ev.phase == "caching_latents" and ev.current):
                    label = ev.phase.replace("_", " ")
                    self.add_log(f"{label}: {ev.detail}" if ev.detail else label, at=ev.time)
            self.phase, self.detail = ev.phase, ev.detail
            self.current, self.total = ev.current, ev.total
            if ev.phase == "training" and ev.total:
                self.total_steps = ev.total
            if self.requested == "save" and ev.phase == "training" and self.checkpoints:
                self.requested = ""
        elif isinstance(ev, RunPlanned):
            self.planned = ev
            self.device = ev.device
            self.total_steps = ev.plan.total_steps
            self.epochs = ev.plan.epochs
            self.run_name = self.run_name or ev.output_name
            for line in report_lines(ev.report, ev.plan):
                self.add_log(line, "error" if line.startswith("error") else "info", at=ev.time)
            self.add_log(f"device   {ev.device}", at=ev.time)
        elif isinstance(ev, CheckpointSaved):
            self.checkpoints.append(ev)
            self.add_log(f"saved {ev.path} ({fmt_size(ev.size)})", at=ev.time)
            if self.requested == "save":
                self.requested = ""
        elif isinstance(ev, WarningEvent):
            self.add_log(ev.message, "warning", at=ev.time)
        elif isinstance(ev, LogEvent):
            self.add_log(ev.message, at=ev.time)
        elif isinstance(ev, Finished):
            self.finished = ev
            self.phase = "done"
            self.requested = ""
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
        elif isinstance(ev, Failed):
            self.failed = ev
            self.phase = "failed"
            self.requested = ""
            self.paused = False
            self.add_log(ev.message, "error", at=ev.time)
            if ev.hint:
                self.add_log(f"hint: {ev.hint}", "hint", at=ev.time)
            if ev.last_saved:
                self.add_log(f"last saved: {ev.last_saved}", "info", at=ev.time)


# --------------------------------------------------------------------------- messages


class RunUpdated(Message):
    """The run state changed; a newer one replaces an older one still queued."""

    def __init__(self, state: RunState) -> None:
        super().__init__()
        self.state = state
        self.version = state.version

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunUpdated) and message.state is self.state


class EventsArrived(Message):
    """Events read by a thread (the metrics file tail); never dropped."""

    def __init__(self, events: list[Event], reset: bool = False) -> None:
        super().__init__()
        self.events = events
        self.reset = reset


class Coalescer:
    """Calls ``post()`` at most once per ``interval`` seconds; ``poke`` asks for one,
    ``flush`` posts now.  Runs on the event loop."""

    def __init__(self, post: Callable[[], None], interval: float = 0.1, clock: Callable[[], float] = time.monotonic):
        self.post = post
        self.interval = interval
        self.clock = clock
        self._last = -1e9
        self._handle: asyncio.TimerHandle | None = None
        self.posted = 0

    def poke(self) -> None:
        if self._handle is not None:
            return
        wait = self._last + self.interval - self.clock()
        if wait <= 0:
            self._fire()
        else:
            self._handle = asyncio.get_running_loop().call_later(wait, self._fire)

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._fire()

    def _fire(self) -> None:
        self._handle = None
        self._last = self.clock()
        self.posted += 1
        self.post()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Bridge:
    """Folds events into ``state`` and posts ``RunUpdated`` to ``target``, coalesced."""

    def __init__(self, target, state: RunState, interval: float = 0.1):
        self.target = target
        self.state = state
        self.coalescer = Coalescer(lambda: target.post_message(RunUpdated(state)), interval)

    def feed(self, ev: Event) -> None:
        self.state.apply(ev)
        if isinstance(ev, TERMINAL_EVENTS):
            self.coalescer.flush()
        else:
            self.coalescer.poke()

    def feed_many(self, events: list[Event]) -> None:
        terminal = False
        for ev in events:
            self.state.apply(ev)
            terminal = terminal or isinstance(ev, TERMINAL_EVENTS)
        if terminal:
            self.coalescer.flush()
        elif events:
            self.coalescer.poke()

    def touch(self) -> None:
        """The state changed outside events (a pause the user asked for)."""
        self.state.version += 1
        self.coalescer.flush()

    async def follow(self, handle, poll: float = 0.1) -> Event | None:
        """Take the run's events every ``poll`` seconds until it ends; returns the
        terminal event.

        Polling (rather than ``handle.events()``, which wakes the event loop for
        every event) keeps the UI thread asleep between ticks whatever the step
        rate: a busy UI thread makes the training thread wait for the GIL after
        each of its many small torch calls."""
        import queue

        while True:
            batch: list[Event] = []
            try:
                for ev in handle.iter_events(timeout=0):
                    batch.append(ev)
            except queue.Empty:
                pass
            if batch:
                self.feed_many(batch)
                if isinstance(batch[-1], TERMINAL_EVENTS):
                    return batch[-1]
            await asyncio.sleep(poll)


# --------------------------------------------------------------------------- metrics file
# The reading side lives with `loratui watch` (no Textual there); re-exported here.
from loratui.engine.commands.watch import LiveRun, MetricsTail, find_live_run, find_metrics_file, last_event  # noqa: E402,F401


# --------------------------------------------------------------------------- after SIGHUP


def continue_headless(handle, log_path: str | Path, note: str = "", *, seen_end: bool = False) -> Event | None:
    """Follow ``handle`` to its end, writing plain progress lines to ``log_path``.

    Used when the terminal is gone: the training thread goes on, and what the
    dashboard would have drawn is appended to the run's log instead.
    ``seen_end``: the UI already consumed the terminal event."""
    from loratui.engine.console import ConsolePrinter

    log_path = Path(log_path)
    last = handle.result
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "a", encoding="utf-8")
    except OSError:
        out = open(os.devnull, "w")
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        # the app's handlers went with its event loop: SIGTERM still saves at the next step
        signal.signal(signal.SIGTERM, lambda *_: handle.control.stop())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with out:
        printer = ConsolePrinter(out, every=10.0)
        printer.tty = False
        if note:
            out.write(f"--- {time.ctime()} {note}\n")
            out.flush()
        if seen_end:
            printer(handle.result)
            return handle.result
        for ev in handle.iter_events():
            printer(ev)
            last = ev
    return last
