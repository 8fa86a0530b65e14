"""Rendering sample images with the models in memory (the LoRA being trained,
or a LoRA file at some weight), through the family's ``pipeline()``.

No second copy of the base model: the pipeline is built around the very
modules that train. Rendering leaves training exactly as it was: the global
RNGs (torch CPU and CUDA, Python, NumPy) are put back, each prompt draws from
its own seeded generator, and every module gets back its train/eval mode, the
VAE its device and dtype.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from loratui.engine.samples.prompts import SamplePrompt


@dataclass(frozen=True)
class Rendered:
    image: Any  # PIL.Image
    prompt: SamplePrompt  # with width, height, seed and sampler filled in


def resolved(p: SamplePrompt, profile, default_sampler: str) -> SamplePrompt:
    """The prompt with the defaults filled in: the training size (a multiple of 8),
    a seed from the profile's seed and the prompt's position, the profile's sampler."""
    ds = profile.dataset
    w = p.width or ds.resolution
    h = p.height or ds.resolution_height or ds.resolution
    seed = p.seed if p.seed is not None else profile.optimization.seed + p.index
    return replace(p, width=max(64, w - w % 8), height=max(64, h - h % 8), seed=seed, sampler=p.sampler or default_sampler)


@contextlib.contextmanager
def training_untouched(modules: list, vae, device: str):
    """Eval mode and no grad inside; afterwards every module's mode, the VAE's
    device/dtype and all global RNG states exactly as before."""
    import numpy as np
    import torch

    modes = [(m, m.training) for top in modules if top is not None for m in top.modules()]
    vae_at = (next(vae.parameters()).device, next(vae.parameters()).dtype) if vae is not None else None
    py_state, np_state = random.getstate(), np.random.get_state()
    dev = torch.device(device)
    devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            for top in modules:
                if top is not None:
                    top.eval()
            if vae is not None and vae_at[0] != torch.device(device):
                vae.to(device)
            yield
    finally:
        for m, training in modes:
            m.training = training
        if vae_at is not None:
            now = next(vae.parameters())
            if now.dtype != vae_at[1]:  # a pipeline that upcast the VAE
                vae.to(dtype=vae_at[1])
            if now.device != vae_at[0]:
                vae.to(vae_at[0])
        random.setstate(py_state)
        np.random.set_state(np_state)


