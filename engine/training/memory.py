"""The memory savers of a run, set up once the model and the LoRA are built:
text-encoder output caching (``engine.text_cache``), the fp8 base
(``engine.fp8``), block swap and CPU-offloaded checkpointing
(``engine.blockswap``). ``memory_problems`` is what ``prepare_run`` checks
before anything loads (no torch).
"""

from __future__ import annotations

from loratui.engine.events import LogEvent, Phase, PhaseChanged
from loratui.engine.problems import Problem
from loratui.engine.schema import Profile
from loratui.engine.training.fastpath import free_memory


def memory_problems(profile: Profile) -> list[Problem]:
    """Errors only (``prepare_run`` adds them to its checks, which stop a run)."""
    from loratui.engine.problems import error
    from loratui.engine.registries import NETWORK_TYPES
    from loratui.engine.text_cache import cache_problems

    out = cache_problems(profile)
    n = profile.network
    if profile.model.fp8_base and n.network_type in NETWORK_TYPES and NETWORK_TYPES[n.network_type].algo is not None:
        out.append(error("model.fp8_base", f"not with a LyCORIS network ({n.network_type}): LyCORIS computes its "
                                           "layers' weights itself, and cannot from float8 ones",
                         "turn model.fp8_base off, or train network_type = \"lora\" with the fp8 base"))
    return out


def cache_text_outputs(profile: Profile, scan, comp, ctx, device: str, accelerator, weight_dtype):
    """The text-output cache (None when off); the frozen text encoders then leave ``device``."""
    from loratui.engine import text_cache
    from loratui.engine.families import get_family

    mode = text_cache.effective_mode(profile)
    if mode == "off":
        why = text_cache.blockers(profile)
        if why and profile.dataset.cache_text_encoder_outputs == "auto" and not profile.network.train_text_encoder:
            ctx.emit(LogEvent(message=f"text-encoder outputs not cached: {why[0][1]} ({why[0][0]})"))
        return None
    emit, control = ctx.emit, ctx.control
    detail = "text-encoder outputs"
    emit(PhaseChanged(phase=Phase.CACHING_LATENTS, detail=detail, current=0, total=len(scan.items)))
    fam = get_family(comp.family)
    swaps: list = []  # text encoders whose blocks visit the device in turn while caching
    kept: list = []  # their tensors in main memory, put back after (no copy back)

    def bring():  # on the device for the caching only (the denoiser is not there yet)
        kept.append(Kept(comp.text_encoders))
        labels = [spec.label for spec in fam.text_encoders]
        swaps.extend(encoders_onto(comp.text_encoders, labels, device, lambda m: emit(LogEvent(message=m))))

    cache = text_cache.build_cache(
        scan.items,
        fam,
        comp.text_encoders,
        comp.tokenizers,
        mode=mode,
        clip_skip=profile.model.clip_skip,
        max_tokens=profile.optimization.max_token_length,
        device=device,
        autocast=accelerator.autocast,
        dtype_name=str(weight_dtype).replace("torch.", ""),
        on_progress=lambda n, total: emit(PhaseChanged(phase=Phase.CACHING_LATENTS, detail=detail, current=n, total=total)),
        should_stop=lambda: control.aborted,
        bring=bring,
    )
    if cache is not None:  # the sample prompts too, with the encoders on the device
        comp.text_memo = sample_prompts_memo(profile, comp, ctx, device, accelerator.autocast,
                                             bring=lambda: None if kept else bring())
    for swap in swaps:
        swap.restore()
    for k in kept:
        k.back()
    ctx.check_abort()
    for w in cache.warnings:
        ctx.warn(w)
    release_text_encoders(comp.text_encoders, device)
    reused = f", {cache.reused} image(s) from the disk cache" if cache.reused else ""
    remade = f", {cache.remade} stale or damaged file(s) made again" if cache.remade else ""
    emit(LogEvent(message=f"text-encoder outputs cached ({mode}): {cache.encoded} caption(s) encoded{reused}{remade}; "
                          f"text encoders moved off {device}"))
    return cache


