"""Everything a run can know before torch is imported: ``prepare_run``.

``loratui check``, ``loratui train`` and the form's plan panel all call it, so
``check`` says "ready" exactly when ``train`` gets past its first checks: the
profile warnings, the dataset scan and its report, the base model's headers,
``network.network_weights``, the output folder (writable, free space, an
existing final LoRA), the step plan, the dataset fingerprint and, when
resuming, the state: found, readable, trained with the same settings and data.

No torch import here (only for an 8-bit optimizer on a machine whose NVIDIA
driver sees a GPU, to ask whether torch can use it): the UI calls this from a
worker thread before it has torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loratui.engine.problems import Problem, error, warning
from loratui.engine.schema.option_checks import option_problems
from loratui.engine.schema import Profile, profile_warnings
from loratui.engine.training.paths import final_path


@dataclass
class Prepared:
    """What ``prepare_run`` found; ``problems`` empty = the run may start."""

    profile: Profile
    scan: Any  # engine.dataset.DatasetScan
    plan: Any  # engine.plan.StepPlan
    model: Any  # engine.models.ModelInfo
    fingerprint: dict[str, Any]
    profile_warnings: list[Problem] = field(default_factory=list)
    checks: list[Problem] = field(default_factory=list)  # network weights, preflight, resume
    resume_warnings: list[str] = field(default_factory=list)
    state: Any = None  # engine.state.TrainingState to resume from
    restored: list[Path] = field(default_factory=list)  # states an interrupted save had moved aside, put back

    @property
    def report(self):
        return self.scan.report

    @property
    def problems(self) -> list[Problem]:
        """Everything that stops the run: the dataset's, the model's, then the other checks'."""
        return [*self.report.problems, *self.model.problems, *self.checks]

    @property
    def warnings(self) -> list[str]:
        """In the order a run reports them."""
        return [str(w) for w in [*self.profile_warnings, *self.report.warnings]] + self.resume_warnings

    @property
    def ok(self) -> bool:
        return not self.problems and self.plan.total_steps > 0


def prepare_run(profile: Profile, resume: str | None = None, overwrite: bool = False, scan=None) -> Prepared:
    """Check ``profile`` (and the state to ``resume`` from: a folder or
    ``"latest"``; default ``output.resume``) as a run does before it loads
    anything. Resuming puts back a complete state an interrupted save had
    moved aside, as the run would. ``scan``: a ``scan_dataset`` result of
    exactly ``profile.dataset`` made just before (the form's), not made again."""
    from loratui.engine.dataset import plan_for, scan_dataset
    from loratui.engine.models import inspect_model
    from loratui.engine.state import dataset_fingerprint
    from loratui.engine.training.memory import memory_problems

    if scan is None:
        scan = scan_dataset(profile.dataset)
    model = inspect_model(profile.model)  # headers only: the same checks the loader makes
    from loratui.engine.samples.during import sample_problems

    samples = sample_problems(profile)  # a bad prompt file stops the run before the model loads
    checks = network_weights_problems(profile) + preflight(profile, overwrite=overwrite) + memory_problems(profile)
    said = profile.model.family if profile.model.family != "auto" else None  # when the model cannot be read
    family_options = family_option_problems(profile, model.family or said)
    checks += [p for p in family_options if p.is_error] + [p for p in samples if p.is_error]
    checks += swap_problems(profile, model)
    plan = plan_for(profile, scan)
    fingerprint = dataset_fingerprint(scan.items, plan.total_steps, plan.processes)
    warnings = list(profile_warnings(profile)) + [p for p in family_options if not p.is_error]
    warnings += [p for p in samples if not p.is_error]
    prepared = Prepared(profile, scan, plan, model, fingerprint, warnings, checks)
    resume_spec = resume or profile.output.resume
    if resume_spec:
        _check_resume(prepared, resume_spec)
    return prepared


