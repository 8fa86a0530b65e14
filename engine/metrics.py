"""The run's metrics file: ``<output_dir>/<output_name>.metrics.jsonl``, one
event per line as written by ``engine.events.event_to_dict``.  ``loratui
watch`` and the app's live-run detection read it."""

from __future__ import annotations

import json
from pathlib import Path

from loratui.engine.events import Event, event_to_dict
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
