"""When the terminal goes away: SIGHUP / SIGTERM handling, and a run that goes
on after the app has ended (its progress to the run's log).

Textual handles no SIGHUP/SIGTERM itself: a dropped SSH session would kill the
process and the run with it.  ``SignalHandling`` is a part of ``LoraTuiApp`` (a
mixin); ``finish_headless`` runs after ``App.run()`` returns.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

# the engine's events load with the first run, not before the app's first frame
if TYPE_CHECKING:
    from loratui.engine.events import Event


class SignalHandling:
    """SIGHUP (the terminal hung up) and SIGTERM (part of ``LoraTuiApp``)."""

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
        self.tail_stop.set()
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


def stop_input_thread(app) -> None:
    """After a hang-up Textual's shutdown may leave its (non-daemon) stdin reader
    running, which would keep the process alive after the run ends: tell it to stop
    and let a read in progress see end-of-file."""
    driver = app.lt_driver
    event = getattr(driver, "exit_event", None)
    if event is not None:
        event.set()
    while _keep:
        try:
            os.close(_keep.pop())
        except OSError:
            pass


def finish_headless(app) -> int:
    """After the app ended: a run that is still going (terminal hung up, or the app
    crashed) continues to its end; its progress goes to the run's log."""
    handle, state = app.handle, app.run_state
    if handle is None or state is None or state.readonly:
        return 0
    if state.done and app.seen_end:
        return 0 if state.finished is not None else 1
    from loratui.engine.training.paths import log_path

    note = "terminal closed (SIGHUP); training goes on" if app.hung_up else "the app ended while training; training goes on"
    if not app.hung_up:
        try:
            print(f"loratui: the app ended while training; waiting for the run to end "
                  f"(progress in {log_path(handle.profile)})", file=sys.stderr)
        except OSError:  # the terminal is gone
            detach_terminal()
    from loratui.engine.events import Failed

    result = continue_headless(handle, log_path(handle.profile), note=note, seen_end=app.seen_end)
    handle.join()
    return 0 if not isinstance(result, Failed) else 1


def continue_headless(handle, log_path: str | Path, note: str = "", *, seen_end: bool = False) -> Event | None:
    """Follow ``handle`` to its end, writing plain progress lines to ``log_path``.

    Used when the terminal is gone: the training thread goes on, and what the
    dashboard would have drawn is appended to the run's log instead.
    ``seen_end``: the UI already consumed the terminal event."""
    from loratui.engine.console import ConsolePrinter
    from loratui.engine.events import Request

    log_path = Path(log_path)
    last = handle.result
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "a", encoding="utf-8")
    except OSError:
        out = open(os.devnull, "w")
    import threading

    if threading.current_thread() is threading.main_thread():
        # the app's handlers went with its event loop: SIGTERM still saves at the next step
        signal.signal(signal.SIGTERM, lambda *_: handle.control.request(Request.STOP))
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
