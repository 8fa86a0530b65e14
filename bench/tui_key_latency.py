"""Key press → screen latency while a run trains on the CPU (target p95 ≤ 50 ms).

The app runs on a 120×40 pseudo-terminal; a tiny model trains on the CPU (the
training thread competes with the UI for the interpreter and the cores).  Then,
many times over, a key is written to the terminal and the clock stops when the
terminal has received what that key changes on screen:

* typing — a letter typed into a form field, until its echo arrives;
* switching — `f` (dashboard → form) and `d` (form → dashboard), until the new
  screen's text arrives (a full redraw).

    python bench/tui_key_latency.py [--presses 40]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from tui_common import PtyApp, app_code, app_env, metrics, tiny_setup, wait_for


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def report(name: str, values: list[float]) -> None:
    ms = [v * 1000 for v in values]
    print(f"{name:<10} p50 {pct(ms, 0.5):6.1f} ms   p95 {pct(ms, 0.95):6.1f} ms   max {max(ms):6.1f} ms   "
          f"({len(ms)} presses; target p95 ≤ 50 ms)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presses", type=int, default=40)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="loratui-bench-"))
    profile = tiny_setup(tmp, 100000, "keys")
    app = PtyApp(app_code(profile), app_env(tmp))
    switching, typing = [], []
    try:
        assert app.wait_text(b"profile:", 0, 30), "no first frame"
        time.sleep(0.3)
        app.send(b"\x12")  # ctrl+r: train
        path = tmp / "out-keys" / "keys.metrics.jsonl"
        assert wait_for(lambda: sum(e["type"] == "StepEvent" for e in metrics(path)) >= 20, 120), "no training"
        for _ in range(args.presses // 2):
            time.sleep(0.15)
            t = app.send(b"f")
            got = app.wait_text(b"Start training", t, 5)
            switching.append(got - t if got else 5.0)
            time.sleep(0.15)
            t = app.send(b"d")
            got = app.wait_text(b"learning rate", t, 5)
            switching.append(got - t if got else 5.0)
        steps = sum(e["type"] == "StepEvent" for e in metrics(path))
        # typing: the VAE field of the form (empty), one letter at a time
        app.send(b"f")
        time.sleep(0.5)
        app.send(b"\t\t")  # base model → VAE
        time.sleep(0.5)
        typed = b""
        for _ in range(args.presses):
            time.sleep(0.1)
            typed += b"q"
            t = app.send(b"q")
            got = app.wait_text(typed, t, 5)
            typing.append(got - t if got else 5.0)
        steps = sum(e["type"] == "StepEvent" for e in metrics(path)) - steps
    finally:
        app.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"training went on meanwhile ({steps} steps while typing)")
    report("switching", switching)
    report("typing", typing)


if __name__ == "__main__":
    main()
