"""Engine events → Textual messages, coalesced.

The engine may report hundreds of steps a second; a terminal over a slow SSH
link wants a few redraws.  Events are folded into one ``RunState`` as they
arrive (cheap), and a ``RunUpdated`` message — which replaces any older one
still queued (toolong's ``can_replace``) — is posted at most ``interval``
seconds apart.  Terminal events (Finished, Failed) are posted at once.

The folding itself (``RunState``) is engine code (``loratui.engine.runstate``),
and so is reading a metrics file (``loratui.engine.metrics``); this is only the
Textual side.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from textual.message import Message

# the engine's run modules (events, the run state) load with the first run, not
# before the app's first frame
if TYPE_CHECKING:
    from loratui.engine.events import Event
    from loratui.engine.runstate import RunState

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
        from loratui.engine.events import TERMINAL_EVENTS

        self._terminal = TERMINAL_EVENTS
        self.target = target
        self.state = state
        self.coalescer = Coalescer(lambda: target.post_message(RunUpdated(state)), interval)

    def feed(self, ev: Event) -> None:
        self.state.apply(ev)
        if isinstance(ev, self._terminal):
            self.coalescer.flush()
        else:
            self.coalescer.poke()

    def feed_many(self, events: list[Event]) -> None:
        terminal = False
        for ev in events:
            self.state.apply(ev)
            terminal = terminal or isinstance(ev, self._terminal)
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
                if isinstance(batch[-1], self._terminal):
                    return batch[-1]
            await asyncio.sleep(poll)
