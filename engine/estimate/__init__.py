"""VRAM, RAM, disk and time a run needs, from the model it will use, before it starts.

    est = estimate(profile, device=find_device("RTX 4090"))   # or local_device()
    est.vram.total, est.vram.terms   # bytes; {"U-Net weights": ..., "activations": ...}
    est.fits                          # on that card (None: no card known)
    est.seconds                       # training steps only

The model is counted on the meta device (``engine.estimate.model``): built
from its configs with the family's code, the run's LoRA injected with
``engine.lora``, one training forward counted (``engine.estimate.meta``).
No weights are read, no GPU is needed. The count is cached per configuration
(in this process and on disk, ``~/.cache/loratui/estimates.json``) at batch 1;
the saved activations of a batch are that × batch (every saved tensor is per
sample).

Each term of the VRAM figure is one entry of ``VRAM.terms``; settings that
other parts of loratui may add are read with ``getattr(section, name,
default)`` (``setting()``): ``cache_text_encoder_outputs``, ``fp8_base``,
``blocks_to_swap``. No textual, no torch at import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GB = 1024**3
# Stated constants: what a CUDA process holds besides torch's tensors (context,
# cuBLAS/cuDNN workspaces) and the caching allocator's fragmentation slack.
CUDA_CONTEXT = int(0.6 * GB)
ALLOCATOR_SLACK = 0.10  # of the allocated bytes
# RAM: Python + torch + diffusers + CUDA libraries, before any model is loaded.
PROCESS_RAM = int(2.5 * GB)
LORA_FILE_OVERHEAD = 64 * 1024  # metadata, alphas


def setting(profile, name: str, default: Any = None) -> Any:
    """A setting that may not exist in this version: the first section that has it."""
    for section in ("model", "dataset", "network", "optimization", "output"):
        sec = getattr(profile, section, None)
        if sec is not None and name in type(sec).model_fields:
            return getattr(sec, name, default)
    return default


@dataclass
class Figure:
    """One resource: the bytes needed (``terms`` add up to ``total``) and what there is."""

    total: int
    have: int | None = None  # card / machine / free disk, None when unknown
    terms: dict[str, int] = field(default_factory=dict)

    @property
    def fits(self) -> bool | None:
        return None if self.have is None else self.total <= self.have


@dataclass
class Estimate:
    vram: Figure
    ram: Figure
    disk: Figure
    seconds: float | None  # training steps (None: no device speed known)
    device: Any  # engine.estimate.devices.Device or None
    steps: int  # optimizer steps
    flops_per_step: float  # one optimizer step (all its micro-batches)
    counted: Any = field(repr=False, default=None)  # engine.estimate.meta.Counted at batch 1
    shape: Any = field(repr=False, default=None)  # engine.estimate.model.RunShape
    notes: list[str] = field(default_factory=list)
    assumed: str = ""  # the model is not here yet: the shape it was counted as ("FLUX.1-dev"), else ""
    context: tuple = field(repr=False, default=())  # (model_info, plan, images) it was made with

    @property
    def fits(self) -> bool | None:
        return self.vram.fits


class EstimateError(Exception):
    """Why no estimate can be made (no family known, no configs)."""


# --------------------------------------------------------------------------- shape


def precision_for(profile, device) -> str:
    """The mixed precision a run on ``device`` uses (as training.setup.resolve_precision)."""
    mp = profile.optimization.mixed_precision
    if device is None:
        return mp
    if mp == "bf16" and not device.bf16:
        return "fp16"
    return mp


def config_dir_for(profile, model_info) -> Path:
    """The diffusers configs the run's model is built from."""
    from loratui.engine.families import get_family

    ms = profile.model
    if model_info is not None and model_info.kind == "folder" and model_info.path is not None:
        return Path(model_info.path)
    if ms.model_config_dir:
        return Path(ms.model_config_dir).expanduser()
    if model_info is not None and model_info.kind == "hub" and model_info.path is not None:
        return Path(model_info.path)
    fam = get_family(model_info.family if model_info is not None and model_info.family else ms.family)
    pred = "v_prediction" if ms.v_parameterization or (model_info and model_info.prediction_type == "v_prediction") else "epsilon"
    if model_info is not None and (model_info.kind == "missing" or model_info.kind == "hub" and model_info.path is None):
        from loratui.engine.lora_modules import bundled_configs

        return bundled_configs(fam, model_info.spec, pred == "v_prediction")  # not here to read: named by its name
    return fam.config_dir(pred)


