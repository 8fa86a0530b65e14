"""The run's model on the meta device, its LoRA, and one counted forward.

``count_run(key)`` is cached per configuration (``RunShape``): the same
model, LoRA, resolution, batch, precision and backend are counted once per
process.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path

from loratui.engine.estimate.meta import Counted


@dataclass(frozen=True)
class RunShape:
    """Everything the count depends on (hashable: the cache key)."""

    family: str
    config_dir: str  # diffusers folder (or bundled configs) with unet/, text_encoder*/
    height: int
    width: int
    batch: int
    weight_dtype: str  # "fp32" | "bf16" | "fp16"
    amp: bool  # autocast on (mixed precision on a GPU)
    rank: int
    alpha: float
    conv_rank: int | None
    conv_alpha: float | None
    train_unet: bool
    train_text_encoder: bool
    fused_attention: bool = True
    clip_skip: int = 1
    # SD3 / Flux: the transformer's shape read from a single file's header (sorted config items),
    # T5 tokens, T5 attention mask, LoRA on T5, Flux's train_blocks, model_prediction_type
    denoiser_config: tuple = ()
    text_tokens: int = 0
    t5_mask: bool = False
    train_t5: bool = False
    train_blocks: str = "all"
    flow_prediction: str = "sigma_scaled"


DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}


def torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def build_meta(family: str, config_dir: str | Path, denoiser_config: tuple = ()):
    """(denoiser, [text encoders]) of ``family`` from the configs in ``config_dir``, on the meta
    device (``denoiser_config``: items that replace the denoiser config's, ``RunShape``)."""
    from loratui.engine.families import get_family
    from loratui.engine.lora_modules import meta_models

    overrides = {k: list(v) if isinstance(v, tuple) else v for k, v in denoiser_config}
    return meta_models(get_family(family), Path(config_dir), overrides)


def part_dir(shape: RunShape, sub: str) -> Path:
    """The config folder of one part (``vae``, ``transformer``...) of ``shape``'s model."""
    from loratui.engine.families import get_family
    from loratui.engine.lora_modules import config_subdir

    return config_subdir(get_family(shape.family), shape.config_dir, sub)


def vae_params(shape: RunShape) -> int:
    """Parameters of the run's VAE, counted on the meta device."""
    return _vae_params(str(part_dir(shape, "vae")))


@functools.lru_cache(maxsize=8)
def _vae_params(vae_dir: str) -> int:
    import torch
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(vae_dir))
    return sum(p.numel() for p in vae.parameters())


def vae_config(shape: RunShape) -> dict:
    """The run's VAE config ({} when it cannot be read)."""
    import json

    try:
        return json.loads((part_dir(shape, "vae") / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def attach_lora(shape: RunShape, unet, tes, lazy=None):
    """The run's LoRA (``engine.lora.LoRANetwork.create``) on the meta models
    (``lazy``: an ``engine.estimate.lazy.LazyLoRA`` takes the copies of a block)."""
    from types import SimpleNamespace

    from loratui.engine.families import get_family
    from loratui.engine.lora import LoRANetwork

    chosen = get_family(shape.family).lora_target_filter(SimpleNamespace(train_t5xxl=shape.train_t5,
                                                                         train_blocks=shape.train_blocks))
    return LoRANetwork.create(
        unet, tes, shape.family, rank=shape.rank, alpha=shape.alpha, conv_rank=shape.conv_rank,
        conv_alpha=shape.conv_alpha, train_unet=shape.train_unet, train_text_encoder=shape.train_text_encoder,
        target_filter=chosen, defer=lazy.defer if lazy is not None else None,
    )


def param_table(unet, tes, network, weight_bytes: int, lazy=None) -> tuple[dict[str, dict[str, int]], list]:
    """Base parameters by component (counted at the run's weight dtype) and the LoRA's shapes."""
    shapes = []
    for m in network.modules:
        for p, zero in ((m.down.weight, False), (m.up.weight, True)):  # up starts at zero
            shapes.append((tuple(p.shape), bool(p.requires_grad), zero))
    if lazy is not None:
        shapes.extend(lazy.shapes)
    table = {}
    for name, model in [("unet", unet)] + [(f"text_encoder{i + 1 if len(tes) > 1 else ''}", te) for i, te in enumerate(tes)]:
        # every LoRA weight (injected up front or by a copy's first run) is peft's lora_A / lora_B
        n = _base_params(model)
        table[name] = {"count": n, "bytes": n * weight_bytes}
    return table, shapes


def _base_params(module) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if ".lora_A." not in n and ".lora_B." not in n)


_lock = threading.Lock()
_count_lock = threading.Lock()  # one count at a time: the built models are shared
_cache: dict[RunShape, Counted] = {}
_models: dict[tuple, tuple] = {}  # the last built (unet, tes, network), by what they depend on


def _built(shape: RunShape):
    """The meta models with the run's LoRA (kept for the next count of another
    resolution or precision of the same model and LoRA)."""
    key = (shape.family, shape.config_dir, shape.denoiser_config, shape.weight_dtype, shape.rank, shape.alpha,
           shape.conv_rank, shape.conv_alpha, shape.train_unet, shape.train_text_encoder, shape.train_t5,
           shape.train_blocks)
    hit = _models.get(key)
    if hit is not None:
        return hit
    unet, tes = build_meta(shape.family, shape.config_dir, shape.denoiser_config)
    dtype = torch_dtype(shape.weight_dtype)
    for m in (unet, *tes):  # Module._apply: diffusers' own .to() logs about fp32 modules
        m._apply(lambda t: t.to(dtype) if t.is_floating_point() else t)
    from loratui.engine.estimate.lazy import LazyLoRA

    lazy = LazyLoRA(shape.train_unet, shape.train_text_encoder)
    built = (unet, tes, attach_lora(shape, unet, tes, lazy), lazy)
    _models.clear()  # one at a time: a full-size model's modules are many Python objects
    _models[key] = built
    return built


def count_run(shape: RunShape) -> Counted:
    """The counted forward of ``shape`` (cached)."""
    with _lock:
        hit = _cache.get(shape)
    if hit is not None:
        return hit
    from loratui.engine.estimate.meta import count_forward
    from loratui.engine.families import get_family

    with _count_lock:
        unet, tes, network, lazy = _built(shape)
        dtype = torch_dtype(shape.weight_dtype)
        counted = count_forward(
            get_family(shape.family), unet, tes, amp_dtype=dtype if shape.amp else None, lazy=lazy,
            fused_attention=shape.fused_attention, batch=shape.batch, height=shape.height, width=shape.width,
            device="meta", dtype=dtype, train_text_encoder=shape.train_text_encoder, clip_skip=shape.clip_skip,
            text_tokens=shape.text_tokens, t5_mask=shape.t5_mask, flow_prediction=shape.flow_prediction,
        )
        counted.params, counted.lora_shapes = param_table(unet, tes, network, DTYPE_BYTES[shape.weight_dtype], lazy)
        counted.swap_groups = [[_base_params(b) for b in g] for g in get_family(shape.family).swap_groups(unet)]
    with _lock:
        if len(_cache) > 32:
            _cache.clear()
        _cache[shape] = counted
    return counted
