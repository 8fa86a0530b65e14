"""Time from launching `loratui PROFILE.toml` to its first frame (target ≤ 0.5 s).

The app runs on a fresh pseudo-terminal (120×40) as a user would start it; the
clock starts before the process is forked and stops when the terminal has
received the form's title line.  Python's own start-up and a bare one-widget
Textual app's first frame are printed for reference (the floor on this machine),
with the ratio to the latter.

    python bench/tui_first_frame.py [--runs 7]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from tui_common import PtyApp, app_env


# the floor: Python, Textual's import and one frame of a one-widget app
PLAIN_TEXTUAL_APP = """
from textual.app import App
from textual.widgets import Static
class Plain(App):
    def compose(self):
        yield Static("profile: plain")
Plain().run()
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="loratui-bench-"))
    from loratui.engine.userdirs import bundled_profiles_dir

    profile = tmp / "mine.toml"
    shutil.copy(bundled_profiles_dir() / "sd15-character.toml", profile)
    env = app_env(tmp)
    code = f"from loratui.tui.cli import main; raise SystemExit(main([{str(profile)!r}]))"
    firsts, bare, plain = [], [], []
    try:
        for _ in range(args.runs):
            p = PtyApp("print('ready', flush=True)", env)
            t = p.wait_text(b"ready", 0, 10)
            bare.append(t - p.t0 if t else float("nan"))
            p.close()
            p = PtyApp(PLAIN_TEXTUAL_APP, env)
            t = p.wait_text(b"profile:", 0, 20)
            plain.append(t - p.t0 if t else float("nan"))
            p.close()
            app = PtyApp(code, env)
            t = app.wait_text(b"profile:", 0, 20)
            firsts.append(t - app.t0 if t else float("nan"))
            app.close()
            time.sleep(0.2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"python start-up       median {statistics.median(bare) * 1000:6.0f} ms")
    print(f"a bare Textual app    median {statistics.median(plain) * 1000:6.0f} ms   (one Static: the floor on this machine)")
    print(f"launch → first frame  median {statistics.median(firsts) * 1000:6.0f} ms   "
          f"min {min(firsts) * 1000:.0f}  max {max(firsts) * 1000:.0f}   ({args.runs} runs; target ≤ 500 ms)")
    print(f"ratio loratui ÷ bare Textual app: {statistics.median(firsts) / statistics.median(plain):.2f}")


if __name__ == "__main__":
    main()
