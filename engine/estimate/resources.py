"""The VRAM, RAM and disk figures from a count (``meta.Counted``) and the profile.

One function per resource; each term is one line of its dict, so a new memory
option (fp8 base, block swap, cached text-encoder outputs) is one local change
in ``resident_components``.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from loratui.engine.estimate import (
    ALLOCATOR_SLACK, CUDA_CONTEXT, GB, LORA_FILE_OVERHEAD, PROCESS_RAM, Figure, setting,
)
from loratui.engine.estimate.model import DTYPE_BYTES, vae_config, vae_params
from loratui.engine.estimate.optimizers import state_bytes


def resident_components(profile, shape, counted) -> dict[str, int]:
    """The base model's parts on the GPU while training steps run, in bytes."""
    wbytes = DTYPE_BYTES[shape.weight_dtype]
    out: dict[str, int] = {}
    unet = counted.params["unet"]["count"]
    unet_bytes = DTYPE_BYTES["fp8"] if setting(profile, "fp8_base", False) else wbytes
    swap = int(setting(profile, "blocks_to_swap", 0) or 0)
    swapped = swap_fraction(shape.family, swap, counted)
    from loratui.engine.families import get_family

    out[f"{get_family(shape.family).denoiser_label} weights"] = int(unet * unet_bytes * (1 - swapped))
    te_cached = _te_cached(profile) and not shape.train_text_encoder
    if not te_cached:
        out["text encoder weights"] = text_encoder_params(counted) * wbytes
    if profile.dataset.cache_latents == "off":
        out["VAE weights"] = vae_params(shape) * vae_bytes(profile, shape)
    return out


def text_encoder_params(counted) -> int:
    """Weights of the base model's text encoders (every counted part but the denoiser)."""
    return sum(v["count"] for k, v in counted.params.items() if k != "unet")


def text_encoder_mode(profile, shape) -> str:
    """How a step runs the text encoders (``Counted.step_flops``): trained, frozen or cached."""
    if shape.train_text_encoder:
        return "trained"
    return "cached" if _te_cached(profile) else "frozen"


def _te_cached(profile) -> bool:
    """Whether the run caches the text encoders' outputs (``auto`` does when nothing changes the captions)."""
    if setting(profile, "cache_text_encoder_outputs", None) is None:
        return False
    from loratui.engine.text_cache import effective_mode

    return effective_mode(profile) != "off"


def swap_fraction(family: str, blocks: int, counted=None) -> float:
    """Share of the denoiser's weights ``blocks_to_swap = blocks`` keeps in RAM: the counted
    weights of the blocks it picks (``Family.swap_split``: FLUX's single-stream blocks are
    about half a double-stream one), else blocks over the family's ``swap_block_count``."""
    from loratui.engine.families import get_family

    if not blocks:
        return 0.0
    fam = get_family(family)
    groups = getattr(counted, "swap_groups", None) or []
    unet = (getattr(counted, "params", None) or {}).get("unet", {}).get("count", 0)
    if groups and unet:
        sizes = [len(g) for g in groups]
        split = fam.swap_split(min(blocks, fam.max_blocks_to_swap(sizes)), sizes) or [0] * len(groups)
        return sum(sum(g[len(g) - k:]) for g, k in zip(groups, split) if k) / unet
    total = getattr(fam, "swap_block_count", 0)
    return min(blocks, total) / total if total else 0.0


def vae_bytes(profile, shape) -> int:
    from loratui.engine.families import get_family

    if shape.weight_dtype == "fp16" and get_family(shape.family).vae_overflows_in_fp16:
        return 4
    return DTYPE_BYTES[shape.weight_dtype]


def lora_terms(profile, counted, rank_scale: float = 1.0) -> dict[str, int]:
    trainable = [(s, z) for s, t, z in counted.lora_shapes if t]
    n_all = sum(_numel(s) for s, _, _ in counted.lora_shapes)
    n_train = sum(_numel(s) for s, _ in trainable)
    return {
        "LoRA weights (fp32)": int(4 * n_all * rank_scale),
        "LoRA gradients": int(4 * n_train * rank_scale),
        f"optimizer state ({profile.optimization.optimizer})": int(state_bytes(profile.optimization.optimizer, trainable) * rank_scale),
    }


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def activation_terms(profile, shape, counted, *, area_scale: float = 1.0) -> dict[str, int]:
    o = profile.optimization
    b = o.train_batch_size
    gc = bool(o.gradient_checkpointing)
    acts = int(counted.activations(gc) * b * area_scale)
    what = "activations (checkpointed)" if gc else "activations"
    return {
        f"{what}, batch {b}": acts,
        "backward working set": int(2 * counted.largest * b * area_scale),
    }