def sample_prompts_memo(profile: Profile, comp, ctx, device: str, autocast, bring):
    """The sample prompts' encoder outputs, recorded now (engine.samples.text_memo); None
    when the run samples nothing or the recording fails (samples then encode as before).
    ``bring`` puts the encoders on the device (where a disk cache left them off)."""
    from loratui.engine.samples.during import wanted_prompts
    from loratui.engine.samples.render import resolved
    from loratui.engine.samples.text_memo import record_sample_prompts

    try:
        prompts = [resolved(p, profile, profile.output.sample_sampler) for p in wanted_prompts(profile, ctx.world.is_main)]
        if not prompts:
            return None
        bring()
        memo = record_sample_prompts(comp, prompts, device=device, clip_skip=profile.model.clip_skip, autocast=autocast)
    except Exception as exc:  # noqa: BLE001 - samples are never the run's end (TrainingSamples says why)
        ctx.emit(LogEvent(message=f"sample prompts not encoded ahead ({type(exc).__name__}: {str(exc)[:80]}); "
                                  "samples encode them where the text encoders are"))
        return None
    ctx.emit(LogEvent(message=f"sample prompts encoded with the text encoders ({len(prompts)} prompt(s), "
                              f"{len(memo)} encoder output(s)): samples reuse them"))
    return memo


def module_bytes(module) -> int:
    """Bytes of a module's weights."""
    return sum(t.numel() * t.element_size() for t in module.parameters())


def _blocks(module) -> list:
    """A text encoder's layers: its largest ModuleList (T5: encoder.block; CLIP: encoder.layers)."""
    import torch

    lists = [m for m in module.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 1]
    return list(max(lists, key=module_bytes)) if lists else []


def encoders_onto(text_encoders: list, labels: list[str], device: str, log) -> list:
    """The text encoders onto ``device`` to cache their outputs. Where they do not all
    fit its free memory, the largest one's layers stay in main memory and visit in
    turn (``engine.blockswap``, unpinned: no copy of them in RAM), then every one's:
    T5-XXL (9.5 GB in bf16) caches on an 8 GB card, not much slower (each batch
    of captions copies its layers in once). Returns the swaps (``restore`` them after)."""
    from loratui.engine.blockswap import BlockSwap
    from loratui.engine.modelfiles import format_size
    from loratui.engine.text_cache import ENCODE_MARGIN

    free = free_memory(device)
    sizes = [module_bytes(te) for te in text_encoders]
    need = sum(sizes) + ENCODE_MARGIN
    swaps, swapped = [], []
    for i in sorted(range(len(text_encoders)), key=lambda i: -sizes[i]):
        if free is None or need <= free:
            break
        blocks = _blocks(text_encoders[i])
        if not blocks:
            continue
        layer_bytes = [module_bytes(b) for b in blocks]  # (counted before the swap empties them)
        swaps.append(BlockSwap(blocks, device=device, pin=False))  # (for a few batches: no pinned copy in RAM)
        swapped.append(f"{labels[i] if i < len(labels) else 'text encoder'}'s {len(blocks)} layers")
        need -= sum(layer_bytes) - 2 * max(layer_bytes)  # two on the device at a time
    for te in text_encoders:
        to_device(te, device)  # swapped layers hold empty placeholders there already
    if swapped:
        log(f"text encoders cached with {' and '.join(swapped)} visiting {device} in turn: together they need "
            f"~{format_size(sum(sizes) + ENCODE_MARGIN)}, {format_size(free)} is free")
    return swaps


class Kept:
    """The tensors of some modules as they are now (in main memory), to put back after a
    visit to the device: weights that were views of a mapped .safetensors file stay views
    (page cache, no memory of their own) instead of coming back as a copy -- T5-XXL's 9.5 GB."""

    def __init__(self, modules: list):
        subs = [sub for m in modules for sub in m.modules()]
        self.params = [(sub, name, p, p.data) for sub in subs for name, p in sub._parameters.items() if p is not None]
        self.buffers = [(sub, name, b) for sub in subs for name, b in sub._buffers.items() if b is not None]

    def back(self) -> None:
        for sub, name, p, data in self.params:  # the same Parameter (a move may have made new ones)
            p.data = data
            sub._parameters[name] = p
        for sub, name, b in self.buffers:
            sub._buffers[name] = b


