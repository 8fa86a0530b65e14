"""Over SSH: the real app in a pseudo-terminal, a run started with ctrl+r, then the
terminal hangs up (SIGHUP) — the run goes on, its progress goes to the run's log —
and a SIGTERM afterwards saves at the next step and ends the process."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import struct
import sys
import termios
import threading
import time
from pathlib import Path

from loratui.engine.schema import Profile, save_profile

REPO = Path(__file__).resolve().parent.parent
# the child imports loratui as this process does (a worktree's PYTHONPATH first)
PYTHONPATH = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(REPO)) if p)


def spawn_app(profile: Path, env: dict[str, str], cols: int = 120, rows: int = 40) -> tuple[int, int, list[bytes]]:
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal
        os.chdir(REPO)
        os.execve(
            sys.executable,
            [sys.executable, "-c", f"from loratui.tui.app import run_app; raise SystemExit(run_app({str(profile)!r}))"],
            env,
        )
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    out: list[bytes] = []

    def drain():
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            out.append(data)

    threading.Thread(target=drain, daemon=True).start()
    return pid, fd, out


def metrics_types(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def wait_for(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_hangup_keeps_training_and_sigterm_then_saves(tmp_path, tiny_sd1_dir, synthetic_dataset):
    out_dir = tmp_path / "out"
    profile = Profile.model_validate(
        {
            "model": {"base_model": str(tiny_sd1_dir)},
            "dataset": {"train_data_dir": str(synthetic_dataset), "resolution": 64, "enable_bucket": False},
            "network": {"network_dim": 2, "network_alpha": 2.0, "train_text_encoder": False},
            "optimization": {"train_batch_size": 2, "mixed_precision": "no", "max_train_epochs": 1000},
            "output": {"output_dir": str(out_dir), "output_name": "ssh", "save_every_n_epochs": 0},
        }
    )
    path = tmp_path / "ssh.toml"
    save_profile(profile, path)
    env = {
        **os.environ,
        "TERM": "xterm-256color",
        "LORATUI_CONFIG_DIR": str(tmp_path / "cfg"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "PYTHONPATH": PYTHONPATH,
    }
    pid, fd, out = spawn_app(path, env)
    metrics = out_dir / "ssh.metrics.jsonl"
    try:
        # the first frame, then ctrl+r
        wait_for(lambda: sum(map(len, out)) > 2000, 30, "the first frame")
        time.sleep(0.3)
        os.write(fd, b"\x12")
        wait_for(lambda: any(e["type"] == "StepEvent" for e in metrics_types(metrics)), 120, "training steps")
        drawn_before = sum(map(len, out))
        assert drawn_before > 5000

        # the connection drops: the terminal hangs up
        os.close(fd)
        fd = -1
        steps_at_hangup = sum(e["type"] == "StepEvent" for e in metrics_types(metrics))
        wait_for(
            lambda: sum(e["type"] == "StepEvent" for e in metrics_types(metrics)) >= steps_at_hangup + 3,
            60,
            "training to go on after the hang-up",
        )
        assert os.waitpid(pid, os.WNOHANG) == (0, 0), "the process died with its terminal"
        log = out_dir / "ssh.log"
        # (written once the app has shut down: ~1 s here alone, >10 s once in a loaded suite run)
        wait_for(lambda: log.is_file() and "SIGHUP" in log.read_text(), 60, "the note in the run's log")

        # SIGTERM: save at the next step boundary, then end
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.waitstatus_to_exitcode(status) == 0
        events = metrics_types(metrics)
        last = events[-1]
        assert last["type"] == "Finished" and last["stopped_early"]
        saved = last["summary"]["last_saved"]
        assert Path(saved).is_file() and saved.startswith(str(out_dir))
        text = log.read_text()
        assert "terminal closed (SIGHUP)" in text and f"saved    {saved}" in text and "stopped after" in text
    finally:
        if fd >= 0:
            os.close(fd)
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_hangup_without_a_run_ends_the_app(tmp_path):
    """Nothing to keep going: the app ends (and does not hang on its dead terminal)."""
    path = tmp_path / "idle.toml"
    save_profile(Profile(), path)
    env = {**os.environ, "TERM": "xterm-256color", "LORATUI_CONFIG_DIR": str(tmp_path / "cfg"),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": PYTHONPATH}
    pid, fd, out = spawn_app(path, env, 80, 24)
    try:
        wait_for(lambda: sum(map(len, out)) > 2000, 30, "the first frame")
        os.close(fd)
        fd = -1
        end = time.monotonic() + 15
        while time.monotonic() < end:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                pid = 0
                assert os.waitstatus_to_exitcode(status) == 0
                return
            time.sleep(0.05)
        raise AssertionError("the app did not end after its terminal hung up")
    finally:
        if fd >= 0:
            os.close(fd)
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
