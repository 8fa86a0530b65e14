"""Data-parallel training: the processes of one run and what they share.

A run with ``compute.processes × compute.machines > 1`` is started by
accelerate's launcher (torch elastic; :mod:`loratui.engine.launch`), one process
per GPU, each running :mod:`loratui.engine.worker`. Each process trains the same
LoRA on its own shard of every global batch (engine/dataset/batches.py
``shard``); after the micro-batches of a step the gradients are summed across
processes with one all-reduce (NCCL on CUDA, gloo on the CPU), each process
having weighted its loss by its share of the batch, so that N processes × batch
B take exactly the step one process × batch N·B would. The random draws of a
step (noise, timesteps, flips, caption shuffles) are made for the whole global
batch on every process, each keeping its slice: the runs are the same run.

Only the main process (rank 0) writes the metrics file, LoRAs, states and
samples (the disk caches: the first process of each machine); the others wait
at :meth:`World.barrier`, which ends the run with a message naming the
processes that did not arrive in time.
Controls (pause, save now, stop, abort) reach rank 0 through the run's control
file and every process through :class:`SharedControl`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratui.engine.training.paths import TrainingError

WORKER_ENV = "LORATUI_WORKER"  # set by the launcher: this process is one of a run's processes


@dataclass
class World:
    """This process's place in the run: rank 0 of 1 for an ordinary run."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    timeout: float = 1800.0  # seconds a process waits for the others
    group: Any = None  # a gloo process group for barriers and controls (host-side, on every backend)
    failures_dir: str = ""  # where processes leave their error (``rank_failure_path``)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    def barrier(self, what: str) -> None:
        """Wait until every process got here (``what``: what they wait for)."""
        if not self.enabled:
            return
        import datetime

        import torch.distributed as dist

        try:
            dist.monitored_barrier(group=self.group, timeout=datetime.timedelta(seconds=self.timeout), wait_all_ranks=True)
        except RuntimeError as exc:
            raise TrainingError(self.lost(f"waiting for the other processes ({what})", exc),
                                "see the other processes' errors in the run's log; the files saved before are intact") from None

    def lost(self, doing: str, exc: BaseException) -> str:
        """A message for a collective that failed: which processes failed, and why, when they said."""
        others = read_rank_failures(self.failures_dir, exclude=self.rank, wait=2.0) if self.failures_dir else {}
        if others:
            said = "; ".join(f"process {r}: {msg}" for r, msg in sorted(others.items()))
            return f"process {self.rank}, {doing}: another process of the run ended — {said}"
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        timed_out = "timed out" in text.lower() or "timeout" in text.lower()
        why = (f"did not answer within compute.timeout_minutes ({self.timeout / 60:g} min)" if timed_out
               else "ended without a word (killed, or out of host memory?)")
        return f"process {self.rank}, {doing}: another process of the run {why} ({text})"

    # ------------------------------------------------------------------ the step

    def reduce_gradients(self, params: list, loss):
        """Sum the gradients (and the weighted loss) of every process; one
        all-reduce per dtype, no host synchronisation. Returns the summed loss."""
        import torch
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        for p in params:
            if p.grad is None:  # a module this process's micro-batches did not reach
                p.grad = torch.zeros_like(p)
        by_dtype: dict[Any, list] = {}
        for p in params:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        loss = loss.detach().float().reshape(1) if loss is not None else torch.zeros(1, device=params[0].device)
        by_dtype.setdefault(torch.float32, []).append(loss)
        try:
            for grads in by_dtype.values():
                flat = _flatten_dense_tensors(grads)
                dist.all_reduce(flat)
                for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
                    g.copy_(reduced)
        except RuntimeError as exc:
            raise TrainingError(self.lost("summing the gradients", exc),
                                "see the other processes' errors in the run's log; the files saved before are intact") from None
        return loss.reshape(())

    def broadcast_flags(self, flags: list[int]) -> list[int]:
        """Rank 0's ``flags`` on every process (host-side, through the gloo group)."""
        if not self.enabled:
            return flags
        import torch
        import torch.distributed as dist

        t = torch.tensor(flags, dtype=torch.int64)
        try:
            dist.broadcast(t, src=0, group=self.group)
        except RuntimeError as exc:
            raise TrainingError(self.lost("between steps", exc),
                                "see the other processes' errors in the run's log; the files saved before are intact") from None
        return [int(x) for x in t.tolist()]


