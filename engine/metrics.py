"""The run's metrics file: ``<output_dir>/<output_name>.metrics.jsonl``, one
event per line as written by ``engine.events.event_to_dict``, appended as the
run goes.

Writing side: ``MetricsWriter`` (the run).  Reading side: ``MetricsTail``
(follow the file), ``last_event``, ``find_live_run``, ``find_metrics_file`` and
``follow_plain`` — what ``loratui watch`` and the app's live-run detection use.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loratui.engine.events import TERMINAL_EVENTS, Event, PhaseChanged, StepEvent, event_from_dict, event_to_dict
from loratui.engine.schema import Profile


def metrics_path_for(profile: Profile) -> Path:
    o = profile.output
    return Path(o.output_dir) / f"{o.output_name}.metrics.jsonl"


class MetricsWriter:
    """Appends events as JSON lines, flushed per line so a watcher sees them at
    once. Events are held in memory until ``release()`` (called once the run
    has passed its preflight checks), so a run refused at the start touches no
    file. A fresh run moves an older metrics file to ``.jsonl.1``; write errors
    never stop training."""

    def __init__(self, path: Path, fresh: bool):
        self.path = path
        self._fh = None
        self._fresh = fresh
        self._held: list[Event] | None = []

    def release(self) -> None:
        held, self._held = self._held or [], None
        for ev in held:
            self.write(ev)

    def write(self, ev: Event) -> None:
        if self._held is not None:
            self._held.append(ev)
            return
        if self._fh is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if self._fresh and self.path.exists():
                    self.path.replace(self.path.with_name(self.path.name + ".1"))
                self._fh = open(self.path, "w" if self._fresh else "a", encoding="utf-8")
            except OSError:
                return
        try:
            self._fh.write(json.dumps(event_to_dict(ev), ensure_ascii=False) + "\n")
            self._fh.flush()
        except OSError:
            pass

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class NullWriter:
    """The metrics of a process that is not the run's main one: written by rank 0 only."""

    def release(self) -> None:
        pass

    def write(self, ev: Event) -> None:
        pass

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- reading


def follow_plain(path: Path, out=None, poll: float = 0.5, idle_exit: float | None = None) -> int:
    """Print the run's events as `loratui train` would, until it ends.
    ``idle_exit``: give up after that many seconds without a new event."""
    from loratui.engine.console import ConsolePrinter
    from loratui.engine.events import Failed

    printer = ConsolePrinter(out or sys.stdout)
    tail = MetricsTail(path)
    last = time.monotonic()
    last_event = None
    while True:
        events, _reset = tail.read()
        for ev in events:
            printer(ev)
        if events:  # read on at once: the file may hold more
            last_event, last = events[-1], time.monotonic()
            continue
        # the end is the file's last event: a resumed run appends to the file its earlier attempt ended
        if isinstance(last_event, TERMINAL_EVENTS):
            return 1 if isinstance(last_event, Failed) else 0
        if idle_exit is not None and time.monotonic() - last > idle_exit:
            return 3
        time.sleep(poll)


class MetricsTail:
    """Reads the events appended to a metrics file since the last call.

    A file that shrank or was replaced (a new run of the same name) starts over;
    a half-written last line waits for its newline; lines that do not parse are
    skipped."""

    def __init__(self, path: str | Path, max_bytes: int = 8 << 20):
        self.path = Path(path)
        self.offset = 0
        self.ino: int | None = None
        self.partial = b""
        self.max_bytes = max_bytes
        self.bad_lines = 0

    def read(self) -> tuple[list[Event], bool]:
        try:
            st = os.stat(self.path)
        except OSError:
            return [], False
        reset = False
        if (self.ino is not None and st.st_ino != self.ino) or st.st_size < self.offset:
            self.offset, self.partial, reset = 0, b"", True
        self.ino = st.st_ino
        if st.st_size == self.offset:
            return [], reset
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read(self.max_bytes)
        except OSError:
            return [], reset
        self.offset += len(chunk)
        data = self.partial + chunk
        lines = data.split(b"\n")
        self.partial = lines.pop()
        events = []
        for line in lines:
            if not line.strip():
                continue
            try:
                ev = event_from_dict(json.loads(line))
            except (ValueError, TypeError, KeyError):
                ev = None
            if ev is None:
                self.bad_lines += 1
            else:
                events.append(ev)
        return events, reset


def last_event(path: str | Path, tail_bytes: int = 256 << 10) -> Event | None:
    """The last complete event of a metrics file (reads only its end)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - tail_bytes))
            data = fh.read()
    except OSError:
        return None
    for line in reversed(data.split(b"\n")):
        if not line.strip():
            continue
        try:
            ev = event_from_dict(json.loads(line))
        except (ValueError, TypeError, KeyError):
            continue
        if ev is not None:
            return ev
    return None


@dataclass(frozen=True)
class LiveRun:
    path: Path
    last: Event
    age: float  # seconds since the file was written

    def describe(self) -> str:
        ev = self.last
        what = ""
        if isinstance(ev, StepEvent):
            what = f"step {ev.step:,}/{ev.total_steps:,}"
        elif isinstance(ev, PhaseChanged):
            what = ev.phase.label
        return f"{self.path.name}: {what or type(ev).__name__}, written {int(self.age)} s ago"


def find_live_run(path: str | Path, stale_after: float = 600.0) -> LiveRun | None:
    """A run that is still writing ``path``: its last event is not Finished/Failed
    and the file changed within ``stale_after`` seconds."""
    path = Path(path)
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return None
    if age > stale_after:
        return None
    ev = last_event(path)
    if ev is None or isinstance(ev, TERMINAL_EVENTS):
        return None
    return LiveRun(path, ev, max(0.0, age))


def find_metrics_file(target: str | Path) -> Path | None:
    """``target`` is a metrics file, or a folder holding some: the newest one."""
    target = Path(target).expanduser()
    if target.is_file():
        return target
    try:
        files = [p for p in target.glob("*.metrics.jsonl") if p.is_file()]
    except OSError:
        return None
    return max(files, key=lambda p: p.stat().st_mtime) if files else None
