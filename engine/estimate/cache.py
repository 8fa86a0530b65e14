"""The count of a configuration, cached in this process and on disk.

A meta-device count of a full-size SDXL U-Net takes about a second on a small
CPU (see bench/estimate.py); it depends only on the ``RunShape``, so it is kept
in ``<user cache>/estimates.json`` (a few hundred bytes per configuration)
and reused by the next run of the app.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

from loratui.engine.estimate.meta import Counted

VERSION = 4  # bump when the counting changes
_lock = threading.Lock()
_memory: dict = {}


def cache_file() -> Path:
    """``LORATUI_CACHE_DIR`` or the user cache folder, ``estimates.json``."""
    import os

    override = os.environ.get("LORATUI_CACHE_DIR")
    if override:
        return Path(override) / "estimates.json"
    import platformdirs

    return Path(platformdirs.user_cache_dir("loratui")) / "estimates.json"


def _key(shape) -> str:
    d = dataclasses.asdict(shape)
    cfg = Path(d["config_dir"])
    try:  # the configs' contents, not only their folder
        d["config_mtime"] = max((p.stat().st_mtime_ns for p in cfg.glob("*/config.json")), default=0)
    except OSError:
        d["config_mtime"] = 0
    return json.dumps([VERSION, d], sort_keys=True)


def _load() -> dict:
    try:
        data = json.loads(cache_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _to_counted(d: dict) -> Counted:
    c = Counted(**{k: v for k, v in d.items() if k in Counted.__dataclass_fields__})
    c.lora_shapes = [(tuple(s), bool(t), bool(z)) for s, t, z in c.lora_shapes]
    return c


def counted_for(shape) -> Counted:
    """The count of ``shape`` (batch 1), from the caches or counted now."""
    key = _key(shape)
    with _lock:
        if key in _memory:
            return _memory[key]
        stored = _load().get(key)
    if stored is not None:
        try:
            c = _to_counted(stored)
        except (TypeError, ValueError):
            c = None
        if c is not None:
            with _lock:
                _memory[key] = c
            return c
    from loratui.engine.estimate.model import count_run

    c = count_run(shape)
    with _lock:
        _memory[key] = c
        data = _load()
        data[key] = dataclasses.asdict(c)
        if len(data) > 200:
            data = dict(list(data.items())[-200:])
        try:
            from loratui.engine.fsutil import atomic_write_text

            cache_file().parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cache_file(), json.dumps(data))
        except OSError:
            pass  # a cache: the next count is only slower
    return c
