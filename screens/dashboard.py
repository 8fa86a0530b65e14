"""The dashboard: what the run is doing, loss and learning-rate charts, GPU, saves, log.

It draws from ``app.run_state`` when the app forwards a (coalesced) ``RunUpdated``.
To keep a slow SSH link calm, each part redraws only when its text changed, the
status line at most ``STATUS_EVERY`` seconds apart and the charts at most
``CHART_EVERY`` seconds apart (the last state is always drawn).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Label, RichLog

from loratui.engine.events import Phase
from loratui.engine.gpu import GpuSample
from loratui.engine.runstate import RunState
from loratui.tui.widgets import set_text
from loratui.tui.widgets.chart import LineChart
from loratui.tui.widgets.keybar import KeyBar
from loratui.tui.widgets.panels import TextPanel, gpu_line, gpu_text, saved_text, status_text
from loratui.tui.widgets.sample_view import SampleView

if TYPE_CHECKING:
    from loratui.tui.app import LoraTuiApp

STATUS_EVERY = 1.0


def set_title(widget, title: str) -> None:
    if widget.border_title != title:
        widget.border_title = title
CHART_EVERY = 2.0
LOG_STYLES = {"warning": "yellow", "error": "red", "hint": "cyan", "done": "bold green"}


def watching_note(state: RunState) -> str:
    """The title's note on a run of another process ("" for this app's own run)."""
    if not state.readonly:
        return ""
    return "  (watching)" if state.controllable and not state.done else "  (watching, read-only)"


GPU_BOX_HEIGHT, GPU_BOX_MOST = 7, 12  # the GPU box's rows (border included): as dashboard.tcss, and at most


class DashboardScreen(Screen):
    CSS_PATH = "dashboard.tcss"
    BINDINGS = [
        Binding("space", "app.pause_resume", "pause", id="run.pause"),
        Binding("s", "app.save_now", "save now", id="run.save_now"),
        Binding("x", "app.stop_run", "stop & save", id="run.stop"),
        Binding("f", "app.form", "form", id="screen.form"),
        Binding("l", "toggle_details", "log/saves", id="dashboard.details"),
        Binding("g", "gallery", "samples", id="dashboard.gallery", show=False),  # the sample box says so
        Binding("t", "try_it", "try the LoRA", id="dashboard.try_it", show=False),
    ]

    def __init__(self, readonly: bool = False) -> None:
        super().__init__()  # (no fixed id: a second run's dashboard is made while the first one's goes away)
        self.readonly = readonly
        self._status_at = 0.0
        self._chart_at = 0.0
        self._log_seen = 0
        self._pending = None
        self._pending_at = 0.0
        self._drawn_phase = ""
        self._status_dirty = False
        self._chart_dirty = False
        self._gpu: tuple[list[GpuSample] | None, str] = (None, "")
        self.redraw_calls = 0
        self._ready = False

    @property
    def lt_app(self) -> "LoraTuiApp":
        return self.app  # type: ignore[return-value]

    @property
    def ready(self) -> bool:
        """Mounted: drawing calls take effect (before, they are remembered or ignored)."""
        return self._ready

    def compose(self) -> ComposeResult:
        with Horizontal(id="topbar"):
            yield Label("", id="title", markup=False)
            yield Label("", id="device", markup=False)
        yield TextPanel(id="status")
        yield TextPanel(id="gpu-line")
        with Horizontal(id="main"):
            with Vertical(id="charts"):
                with Vertical(id="loss-box", classes="box"):
                    yield LineChart(id="loss", empty="waiting for the first step…")
                with Vertical(id="lr-box", classes="box"):
                    yield LineChart(id="lr", empty="", floor=0.0)
            with Vertical(id="sample-box", classes="box"):  # shown from the first sample on
                yield SampleView(id="sample")
            with Vertical(id="side"):
                with Vertical(id="gpu-box", classes="box"):
                    yield TextPanel(id="gpu")
                with Vertical(id="saved-box", classes="box"):
                    yield TextPanel(id="saved")
        with Vertical(id="log-box", classes="box"):
            yield RichLog(id="log", max_lines=500, wrap=False, markup=False, auto_scroll=True)
        yield KeyBar()

    def on_mount(self) -> None:
        self._ready = True
        self.query_one("#loss-box").border_title = "loss ── raw · [b]smoothed[/b]"
        self.query_one("#lr-box").border_title = "learning rate"
        self.query_one("#gpu-box").border_title = "GPU"
        self.query_one("#saved-box").border_title = "saved"
        self.query_one("#log-box").border_title = "log"
        self._layout_for(self.app.size.width, self.app.size.height)
        self.set_interval(5.0, self._tick)
        state = self.lt_app.run_state
        if state is not None:
            self.update_from(state, force=True)
        self.show_gpu(*self.lt_app.gpu_last)

    def on_resize(self, event) -> None:
        self._layout_for(event.size.width, event.size.height)

    def _layout_for(self, width: int, height: int) -> None:
        self.set_class(width < 100 or height < 30, "-narrow")

    def on_screen_resume(self) -> None:
        self.query_one(KeyBar).refresh_keys()
        state = self.lt_app.run_state
        if state is not None:
            self.update_from(state, force=True)

    def action_toggle_details(self) -> None:
        self.toggle_class("-details")

    # ------------------------------------------------------------------ drawing
    def update_from(self, state: RunState, force: bool = False) -> None:
        """Draw ``state``; parts whose text did not change are not redrawn, and
        parts drawn recently wait for their next turn (a timer draws the latest)."""
        if not self._ready:
            return
        self.redraw_calls += 1
        now = time.monotonic()
        # a new phase (training starts, a pause, the end) shows at once
        urgent = force or state.done or state.phase != Phase.TRAINING or state.display_phase != self._drawn_phase
        self._drawn_phase = state.display_phase
        self._draw_title(state)
        self._draw_log(state)
        self._draw_sample(state)
        status_due = self._status_at + STATUS_EVERY - now
        chart_due = self._chart_at + CHART_EVERY - now
        if urgent or status_due <= 0:
            self._status_at = now
            status_due = STATUS_EVERY
            self.query_one("#status", TextPanel).show(status_text(state, self.size.width or 120))
            self._status_dirty = False
        else:
            self._status_dirty = True
        if urgent or chart_due <= 0:
            self._chart_at = now
            chart_due = CHART_EVERY
            self._draw_charts(state)
            self.query_one("#saved", TextPanel).show(saved_text(state))
            self._chart_dirty = False
        else:
            self._chart_dirty = True
        if self._status_dirty or self._chart_dirty:
            due = min(d for d, dirty in ((status_due, self._status_dirty), (chart_due, self._chart_dirty)) if dirty)
            at = now + max(0.02, due)
            if self._pending is None or at < self._pending_at - 0.01:
                if self._pending is not None:
                    self._pending.stop()
                self._pending_at = at
                self._pending = self.set_timer(at - now, self._draw_pending)

    def _draw_pending(self) -> None:
        self._pending = None
        state = self.lt_app.run_state
        if state is not None:
            self.update_from(state)

    def _draw_sample(self, state: RunState) -> None:
        """The newest sample; nothing is sent unless a new one arrived."""
        if not state.samples:
            self.set_class(False, "-samples")
            return
        from loratui.tui.widgets.sample_view import sample_label

        ev = state.samples[-1]
        self.set_class(True, "-samples")
        self.query_one("#sample", SampleView).show(ev.path)
        set_title(self.query_one("#sample-box"), f"{sample_label(ev)} ── g: all")

    def action_gallery(self) -> None:
        from loratui.screens.gallery import GalleryScreen

        state = self.lt_app.run_state
        if state is None or not state.samples:
            self.notify("no samples yet: set output.sample_prompts and a sample interval", timeout=4)
            return
        self.app.push_screen(GalleryScreen(state.samples))

    def action_try_it(self) -> None:
        """The finished LoRA at several weights (screens/tryit.py)."""
        from loratui.screens.tryit import TryItScreen

        state, profile = self.lt_app.run_state, getattr(self.lt_app, "run_profile", None)
        path = state.finished.path if state is not None and state.finished is not None else ""
        if not path or profile is None:
            self.notify("try it: when a run of this app has finished (or: loratui sample LORA --base MODEL)", timeout=4)
            return
        self.app.push_screen(TryItScreen(path, profile.model))  # the run's model as it gave it (split parts too)

    def _draw_title(self, state: RunState) -> None:
        title = f" loratui  {state.profile_name}" + (f"  run {state.run_name}" if state.run_name else "")
        set_text(self.query_one("#title", Label), title + watching_note(state))
        set_text(self.query_one("#device", Label), state.device or "", layout=True)

    def _draw_charts(self, state: RunState) -> None:
        x_max = state.total_steps or None
        self.query_one("#loss", LineChart).set_series(
            [(state.losses, "grey50"), (state.smoothed_losses, "bold bright_cyan")], x_max=x_max
        )
        self.query_one("#lr", LineChart).set_series([(state.lrs, "yellow")], x_max=x_max)
        # titles change rarely: a new title redraws the whole box
        sched = self.lt_app.run_scheduler_label()
        set_title(self.query_one("#lr-box"), "learning rate" + (f" ── {sched}" if sched else ""))

    def _draw_log(self, state: RunState) -> None:
        new = state.log_count - self._log_seen
        if new <= 0:
            return
        log = self.query_one("#log", RichLog)
        lines = list(state.log)[-min(new, len(state.log)):]
        for at, level, text in lines:
            t = Text(no_wrap=True, overflow="ellipsis")
            t.append(time.strftime("%H:%M:%S ", time.localtime(at)), style="dim")
            t.append(text, style=LOG_STYLES.get(level, ""))
            log.write(t)
        self._log_seen = state.log_count

    def clear_log(self) -> None:
        """Forget the lines drawn so far (the run state started over)."""
        self._log_seen = 0
        if self._ready:
            self.query_one("#log", RichLog).clear()

    def show_gpu(self, samples: list[GpuSample] | None, reason: str) -> None:
        self._gpu = (samples, reason)
        if not self._ready:
            return
        state = self.lt_app.run_state
        index = 0
        if state is not None and state.device.startswith("cuda:"):
            try:
                index = int(state.device.split(":")[1].split()[0])
            except ValueError:
                index = 0
        indices = list(state.planned.gpus) if state is not None and state.planned is not None else []
        width = self.query_one("#gpu", TextPanel).size.width or 36
        text = gpu_text(samples, reason, width, index, indices)
        box = self.query_one("#gpu-box")
        want = max(GPU_BOX_HEIGHT, min(2 + len(text.plain.splitlines()), GPU_BOX_MOST))  # 8 GPUs: every one shown
        if box.styles.height is None or box.styles.height.value != want:  # (a relayout only when it changes)
            box.styles.height = want
        self.query_one("#gpu", TextPanel).show(text)
        self.query_one("#gpu-line", TextPanel).show(gpu_line(samples, reason, index, indices))

    def _tick(self) -> None:
        # "4m ago" ages; a stale read-only run says how long it has been quiet
        state = self.lt_app.run_state
        if state is None:
            return
        self.query_one("#saved", TextPanel).show(saved_text(state))
        if state.readonly and not state.done and state.last_event_at:
            quiet = time.time() - state.last_event_at
            title = self.query_one("#title", Label)
            base = f" loratui  {state.profile_name}  run {state.run_name}" + watching_note(state)
            set_text(title, base + (f"  last event {int(quiet)} s ago" if quiet > 30 else ""))