# options whose sd-scripts formula is written for a DDPM noise schedule (SD 1.x/2.x/SDXL)
_DDPM_ONLY = {
    "debiased_estimation_loss": lambda o: o.debiased_estimation_loss,
    "loss_type": lambda o: o.loss_type in ("huber", "smooth_l1"),
    "min_timestep": lambda o: o.min_timestep != 0,
    "max_timestep": lambda o: o.max_timestep != 1000,
}


def family_option_problems(profile: Profile, family: str | None) -> list[Problem]:
    """Options the model's family cannot train with (a flow-matching model has no DDPM
    timesteps): errors; and options it trains with but ignores (min-SNR-γ): warnings."""
    from loratui.engine.families import families

    fam = families().get(family or "")
    if fam is None:
        return []
    if not fam.flow_matching:
        return unused_setting_warnings(profile, family, skip={"model.clip_skip"})  # the family says it at the start
    o = profile.optimization
    out = [
        error(f"optimization.{key}", f"is set, but it works on a DDPM noise schedule and {fam.label} trains with flow matching",
              "use loss_type l2 or l1 for this model" if key == "loss_type" else "turn it off for this model")
        for key, used in _DDPM_ONLY.items() if used(o)
    ]
    out += _pixel_block_problems(profile.dataset, fam)
    out += unused_setting_warnings(profile, family, skip={f"optimization.{k}" for k in _DDPM_ONLY}
                                   | {"optimization.min_snr_gamma", "model.clip_skip"})
    if o.min_snr_gamma:  # sd-scripts' flux/sd3 scripts ignore it too: every sample keeps weight 1
        out.append(warning(
            "optimization.min_snr_gamma",
            f"is {o.min_snr_gamma:g}, but min-SNR weighting has no effect on flow-matching models "
            f"({fam.label}): every sample keeps weight 1, as in sd-scripts",
            "set it to 0; to weight noise levels use model.weighting_scheme (e.g. logit_normal, with logit_mean / logit_std)",
        ))
    return out


def swap_problems(profile: Profile, model) -> list[Problem]:
    """``blocks_to_swap`` beyond what the model's denoiser can swap, told from its config
    before anything loads (the loader would stop there after minutes of loading)."""
    n = profile.optimization.blocks_to_swap
    if not n or model.problems or not model.family:
        return []
    from loratui.engine.families import get_family
    from loratui.engine.lora_modules import denoiser_config

    fam = get_family(model.family)
    try:
        cfg = denoiser_config(model, profile.model, fam)
    except (OSError, ValueError, KeyError):
        return []  # the loader names what it cannot read
    sizes = fam.swap_group_sizes(cfg) if cfg else []
    if not sizes or fam.swap_split(n, sizes) is not None:
        return []
    return [error("optimization.blocks_to_swap",
                  f"is {n}, more than this {fam.label} denoiser ({sum(sizes)} blocks) can swap",
                  f"set it to at most {most}" if (most := fam.max_blocks_to_swap(sizes)) else "set it to 0 (off)")]


def _pixel_block_problems(ds, fam) -> list[Problem]:
    """A flow transformer packs the latents 2×2: every training size must be a multiple of
    16 pixels (sd-scripts asks bucket_reso_steps to be a multiple of 32 for these models)."""
    n = fam.pixel_multiple
    why = f"{fam.label} trains on {n}-pixel blocks (the VAE's 8 pixels × the transformer's 2×2 patches)"
    if ds.enable_bucket:
        if ds.bucket_reso_steps % n:
            return [error("dataset.bucket_reso_steps", f"is {ds.bucket_reso_steps}, but {why}",
                          f"use a multiple of {n} (64 is usual)")]
        return []
    sides = [("dataset.resolution", ds.resolution), ("dataset.resolution_height", ds.resolution_height)]
    return [error(key, f"is {v}, but without buckets {why}", f"use a multiple of {n}, e.g. {max(n, v // n * n)}")
            for key, v in sides if v % n]


