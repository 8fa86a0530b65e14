"""A training run started from the form: starting it, following its events to
the dashboard, the controls (pause / resume, save now, stop, abort), and the
form's run badge.

``RunControl`` is a part of ``LoraTuiApp`` (a mixin): its methods run on the
app and use its ``run_state``, ``bridge`` and ``handle``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from textual import work

from loratui.engine.schema import Profile
from loratui.tui.bridge import Bridge, RunUpdated

# the engine's events and run state load with the first run, not before the first frame
if TYPE_CHECKING:
    from loratui.engine.events import Request


class RunControl:
    """The run and its controls (part of ``LoraTuiApp``)."""

    @property
    def run_active(self) -> bool:
        return self.run_state is not None and not self.run_state.readonly and not self.run_state.done

    @property
    def can_control(self) -> bool:
        """A run that takes pause / save / stop / abort: this app's own, or a
        watched one through its control file."""
        s = self.run_state
        if s is None or s.done:
            return False
        return not s.readonly or (s.controllable and self.watch_control is not None)

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

    # ------------------------------------------------------------------ start
    def action_start_run(self) -> None:
        if self._installed("form") is None:
            return
        if self.run_active:
            self.notify("a run is in progress: d shows it", severity="warning")
            self._show_dashboard()
            return
        form = self.form
        profile = form.validate()
        # the plan panel's checks when they are of the form as it is (else the run checks again itself)
        problems = form.problems + (form.plan_problems() if form.checks_settled else form.dataset_problems())
        if profile is None or problems:
            n = len(problems)
            self._show_problems(f"Cannot start: {n} problem{'s' if n > 1 else ''}", problems)
            return
        if self.session.bundled and self.session.name == "demo" and "~/.cache/loratui/demo" in profile.model.base_model:
            # the bundled demo's paths are placeholders: build the demo first
            self.start_after_demo = True
            if not self.demo_ready.is_set():
                self.notify("building the demo model and dataset (a few seconds)…", timeout=4)
                self._prepare_demo()
            return
        from loratui.engine.schema import resolve_paths
        from loratui.engine.training.paths import final_path

        profile = resolve_paths(profile)
        if final_path(profile).exists():
            self._ask_overwrite(profile, final_path(profile))
            return
        self.begin_run(profile)

    def _ask_overwrite(self, profile: Profile, final) -> None:
        from loratui.tui.widgets.dialogs import ChoiceDialog

        def answer(key: str | None) -> None:
            if key == "o":
                self.begin_run(profile, overwrite=True)
            elif key == "n":
                self.goto_field("output.output_name")

        self.push_screen(
            ChoiceDialog(
                "The final LoRA exists already",
                f"{final}\nReplace it at the end of this run, or choose another output name?",
                [("o", "overwrite"), ("n", "change the name")],
            ),
            answer,
        )

    def begin_run(self, profile: Profile, overwrite: bool = False) -> None:
        """Start training ``profile`` (already validated) and show the dashboard."""
        from loratui.engine.runstate import RunState

        self.tail_stop.set()  # stop watching another run, if we were
        if profile.compute.world_size > 1:
            self._launch_worker(profile, overwrite)
            return
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
            if old not in self.screen_stack:  # uninstalled is not removed: it and its timers would live on
                old.remove()

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
            from loratui.engine.events import Failed

            bridge.feed(Failed(message=f"the run could not start: {type(exc).__name__}: {exc}"))
            return
        if bridge.state.paused:
            from loratui.engine.events import Request

            handle.control.request(Request.PAUSE)
        result = await bridge.follow(handle)
        self.seen_end = result is not None
        self._run_ended()

    @work(thread=True, exclusive=True, group="launch", exit_on_error=False)
    def _launch_worker(self, profile: Profile, overwrite: bool) -> None:
        """More than one process: accelerate's launcher starts them in a session
        of their own (a dropped SSH link or quitting the app leaves them going);
        the dashboard follows the run's metrics file, its keys the control file."""
        from loratui.engine.launch import launch
        from loratui.engine.metrics import metrics_path_for

        metrics = metrics_path_for(profile)
        if metrics.exists() and not profile.output.resume:  # an earlier run's events are not this one's
            try:
                metrics.replace(metrics.with_name(metrics.name + ".1"))
            except OSError:
                pass
        n = profile.compute.world_size
        try:
            launched = launch(profile, overwrite=overwrite)
        except OSError as exc:
            self.call_from_thread(self.notify, f"output.output_dir: cannot prepare the run folder: {exc}",
                                  title="cannot start", severity="error", timeout=10)
            return
        self.launched = launched

        def follow() -> None:
            self.watch_run(metrics, detail=f"starting {n} processes (accelerate launch)…")
            state = self.run_state
            state.profile_name = self.session.name
            state.add_log(f"started {n} processes through accelerate launch; their output: {launched.log_path}")
            state.add_log("they run in a session of their own: quitting the app or a dropped SSH link leaves them "
                          f"going — `loratui watch {profile.output.output_dir}` follows them again")

        self.call_from_thread(follow)
        launched.wait()
        launched.finish()  # a run that could not say how it ended: the launcher says it in the metrics file

    def _run_ended(self) -> None:
        state = self.run_state
        if state is None:
            return
        if state.finished is not None and state.finished.path:
            self.notify(f"saved {state.finished.path}", title="training done", timeout=10)
        elif state.failed is not None:
            self.notify(state.failed.message + ("\n" + state.failed.hint if state.failed.hint else ""),
                        title="training failed", severity="error", timeout=15)
        if self.terminating or self.quit_after_run:
            self.exit(0)

    # ------------------------------------------------------------------ drawing
    def on_run_updated(self, event: RunUpdated) -> None:
        dash = self._installed("dashboard")
        if dash is not None and event.state is self.run_state:
            dash.update_from(event.state)
        self.refresh_run_badge()
        active = self.run_active
        if active != self.keys_for_active:  # a run started or ended: other keys apply
            self.keys_for_active = active
            self.refresh_keys()

    def refresh_keys(self) -> None:
        from loratui.tui.widgets.keybar import KeyBar

        for bar in self.screen.query(KeyBar):
            bar.refresh_keys()

    def run_badge(self) -> str:
        """The form's note on the run ("" without one)."""
        s = self.run_state
        if s is None:
            return ""
        if s.readonly and not s.done:
            return "watching a run · d dashboard "
        if not s.done:
            pct = f" {s.step / s.total_steps:.0%}" if s.total_steps and s.step else ""
            return f"▶ {s.display_phase.replace('_', ' ')}{pct} · d dashboard "
        if s.failed is not None:
            return "✗ run failed · d dashboard "
        return "✓ run done · d dashboard "

    def refresh_run_badge(self) -> None:
        form = self._installed("form")
        if form is None or not form.ready or self.screen is not form:
            return  # drawn when the form shows again (on_screen_resume)
        form.show_run_badge(self.run_badge())

    # ------------------------------------------------------------------ controls
    def _control(self):
        if not self.can_control:
            if self.run_state is not None and self.run_state.readonly and not self.run_state.done:
                self.notify("read-only: this run is controlled where it was started", severity="warning")
            return None
        if self.run_state is not None and self.run_state.readonly:
            return self.watch_control
        return self.handle.control if self.handle is not None else None

    def request_run(self, req: Request, reason: str = "") -> None:
        """Ask the running job for ``req`` (save now, stop, abort) and show it."""
        control = self._control()
        if control is None or self.run_state is None:
            return
        try:
            control.request(req)
        except OSError as exc:  # a watched run's control file could not be written
            self.notify(f"cannot ask the run: {exc}", severity="error", timeout=8)
            return
        self.run_state.ask(req, reason)
        assert self.bridge is not None
        self.bridge.touch()

    def action_pause_resume(self) -> None:
        # works before the engine has started too: the worker pauses it then
        if not self.can_control or self.run_state is None:
            return
        from loratui.engine.events import Phase, Request

        # a watched run may have been paused from elsewhere: its events say so
        req = Request.RESUME if self.run_state.paused or self.run_state.phase == Phase.PAUSED else Request.PAUSE
        if self.run_state.readonly:
            self.request_run(req)
            return
        if self.handle is not None:
            self.handle.control.request(req)
        self.run_state.ask(req)
        assert self.bridge is not None
        self.bridge.touch()

    def action_save_now(self) -> None:
        from loratui.engine.events import Request

        self.request_run(Request.SAVE)

    def action_stop_run(self, reason: str = "stop requested") -> None:
        from loratui.engine.events import Request

        self.request_run(Request.STOP, reason)

    def action_abort_run(self) -> None:
        from loratui.engine.events import Request

        self.request_run(Request.ABORT)

    async def action_interrupt(self) -> None:
        """Ctrl+C: asks before touching a run; without a run it quits (asking about unsaved changes)."""
        from loratui.tui.widgets.dialogs import ChoiceDialog

        if isinstance(self.screen, ChoiceDialog):
            return
        if not self.run_active:
            await self.action_quit()  # a coroutine: called without await, ctrl+c did nothing
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