def vae_encode_peak(profile, shape, batch: int) -> int:
    """The VAE encoder's working set (no grad) at the full resolution: about
    three full-resolution maps of its first width alive at once (rule of thumb)."""
    try:
        width = int(vae_config(shape).get("block_out_channels", [128])[0])
    except (TypeError, ValueError, IndexError):
        width = 128
    return 3 * batch * width * shape.height * shape.width * vae_bytes(profile, shape)


def vram_figure(profile, shape, counted, device, *, area_scale: float = 1.0, rank_scale: float = 1.0) -> Figure:
    terms = resident_components(profile, shape, counted)
    terms.update(lora_terms(profile, counted, rank_scale))
    terms.update(activation_terms(profile, shape, counted, area_scale=area_scale))
    if profile.dataset.cache_latents == "off":  # each step encodes its batch before the U-Net runs
        terms["VAE encode (per step)"] = 0  # shown; the U-Net's activations are not alive then (see peak below)
        vae_peak = vae_encode_peak(profile, shape, profile.optimization.train_batch_size)
        acts = sum(v for k, v in terms.items() if k.startswith(("activations", "backward")))
        terms["VAE encode (per step)"] = max(0, vae_peak - acts)
    allocated = sum(terms.values())
    terms["allocator slack (10 %)"] = int(allocated * ALLOCATOR_SLACK)
    terms["CUDA context"] = CUDA_CONTEXT
    caching = te_caching_peak(profile, shape, counted)
    if caching and (device is None or caching <= device.vram) and caching > sum(terms.values()):
        # the text encoders cache their outputs on the card before the denoiser comes (training.memory); where
        # that needs more than the step, it is the run's peak -- on a card too small for them their layers
        # visit it in turn (training.memory.encoders_onto) and they need little
        terms["text encoders caching (first)"] = caching - sum(terms.values())
    return Figure(sum(terms.values()), device.vram if device is not None else None, terms)


def te_caching_peak(profile, shape, counted) -> int:
    """VRAM while the text encoders cache their outputs, whole on the card (0: no cache)."""
    if not _te_cached(profile) or shape.train_text_encoder:
        return 0
    from loratui.engine.text_cache import ENCODE_MARGIN

    return text_encoder_params(counted) * DTYPE_BYTES[shape.weight_dtype] + ENCODE_MARGIN + CUDA_CONTEXT


def allocated(fig: Figure) -> int:
    """What torch.cuda.max_memory_allocated would show: the figure without context and slack."""
    return fig.total - fig.terms.get("CUDA context", 0) - fig.terms.get("allocator slack (10 %)", 0)