def to_device(module, device: str) -> None:
    import torch

    torch.nn.Module.to(module, device=device)


def place_for_training(comp, network, device: str, *, text_cached: bool, latents_cached: bool) -> None:
    """The denoiser with its LoRA onto the training device, once the caches are built.

    A run loads its model into main memory and brings its parts onto the device in turn:
    the VAE while it caches latents, the text encoders while they cache their outputs,
    then the denoiser -- after fp8 and block swap were set up in main memory. So a card
    never holds the whole bf16 transformer of an fp8 run, nor the transformer beside
    T5-XXL, nor the swapped blocks: its peak is the training step's (the estimate's
    figure). Uncached text encoders and an uncached VAE (used at every step) go too.
    """
    import torch

    to_device(comp.unet, device)  # swapped blocks hold empty placeholders there already
    own = getattr(network, "net", None)  # LyCORIS keeps its modules outside the model (peft's are inside)
    if isinstance(own, torch.nn.Module):
        to_device(own, device)
    if not text_cached:
        for te in comp.text_encoders:
            to_device(te, device)
    if not latents_cached:
        to_device(comp.vae, device)


def release_text_encoders(text_encoders: list, device: str) -> None:
    """Frozen, cached text encoders off the training device (to ``text_cache.OFFLOAD_DEVICE``)."""
    import torch

    from loratui.engine import text_cache

    for te in text_encoders:
        torch.nn.Module.to(te, device=text_cache.OFFLOAD_DEVICE)
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()



def apply_memory_savers(profile: Profile, comp, network, device: str, weight_dtype, ctx):
    """fp8 base, then block swap and CPU-offloaded checkpointing, on the denoiser
    (after the LoRA is injected: its weights are never converted or swapped).
    Returns the block swapper (None when off)."""
    from loratui.engine.families import get_family
    from loratui.engine.training.paths import TrainingError

    fam = get_family(comp.family)
    if profile.model.fp8_base:
        from loratui.engine.fp8 import apply_fp8, fp8_unsupported

        why = fp8_unsupported()
        if why:
            raise TrainingError(f"model.fp8_base: {why}", "turn model.fp8_base off, or install a newer torch")
        n = apply_fp8(comp.unet, weight_dtype)
        ctx.emit(LogEvent(message=f"fp8 base: {n} frozen denoiser layers stored as float8_e4m3fn, "
                                  f"computed in {str(weight_dtype).replace('torch.', '')}"))
    o = profile.optimization
    swapper = None
    if o.blocks_to_swap:
        from loratui.engine.blockswap import BlockSwap

        chosen = fam.blocks_swapped(comp.unet, o.blocks_to_swap)
        sizes = [len(g) for g in fam.swap_groups(comp.unet)]
        total = sum(sizes)
        if chosen is None:
            most = fam.max_blocks_to_swap(sizes)
            raise TrainingError(
                f"optimization.blocks_to_swap: {o.blocks_to_swap} is more than this {fam.label} denoiser ({total} "
                f"blocks) can swap", f"set it to at most {most}" if most else "set it to 0 (off)",
            )
        if not str(device).startswith("cuda"):
            ctx.warn(f"optimization.blocks_to_swap: the run is on {device}, where the blocks already are in "
                     "main memory; nothing is swapped")
        else:
            swapper = BlockSwap(chosen, device=device, offload="cpu")
            ctx.emit(LogEvent(message=f"block swap {o.blocks_to_swap}: {len(chosen)} of {total} denoiser blocks "
                                      "kept on the CPU"))
    if o.cpu_offload_checkpointing:
        from loratui.engine.blockswap import offload_checkpointing

        if not o.gradient_checkpointing:
            ctx.warn("optimization.cpu_offload_checkpointing needs gradient checkpointing: the denoiser's blocks are "
                     "checkpointed for this run (as sd-scripts turns it on); set optimization.gradient_checkpointing "
                     "= true to silence this")
        n = offload_checkpointing(comp.unet, fam.swap_blocks(comp.unet))
        ctx.emit(LogEvent(message=f"CPU-offloaded checkpointing: the inputs of {n} denoiser blocks kept in CPU memory"))
    return swapper