_WORLD = World()


def world() -> World:
    """The world of this process (rank 0 of 1 until :func:`join` ran)."""
    return _WORLD


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def join(profile, failures_dir: str | Path) -> World:
    """Join the run's other processes (torch elastic set RANK, WORLD_SIZE, ...):
    the process group through accelerate (NCCL on CUDA, gloo on the CPU), the
    CUDA device of this process, and a gloo group for barriers and controls."""
    global _WORLD
    import datetime

    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    size = env_world_size()
    expected = profile.compute.world_size
    if size != expected:
        raise TrainingError(
            f"compute.processes × compute.machines is {expected}, but the launcher started {size} processes",
            "start multi-process runs with `loratui train PROFILE` (it launches them), not by hand",
        )
    timeout = datetime.timedelta(minutes=profile.compute.timeout_minutes)
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=timeout)
    group = dist.new_group(backend="gloo", timeout=timeout) if dist.get_backend() != "gloo" else None
    _WORLD = World(rank=state.process_index, local_rank=state.local_process_index, size=state.num_processes,
                   timeout=timeout.total_seconds(), group=group, failures_dir=str(failures_dir))
    return _WORLD


def leave() -> None:
    """Tear the process group down (the end of a worker)."""
    global _WORLD
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - the others may be gone already
            pass
    _WORLD = World()


# --------------------------------------------------------------------------- failures of processes


def rank_failure_path(failures_dir: str | Path, rank: int) -> Path:
    return Path(failures_dir) / f"rank{rank}.failed.json"


def write_rank_failure(failures_dir: str | Path, rank: int, message: str, hint: str = "") -> None:
    """Leave this process's error where the others and the launcher read it."""
    import json

    from loratui.engine.fsutil import atomic_write_text

    try:
        path = rank_failure_path(failures_dir, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"rank": rank, "message": message, "hint": hint, "time": time.time()}))
    except OSError:
        pass


def read_rank_failures(failures_dir: str | Path, exclude: int = -1, wait: float = 0.0) -> dict[int, str]:
    """{rank: message} of the processes that wrote their error (waiting up to ``wait`` s for one)."""
    import json

    folder = Path(failures_dir)
    deadline = time.monotonic() + wait
    while True:
        out: dict[int, str] = {}
        for f in sorted(folder.glob("rank*.failed.json")) if folder.is_dir() else []:
            try:
                d = json.loads(f.read_text(encoding="utf-8"))
                if int(d["rank"]) != exclude:
                    out[int(d["rank"])] = str(d["message"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        if out or time.monotonic() >= deadline:
            return out
        time.sleep(0.1)


# --------------------------------------------------------------------------- controls


class SharedControl:
    """The run's ``Control`` as every process sees it: rank 0 reads its own (fed
    by the control file) once per micro-batch and passes the requests on, so
    every process pauses, saves and stops at the same step."""

    POLL = 1.0  # seconds between "still paused" messages while paused

    def __init__(self, local, w: World):
        self.local = local
        self.world = w
        self._save = False
        self._stop = False
        self._abort = False

    def _sync(self) -> bool:
        """Rank 0's requests to everyone; True while paused."""
        loc = self.local
        flags = [int(loc.paused), int(loc.take_save_request()), int(loc.stop_requested), int(loc.aborted)] if self.world.is_main else [0, 0, 0, 0]
        paused, save, stop, abort = self.world.broadcast_flags(flags)
        self._save = self._save or bool(save)
        self._stop = bool(stop)
        self._abort = bool(abort)
        return bool(paused) and not self._abort

    def wait_if_paused(self, poll: float = 0.2) -> None:
        while self._sync():
            if self.world.is_main:
                self.local._resume.wait(self.POLL)
            # the others wait in the next broadcast

    @property
    def paused(self) -> bool:
        return self.local.paused

    @property
    def stop_requested(self) -> bool:
        return self._stop

    @property
    def aborted(self) -> bool:
        # outside the loop (setup) rank 0 sees its own abort at once; the others at the next step
        return self._abort or (self.world.is_main and self.local.aborted)

    def take_save_request(self) -> bool:
        wanted, self._save = self._save, False
        return wanted