def latent_bytes(shape, items: int, flip: bool) -> int:
    channels = int(vae_config(shape).get("latent_channels", 4) or 4)  # SD3 / Flux: 16
    lat = channels * (shape.height // 8) * (shape.width // 8) * 4  # float32
    return items * lat * (2 if flip else 1)


def ram_figure(profile, shape, counted, model_info, images: int) -> Figure:
    """Peak main memory that can run out (anonymous memory). A .safetensors file is mapped,
    not read: weights kept in the file's dtype stay views of it (page cache, which the kernel
    drops as it needs), also the text encoders after they cached (``training.memory.Kept``).
    What a run converts has memory of its own: the denoiser's fp8 weights (fp8 base from a
    wider file), weights of another dtype than the run's, block swap's pinned blocks, the VAE
    (float32); a .ckpt is read whole. Measured by ``bench/load_ram.py``."""
    terms = {"process (Python, torch, CUDA)": PROCESS_RAM}
    wbytes = DTYPE_BYTES[shape.weight_dtype]
    unet = counted.params["unet"]["count"]
    te = text_encoder_params(counted)
    mapped = getattr(model_info, "format", None) != "ckpt"
    file_dtype = getattr(model_info, "dtype", None)  # a single file's (None: a folder, not known)
    fp8 = bool(setting(profile, "fp8_base", False))
    if not mapped:
        terms["checkpoint read whole (loading)"] = int(getattr(model_info, "size_bytes", None) or 0)
    den = unet * (DTYPE_BYTES["fp8"] if fp8 else wbytes)
    converted = not mapped or file_dtype != ("fp8" if fp8 else shape.weight_dtype)
    pinned = int(den * swap_fraction(shape.family, int(setting(profile, "blocks_to_swap", 0) or 0), counted))
    from loratui.engine.families import get_family

    fam = get_family(shape.family)
    terms[f"{fam.denoiser_label} weights (in RAM)"] = max(den if converted else 0, pinned)
    te_ram = te * wbytes if not mapped or file_dtype != shape.weight_dtype else 0
    if getattr(fam, "part_settings", None):
        te_ram = _text_encoders_ram(profile, fam, counted, shape.weight_dtype, model_info)
    if te_ram:
        terms["text encoder weights (in RAM)"] = te_ram
    terms["VAE (float32)"] = vae_params(shape) * 4
    if profile.dataset.cache_latents == "memory":
        terms["latent cache"] = latent_bytes(shape, images, profile.dataset.flip_aug)
    return Figure(sum(terms.values()), _ram_total(), terms)


def _text_encoders_ram(profile, fam, counted, run_dtype: str, model_info) -> int:
    """The SD3/FLUX text encoders' converted weights, by the headers of the files they come
    from (a separate ``model.t5xxl`` … file, else the all-in-one base file): tensors in the
    run's dtype stay views of the file, so do an fp8 file's Linear weights
    (``engine.flow_loading``); the rest is converted. Where no header tells (a file not here
    yet, a folder), an encoder counts as converted unless the base file is in the run's dtype."""
    from loratui.engine.modelfiles import _read_safetensors_header

    def header(path) -> dict | None:
        path = Path(path).expanduser() if path else None
        if path is None or not path.is_file():
            return None
        hdr, _problem = _read_safetensors_header(path, path.stat().st_size)
        return hdr.keys if hdr is not None else None

    wbytes = DTYPE_BYTES[run_dtype]
    in_main = getattr(model_info, "format", None) == "ckpt" or getattr(model_info, "dtype", None) != run_dtype
    main = None
    if getattr(model_info, "format", None) == "safetensors" and getattr(model_info, "kind", "file") == "file":
        main = header(getattr(model_info, "path", None))
    total = 0
    for i, spec in enumerate(fam.text_encoders):
        name = f"text_encoder{i + 1 if len(fam.text_encoders) > 1 else ''}"
        count = counted.params.get(name, {}).get("count", 0)
        value = str(getattr(profile.model, fam.part_settings.get(spec.label, ""), "") or "").strip()
        if value:
            tensors, fallback = header(value), count * wbytes
        else:
            tensors = {k: v for k, v in (main or {}).items() if k.startswith(tuple(spec.ldm_prefixes))} or None
            fallback = count * wbytes if in_main else 0
        total += fallback if tensors is None else _converted_bytes(tensors, spec, run_dtype)
    return total


def _converted_bytes(tensors: dict, spec, run_dtype: str) -> int:
    """Bytes a text encoder's tensors (a header's name -> (dtype, shape, offsets)) take once
    loaded for a run in ``run_dtype``, beyond the mapped file."""
    import transformers

    from loratui.engine.modelfiles import SAFETENSORS_DTYPE_NAMES

    fp32_kept = set(getattr(getattr(transformers, spec.model_class), "_keep_in_fp32_modules", None) or ())
    total = 0
    for key, (dtype, dims, _offsets) in tensors.items():
        kept_fp8 = (dtype.startswith("F8") and len(dims) == 2 and key.endswith(".weight")  # Linear weights
                    and "embed" not in key and not key.endswith("shared.weight")  # embeddings: converted
                    and not set(key.split(".")) & fp32_kept)  # T5's wo: converted (engine.fp8.keeps_fp8)
        if SAFETENSORS_DTYPE_NAMES.get(dtype) != run_dtype and not kept_fp8:
            total += math.prod(dims) * DTYPE_BYTES[run_dtype]
    return total


def _ram_total() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def save_counts(profile, plan) -> tuple[int, int]:
    """(LoRA files, states) a run writes at its save points (training.setup.check_disk_space
    adds the state a stop writes)."""
    o = profile.output
    n_lora = 1
    if o.save_every_n_epochs:
        n_lora += max(0, (plan.epochs - 1) // o.save_every_n_epochs)
    if o.save_every_n_steps:
        n_lora += plan.total_steps // o.save_every_n_steps
    n_states = 0
    if o.save_state:
        n_states = (o.save_last_n_states + 1) if o.save_last_n_states else n_lora
    return n_lora, n_states


def disk_figure(profile, shape, counted, plan, images: int) -> Figure:
    o = profile.optimization
    n_all = sum(_numel(s) for s, _, _ in counted.lora_shapes)
    trainable = [(s, z) for s, t, z in counted.lora_shapes if t]
    per_value = 4 if profile.output.save_precision == "float" else 2
    lora = n_all * per_value + LORA_FILE_OVERHEAD
    state = 4 * n_all + state_bytes(o.optimizer, trainable) + LORA_FILE_OVERHEAD
    n_lora, n_states = save_counts(profile, plan)
    terms = {f"{n_lora} LoRA file(s)": n_lora * lora}
    if n_states:
        terms[f"{n_states} state(s)"] = n_states * state
    if profile.dataset.cache_latents == "disk":
        terms["latent cache (beside the images)"] = latent_bytes(shape, images, profile.dataset.flip_aug)
    return Figure(sum(terms.values()), _free(profile.output.output_dir), terms)


def _free(folder: str) -> int | None:
    p = Path(folder or ".").expanduser()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None
