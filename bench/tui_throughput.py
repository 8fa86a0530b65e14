"""Training throughput with the dashboard open ÷ headless (target ≥ 0.99).

The same tiny SD 1.x run, in the same kind of process (a fresh Python started from
a shell): headless with `loratui train`, and in the app on a 120×40 pseudo-terminal
(started with ctrl+r, the dashboard drawing as it trains).  Rounds alternate so
that machine noise hits both.  Throughput is steps ÷ the engine's own training
time (the Finished event: model loading and latent caching excluded).

    python bench/tui_throughput.py [--steps 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tui_common import REPO, PtyApp, app_code, app_env, metrics, tiny_setup, wait_for


def finished(path: Path) -> dict | None:
    from loratui.engine.metrics import last_event
    from loratui.engine.events import Failed, Finished, event_to_dict

    ev = last_event(path)  # reads only the file's end: the watcher must not load the machine
    return event_to_dict(ev) if isinstance(ev, (Finished, Failed)) else None


def headless(tmp: Path, steps: int, name: str) -> float:
    profile = tiny_setup(tmp, steps, name)
    env = app_env(tmp)
    subprocess.run([sys.executable, "-m", "loratui.engine.cli", "train", str(profile)], cwd=REPO, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    ev = finished(tmp / f"out-{name}" / f"{name}.metrics.jsonl")
    assert ev and ev["type"] == "Finished", ev
    return ev["steps"] / ev["elapsed"]


def main_thread_cpu(pid: int) -> float:
    """CPU seconds used so far by the process's main thread (the UI's)."""
    fields = open(f"/proc/{pid}/task/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def in_app(tmp: Path, steps: int, name: str) -> tuple[float, float]:
    """(steps/s, share of one core the UI thread used while training)."""
    profile = tiny_setup(tmp, steps, name)
    app = PtyApp(app_code(profile), app_env(tmp))
    try:
        assert app.wait_text(b"profile:", 0, 30), "no first frame"
        time.sleep(0.3)
        app.send(b"\x12")  # ctrl+r
        path = tmp / f"out-{name}" / f"{name}.metrics.jsonl"
        assert wait_for(lambda: any(e["type"] == "StepEvent" for e in metrics(path)), 120), "no training"
        cpu0, t0 = main_thread_cpu(app.pid), time.monotonic()
        while finished(path) is None:  # a slow poll, as the headless side has none
            time.sleep(0.5)
            assert time.monotonic() - t0 < 600, "the run did not finish"
        ui = (main_thread_cpu(app.pid) - cpu0) / (time.monotonic() - t0)
        ev = finished(path)
        assert ev["type"] == "Finished", ev
        return ev["steps"] / ev["elapsed"], ui
    finally:
        app.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="loratui-bench-"))
    h, t, ui = [], [], []
    try:
        tiny_setup(tmp, args.steps, "warm")
        for r in range(args.rounds):
            h.append(headless(tmp, args.steps, f"headless{r}"))
            its, cpu = in_app(tmp, args.steps, f"tui{r}")
            t.append(its)
            ui.append(cpu)
            print(f"round {r + 1}: headless {h[-1]:.2f} it/s   app {t[-1]:.2f} it/s   "
                  f"(UI thread {cpu:.1%} of a core)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    hm, tm = statistics.median(h), statistics.median(t)
    print(f"headless median {hm:.2f} it/s   app (dashboard open) median {tm:.2f} it/s   "
          f"ratio {tm / hm:.3f}   ({args.steps} steps × {args.rounds} rounds; target ≥ 0.99; cpus {os.cpu_count()})")
    print(f"the UI thread used {statistics.median(ui):.1%} of one core while training (median)")


if __name__ == "__main__":
    main()