def unused_setting_warnings(profile: Profile, family: str | None, skip: set[str] = frozenset()) -> list[Problem]:
    """Settings of other families (``engine.families.settings_unused_by``) that hold a value
    other than their default: the run ignores them. ``skip``: those reported otherwise."""
    from loratui.engine.families import families, settings_unused_by
    from loratui.engine.schema import settings

    fam = families().get(family or "")
    if fam is None:
        return []
    unused = settings_unused_by(family) - set(skip)
    out = []
    for info in settings():
        if info.dotted not in unused or profile.get(info.dotted) == info.default:
            continue
        users = [f.label for f in families().values() if info.dotted in f.settings_used()]
        who = ", ".join(users[:-1]) + f" and {users[-1]}" if len(users) > 1 else users[0]
        out.append(warning(info.dotted, f"is set, but {fam.label} models do not use it (only {who}): it is ignored",
                           _back_to_default(info.default) + " for this model"))
    return out


def _back_to_default(default) -> str:
    if isinstance(default, bool):
        return "turn it off" if not default else "turn it back on"
    if default in ("", None):
        return "clear it"
    return f"set it back to {default}"


def network_weights_problems(profile: Profile) -> list[Problem]:
    weights = profile.network.network_weights
    if not weights or Path(weights).expanduser().is_file():
        return []
    what = "is a folder" if Path(weights).expanduser().is_dir() else "does not exist"
    return [
        error(
            "network.network_weights",
            f"{weights} {what}",
            "point it at a LoRA .safetensors file to continue from, or clear it to start a new LoRA",
        )
    ]


def _check_resume(prepared: Prepared, spec: str) -> None:
    from loratui.engine.state import (
        OutputDirLock,
        StateError,
        dataset_differences,
        read_state,
        resolve_resume,
        resume_differences,
    )

    from loratui.engine.distributed import world

    profile = prepared.profile
    if world().is_main and Path(profile.output.output_dir).is_dir():  # a state a kill left moved aside is a state too
        prepared.restored = OutputDirLock.put_back(profile.output.output_dir)
    try:
        state = read_state(resolve_resume(spec, profile))
    except StateError as exc:
        prepared.checks.append(error("output.resume", str(exc), exc.hint or ""))
        return
    prepared.state = state
    diffs = resume_differences(state, profile)
    if diffs:
        prepared.checks.append(
            error(
                "output.resume",
                f"the profile differs from the one {state.folder.name} was trained with:\n    "
                + "\n    ".join(diffs)
                + "\n  undo these changes to resume, or start a new run without resume",
            )
        )
        return
    ds_problems, ds_warnings = dataset_differences(state, prepared.fingerprint)  # the same settings: the same data?
    prepared.checks += [error("output.resume", p) for p in ds_problems]
    prepared.resume_warnings += [f"output.resume: {w}" for w in ds_warnings]


# --------------------------------------------------------------------------- preflight


def preflight(profile: Profile, *, overwrite: bool) -> list[Problem]:
    """Problems known before any model loads (output folder, names, 8-bit on CPU)."""
    from loratui.engine.registries import OPTIMIZERS

    problems: list[Problem] = []
    o = profile.output
    if not profile.model.base_model:
        problems.append(error("model.base_model", "not set", "point it at a .safetensors file, a diffusers folder or a Hub repo id"))
    if not o.output_dir:
        problems.append(error("output.output_dir", "not set", "where the LoRA files are written"))
    if not o.output_name:
        problems.append(error("output.output_name", "not set", "the LoRA's file name without .safetensors"))
    name = profile.optimization.optimizer
    if name in OPTIMIZERS and OPTIMIZERS[name].cuda_only and not _has_cuda():
        problems.append(
            error("optimization.optimizer", f"{name} needs an NVIDIA GPU (bitsandbytes); on this machine use AdamW or Lion")
        )
    problems += _optimizer_args_problems(profile) + option_problems(profile) + compute_problems(profile)
    if o.output_dir and o.output_name:
        target = final_path(profile)
        if target.exists() and not overwrite:
            problems.append(
                error(
                    "output.output_name",
                    f"{target} already exists",
                    "choose another output name, or pass --overwrite to replace it",
                )
            )
        problems.extend(_check_writable(Path(o.output_dir)))
    return problems