@contextlib.contextmanager
def encoders_where_they_are(text_encoders: list, device: str):
    """Text encoders a run moved off ``device`` (their outputs cached, e.g. to the CPU) encode
    the sample prompts where they are: their inputs go to them and their outputs come back to
    ``device``. No second copy of T5-XXL on the GPU for a sample. Encoders on ``device``
    (or freed on the meta device) are left alone."""
    import torch

    target = torch.device(device)
    handles = []
    for te in text_encoders:
        p = next(te.parameters(), None) if te is not None else None
        if p is None or p.device == target or p.device.type == "meta":
            continue
        at = p.device
        handles.append(te.register_forward_pre_hook(
            lambda _m, args, kwargs, at=at: (_moved(args, at), _moved(kwargs, at)), with_kwargs=True))
        handles.append(te.register_forward_hook(lambda _m, _args, out: _moved(out, target)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _moved(x, device):
    """``x`` (a tensor, or a tuple / list / dict / ModelOutput of them) on ``device``."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):  # a transformers ModelOutput too: its items and attributes
        for k in list(x.keys()):
            x[k] = _moved(x[k], device)
        return x
    if isinstance(x, (tuple, list)):
        return type(x)(_moved(v, device) for v in x)
    return x


def _call_kwargs(pipe, p: SamplePrompt, family, clip_skip: int, device: str) -> dict[str, Any]:
    import torch

    kw: dict[str, Any] = dict(
        prompt=p.prompt, negative_prompt=p.negative_prompt or None, width=p.width, height=p.height,
        num_inference_steps=p.sample_steps, guidance_scale=p.scale,
        generator=torch.Generator(device=device).manual_seed(int(p.seed)), output_type="pil",
    )
    if family.name.startswith("flux"):  # distilled guidance; --l is the true CFG there
        kw["guidance_scale"] = p.guidance_scale if p.guidance_scale is not None else 3.5
        kw["true_cfg_scale"] = p.scale if p.negative_prompt else 1.0
    if family.uses_clip_skip and clip_skip > 1:
        kw["clip_skip"] = clip_skip - 1  # diffusers counts the layers skipped after the last
    accepted = inspect.signature(pipe.__call__).parameters
    return {k: v for k, v in kw.items() if k in accepted}


def render(comp, prompts: list[SamplePrompt], *, device: str, clip_skip: int = 1, autocast=None) -> list[Rendered]:
    """Render ``prompts`` (already :func:`resolved`) with the components as they
    are now (LoRA layers included). ``autocast``: a context manager factory
    (the accelerator's) for mixed precision."""
    from loratui.engine.families import get_family

    family = get_family(comp.family)
    # U-Net families: the pipeline stops at the latents and the VAE decodes them here, outside
    # autocast and in fp32 where it overflows in fp16 (SDXL); other families decode themselves
    own_decode = family.denoiser_class == "UNet2DConditionModel"
    out: list[Rendered] = []
    memo = getattr(comp, "text_memo", None)  # the sample prompts encoded while the encoders were on the GPU
    with training_untouched([comp.unet, *comp.text_encoders], comp.vae, device), \
            encoders_where_they_are(comp.text_encoders, device), \
            (memo.replaying(comp.text_encoders) if memo is not None else contextlib.nullcontext()):
        for p in prompts:
            if family.fixed_sampler:  # SD3/FLUX: flow-matching Euler, whatever the prompt asks
                p = replace(p, sampler=family.fixed_sampler)
            scheduler = family.sample_scheduler(p.sampler or "euler_a", comp.noise_scheduler)
            pipe = family.pipeline(comp, scheduler=scheduler)
            pipe.set_progress_bar_config(disable=True)
            kw = _call_kwargs(pipe, p, family, clip_skip, device)
            kw.update({k: v for k, v in family.sample_kwargs(comp).items()
                       if k in inspect.signature(pipe.__call__).parameters})
            if own_decode:
                kw["output_type"] = "latent"
            # eager: a compiled denoiser (optimization.torch_compile) would compile again for no_grad,
            # eval and the CFG batch of 2; tiled decode where the card is short of memory for the VAE
            with _eager(), _tiled_if_short(comp.vae, device, p.width, p.height):
                with (autocast() if autocast is not None else contextlib.nullcontext()):
                    result = pipe(**kw).images
                image = _decode(comp, pipe, result, device) if own_decode else result[0]
            out.append(Rendered(image, p))
    return out


def _eager():
    """Compiled modules run as plain eager code inside (torch >= 2.6; else nothing changes)."""
    import torch

    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


DECODE_BYTES_PER_PIXEL = 9 * 2**30 / 1024**2  # an SDXL-sized VAE decoding 1024² in 16 bits: ~9 GiB at its peak


def decode_need(vae, width: int, height: int) -> int:
    """About the bytes a VAE's untiled decode of a ``width`` × ``height`` image takes at its peak."""
    dtype = next(vae.parameters()).dtype
    return int(DECODE_BYTES_PER_PIXEL * width * height * (2 if dtype.itemsize >= 4 else 1))


@contextlib.contextmanager
def _tiled_if_short(vae, device: str, width: int, height: int):
    """The VAE decodes in tiles while this lasts where the device's free memory is short of
    :func:`decode_need` (the denoiser and the optimizer stay on the card during a run)."""
    from loratui.engine.training import fastpath

    free = fastpath.free_memory(device) if vae is not None and hasattr(vae, "enable_tiling") else None
    tile = free is not None and free < decode_need(vae, width or 1024, height or 1024) and not getattr(vae, "use_tiling", False)
    if tile:
        vae.enable_tiling()
    try:
        yield
    finally:
        if tile:
            vae.disable_tiling()


def _decode(comp, pipe, latents, device: str):
    """Latents (as the U-Net denoised them) → a PIL image, as training encoded them:
    ``latents / scale + shift``."""
    import torch

    vae = comp.vae
    if comp.vae_needs_fp32 and next(vae.parameters()).dtype == torch.float16:
        vae.to(torch.float32)  # training_untouched puts its dtype back
    dtype = next(vae.parameters()).dtype
    x = latents.to(device=device, dtype=dtype) / comp.vae_scale_factor
    if comp.vae_shift_factor:
        x = x + comp.vae_shift_factor
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        pixels = vae.decode(x).sample
    return pipe.image_processor.postprocess(pixels.float(), output_type="pil")[0]


# --------------------------------------------------------------------------- files


def sample_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "sample"


def sample_name(output_name: str, epoch: int | None, step: int, index: int, seed: int | None, when: float | None = None) -> str:
    """sd-scripts' name: ``<name>_<e000004 | 000120>_<NN>_<YYYYmmddHHMMSS>_<seed>.png``."""
    ts = time.strftime("%Y%m%d%H%M%S", time.localtime(when))
    num = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    return f"{output_name + '_' if output_name else ''}{num}_{index:02d}_{ts}{'' if seed is None else f'_{seed}'}.png"


def png_text(p: SamplePrompt, **extra: Any) -> dict[str, str]:
    """The PNG text chunk: A1111-style ``parameters`` (what image viewers and
    WebUIs read) and the full settings as JSON under ``loratui``."""
    params = [f"Steps: {p.sample_steps}", f"Sampler: {p.sampler}", f"CFG scale: {p.scale:g}", f"Seed: {p.seed}",
              f"Size: {p.width}x{p.height}"]
    params += [f"{k.replace('_', ' ').capitalize()}: {v}" for k, v in extra.items() if v not in (None, "")]
    text = p.prompt + (f"\nNegative prompt: {p.negative_prompt}" if p.negative_prompt else "") + "\n" + ", ".join(params)
    return {"parameters": text, "loratui": json.dumps({**p.to_dict(), **extra}, sort_keys=True)}


def save_png(image, path: Path, text: dict[str, str]) -> Path:
    from PIL.PngImagePlugin import PngInfo

    from loratui.engine.fsutil import atomic_save

    info = PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_save(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))
