"""Saving a run: ``Checkpointer``.

LoRA files (with their ``ss_*`` metadata) and state folders (LoRA in fp32,
optimizer, scheduler, grad scaler, every RNG), the rotation of old states,
the restore of a state on resume. Weights that are not finite are never
saved; a full disk or a folder that became read-only ends the run with a
message that names the newest state to resume from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratui.engine.events import CheckpointSaved, LogEvent, Phase, PhaseChanged
from loratui.engine.training.paths import TrainingError, step_path


@dataclass
class Checkpointer:
    ctx: Any  # engine.training.loop.RunContext: last_saved / last_state live there
    network: Any  # engine.lora.LoRANetwork
    optimizer: Any
    lr_scheduler: Any
    accelerator: Any
    generator: Any  # the noise/timestep torch.Generator
    source: Any  # engine.training.batches.BatchSource (its RNG)
    metadata_inputs: dict[str, Any]  # what build_metadata needs besides the step (family, report, plan, ...)
    fingerprint: dict[str, Any]  # the dataset's, stored with each state
    nan_hint: str
    save_dtype: Any
    world: Any = None  # engine.distributed.World: only its main process writes
    lora_saved_at: int = -1  # steps of the newest LoRA / state written by this run
    state_saved_at: int = -1

    @property
    def writes(self) -> bool:
        return self.world is None or self.world.is_main

    def _saved(self, what: str) -> None:
        """Data-parallel: the others wait here until the main process has written ``what``."""
        if self.world is not None:
            self.world.barrier(f"saving {what}")

    @property
    def profile(self):
        return self.ctx.profile

    # ------------------------------------------------------------------ saves

    def checkpoint(self, kind: str, epoch: int, bi: int, nbatches: int, with_state: bool, step: int) -> None:
        """A LoRA (and a state) after batch ``bi`` of ``epoch``, unless already saved at this step."""
        if self.lora_saved_at != step:
            self.save_lora(step_path(self.profile, step), kind, epoch, step)
        if with_state and self.state_saved_at != step:
            self.save_state(epoch, bi + 1, nbatches, step)

    def save_lora(self, path: Path, kind: str, epoch: int, step: int) -> None:
        from loratui.engine.metadata import build_metadata

        if not self.writes:
            self.lora_saved_at = step
            return self._saved(path.name)
        self.check_finite(step)
        emit = self.ctx.emit
        emit(PhaseChanged(phase=Phase.SAVING, detail=path.name))
        md = build_metadata(
            self.profile,
            **self.metadata_inputs,
            training_started_at=self.ctx.started_at,
            training_finished_at=time.time() if kind == "final" else None,
            steps=step,
            epoch=epoch,
        )
        self._guarded(path, step, lambda: self.network.save(path, md, self.save_dtype))
        self.ctx.last_saved = str(path)
        self.lora_saved_at = step
        emit(CheckpointSaved(path=str(path), kind=kind, size=path.stat().st_size, epoch=epoch, step=step))
        emit(PhaseChanged(phase=Phase.TRAINING))
        self._saved(path.name)

    def save_state(self, epoch: int, batch_in_epoch: int, nbatches: int, step: int) -> None:
        import torch

        from loratui.engine.state import prune_states, state_dir, write_state

        if not self.writes:
            self.state_saved_at = step
            return self._saved("the state")
        self.check_finite(step)
        if batch_in_epoch >= nbatches:  # at an epoch's end: continue with the next one
            epoch, batch_in_epoch = epoch + 1, 0
        folder = state_dir(self.profile, step)
        self.ctx.emit(PhaseChanged(phase=Phase.SAVING, detail=folder.name))
        # LyCORIS networks: their raw parameters (their file format is not always invertible)
        tensors = getattr(self.network, "state_tensors", None)
        lora_sd = tensors() if tensors else self.network.kohya_state_dict(torch.float32)
        self._guarded(
            folder,
            step,
            lambda: write_state(
                folder,
                lora_sd=lora_sd,
                training=self._training_state(),
                epoch=epoch,
                batch_in_epoch=batch_in_epoch,
                step=step,
                profile=self.profile,
                extra={"last_saved": self.ctx.last_saved, "dataset": self.fingerprint, "processes": self.processes},
            ),
        )
        self.ctx.last_state = str(folder)
        self.state_saved_at = step
        prune_states(self.profile, self.profile.output.save_last_n_states)  # only now that the new one is complete
        size = sum(f.stat().st_size for f in folder.iterdir())
        self.ctx.emit(CheckpointSaved(path=str(folder), kind="state", size=size, epoch=epoch, step=step))
        self.ctx.emit(PhaseChanged(phase=Phase.TRAINING))
        self._saved(folder.name)

    def _training_state(self) -> dict[str, Any]:
        import torch

        scaler = self.accelerator.scaler
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.lr_scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "torch_rng": torch.get_rng_state(),
            # this process's device only: a resume may see fewer GPUs, or another one
            "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "gen": self.generator.get_state(),
            "caption_rng": self.source.rng_state(),
        }

    @property
    def processes(self) -> int:
        return self.world.size if self.world is not None else 1

    # ------------------------------------------------------------------ resume

    def restore(self, state) -> tuple[int, int, int]:
        """Put a saved state back (LoRA, optimizer, scheduler, scaler, RNGs);
        returns (step, epoch, batch in epoch) to continue from."""
        import torch

        from loratui.engine.lora_file import read_lora_file
        from loratui.engine.state import load_training

        sd, _ = read_lora_file(state.folder / "lora.safetensors")
        load = getattr(self.network, "load_state_tensors", self.network.load_kohya_state_dict)
        load(sd, source=str(state.folder / "lora.safetensors"))
        tr = load_training(state.folder)
        load_optimizer_state(self.optimizer, tr["optimizer"])
        self.lr_scheduler.load_state_dict(tr["scheduler"])
        if tr.get("scaler") is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(tr["scaler"])
        torch.set_rng_state(tr["torch_rng"])
        if tr["gen"].numel() == self.generator.get_state().numel():
            self.generator.set_state(tr["gen"])
        else:  # saved on a GPU, resumed on the CPU or the other way round: their generators differ
            self.ctx.warn(f"{state.folder.name} was saved on another kind of device: the noise and timesteps "
                          f"go on from the seed ({self.profile.optimization.seed}), not from where the run was")
        self.source.restore_rng(tr["caption_rng"])
        if self.world is None or not self.world.enabled or self.world.is_main:  # (the state has rank 0's own)
            restore_cuda_rng(tr.get("cuda_rng"))
        self.ctx.last_saved = str(state.extra.get("last_saved") or "")
        self.ctx.last_state = str(state.folder)
        self.ctx.emit(
            LogEvent(message=f"resumed from {state.folder.name}: step {state.step}, epoch {state.epoch}, batch {state.batch_in_epoch}")
        )
        saved_by = int(state.extra.get("processes") or 1)
        if saved_by != self.processes:
            return self._reshard(state, saved_by)
        return state.step, state.epoch, state.batch_in_epoch

    def _reshard(self, state, saved_by: int) -> tuple[int, int, int]:
        """A state saved by ``saved_by`` processes, resumed by another number: the
        same place in the data (samples seen), in this run's larger or smaller steps."""
        plan = self.metadata_inputs["plan"]
        per = self.profile.optimization.train_batch_size
        seen = state.batch_in_epoch * per * saved_by  # samples of this epoch already trained on
        batch = min(seen // (per * self.processes), plan.batches_per_epoch)
        step = (state.epoch - 1) * plan.steps_per_epoch + batch // plan.grad_accum
        batch = (batch // plan.grad_accum) * plan.grad_accum  # a step starts on an accumulation boundary
        if hasattr(self.lr_scheduler, "last_epoch"):
            self.lr_scheduler.last_epoch = step  # the schedule of this run's plan, at that step
        self.ctx.warn(
            f"compute: {state.folder.name} was saved by a run of {saved_by} process(es), this one has {self.processes}: "
            f"continuing at step {step} of {plan.total_steps} (epoch {state.epoch}, {seen} samples in), the same place in the "
            "data; the batches from here differ from what the earlier run would have done"
        )
        return step, state.epoch, batch

    # ------------------------------------------------------------------ guards

    def check_finite(self, step: int) -> None:
        import torch

        with torch.no_grad():
            if bool(torch.stack([torch.isfinite(p).all() for p in self.network.parameters()]).all()):
                return
        last = self.ctx.last_saved
        raise TrainingError(
            f"the LoRA weights are no longer finite (NaN/inf) at step {step}; nothing was saved over the earlier files"
            + (f" — the last good LoRA is {last}" if last else ""),
            self.nan_hint,
        )

    def resume_hint(self) -> str:
        if self.ctx.last_state:
            return f"; then resume with --resume latest (the newest state is {Path(self.ctx.last_state).name})"
        return f"; the last saved LoRA is {self.ctx.last_saved}" if self.ctx.last_saved else ""

    def _guarded(self, target: Path, step: int, write: Callable[[], Any]) -> None:
        """Disk full or a folder that became read-only: a clear message; the
        atomic writers have already removed their temporary file."""
        from loratui.engine.errors import disk_full_message, is_disk_full

        try:
            write()
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is a disk problem
            if is_disk_full(exc):
                raise TrainingError(
                    f"{disk_full_message(target.name)} in {target.parent} at step {step}",
                    "free some space: the files saved before are intact and no half-written file was left" + self.resume_hint(),
                ) from None
            if isinstance(exc, PermissionError):
                raise TrainingError(
                    f"output.output_dir: cannot write {target.name} in {target.parent} (permission denied) at step {step}",
                    "make the folder writable again: the files saved before are intact" + self.resume_hint(),
                ) from None
            raise


def restore_cuda_rng(saved) -> None:
    """The CUDA RNG of this process's device, as saved (one state; older states kept
    a list, one per GPU then visible: the current device's entry, where it has one)."""
    import torch

    if saved is None or not torch.cuda.is_available():
        return
    if isinstance(saved, (list, tuple)):
        i = torch.cuda.current_device()
        if i >= len(saved):
            return
        saved = saved[i]
    torch.cuda.set_rng_state(saved)


_BUILT = ("fused", "foreach", "capturable", "differentiable")  # how this run's optimizer steps, not the state


def load_optimizer_state(optimizer, state: dict) -> None:
    """``load_state_dict``, keeping how this run built its optimizer: torch takes every group
    setting from the file, so a state saved on the CPU (foreach) would make the GPU's fused
    AdamW a foreach one that the fused path's ``found_inf`` then breaks."""
    import torch

    from loratui.engine.training.fastpath import inner_optimizer

    inner = inner_optimizer(optimizer)
    built = [{k: g[k] for k in _BUILT if k in g} for g in inner.param_groups]
    optimizer.load_state_dict(state)
    for group, keep in zip(inner.param_groups, built):
        group.update(keep)
        if group.get("fused") or group.get("capturable"):  # their step counts live on the parameters' device
            for p in group["params"]:
                st = inner.state.get(p)
                if st and torch.is_tensor(st.get("step")) and st["step"].device != p.device:
                    st["step"] = st["step"].to(p.device, torch.float32)
