"""Bytes written to the terminal per second of steady training (target ≤ 2 KB/s).

The app trains a tiny model on a pseudo-terminal with the dashboard open; every
byte it writes is counted with its arrival time.  The window is the steady part
of training: from the 20th step to 10 steps before the end (no phase changes).

    python bench/tui_bytes.py [--steps 1200] [--size 120x40]
    python bench/tui_bytes.py --steps 300 --size 120x40 --samples-every 100   # with sample images arriving

With ``--samples-every N`` the run renders a sample every N steps: the bytes of
the window include each new picture (sent once), and the bytes per sample are
printed too. ``--graphics kitty`` (or ``sixel``) has the app send pictures as
terminal graphics, as on a terminal that has them (``LORATUI_GRAPHICS``).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from tui_common import PtyApp, app_code, app_env, metrics, tiny_setup, wait_for


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--size", default="120x40,80x24")
    ap.add_argument("--samples-every", type=int, default=0, help="render a sample every N steps (0: no samples)")
    ap.add_argument("--graphics", default="halfblock", choices=("halfblock", "kitty", "sixel"),
                    help="how the dashboard sends sample pictures")
    args = ap.parse_args()
    extra = {}
    if args.samples_every:
        extra = {"sample_every_n_steps": args.samples_every, "sample_prompts": "shapes, a red circle --s 2 --d 1"}
    tmp = Path(tempfile.mkdtemp(prefix="loratui-bench-"))
    try:
        for n, size in enumerate(args.size.split(",")):
            cols, rows = (int(v) for v in size.split("x"))
            name = f"bytes{n}"
            profile = tiny_setup(tmp, args.steps, name, **extra)
            # the wall clock of the events ↔ the perf_counter of the bytes
            offset = time.time() - time.perf_counter()
            env = {**app_env(tmp), "LORATUI_GRAPHICS": args.graphics}
            app = PtyApp(app_code(profile), env, cols, rows)
            try:
                assert app.wait_text(b"profile:", 0, 30), "no first frame"
                time.sleep(0.3)
                app.send(b"\x12")
                path = tmp / f"out-{name}" / f"{name}.metrics.jsonl"
                assert wait_for(lambda: metrics(path) and metrics(path)[-1]["type"] in ("Finished", "Failed"), 900)
                steps = [e for e in metrics(path) if e["type"] == "StepEvent"]
                a, b = steps[20]["time"] - offset, steps[-10]["time"] - offset
                nbytes = app.bytes_between(a, b)
                its = (len(steps) - 30) / (b - a)
                print(f"{size} ({args.graphics}): {nbytes / (b - a):7.0f} B/s over {b - a:.1f} s of steady training "
                      f"({its:.1f} steps/s; {nbytes / (len(steps) - 30):.0f} B/step)   target ≤ 2048 B/s", flush=True)
                if args.samples_every:
                    _sample_bytes(app, metrics(path), offset, a, b)
            finally:
                app.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sample_bytes(app, events: list[dict], offset: float, a: float, b: float) -> None:
    """The bytes of the second after each sample inside the window, against a quiet second."""
    times = [e["time"] - offset for e in events if e["type"] == "SampleSaved" and a <= e["time"] - offset < b - 1]
    if not times:
        print("  no sample arrived inside the window: use more --steps or a smaller --samples-every")
        return
    burst = [app.bytes_between(t, t + 1.0) for t in times]
    print(f"  {len(times)} samples in the window; the second after a sample: {sum(burst) / len(burst):.0f} B "
          f"(max {max(burst)} B) — each picture is sent once", flush=True)


if __name__ == "__main__":
    main()
