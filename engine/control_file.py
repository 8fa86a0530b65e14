"""A run's control channel: ``<output_dir>/<output_name>.control.jsonl``.

Whoever is not the run's own process — ``loratui watch`` in another SSH
session, the app following a multi-GPU run it launched, the launcher passing
on Ctrl+C — appends one JSON line per request (``{"request": "pause"}``, one of
``Request``); the run's main process follows the file from where it stood when
the run started (older lines are never replayed) and hands each request to its
``Control``. One ``write`` of a short line with O_APPEND: lines from several
writers never interleave.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from loratui.engine.events import Control, Request

SUFFIX = ".control.jsonl"


def control_path(output_dir: str | Path, output_name: str) -> Path:
    return Path(output_dir).expanduser() / f"{output_name}{SUFFIX}"


def control_path_for_metrics(metrics_path: str | Path) -> Path:
    """The control file beside a run's ``<name>.metrics.jsonl``."""
    p = Path(metrics_path)
    return p.with_name(p.name.removesuffix(".metrics.jsonl") + SUFFIX)


def send(path: str | Path, request: Request | str, reason: str = "") -> None:
    """Ask the run that follows ``path`` for ``request`` (raises OSError when the folder is not writable)."""
    line = json.dumps({"request": Request(request).value, "time": time.time(), "pid": os.getpid(), "reason": reason}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


class FileControl:
    """A run's controls from another process: ``request`` appends to its control file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def request(self, req: Request | str, reason: str = "") -> None:
        send(self.path, req, reason)


class ControlFileFollower:
    """Hands the requests appended to ``path`` to ``control``, from a thread."""

    def __init__(self, path: str | Path, control: Control, poll: float = 0.25, from_start: bool = False):
        """``from_start``: the file was made for this run (by the launcher), so
        what it holds was asked of this run before it could listen."""
        self.path = Path(path)
        self.control = control
        self.poll = poll
        self._stop = threading.Event()
        try:
            self.offset = 0 if from_start else self.path.stat().st_size  # what was asked before this run is not for it
        except OSError:
            self.offset = 0
        self._partial = b""
        self.thread = threading.Thread(target=self._run, name="loratui-control-file", daemon=True)

    def start(self) -> "ControlFileFollower":
        self.thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(2.0)

    def read(self) -> list[Request]:
        """The requests appended since the last read (also handed to the control)."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self.offset:  # replaced: read it from the start
            self.offset, self._partial = 0, b""
        if size == self.offset:
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(size - self.offset)
        self.offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        out = []
        for raw in lines:
            try:
                req = Request(json.loads(raw)["request"])
            except (ValueError, KeyError, TypeError):
                continue  # not ours: ignored
            self.control.request(req)
            out.append(req)
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            self.read()
