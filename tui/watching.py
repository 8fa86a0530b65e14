"""Watching a run started elsewhere (``loratui watch``, a live run found for
the profile just opened, a multi-process run the app launched): the metrics
file is tailed in a thread and its events fold into a ``RunState`` marked
``readonly`` (not this process's run); its controls go through the run's
control file (engine/control_file.py), which the run's main process follows.

``WatchRun`` is a part of ``LoraTuiApp`` (a mixin).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from textual import work
from textual.message import Message

from loratui.tui.bridge import Bridge, EventsArrived

# the engine's metrics reader and run state load when first needed, not before the
# app's first frame (the check for a live run comes after it)
if TYPE_CHECKING:
    from loratui.engine.metrics import LiveRun


class LiveRunFound(Message):
    """The open profile's metrics file is being written by a run elsewhere."""

    def __init__(self, live: LiveRun) -> None:
        super().__init__()
        self.live = live


class WatchRun:
    """Following a metrics file read-only (part of ``LoraTuiApp``)."""

    def watch_run(self, metrics_path: str | Path, detail: str = "reading the metrics file…") -> None:
        """Follow ``metrics_path``; pause / save / stop / abort go through the run's control file."""
        from loratui.engine.control_file import FileControl, control_path_for_metrics
        from loratui.engine.runstate import RunState

        path = Path(metrics_path)
        name = path.name.removesuffix(".metrics.jsonl")
        self.run_state = RunState(profile_name=str(path.parent), run_name=name, readonly=True, controllable=True, detail=detail)
        self.watch_control = FileControl(control_path_for_metrics(path))
        self.run_profile = None
        self.bridge = Bridge(self, self.run_state, self.bridge_interval)
        self._reset_dashboard()
        self._show_dashboard()
        self.tail_stop = threading.Event()
        self._tail_worker(path, self.tail_stop)

    @work(thread=True, exclusive=True, group="tail", exit_on_error=False)
    def _tail_worker(self, path: Path, stop: threading.Event) -> None:
        from textual.worker import get_current_worker

        from loratui.engine.metrics import MetricsTail

        worker = get_current_worker()  # cancelled when the app ends
        tail = MetricsTail(path)
        while not stop.is_set() and not worker.is_cancelled:
            events, reset = tail.read()
            if events or reset:
                self.post_message(EventsArrived(events, reset))
            stop.wait(0.25)

    def on_events_arrived(self, event: EventsArrived) -> None:
        state, bridge = self.run_state, self.bridge
        if state is None or bridge is None or not state.readonly:
            return
        if event.reset:  # a new run of the same name: start over
            state.reset()
            dash = self._installed("dashboard")
            if dash is not None:
                dash.clear_log()
        bridge.feed_many(event.events)

    @work(thread=True, exclusive=True, group="live", exit_on_error=False)
    def _check_live_run(self) -> None:
        if not self.check_live_runs or self.run_active:
            return
        o = self.session.profile.output
        if not o.output_dir or not o.output_name:
            return
        from loratui.engine.metrics import find_live_run

        path = Path(o.output_dir).expanduser() / f"{o.output_name}.metrics.jsonl"
        live = find_live_run(path)
        if live is not None:
            self.post_message(LiveRunFound(live))

    def on_live_run_found(self, event: LiveRunFound) -> None:
        if self.run_active:
            return
        from loratui.tui.widgets.dialogs import ChoiceDialog

        live = event.live

        def answer(key: str | None) -> None:
            if key == "w":
                self.watch_run(live.path)

        self.push_screen(
            ChoiceDialog(
                "A run of this profile looks live",
                f"{live.describe()}\n{live.path}\nIt was started elsewhere (another session or `loratui train`). Watch it? "
                "Its controls (pause, save, stop) reach it through its control file.",
                [("w", "watch it")],
            ),
            answer,
        )
