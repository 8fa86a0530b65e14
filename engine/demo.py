"""The demo: a tiny SD-shaped model and a synthetic dataset, built locally.

`loratui demo` (and the app on first start) calls ``prepare_demo()``: once per
cache folder it builds a random-weight SD 1.x-shaped diffusers model
(engine/tiny.py) and 12 captioned 64×64 images, then writes a copy of the
bundled demo profile whose paths point at them.  Nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from loratui import profiles
from loratui.engine.fsutil import atomic_write_text

DEMO_VERSION = 1
BUNDLED_DEMO = Path(profiles.__file__).parent / "demo.toml"
PLACEHOLDER = "~/.cache/loratui/demo"


def demo_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("loratui")) / "demo"


def prepare_demo(root: Path | None = None, on_progress: Callable[[str], None] | None = None) -> Path:
    """Build what the demo needs (once) and return the ready profile's path."""
    root = Path(root) if root else demo_dir()
    say = on_progress or (lambda msg: None)
    marker = root / "built.json"
    built = False
    try:
        built = json.loads(marker.read_text())["version"] == DEMO_VERSION
    except (OSError, ValueError, KeyError):
        pass
    if not built:
        from loratui.engine import quiet_libraries
        from loratui.engine.synthetic import write_synthetic_dataset
        from loratui.engine.tiny import save_tiny_pipeline

        quiet_libraries()
        root.mkdir(parents=True, exist_ok=True)
        say("building the tiny demo model (random weights, no download)")
        save_tiny_pipeline(root / "tiny-sd1", "sd1", seed=0)
        say("writing the synthetic demo dataset")
        write_synthetic_dataset(root / "images", {"10_toy": 12}, size=(64, 64), seed=0)
        atomic_write_text(marker, json.dumps({"version": DEMO_VERSION}))
    profile_path = root / "demo.toml"
    text = BUNDLED_DEMO.read_text(encoding="utf-8").replace(PLACEHOLDER, str(root))
    atomic_write_text(profile_path, text)
    return profile_path