def run_shape(profile, model_info=None, device=None, *, batch: int = 1):
    from loratui.engine.estimate.model import RunShape
    from loratui.engine.families import families, normalize_family

    family = model_info.family if model_info is not None and model_info.family else profile.model.family
    if not family or family == "auto" or normalize_family(family) not in families():
        raise EstimateError("the model family is not known yet (set model.base_model or model.family)")
    ds, net, o = profile.dataset, profile.network, profile.optimization
    mp = precision_for(profile, device)
    on_gpu = device is not None
    wdt = {"fp16": "fp16", "bf16": "bf16"}.get(mp, "fp32") if on_gpu else "fp32"
    conv = net.network_type == "locon"
    config_dir = config_dir_for(profile, model_info)
    return RunShape(
        family=normalize_family(family),
        config_dir=str(config_dir),
        height=int(ds.resolution_height or ds.resolution) // 8 * 8,
        width=int(ds.resolution) // 8 * 8,
        batch=batch,
        weight_dtype=wdt,
        amp=on_gpu and wdt != "fp32",
        rank=int(net.network_dim),
        alpha=float(net.network_alpha or net.network_dim),
        conv_rank=int(net.conv_dim) if conv else None,
        conv_alpha=float(net.conv_alpha) if conv else None,
        train_unet=bool(net.train_unet),
        train_text_encoder=bool(net.train_text_encoder),
        clip_skip=int(profile.model.clip_skip or 1),
        **_flow_shape(profile, model_info, normalize_family(family), config_dir),
    )


def _flow_shape(profile, model_info, family: str, config_dir: Path) -> dict:
    """SD3 / Flux: the transformer's shape from a single file's header, T5's tokens and mask,
    the LoRA's T5 and block choice, the prediction type (``RunShape``'s flow fields)."""
    import json
    from types import SimpleNamespace

    from loratui.engine.families import get_family
    from loratui.engine.lora_modules import config_subdir, denoiser_overrides

    fam = get_family(family)
    if not fam.flow_matching:
        return {}
    ms, net = profile.model, profile.network
    over = denoiser_overrides(model_info, ms, fam) if model_info is not None else {}
    try:
        config = json.loads((config_subdir(fam, config_dir, fam.denoiser_subfolder) / "config.json").read_text(
            encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    config.update(over)
    return {
        "denoiser_config": tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in over.items())),
        "text_tokens": fam.t5_tokens(ms, SimpleNamespace(**config)),
        "t5_mask": bool(getattr(ms, "apply_t5_attn_mask", False)),
        "train_t5": bool(getattr(net, "train_t5xxl", False)),
        "train_blocks": str(getattr(net, "train_blocks", "all") or "all"),
        "flow_prediction": str(getattr(ms, "model_prediction_type", "sigma_scaled") or "sigma_scaled"),
    }


# --------------------------------------------------------------------------- estimate


def estimate(profile, device=None, model_info=None, plan=None, images: int | None = None) -> Estimate:
    """The estimate of ``profile`` on ``device`` (``devices.Device``; None: no
    card known, the figures for a CUDA run in the profile's precision).
    ``model_info`` (``inspect_model``), ``plan`` and ``images`` (the dataset's
    count) are found when not given. Counting the model can take seconds the
    first time a configuration is seen: call it off the UI thread."""
    from loratui.engine.estimate.cache import counted_for

    if model_info is None:
        from loratui.engine.models import inspect_model

        model_info = inspect_model(profile.model)
    if plan is None or images is None:
        from loratui.engine.dataset import plan_for, scan_dataset

        scan = scan_dataset(profile.dataset)
        plan = plan if plan is not None else plan_for(profile, scan)
        images = images if images is not None else scan_images(scan)
    shape = run_shape(profile, model_info, device if device is not None else _ANY_GPU)
    return figures(profile, device, shape, counted_for(shape), model_info, plan, images)


def figures(profile, device, shape, counted, model_info, plan, images: int) -> Estimate:
    """The estimate from a count (no counting here)."""
    from loratui.engine.estimate.resources import disk_figure, ram_figure, text_encoder_mode, vram_figure

    vram = vram_figure(profile, shape, counted, device)
    ram = ram_figure(profile, shape, counted, model_info, images)
    disk = disk_figure(profile, shape, counted, plan, images)
    o = profile.optimization
    flops = (counted.step_flops(bool(o.gradient_checkpointing), text_encoder_mode(profile, shape))
             * o.train_batch_size * o.gradient_accumulation_steps)
    seconds = plan.total_steps * flops / device.flops_per_s(precision_for(profile, device)) if device is not None else None
    est = Estimate(vram, ram, disk, seconds, device, plan.total_steps, flops, counted, shape)
    est.context = (model_info, plan, images)
    return est


def scan_images(scan) -> int:
    """Images whose latents a cache holds (train and regularization)."""
    report = scan.report
    return int(report.images + sum(c.images for c in report.reg_concepts))


def from_prepared(prepared, device=None) -> Estimate:
    """The estimate of a ``training.prepare.Prepared`` (the checks' scan, plan and model headers)."""
    return estimate(prepared.profile, device, prepared.model, prepared.plan, scan_images(prepared.scan))


class _AnyGpu:
    """A GPU of unknown kind: bf16 as the profile asks."""

    bf16 = True


_ANY_GPU = _AnyGpu()
