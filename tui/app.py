"""The loratui Textual app: form → run → dashboard, profiles, help, signals.

Nothing heavy is imported before the first frame: the engine's run module loads
torch in the training thread, the dataset scan and the GPU reads run in worker
threads.  ``run_app(profile_path)`` is what the ``loratui`` console script calls.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.message import Message
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from loratui.engine.events import Failed
from loratui.engine.schema import SECTION_TITLES, Profile, ProfileError, load_profile, save_profile, settings
from loratui.engine.userdirs import (
    bundled_profiles_dir,
    is_bundled,
    last_profile,
    list_profiles,
    load_keymap,
    new_name_problem,
    origin_name,
    profile_header,
    read_origin,
    remember_last_profile,
    save_user_profile,
    unique_name,
    ProfileEntry,
)
from loratui.tui.widgets import set_text
from loratui.tui.bridge import Bridge, EventsArrived, MetricsTail, RunState, RunUpdated, continue_headless, find_live_run

FIRST_RUN_HINT = (
    "First time? This is the demo profile: ctrl+r trains a tiny model on the CPU in about a minute. "
    "p: other profiles · ctrl+p: every command · ?: keys"
)


# --------------------------------------------------------------------------- session


@dataclass
class ProfileSession:
    """The profile open in the form, as last loaded or saved."""

    profile: Profile
    path: Path | None
    name: str
    bundled: bool
    origin: str | None = None

    @classmethod
    def from_path(cls, path: str | Path) -> "ProfileSession":
        path = Path(path).expanduser()
        profile = load_profile(path)
        bundled = is_bundled(path)
        return cls(profile, path, path.stem, bundled, None if bundled else read_origin(path))


class GpuSampled(Message):
    def __init__(self, samples: list | None, reason: str) -> None:
        super().__init__()
        self.samples = samples
        self.reason = reason


class _DemoReady(Message):
    def __init__(self, path: Path | None, error: str) -> None:
        super().__init__()
        self.path = path
        self.error = error


class _LiveRunFound(Message):
    def __init__(self, live) -> None:
        super().__init__()
        self.live = live


# --------------------------------------------------------------------------- command palette


class LoraCommands(Provider):
    """Every action of the app, every profile and every field, by name."""

    def _commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        app: LoraTuiApp = self.app  # type: ignore[assignment]
        out: list[tuple[str, str, Callable[[], Any]]] = [
            ("Start training", "validate the form and start a run (ctrl+r)", lambda: app.run_action("start_run")),
            ("Save profile", "save the form to its profile file (ctrl+s)", lambda: app.run_action("save_profile")),
            ("Save profile as…", "save the form as a new profile of yours", lambda: app.run_action("save_profile_as")),
            ("Profiles", "open, duplicate, delete profiles (p)", lambda: app.run_action("profiles")),
            ("Dashboard", "the running or last run (d)", lambda: app.run_action("dashboard")),
            ("Training form", "back to the form (f)", lambda: app.run_action("form")),
            ("Dataset", "the dataset & captions screen (i)", lambda: app.run_action("dataset")),
            ("Captions", "caption images with WD14 / BLIP (c)", lambda: app.run_action("captions")),
            ("Pause / resume training", "(space)", lambda: app.run_action("pause_resume")),
            ("Save now", "save an intermediate LoRA at the next step (s)", lambda: app.run_action("save_now")),
            ("Stop training", "save at the next step, then end (x)", lambda: app.run_action("stop_run")),
            ("Abort training", "end without saving, asks first (ctrl+c)", lambda: app.run_action("interrupt")),
            ("Toggle advanced settings", "show or hide the advanced fields (ctrl+t)", lambda: app.form_action("toggle_advanced")),
            ("Keys", "every key binding and its id (?)", lambda: app.run_action("help")),
        ]
        for entry in list_profiles():
            out.append((f"Open profile: {entry.name}", str(entry.path), lambda e=entry: app.request_open_profile(e.path)))
        for title_key, title in SECTION_TITLES.items():
            out.append((f"Go to section: {title}", "jump to the section in the form", lambda s=title_key: app.goto_section(s)))
        for info in settings():
            out.append(
                (f"Go to field: {info.dotted}", info.help[:80], lambda d=info.dotted: app.goto_field(d))
            )
        return out

    async def discover(self) -> Hits:
        for name, help_text, fn in self._commands():
            if name.startswith("Go to field"):
                continue
            yield DiscoveryHit(name, fn, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, fn in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), fn, help=help_text)


# --------------------------------------------------------------------------- the app


class LoraTuiApp(App):
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
        self._keys_for_active = False
        self._demo_ready = threading.Event()
        self._tail_stop = threading.Event()

    # ------------------------------------------------------------------ start
    def _open_initial(self) -> ProfileSession:
        """The profile named on the command line, else the last used one, else the demo."""
        if self.watch_path is not None and self.profile_path is None:
            return ProfileSession(Profile(), None, "(watch)", False)
        if self.profile_path is not None:
            return ProfileSession.from_path(self.profile_path)  # run_app reports a ProfileError
        last = last_profile()
        if last is not None:
            try:
                return ProfileSession.from_path(last)
            except ProfileError:
                pass
        self.first_run = last is None
        return ProfileSession.from_path(bundled_profiles_dir() / "demo.toml")

    def on_mount(self) -> None:
        self._lt_driver = self._driver  # see stop_input_thread
        keymap, problems = load_keymap()
        self.user_keymap, self.keymap_problems = keymap, problems
        if keymap:
            self.set_keymap(keymap)
        for p in problems:
            self.notify(p, title="keymap", severity="warning", timeout=8)
        if self.install_signals:
            self._install_signal_handlers()
        # background work (it imports NVML, the dataset scanner...) waits for the
        # first frame: a thread importing modules holds the interpreter lock too
        self.call_after_refresh(self.start_gpu_polling)
        if self.watch_path is not None:
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
        for name in ("form", "dashboard"):
            scr = self._installed(name)
            if scr is None or not getattr(scr, "_ready", False):
                continue
            if name == "form":
                scr.show_gpu_summary(self.gpu_summary())
            else:
                scr.show_gpu(event.samples, event.reason)

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
            self.post_message(_DemoReady(None, f"the demo could not be built: {exc}"))
            return
        self.post_message(_DemoReady(path, ""))

    @on(_DemoReady)
    def _on_demo_ready(self, event: _DemoReady) -> None:
        self._demo_ready.set()
        if event.error:
            self.notify(event.error, severity="error")
            return
        s = self.session
        if s.bundled and s.name == "demo" and not self.form.dirty:
            self.open_profile(event.path)
            self.form.set_hint(FIRST_RUN_HINT)
        if getattr(self, "_start_after_demo", False):
            self._start_after_demo = False
            self.action_start_run()

    # ------------------------------------------------------------------ profiles
    def open_profile(self, path: str | Path) -> bool:
        try:
            session = ProfileSession.from_path(path)
        except ProfileError as exc:
            from loratui.tui.widgets.dialogs import ChoiceDialog

            self.push_screen(ChoiceDialog(f"Cannot open {Path(path).name}", [str(p) for p in exc.problems], []))
            return False
        self.session = session
        self.form.load_profile(session.profile)
        self.form.set_hint("")
        if session.path is not None and not session.bundled:
            remember_last_profile(session.path)
        self._check_live_run()
        return True

    def request_open_profile(self, path: str | Path, on_done: Callable[[bool], Any] | None = None) -> None:
        """Open ``path``; with unsaved changes ask save / discard / cancel first."""
        done = on_done or (lambda ok: None)

        def go() -> None:
            done(self.open_profile(path))

        self.confirm_unsaved(go, lambda: done(False))

    def confirm_unsaved(self, proceed: Callable[[], Any], cancel: Callable[[], Any] | None = None) -> None:
        form = self.form
        if not form.dirty:
            proceed()
            return
        from loratui.tui.widgets.dialogs import ChoiceDialog

        def answer(key: str | None) -> None:
            if key == "s":
                self.save_profile(then=proceed)
            elif key == "d":
                proceed()
            elif cancel:
                cancel()

        body = "The form has changes that are not saved."
        if form.problems:
            body += "\nSome fields are invalid, so it cannot be saved as is:\n  " + "\n  ".join(form.problems[:8])
        self.push_screen(
            ChoiceDialog(f"Unsaved changes in {self.session.name}", body, [("s", "save"), ("d", "discard")]),
            answer,
        )

    def save_profile(self, then: Callable[[], Any] | None = None, save_as: bool = False) -> None:
        profile = self.form.validate()
        if profile is None:
            self._show_problems("Cannot save: the form has problems", self.form.problems)
            return
        s = self.session
        if save_as or s.bundled or s.path is None:
            from loratui.tui.widgets.dialogs import NameDialog

            if s.bundled:
                origin = origin_name(ProfileEntry(s.name, s.path, True))  # type: ignore[arg-type]
            else:
                origin = s.name if save_as else s.origin

            def named(name: str | None) -> None:
                if not name:
                    return
                path = save_user_profile(profile, name, origin=origin)
                self.session = ProfileSession(profile, path, name, False, origin)
                remember_last_profile(path)
                self.form.refresh_title()
                self.notify(f"saved {path}", title="profile saved")
                if then:
                    then()

            self.push_screen(
                NameDialog("Save the form as your profile named:", unique_name(s.name), check=new_name_problem), named
            )
            return
        save_profile(profile, s.path, header=profile_header(s.origin))
        self.session = ProfileSession(profile, s.path, s.name, False, s.origin)
        remember_last_profile(s.path)
        self.form.refresh_title()
        self.notify(f"saved {s.path}", title="profile saved", timeout=3)
        if then:
            then()

    def action_save_profile(self) -> None:
        if self._installed("form") is None:
            return
        self.save_profile()

    def action_save_profile_as(self) -> None:
        if self._installed("form") is None:
            return
        self.save_profile(save_as=True, then=self._refresh_profiles_screen)

    def _refresh_profiles_screen(self) -> None:
        from loratui.screens.profiles import ProfilesScreen

        if isinstance(self.screen, ProfilesScreen):
            self.screen.reload(highlight=self.session.path)

    def action_profiles(self) -> None:
        from loratui.screens.profiles import ProfilesScreen

        if self._installed("form") is None or isinstance(self.screen, ProfilesScreen):
            return
        self.push_screen(ProfilesScreen())

    def goto_section(self, section: str) -> None:
        self.action_form()
        self.form.focus_section(section)

    def goto_field(self, dotted: str) -> None:
        self.action_form()
        self.form.focus_field(dotted)

    def _show_problems(self, title: str, problems: list[str]) -> None:
        from loratui.tui.widgets.dialogs import ChoiceDialog

        def answer(key: str | None) -> None:
            if key == "g" and problems:
                dotted = problems[0].split(":", 1)[0].strip()
                self.goto_field(dotted)

        self.push_screen(ChoiceDialog(title, problems, [("g", "go to the first")]), answer)

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

    # ------------------------------------------------------------------ run
    @property
    def run_active(self) -> bool:
        return self.run_state is not None and not self.run_state.readonly and not self.run_state.done

    def run_scheduler_label(self) -> str:
        p = self.run_profile
        if p is None:
            return ""
        o = p.optimization
        text = o.lr_scheduler
        if o.lr_warmup_steps:
            w = o.lr_warmup_steps
            text += f", warmup {w:g}" if w >= 1 else f", warmup {w:.0%}"
        return text

    def action_start_run(self) -> None:
        if self._installed("form") is None:
            return
        if self.run_active:
            self.notify("a run is in progress: d shows it", severity="warning")
            self._show_dashboard()
            return
        form = self.form
        profile = form.validate()
        problems = form.problems + form.dataset_problems()
        if profile is None or problems:
            n = len(problems)
            self._show_problems(f"Cannot start: {n} problem{'s' if n > 1 else ''}", problems)
            return
        if self.session.bundled and self.session.name == "demo" and "~/.cache/loratui/demo" in profile.model.base_model:
            # the bundled demo's paths are placeholders: build the demo first
            self._start_after_demo = True
            if not self._demo_ready.is_set():
                self.notify("building the demo model and dataset (a few seconds)…", timeout=4)
                self._prepare_demo()
            return
        from loratui.engine.schema import resolve_paths
        from loratui.engine.train import final_path

        profile = resolve_paths(profile)
        if final_path(profile).exists():
            from loratui.tui.widgets.dialogs import ChoiceDialog

            def answer(key: str | None) -> None:
                if key == "o":
                    self.begin_run(profile, overwrite=True)
                elif key == "n":
                    self.goto_field("output.output_name")

            self.push_screen(
                ChoiceDialog(
                    "The final LoRA exists already",
                    f"{final_path(profile)}\nReplace it at the end of this run, or choose another output name?",
                    [("o", "overwrite"), ("n", "change the name")],
                ),
                answer,
            )
            return
        self.begin_run(profile)

    def begin_run(self, profile: Profile, overwrite: bool = False) -> None:
        """Start training ``profile`` (already validated) and show the dashboard."""
        self._tail_stop.set()  # stop watching another run, if we were
        state = RunState(profile_name=self.session.name, run_name=profile.output.output_name)
        state.add_log(f"starting {profile.output.output_name}: importing torch and the model libraries…")
        self.run_state = state
        self.run_profile = profile
        self.handle = None
        self.seen_end = False
        self.bridge = Bridge(self, state, self.bridge_interval)
        self._reset_dashboard()
        self._show_dashboard()
        self._run_worker(profile, overwrite)

    def _reset_dashboard(self) -> None:
        old = self._installed("dashboard")
        if old is not None:
            if self.screen is old:
                self.switch_screen("form") if self._installed("form") else None
            self.uninstall_screen("dashboard")

    @work(exclusive=True, group="run", exit_on_error=False)
    async def _run_worker(self, profile: Profile, overwrite: bool) -> None:
        bridge = self.bridge
        assert bridge is not None

        def start():
            from loratui.engine.run import start_run

            handle = start_run(profile, overwrite=overwrite)
            self.handle = handle  # set in the thread: a SIGHUP right now still finds it
            return handle

        try:
            handle = await asyncio.to_thread(start)
        except Exception as exc:  # an engine bug or an unwritable output folder
            bridge.feed(Failed(message=f"the run could not start: {type(exc).__name__}: {exc}"))
            return
        if bridge.state.paused:
            handle.control.pause()
        result = await bridge.follow(handle)
        self.seen_end = result is not None
        self._run_ended()

    def _run_ended(self) -> None:
        state = self.run_state
        if state is None:
            return
        if state.finished is not None and state.finished.path:
            self.notify(f"saved {state.finished.path}", title="training done", timeout=10)
        elif state.failed is not None:
            self.notify(state.failed.message + ("\n" + state.failed.hint if state.failed.hint else ""),
                        title="training failed", severity="error", timeout=15)
        if self.terminating:
            self.exit(0)
        if getattr(self, "_quit_after_run", False):
            self.exit(0)

    @on(RunUpdated)
    def _run_updated(self, event: RunUpdated) -> None:
        dash = self._installed("dashboard")
        if dash is not None and event.state is self.run_state:
            dash.update_from(event.state)
        self.refresh_run_badge()
        active = self.run_active
        if active != self._keys_for_active:  # a run started or ended: other keys apply
            self._keys_for_active = active
            self.refresh_keys()

    def refresh_keys(self) -> None:
        from loratui.tui.widgets.keybar import KeyBar

        for bar in self.screen.query(KeyBar):
            bar.refresh_keys()

    def refresh_run_badge(self) -> None:
        form = self._installed("form")
        if form is None or not getattr(form, "_ready", False) or self.screen is not form:
            return  # drawn when the form shows again (on_screen_resume)
        s = self.run_state
        text = ""
        if s is not None:
            if s.readonly and not s.done:
                text = "watching a run · d dashboard "
            elif not s.done:
                pct = f" {s.step / s.total_steps:.0%}" if s.total_steps and s.step else ""
                text = f"▶ {s.display_phase.replace('_', ' ')}{pct} · d dashboard "
            elif s.failed is not None:
                text = "✗ run failed · d dashboard "
            else:
                text = "✓ run done · d dashboard "
        set_text(form.query_one("#run-badge"), text)  # a fixed-width label: no relayout

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """Hide what cannot be done here: run controls when watching read-only,
        the form and its actions when only a watched run is open."""
        watching = self.run_state is not None and self.run_state.readonly
        if action in ("pause_resume", "save_now", "stop_run") and (watching or not self.run_active):
            return False if watching else None
        if action in ("form", "start_run", "save_profile", "save_profile_as", "profiles", "dataset", "captions") and (
            self._installed("form") is None
        ):
            return False
        return True

    # -- run controls ------------------------------------------------------------
    def _control(self):
        if not self.run_active:
            if self.run_state is not None and self.run_state.readonly:
                self.notify("read-only: this run is controlled where it was started", severity="warning")
            return None
        return self.handle.control if self.handle is not None else None

    def action_pause_resume(self) -> None:
        if not self.run_active or self.run_state is None:
            return
        state = self.run_state
        state.paused = not state.paused
        if self.handle is not None:
            (self.handle.control.pause if state.paused else self.handle.control.resume)()
        state.add_log("paused: the run waits before its next step" if state.paused else "resumed")
        assert self.bridge is not None
        self.bridge.touch()

    def action_save_now(self) -> None:
        control = self._control()
        if control is None or self.run_state is None:
            return
        control.save_now()
        self.run_state.requested = "save at the next step"
        self.run_state.add_log("save requested: an intermediate LoRA is written after the next step")
        assert self.bridge is not None
        self.bridge.touch()

    def action_stop_run(self, reason: str = "stop requested") -> None:
        control = self._control()
        if control is None or self.run_state is None:
            return
        control.stop()
        self.run_state.paused = False
        self.run_state.requested = "stopping: saving at the next step"
        self.run_state.add_log(f"{reason}: saving at the next step boundary, then ending")
        assert self.bridge is not None
        self.bridge.touch()

    def action_abort_run(self) -> None:
        control = self._control()
        if control is None or self.run_state is None:
            return
        control.abort()
        self.run_state.requested = "aborting"
        self.run_state.add_log("abort requested: ending without saving", "warning")
        assert self.bridge is not None
        self.bridge.touch()

    def action_interrupt(self) -> None:
        """Ctrl+C: asks before touching a run; without a run it quits (asking about unsaved changes)."""
        from loratui.tui.widgets.dialogs import ChoiceDialog

        if isinstance(self.screen, ChoiceDialog):
            return
        if not self.run_active:
            self.action_quit()
            return

        def answer(key: str | None) -> None:
            if key == "s":
                self.action_stop_run()
            elif key == "a":
                self.action_abort_run()

        self.push_screen(
            ChoiceDialog(
                "Stop the training run?",
                "s saves a LoRA at the next step and ends; a ends at once without saving; esc keeps training.",
                [("s", "stop & save"), ("a", "abort, no save")],
                id="interrupt-dialog",
            ),
            answer,
        )

    async def action_quit(self) -> None:
        from loratui.tui.widgets.dialogs import ChoiceDialog

        if self.run_active:

            def answer(key: str | None) -> None:
                if key in ("s", "a"):
                    self._quit_after_run = True
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
        if self._installed("form") is not None and getattr(self.form, "_ready", False):
            self.confirm_unsaved(lambda: self.exit(0))
            return
        self.exit(0)

    # ------------------------------------------------------------------ watching a run started elsewhere
    def watch_run(self, metrics_path: str | Path) -> None:
        path = Path(metrics_path)
        name = path.name.removesuffix(".metrics.jsonl")
        self.run_state = RunState(profile_name=str(path.parent), run_name=name, readonly=True, detail="reading the metrics file…")
        self.run_profile = None
        self.bridge = Bridge(self, self.run_state, self.bridge_interval)
        self._reset_dashboard()
        self._show_dashboard()
        self._tail_stop = threading.Event()
        self._tail_worker(path, self._tail_stop)

    @work(thread=True, exclusive=True, group="tail", exit_on_error=False)
    def _tail_worker(self, path: Path, stop: threading.Event) -> None:
        from textual.worker import get_current_worker

        worker = get_current_worker()  # cancelled when the app ends
        tail = MetricsTail(path)
        while not stop.is_set() and not worker.is_cancelled:
            events, reset = tail.read()
            if events or reset:
                self.post_message(EventsArrived(events, reset))
            stop.wait(0.25)

    @on(EventsArrived)
    def _events_arrived(self, event: EventsArrived) -> None:
        state, bridge = self.run_state, self.bridge
        if state is None or bridge is None or not state.readonly:
            return
        if event.reset:
            fresh = RunState(profile_name=state.profile_name, run_name=state.run_name, readonly=True)
            state.__dict__.update(fresh.__dict__)
            dash = self._installed("dashboard")
            if dash is not None:
                dash._log_seen = 0
                dash.query_one("#log").clear()
        bridge.feed_many(event.events)

    @work(thread=True, exclusive=True, group="live", exit_on_error=False)
    def _check_live_run(self) -> None:
        if not self.check_live_runs or self.run_active:
            return
        o = self.session.profile.output
        if not o.output_dir or not o.output_name:
            return
        path = Path(o.output_dir).expanduser() / f"{o.output_name}.metrics.jsonl"
        live = find_live_run(path)
        if live is not None:
            self.post_message(_LiveRunFound(live))

    @on(_LiveRunFound)
    def _on_live_run(self, event: _LiveRunFound) -> None:
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
                f"{live.describe()}\n{live.path}\nIt was started elsewhere (another session or `loratui train`). Watch it, read-only?",
                [("w", "watch it")],
            ),
            answer,
        )

    # ------------------------------------------------------------------ signals (SSH)
    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGTERM, self.handle_terminate)
            # SIGHUP with a plain handler: it runs at once (before Textual's input thread
            # can trip over the dead terminal) and points the standard streams elsewhere
            signal.signal(signal.SIGHUP, lambda signum, frame: self._on_sighup(loop))
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
            pass

    def _on_sighup(self, loop: asyncio.AbstractEventLoop) -> None:
        self.hung_up = True
        if self.owns_terminal:
            detach_terminal()
        try:
            loop.call_soon_threadsafe(self.handle_hangup)
        except RuntimeError:  # the loop is closing already
            pass

    def handle_hangup(self) -> None:
        """SIGHUP: the terminal is gone. A run goes on to its end (its progress to
        the run's log, see ``run_app``); without a run the app just ends."""
        if self._hangup_handled:
            return
        self._hangup_handled = True
        self.hung_up = True
        if self.owns_terminal:
            detach_terminal()
        if self.run_state is not None and not self.run_state.readonly and not self.run_state.done:
            self.run_state.add_log("terminal closed (SIGHUP): training goes on; progress goes to the run's log")
        self._tail_stop.set()
        self.exit(0)

    def handle_terminate(self) -> None:
        """SIGTERM: save at the next step boundary, then exit."""
        if self.run_active and self.handle is not None:
            self.terminating = True
            self.action_stop_run("SIGTERM")
        else:
            self.exit(0)


def detach_terminal() -> None:
    """Point stdin at a pipe that never speaks and stdout/stderr at /dev/null, so
    nothing blocks on or fails writing to a terminal that hung up."""
    try:
        r, w = os.pipe()
        os.dup2(r, 0)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        _keep.append(w)  # the write end stays open: reads wait instead of seeing EOF
    except OSError:
        pass


_keep: list[int] = []


def stop_input_thread(app: App) -> None:
    """After a hang-up Textual's shutdown may leave its (non-daemon) stdin reader
    running, which would keep the process alive after the run ends: tell it to stop
    and let a read in progress see end-of-file."""
    driver = getattr(app, "_lt_driver", None)
    event = getattr(driver, "exit_event", None)
    if event is not None:
        event.set()
    while _keep:
        try:
            os.close(_keep.pop())
        except OSError:
            pass


# --------------------------------------------------------------------------- entry points


def _finish_headless(app: LoraTuiApp) -> int:
    """After the app ended: a run that is still going (terminal hung up, or the app
    crashed) continues to its end; its progress goes to the run's log."""
    handle, state = app.handle, app.run_state
    if handle is None or state is None or state.readonly:
        return 0
    if state.done and app.seen_end:
        return 0 if state.finished is not None else 1
    from loratui.engine.train import log_path

    note = "terminal closed (SIGHUP); training goes on" if app.hung_up else "the app ended while training; training goes on"
    if not app.hung_up:
        try:
            print(f"loratui: the app ended while training; waiting for the run to end "
                  f"(progress in {log_path(handle.profile)})", file=sys.stderr)
        except OSError:  # the terminal is gone
            detach_terminal()
    result = continue_headless(handle, log_path(handle.profile), note=note, seen_end=app.seen_end)
    handle.join()
    return 0 if not isinstance(result, Failed) else 1


def run_app(profile_path: str | None) -> int:
    """Open the app (the ``loratui`` console script without a sub-command)."""
    try:
        app = LoraTuiApp(profile_path, install_signals=True, owns_terminal=True)
    except ProfileError as exc:
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
    if app.hung_up or app.handle is not None:
        stop_input_thread(app)
    code = _finish_headless(app)
    return code or (app.return_code or 0)


def run_watch(metrics_path: str | Path) -> int:
    """The read-only dashboard of a run started elsewhere (``loratui watch``)."""
    app = LoraTuiApp(watch_path=metrics_path, install_signals=True, owns_terminal=True)
    app.run()
    if app.hung_up:
        stop_input_thread(app)
    return app.return_code or 0
