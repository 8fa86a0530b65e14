"""The ``[compute]`` section: how many processes (GPUs) and machines a run uses.

One process (the default) trains in the calling process, as always. More than
one: ``loratui train`` (or the app) starts the run through accelerate's launcher
(torch elastic), one process per GPU, data-parallel (engine/distributed.py).
The kohya_ss GUI keeps these among its accelerate launch settings
(``num_processes``, ``num_machines``, ``gpu_ids``, ``main_process_port``);
sd-scripts has none of them but ``ddp_timeout``: export writes them into the
``accelerate launch`` line instead.
"""

from __future__ import annotations

from loratui.engine.schema.declare import _Section, setting


class ComputeSettings(_Section):
    processes: int = setting(
        1,
        "Processes per machine: one per GPU (on a machine without a GPU, CPU processes). 1: train in this process.",
        kohya="num_processes", sd_scripts=None, ge=1, le=64, label="Processes (GPUs)",
    )
    machines: int = setting(
        1, "Machines (nodes) taking part; each runs `loratui train` with its own machine_rank.",
        kohya="num_machines", sd_scripts=None, ge=1, le=64, advanced=True, label="Machines",
    )
    machine_rank: int = setting(
        0, "This machine's number, 0 to machines - 1 (0: the main machine, which writes the files).",
        sd_scripts=None, ge=0, advanced=True, label="Machine rank",
    )
    main_process_ip: str = setting(
        "", "Address of machine 0, which the others connect to. Only with more than one machine.",
        sd_scripts=None, advanced=True, label="Main process IP",
    )
    main_process_port: int = setting(
        0, "Port on machine 0 the processes meet at. 0: a free port on one machine, 29500 across machines.",
        kohya="main_process_port", sd_scripts=None, ge=0, le=65535, advanced=True, label="Main process port",
    )
    gpu_ids: str = setting(
        "", "The GPUs to use, e.g. 0,1, numbered as nvidia-smi lists them. Empty: the first `processes` GPUs.",
        kohya="gpu_ids", sd_scripts=None, advanced=True, label="GPU ids",
    )
    timeout_minutes: int = setting(
        30, "How long a process waits for the others (latent cache, saves, a step) before the run ends with a message.",
        kohya="ddp_timeout", sd_omit=30, ge=1, le=24 * 60, advanced=True, unit="min", label="Wait timeout",
    )

    @property
    def world_size(self) -> int:
        """Processes in the whole run."""
        return self.processes * self.machines

    def gpu_list(self) -> list[int]:
        """``gpu_ids`` as numbers ([] when empty)."""
        return [int(x) for x in self.gpu_ids.replace(" ", "").split(",") if x]

    def checks(self) -> list[tuple[str, str]]:
        out = []
        if self.machine_rank >= self.machines:
            out.append(("machine_rank", f"{self.machine_rank} must be below machines ({self.machines}): 0 to {self.machines - 1}"))
        if self.machines > 1 and not self.main_process_ip:
            out.append(("main_process_ip", "is needed with more than one machine: the address of machine 0"))
        ids = self.gpu_ids.replace(" ", "")
        if ids:
            parts = ids.split(",")
            if not all(p.isdigit() for p in parts):
                out.append(("gpu_ids", f"{self.gpu_ids!r} must be GPU numbers separated by commas, e.g. 0,1"))
            elif len(set(parts)) != len(parts):
                out.append(("gpu_ids", f"{self.gpu_ids!r} names a GPU twice"))
            elif len(parts) < self.processes:
                out.append(("gpu_ids", f"{self.gpu_ids!r} names {len(parts)} GPU(s) for {self.processes} processes: name one per process"))
        return out
