"""Shared by the TUI benchmarks: the real app in a pseudo-terminal, every byte it
writes recorded with the time it arrived, and a tiny model + dataset to train."""

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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


class PtyApp:
    """``python -c CODE`` on a fresh pseudo-terminal of ``cols``×``rows``."""

    def __init__(self, code: str, env: dict[str, str], cols: int = 120, rows: int = 40):
        self.t0 = time.perf_counter()
        pid, fd = pty.fork()
        if pid == 0:
            os.chdir(REPO)
            os.execve(sys.executable, [sys.executable, "-c", code], env)
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.pid, self.fd = pid, fd
        self.chunks: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.chunks.append((time.perf_counter(), data))

    def text_since(self, t: float) -> bytes:
        with self._lock:
            return b"".join(d for at, d in self.chunks if at >= t)

    def wait_text(self, needle: bytes, since: float, timeout: float) -> float | None:
        """Time at which ``needle`` had arrived in the output written after ``since``."""
        end = time.perf_counter() + timeout
        while time.perf_counter() < end:
            with self._lock:
                buf = b""
                for at, d in self.chunks:
                    if at >= since:
                        buf += d
                        if needle in buf:
                            return at
            time.sleep(0.001)
        return None

    def bytes_between(self, a: float, b: float) -> int:
        with self._lock:
            return sum(len(d) for at, d in self.chunks if a <= at < b)

    def send(self, data: bytes) -> float:
        t = time.perf_counter()
        os.write(self.fd, data)
        return t

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (OSError, ChildProcessError):
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass


def app_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # bytecode cached, as installed
    return {
        **env,
        "TERM": "xterm-256color",
        "COLORTERM": "",
        "LORATUI_CONFIG_DIR": str(tmp / "cfg"),
        "XDG_CACHE_HOME": str(tmp / "cache"),
        # the child imports loratui as this process does (a worktree's PYTHONPATH first)
        "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(REPO)) if p),
    }


def app_code(profile: Path) -> str:
    return f"from loratui.tui.app import run_app; raise SystemExit(run_app({str(profile)!r}))"


def tiny_setup(tmp: Path, steps: int, name: str = "bench", resolution: int = 64, **output) -> Path:
    """A tiny SD 1.x model, a synthetic dataset and a profile that trains ``steps`` steps
    (``output``: more output settings, e.g. sample_every_n_steps)."""
    from loratui.engine.schema import Profile, save_profile
    from loratui.engine.synthetic import write_synthetic_dataset
    from loratui.engine.tiny import save_tiny_pipeline

    model = tmp / "model"
    if not model.exists():
        save_tiny_pipeline(model, "sd1")
    data = tmp / "images"
    if not data.exists():
        write_synthetic_dataset(data, {"4_shapes": 8}, size=(resolution, resolution))
    p = Profile.model_validate(
        {
            "model": {"base_model": str(model)},
            "dataset": {"train_data_dir": str(data), "resolution": resolution, "enable_bucket": False},
            "network": {"network_dim": 4, "network_alpha": 4.0},
            "optimization": {"train_batch_size": 1, "mixed_precision": "no", "max_train_epochs": 1000,
                             "max_train_steps": steps},
            "output": {"output_dir": str(tmp / f"out-{name}"), "output_name": name, "save_every_n_epochs": 0, **output},
        }
    )
    path = tmp / f"{name}.toml"
    save_profile(p, path)
    return path


def metrics(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def wait_for(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False
