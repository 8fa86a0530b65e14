"""The loratui Textual app: form → run → dashboard, profiles, help, signals.

Nothing heavy is imported before the first frame: the engine's run module loads
torch in the training thread, the dataset scan and the GPU reads run in worker
threads.  ``run_app(profile_path)`` is what the ``loratui`` console script calls.

The app is put together from parts, one concern each: ``session`` (the profile
in the form: open, save), ``runs`` (a run and its controls), ``watching`` (a run
started elsewhere, from its metrics file), ``detach`` (SIGHUP/SIGTERM, a run
that outlives the terminal) and ``palette`` (the command palette).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from loratui.engine.schema import Profile, ProfileError
from loratui.engine.userdirs import load_keymap, remember_last_profile
from loratui.tui import graphics
from loratui.tui.detach import SignalHandling, detach_terminal, finish_headless, stop_input_thread
from loratui.tui.palette import LoraCommands
from loratui.tui.runs import RunControl
from loratui.tui.session import ProfileActions
from loratui.tui.startup import resume_gc
from loratui.tui.watching import WatchRun

# the engine's run modules load with the first run, not before the first frame
if TYPE_CHECKING:
    from loratui.engine.runstate import RunState
    from loratui.tui.bridge import Bridge

FIRST_RUN_HINT = (
    "First time? This is the demo profile: ctrl+r trains a tiny model on the CPU in about a minute. "
    "p: other profiles · ctrl+p: every command · ?: keys"
)


class GpuSampled(Message):
    def __init__(self, samples: list | None, reason: str) -> None:
        super().__init__()
        self.samples = samples
        self.reason = reason


class DemoReady(Message):
    def __init__(self, path: Path | None, error: str) -> None:
        super().__init__()
        self.path = path
        self.error = error


class LoraTuiApp(ProfileActions, RunControl, WatchRun, SignalHandling, App):
    CSS_PATH = "app.tcss"
    TITLE = "loratui"
    COMMANDS = App.COMMANDS | {LoraCommands}
    BINDINGS = [
        Binding("ctrl+q", "quit", "quit", priority=True, id="app.quit"),
        Binding("ctrl+c", "interrupt", "abort run / quit", priority=True, id="app.interrupt", show=False),
        Binding("question_mark", "help", "help", id="app.help", key_display="?"),
    ]

    def __init__(
        self,
        profile_path: str | Path | None = None,
        *,
        watch_path: str | Path | None = None,
        gpu: Any = None,
        install_signals: bool = False,
        owns_terminal: bool = False,
        bridge_interval: float = 0.1,
        gpu_every: float = 2.0,
        check_live_runs: bool = True,
        prepare_demo: bool = True,
    ):
        super().__init__()
        self.profile_path = Path(profile_path).expanduser() if profile_path else None
        self.watch_path = Path(watch_path) if watch_path else None
        self.first_run = False
        self.session = self._open_initial()
        self.gpu_monitor = gpu
        self.gpu_last: tuple[list | None, str] = (None, "")
        self.gpu_every = gpu_every
        self.install_signals = install_signals
        self.owns_terminal = owns_terminal
        self.bridge_interval = bridge_interval
        self.check_live_runs = check_live_runs
        self.prepare_demo = prepare_demo
        self.user_keymap: dict[str, str] = {}
        self.keymap_problems: list[str] = []
        # the run
        self.run_state: RunState | None = None
        self.bridge: Bridge | None = None
        self.handle: Any = None
        self.run_profile: Profile | None = None
        self.hung_up = False
        self._hangup_handled = False
        self.terminating = False
        self.seen_end = False
        self.keys_for_active = False  # the key bar shows a run's keys
        self.demo_ready = threading.Event()
        self.start_after_demo = False  # ctrl+r on the demo before it was built
        self.quit_after_run = False  # quit asked while training: stop, then exit
        self.tail_stop = threading.Event()
        self.watch_control: Any = None  # engine.control_file.FileControl of a watched run
        self.launched: Any = None  # engine.launch.Launched: a multi-process run this app started
        self.lt_driver = None  # the driver, kept for stop_input_thread

    def on_mount(self) -> None:
        self.lt_driver = self._driver  # see stop_input_thread
        keymap, problems = load_keymap()
        self.user_keymap, self.keymap_problems = keymap, problems
        if keymap:
            self.set_keymap(keymap)
        for p in problems:
            self.notify(p, title="keymap", severity="warning", timeout=8)
        if graphics.problem:
            self.notify(graphics.problem, title="graphics", severity="warning", timeout=8)
        if self.install_signals:
            self._install_signal_handlers()
        # background work (it imports NVML, the dataset scanner...) waits for the
        # first frame: a thread importing modules holds the interpreter lock too
        self.call_after_refresh(self.start_gpu_polling)
        if self.watch_path is not None:
            self.call_after_refresh(resume_gc)  # paused by the console script until the first frame
            self.watch_run(self.watch_path)
            return
        from loratui.screens.training import TrainingScreen

        self.install_screen(TrainingScreen(), "form")
        self.push_screen("form")
        if self.first_run:
            self.form.set_hint(FIRST_RUN_HINT)
            if self.prepare_demo:
                self._prepare_demo()
        if self.session.path is not None and not self.session.bundled:
            remember_last_profile(self.session.path)
        self.call_after_refresh(self._check_live_run)

    @property
    def form(self):
        return self.get_screen("form")

    def form_profile(self) -> Profile | None:
        try:
            return self.form.valid
        except KeyError:
            return None

    def form_action(self, action: str) -> None:
        if self.screen is not self.form:
            self.action_form()
        self.form.run_action(action)

    # ------------------------------------------------------------------ GPU
    def start_gpu_polling(self) -> None:
        if self.gpu_monitor is False:
            self.gpu_last = ([], "GPU telemetry off")
            return
        self._gpu_worker()

    @work(thread=True, exclusive=True, group="gpu", exit_on_error=False)
    def _gpu_worker(self) -> None:
        from textual.worker import get_current_worker

        from loratui.engine.gpu import default_monitor

        mon = self.gpu_monitor or default_monitor()
        self.gpu_monitor = mon
        worker = get_current_worker()
        while not worker.is_cancelled:
            samples = mon.sample()
            self.post_message(GpuSampled(samples, mon.reason))
            if not samples:
                return  # no GPU: nothing will change
            deadline = time.monotonic() + self.gpu_every
            while time.monotonic() < deadline and not worker.is_cancelled and not self.hung_up:
                time.sleep(0.1)  # short naps: the app's exit does not wait long for this thread
            if self.hung_up:
                return

    @on(GpuSampled)
    def _gpu_sampled(self, event: GpuSampled) -> None:
        self.gpu_last = (event.samples, event.reason)
        form, dash = self._installed("form"), self._installed("dashboard")
        if form is not None:
            form.show_gpu_summary(self.gpu_summary())  # a screen not mounted yet draws it on mount
        if dash is not None:
            dash.show_gpu(event.samples, event.reason)

    def gpu_summary(self) -> str:
        samples, reason = self.gpu_last
        if samples is None:
            return ""
        if not samples:
            return "[no GPU]"
        s = samples[0]
        text = s.short_name() + (f" {s.mem_total / 1024**3:.0f} GB" if s.mem_total else "")
        if len(samples) > 1:
            text += f" (+{len(samples) - 1})"
        return f"[{text}]"

    @on(Worker.StateChanged)
    def _worker_failed(self, event: Worker.StateChanged) -> None:
        """One place turns a failed background job into a message (never a traceback)."""
        if event.state != WorkerState.ERROR:
            return
        error = event.worker.error
        what = {"scan": "the dataset scan", "demo": "building the demo", "gpu": "reading the GPU",
                "tail": "reading the metrics file", "run": "the run", "live": "looking for a live run",
                "watch": "watching the dataset folder"}.get(event.worker.group, event.worker.name or "a background job")
        self.notify(f"{what} failed: {type(error).__name__}: {error}", title="error", severity="error", timeout=10)
        if event.worker.group == "run" and self.bridge is not None and self.run_state is not None and not self.run_state.done:
            from loratui.engine.events import Failed

            self.bridge.feed(Failed(message=f"the run's follower stopped: {type(error).__name__}: {error}",
                                    hint="the training may still be going on: `loratui watch` its output folder"))

    def _installed(self, name: str) -> Screen | None:
        try:
            return self.get_screen(name)
        except KeyError:
            return None

    # ------------------------------------------------------------------ demo
    @work(thread=True, exclusive=True, group="demo", exit_on_error=False)
    def _prepare_demo(self) -> None:
        try:
            from loratui.engine.demo import prepare_demo

            path = prepare_demo()
        except Exception as exc:  # no cache folder, a full disk...
            self.post_message(DemoReady(None, f"the demo could not be built: {exc}"))
            return
        self.post_message(DemoReady(path, ""))

    @on(DemoReady)
    def _on_demo_ready(self, event: DemoReady) -> None:
        self.demo_ready.set()
        if event.error:
            self.notify(event.error, severity="error")
            return
        s = self.session
        if s.bundled and s.name == "demo" and not self.form.dirty:
            self.open_profile(event.path)
            self.form.set_hint(FIRST_RUN_HINT)
        if self.start_after_demo:
            self.start_after_demo = False
            self.action_start_run()

    # ------------------------------------------------------------------ screens
    def action_form(self) -> None:
        if self._installed("form") is None:
            return
        while len(self.screen_stack) > 2 and self.screen is not self.form:
            self.pop_screen()
        if self.screen is not self.form:
            self.switch_screen("form")

    def action_dashboard(self) -> None:
        if self.run_state is None:
            self.notify("no run yet: ctrl+r starts one", timeout=3)
            return
        self._show_dashboard()

    def _show_dashboard(self) -> None:
        from loratui.screens.dashboard import DashboardScreen

        if self._installed("dashboard") is None:
            self.install_screen(DashboardScreen(readonly=bool(self.run_state and self.run_state.readonly)), "dashboard")
        if self.screen is self._installed("dashboard"):
            return
        if len(self.screen_stack) <= 1:
            self.push_screen("dashboard")
        else:
            while len(self.screen_stack) > 2:
                self.pop_screen()
            self.switch_screen("dashboard")

    def action_dataset(self, tab: str = "images") -> None:
        try:
            from loratui.screens import dataset as dataset_screen
        except ImportError:
            self.notify("the dataset screen is not part of this build yet", severity="warning")
            return
        cls = getattr(dataset_screen, "DatasetScreen", None)
        if cls is None:
            self.notify("the dataset screen is not part of this build yet", severity="warning")
            return
        kw: dict[str, Any] = {"tab": tab}
        if self._installed("form") is not None:
            ds = self.form.best_effort().dataset
            kw["dataset_settings"] = ds.model_copy(
                update={"train_data_dir": os.path.expanduser(ds.train_data_dir.strip()),
                        "reg_data_dir": os.path.expanduser(ds.reg_data_dir.strip())}
            )
        try:
            screen = cls(**kw)
        except TypeError:  # an older signature
            screen = cls()
        self.push_screen(screen)

    def action_captions(self) -> None:
        self.action_dataset("captions")

    def action_models(self) -> None:
        from loratui.screens.models import ModelsScreen

        if not isinstance(self.screen, ModelsScreen):
            self.push_screen(ModelsScreen())

    def action_help(self) -> None:
        from loratui.screens.help import HelpScreen

        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen())

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for cmd in super().get_system_commands(screen):
            if cmd.title in ("Quit",):
                continue
            yield cmd
        yield SystemCommand("Quit", "quit loratui (asks about a running run and unsaved changes)", self.action_quit)

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """Hide what cannot be done here: run controls of a run that cannot take
        them, the form and its actions when only a watched run is open."""
        watching = self.run_state is not None and self.run_state.readonly
        if action in ("pause_resume", "save_now", "stop_run") and not self.can_control:
            return False if watching and not self.run_state.controllable else None
        if action in ("form", "start_run", "save_profile", "save_profile_as", "profiles", "dataset", "captions") and (
            self._installed("form") is None
        ):
            return False
        return True

    async def action_quit(self) -> None:
        from loratui.tui.widgets.dialogs import ChoiceDialog

        if self.run_active:

            def answer(key: str | None) -> None:
                if key in ("s", "a"):
                    self.quit_after_run = True
                    (self.action_stop_run if key == "s" else self.action_abort_run)()

            self.push_screen(
                ChoiceDialog(
                    "A run is training",
                    "Quitting ends it. s: save at the next step, then quit. a: quit now without saving.",
                    [("s", "stop, save, quit"), ("a", "abort and quit")],
                ),
                answer,
            )
            return
        if self._installed("form") is not None and self.form.ready:
            self.confirm_unsaved(lambda: self.exit(0))
            return
        self.exit(0)


def run_app(profile_path: str | None) -> int:
    """Open the app (the ``loratui`` console script without a sub-command)."""
    graphics.setup()  # asks the terminal, if at all, before Textual reads stdin
    try:
        app = LoraTuiApp(profile_path, install_signals=True, owns_terminal=True)
    except ProfileError as exc:
        resume_gc()
        print(f"loratui: cannot open {profile_path}:", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        print("fix the file (`loratui check FILE` lists every problem) or run `loratui` to pick another profile",
              file=sys.stderr)
        return 2
    try:
        app.run()
    except Exception:
        if app.handle is None:
            raise
        detach_terminal()  # the app broke on a dead terminal; the run must not
    finally:
        resume_gc()
    if app.hung_up or app.handle is not None:
        stop_input_thread(app)
    code = finish_headless(app)
    launched = app.launched
    if launched is not None and launched.poll() is None and not app.hung_up:
        o = launched.profile.output
        print(f"loratui: the {launched.profile.compute.world_size}-process run goes on in the background; "
              f"`loratui watch {o.output_dir}` follows it (and stops it)", file=sys.stderr)
    return code or (app.return_code or 0)


def run_watch(metrics_path: str | Path) -> int:
    """The dashboard of a run started elsewhere (``loratui watch``), its controls through the control file."""
    graphics.setup()
    app = LoraTuiApp(watch_path=metrics_path, install_signals=True, owns_terminal=True)
    app.run()
    if app.hung_up:
        stop_input_thread(app)
    return app.return_code or 0
