"""`loratui watch OUTPUT_DIR` — follow a run started elsewhere (another session,
`loratui train`, a dropped SSH connection) from its metrics file, read-only.

The dashboard opens by default; ``--plain`` prints progress lines instead (no UI).
The metrics file is ``<output_dir>/<output_name>.metrics.jsonl``: one event per line,
appended as the run goes.  This module also holds the reading side used by the app:
``MetricsTail``, ``last_event``, ``find_live_run``, ``find_metrics_file``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loratui.engine.events import TERMINAL_EVENTS, Event, PhaseChanged, StepEvent, event_from_dict

NAME = "watch"
HELP = "follow a run started elsewhere: its dashboard, read-only, from OUTPUT_DIR's metrics file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="OUTPUT_DIR", help="the run's output folder (or its .metrics.jsonl file)")
    p.add_argument("--name", help="the run's output name, when the folder holds several runs (default: the newest)")
    p.add_argument("--plain", action="store_true", help="print progress lines instead of opening the dashboard")


def run(args: argparse.Namespace) -> int:
    target = Path(args.target).expanduser()
    if args.name:
        path = target / f"{args.name}.metrics.jsonl"
        if not path.is_file():
            print(f"loratui watch: {path}: no such metrics file — is --name the run's output name?", file=sys.stderr)
            return 2
    else:
        found = find_metrics_file(target)
        if found is None:
            what = "no such folder" if not target.exists() else "holds no *.metrics.jsonl file (no run wrote there yet)"
            print(f"loratui watch: {target}: {what}", file=sys.stderr)
            return 2
        path = found
    if args.plain:
        return follow_plain(path)
    from loratui.tui.app import run_watch  # the UI only when asked for

    return run_watch(path)


def follow_plain(path: Path, out=None, poll: float = 0.5, idle_exit: float | None = None) -> int:
    """Print the run's events as `loratui train` would, until it ends.
    ``idle_exit``: give up after that many seconds without a new event."""
    from loratui.engine.console import ConsolePrinter
    from loratui.engine.events import Failed

    printer = ConsolePrinter(out or sys.stdout)
    tail = MetricsTail(path)
    last = time.monotonic()
    while True:
        events, _reset = tail.read()
        for ev in events:
            printer(ev)
            if isinstance(ev, TERMINAL_EVENTS):
                return 1 if isinstance(ev, Failed) else 0
        if events:
            last = time.monotonic()
        elif idle_exit is not None and time.monotonic() - last > idle_exit:
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
            what = ev.phase.replace("_", " ")
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
