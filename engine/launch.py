"""Starting a multi-process run: accelerate's launcher (torch elastic), one
process per GPU, each running :mod:`loratui.engine.worker`.

    launched = launch(profile, resume=None, overwrite=False)
    launched.wait()          # the run's own metrics file tells how it goes
    launched.finish()        # the Failed event a crashed run could not write

The launcher runs as a child in its own session (``start_new_session``): a
Ctrl+C in the terminal or a dropped SSH link does not reach it; requests reach
the run through its control file (engine/control_file.py). Everything the
processes print goes to ``<output_dir>/<name>.run/launch.log``, beside the
profile the processes train from and the errors they left.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loratui.engine.distributed import WORKER_ENV, read_rank_failures
from loratui.engine.schema import Profile


def run_dir(profile: Profile) -> Path:
    """``<output_dir>/<output_name>.run``: the launched run's profile, log and process
    errors (``.run-machine1`` ... on the other machines: an output folder on a shared disk)."""
    o, c = profile.output, profile.compute
    suffix = f"-machine{c.machine_rank}" if c.machine_rank else ""
    return Path(o.output_dir).expanduser() / f"{o.output_name}.run{suffix}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_for(profile: Profile) -> int:
    c = profile.compute
    if c.main_process_port:
        return c.main_process_port
    return 29500 if c.machines > 1 else free_port()


def _cuda_present() -> bool:
    from loratui.engine.gpu import default_monitor

    return default_monitor().available


def compute_options(profile: Profile, port: int | None = None) -> list[str]:
    """The ``accelerate launch`` options of the profile's ``[compute]`` section ([] for one
    process). ``port``: the one to meet at (else the profile's; 29500 across machines)."""
    c = profile.compute
    if c.world_size == 1:
        return []
    out = ["--multi_gpu", "--num_processes", str(c.world_size)]
    if c.machines > 1:
        out += ["--num_machines", str(c.machines), "--machine_rank", str(c.machine_rank), "--main_process_ip", c.main_process_ip]
    port = port or c.main_process_port or (29500 if c.machines > 1 else 0)
    if port:
        out += ["--main_process_port", str(port)]
    if c.gpu_ids:
        out += ["--gpu_ids", c.gpu_ids.replace(" ", "")]
    return out


def _cpu_threads(processes: int) -> int:
    """Threads per CPU process: OMP_NUM_THREADS when the user set it, else the cores shared out."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return max(1, (os.cpu_count() or 1) // processes)


def launch_command(profile: Profile, profile_path: str | Path, *, resume: str | None, overwrite: bool, port: int) -> list[str]:
    threads = None if _cuda_present() else _cpu_threads(profile.compute.processes)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *compute_options(profile, port),
           *(["--num_cpu_threads_per_process", str(threads)] if threads else []),
           "--mixed_precision", "no", "--dynamo_backend", "no", "--module", "loratui.engine.worker", str(profile_path)]
    if resume:
        cmd += ["--resume", resume]
    if overwrite:
        cmd.append("--overwrite")
    return cmd


@dataclass
class Launched:
    """A run started through the launcher."""

    proc: subprocess.Popen
    profile: Profile
    folder: Path
    log_path: Path
    started: float

    @property
    def metrics_path(self) -> Path:
        from loratui.engine.metrics import metrics_path_for

        return metrics_path_for(self.profile)

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        """To every process of the run (the launcher's process group)."""
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def failure(self) -> tuple[str, str] | None:
        """(message, hint) for a launch that ended badly; None when it ended well."""
        code = self.proc.poll()
        if code is None or code == 0:
            return None
        ranks = read_rank_failures(self.folder)
        if ranks:
            first = min(ranks)
            others = f" (and process {', '.join(map(str, sorted(set(ranks) - {first})))})" if len(ranks) > 1 else ""
            return f"process {first} of {self.profile.compute.world_size}: {ranks[first]}{others}", f"the processes' output is in {self.log_path}"
        dead = _dead_ranks(self.log_path)
        if dead:
            rank, why = dead[0]  # torch elastic's "root cause": the first to fail
            others = " and the others were stopped" if self.profile.compute.world_size > 1 else ""
            return (f"process {rank} of {self.profile.compute.world_size} {why}{others}",
                    f"the processes' output is in {self.log_path}; the files saved before are intact: resume with --resume latest")
        tail = _last_line(self.log_path)
        return (f"the launcher ended with exit code {code}" + (f": {tail}" if tail else ""),
                f"the processes' output is in {self.log_path}")

    def finish(self) -> None:
        """After the launch ended: when the run could not write its own end
        (a process was killed, the launcher failed to start), append a Failed
        event to its metrics file so every watcher sees how it ended."""
        from loratui.engine.events import TERMINAL_EVENTS, Failed
        from loratui.engine.metrics import MetricsWriter, last_event

        bad = self.failure()
        if bad is None:
            return
        path = self.metrics_path
        last = last_event(path) if path.exists() and path.stat().st_mtime >= self.started - 1 else None
        if last is not None and isinstance(last, TERMINAL_EVENTS):
            if not isinstance(last, Failed) or not last.message.startswith("process"):
                return  # the run said how it ended
        writer = MetricsWriter(path, fresh=False)  # appended as the run's own events are
        writer.release()
        writer.write(Failed(message=bad[0], hint=bad[1], last_saved=_last_saved(path)))
        writer.close()


def launch(profile: Profile, *, resume: str | None = None, overwrite: bool = False) -> Launched:
    """Write the run's profile into its run folder and start the processes."""
    from loratui.engine.fsutil import atomic_write_text
    from loratui.engine.schema import profile_to_toml

    folder = run_dir(profile)
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)  # the errors of an earlier launch are not this one's
    folder.mkdir(parents=True, exist_ok=True)
    profile_path = folder / "profile.toml"
    atomic_write_text(profile_path, profile_to_toml(profile, header="the profile this run's processes train from (written by loratui)"))
    from loratui.engine.control_file import control_path

    if profile.compute.machine_rank == 0:
        # the run's control file, empty: what is asked from now on (before the processes listen) is for this run
        control_path(profile.output.output_dir, profile.output.output_name).write_bytes(b"")
    log_path = folder / "launch.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{WORKER_ENV: str(folder)})
    env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # a dead peer ends NCCL collectives instead of hanging
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # compute.gpu_ids as nvidia-smi numbers them (engine/__init__.py)
    cmd = launch_command(profile, profile_path, resume=resume, overwrite=overwrite, port=port_for(profile))
    with open(log_path, "ab") as log:
        log.write(f"--- {time.ctime()} {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    return Launched(proc, profile, folder, log_path, time.time())


# --------------------------------------------------------------------------- reading torch elastic's report

_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


def _dead_ranks(log_path: Path) -> list[tuple[int, str]]:
    """(rank, what happened) from torch elastic's report in the log, its root cause first."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-400:]
    except OSError:
        return []
    out, rank, root = [], None, None
    for line in lines:
        if "Root Cause" in line:
            root = len(out)  # the next one reported is the first failure
        m = _RANK.match(line)
        if m:
            rank = int(m.group(1))
            continue
        m = _EXIT.match(line)
        if m and rank is not None:
            code = int(m.group(1))
            why = f"was killed by signal {-code} ({_signame(-code)}{_WHY.get(-code, '')})" if code < 0 else f"exited with code {code}"
            out.append((rank, why))
            rank = None
    if root is not None and root < len(out):
        out.insert(0, out.pop(root))
    seen: set = set()
    return [x for x in out if not (x in seen or seen.add(x))]


_WHY = {9: ": out of host memory, or killed by hand", 6: ": aborted", 11: ": a crash in native code"}


def _signame(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return "unknown signal"


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _last_saved(metrics_path: Path) -> str:
    """The newest LoRA the run wrote, from its metrics file."""
    from loratui.engine.events import CheckpointSaved
    from loratui.engine.metrics import MetricsTail

    last = ""
    try:
        events, _ = MetricsTail(metrics_path).read()
    except OSError:
        return ""
    for ev in events:
        if isinstance(ev, CheckpointSaved) and ev.kind != "state":
            last = ev.path
    return last
