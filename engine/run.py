"""Start a training run in the background and follow it.

    handle = start_run(profile)
    async for ev in handle.events():   # or: for ev in handle.iter_events()
        ...
    handle.control.pause() / resume() / save_now() / stop() / abort()

The training itself runs in a worker thread (torch releases the GIL in its
kernels); events go to an unbounded queue so a slow consumer never stalls it,
and (written by the run itself) to its metrics file, one JSON line per event,
so ``loratui watch`` can follow from elsewhere.  Importing this module does not import torch.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from loratui.engine.events import TERMINAL_EVENTS, Control, Event
from loratui.engine.schema import Profile


class RunHandle:
    def __init__(self, profile: Profile, control: Control, metrics_path: Path):
        self.profile = profile
        self.control = control
        self.metrics_path = metrics_path
        self.result: Event | None = None
        self._q: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self.thread: threading.Thread | None = None

    # -- producer side (training thread) ---------------------------------------
    def emit(self, ev: Event) -> None:
        if isinstance(ev, TERMINAL_EVENTS):
            self.result = ev
        self._q.put(ev)
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # loop closed
                pass

    # -- consumer side -------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.result is not None

    async def events(self) -> AsyncIterator[Event]:
        """Every event in order; ends after Finished or Failed."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while True:
            try:
                ev = self._q.get_nowait()
            except queue.Empty:
                self._wake.clear()
                if self._q.empty():
                    await self._wake.wait()
                continue
            yield ev
            if isinstance(ev, TERMINAL_EVENTS):
                return

    def iter_events(self, timeout: float | None = None) -> Iterator[Event]:
        """Blocking iteration (headless use); ends after Finished or Failed."""
        while True:
            ev = self._q.get(timeout=timeout)
            yield ev
            if isinstance(ev, TERMINAL_EVENTS):
                return

    def join(self, timeout: float | None = None) -> Event | None:
        if self.thread is not None:
            self.thread.join(timeout)
        return self.result


def start_run(
    profile: Profile,
    *,
    overwrite: bool = False,
    control: Control | None = None,
    resume: str | None = None,
) -> RunHandle:
    """Start training ``profile`` in a background thread and return at once."""
    from loratui.engine.train import run_training

    from loratui.engine.metrics import metrics_path_for

    control = control or Control()
    handle = RunHandle(profile, control, metrics_path_for(profile))

    def target() -> None:
        run_training(profile, handle.emit, control, overwrite=overwrite, resume=resume)

    handle.thread = threading.Thread(target=target, name="loratui-train", daemon=False)
    handle.thread.start()
    return handle
