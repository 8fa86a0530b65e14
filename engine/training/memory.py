"""The memory savers of a run, set up once the model and the LoRA are built:
text-encoder output caching (``engine.text_cache``), the fp8 base
(``engine.fp8``), block swap and CPU-offloaded checkpointing
(``engine.blockswap``). ``memory_problems`` is what ``prepare_run`` checks
before anything loads (no torch).
"""

from __future__ import annotations

from loratui.engine.events import LogEvent, Phase, PhaseChanged
from loratui.engine.problems import Problem, warning
from loratui.engine.schema import Profile


def memory_problems(profile: Profile) -> list[Problem]:
    from loratui.engine.text_cache import cache_problems

    out = cache_problems(profile)
    o = profile.optimization
    if o.cpu_offload_checkpointing and not o.gradient_checkpointing:
        out.append(
            warning(
                "optimization.cpu_offload_checkpointing",
                "needs gradient checkpointing: it is turned on for this run (as sd-scripts does)",
                "set optimization.gradient_checkpointing = true to silence this",
            )
        )
    return out


def cache_text_outputs(profile: Profile, scan, comp, ctx, device: str, accelerator, weight_dtype):
    """The text-output cache (None when off); the frozen text encoders then leave ``device``."""
    from loratui.engine import text_cache
    from loratui.engine.families import get_family

    mode = text_cache.effective_mode(profile)
    if mode == "off":
        why = text_cache.blockers(profile)
        if why and profile.dataset.cache_text_encoder_outputs == "auto":
            ctx.emit(LogEvent(message=f"text-encoder outputs not cached: {why[0][1]} ({why[0][0]})"))
        return None
    emit, control = ctx.emit, ctx.control
    detail = "text-encoder outputs"
    emit(PhaseChanged(phase=Phase.CACHING_LATENTS, detail=detail, current=0, total=len(scan.items)))
    cache = text_cache.build_cache(
        scan.items,
        get_family(comp.family),
        comp.text_encoders,
        comp.tokenizers,
        mode=mode,
        clip_skip=profile.model.clip_skip,
        device=device,
        autocast=accelerator.autocast,
        dtype_name=str(weight_dtype).replace("torch.", ""),
        on_progress=lambda n, total: emit(PhaseChanged(phase=Phase.CACHING_LATENTS, detail=detail, current=n, total=total)),
        should_stop=lambda: control.aborted,
    )
    ctx.check_abort()
    for w in cache.warnings:
        ctx.warn(w)
    release_text_encoders(comp.text_encoders, device)
    reused = f", {cache.reused} image(s) from the disk cache" if cache.reused else ""
    remade = f", {cache.remade} stale or damaged file(s) made again" if cache.remade else ""
    emit(LogEvent(message=f"text-encoder outputs cached ({mode}): {cache.encoded} caption(s) encoded{reused}{remade}; "
                          f"text encoders moved off {device}"))
    return cache


def release_text_encoders(text_encoders: list, device: str) -> None:
    """Frozen, cached text encoders off the training device (to ``text_cache.OFFLOAD_DEVICE``)."""
    import torch

    from loratui.engine import text_cache

    for te in text_encoders:
        torch.nn.Module.to(te, device=text_cache.OFFLOAD_DEVICE)
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()