def compute_problems(profile: Profile, gpu_count: int | None = None) -> list[Problem]:
    """More processes (or GPU ids) than this machine has GPUs. Without a GPU,
    processes are CPU processes: allowed (gloo), as for testing."""
    c = profile.compute
    if c.world_size == 1 and not c.gpu_ids:
        return []
    if gpu_count is None:
        from loratui.engine.gpu import default_monitor

        mon = default_monitor()
        gpu_count = len(mon.sample()) if mon.available else 0
    if not gpu_count:
        return []
    from loratui.engine.training.setup import hidden_gpu, visible_gpus

    out = []
    visible = visible_gpus()  # CUDA_VISIBLE_DEVICES: what this process may use
    ids = c.gpu_list() if c.gpu_ids.replace(" ", "").replace(",", "").isdigit() else []
    if ids and max(ids) >= gpu_count:
        out.append(error("compute.gpu_ids", f"{c.gpu_ids!r} names GPU {max(ids)}, but this machine has {gpu_count} (0 to {gpu_count - 1})",
                         "name GPUs this machine has (nvidia-smi lists them)"))
    elif ids and c.world_size == 1 and visible is not None and ids[0] not in visible:
        message, hint = hidden_gpu(ids[0], visible)
        out.append(error("compute.gpu_ids", f"{c.gpu_ids!r}: {message}", hint))
    elif not ids and visible is not None and c.processes > len(visible):
        shown = ",".join(map(str, visible))
        out.append(error("compute.processes", f"{c.processes} processes, but CUDA_VISIBLE_DEVICES={shown} leaves {len(visible)} GPU(s)",
                         f"use at most {len(visible)}, name the GPUs in compute.gpu_ids, or unset CUDA_VISIBLE_DEVICES"))
    elif c.processes > gpu_count:
        out.append(error("compute.processes", f"{c.processes} processes, but this machine has {gpu_count} GPU(s)",
                         f"use at most {gpu_count} (one process per GPU)"))
    return out


def _optimizer_args_problems(profile: Profile) -> list[Problem]:
    from loratui.engine.registries import ArgsError, parse_key_values
    from loratui.engine.training.optim import OPTIMIZER_ARGS_HINT

    try:
        parse_key_values(profile.optimization.optimizer_args)
    except ArgsError as exc:
        return [error("optimization.optimizer_args", str(exc), OPTIMIZER_ARGS_HINT)]
    return []


def _has_cuda() -> bool:
    """Whether torch can use a CUDA GPU. Asks NVML first, so that a machine with
    no NVIDIA GPU is told without importing torch (the form checks as you type)."""
    import sys

    if "torch" not in sys.modules:
        from loratui.engine.gpu import default_monitor

        if not default_monitor().available:
            return False
    import torch

    return torch.cuda.is_available()


def _check_writable(out: Path) -> list[Problem]:
    """Can files be created in ``out`` (or the nearest folder above it that
    exists)? A real probe: ``os.access`` says yes to root on a read-only disk."""
    import shutil
    import tempfile

    from loratui.engine.fsutil import TMP_PREFIX

    key = "output.output_dir"
    probe_dir = out
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        if probe_dir.is_symlink():
            return [error(key, f"{probe_dir} is a broken symbolic link", "choose another folder")]
        probe_dir = probe_dir.parent
    if probe_dir.exists() and not probe_dir.is_dir():
        return [error(key, f"{probe_dir} is a file, not a folder", "choose a folder")]
    try:
        fd, probe = tempfile.mkstemp(prefix=TMP_PREFIX + "probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        where = "" if probe_dir == out else f" (nothing can be created in {probe_dir})"
        return [error(key, f"{out} is not writable{where}: {reason}", "choose a folder you can write to")]
    try:
        free = shutil.disk_usage(probe_dir).free
        if free < 50 * 2**20:
            return [error(key, f"only {free / 2**20:.0f} MB free on the disk of {out}", "free some space first")]
    except OSError:
        pass
    return []
