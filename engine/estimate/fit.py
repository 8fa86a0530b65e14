"""The smallest list of changes that makes a run fit its card, in the order
the guides recommend them: gradient checkpointing, cached latents, cached
text-encoder outputs, an 8-bit optimizer, batch 1 + accumulation, a lower
resolution, a lower rank, an fp8 base, block swap — for SD3/FLUX the fp8 base
and block swap (the fewest blocks that fit) before resolution and rank.

Each change is a ``Change`` (dotted key, new value, why); ``apply`` makes the
changed profile. The figures after a change come from the same count:
batch scales the activations exactly, resolution by the latent area (a new
count is made when ``fit`` writes a profile), rank the LoRA's bytes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loratui.engine.estimate import Estimate, setting


@dataclass(frozen=True)
class Change:
    key: str  # "optimization.gradient_checkpointing"
    value: Any
    why: str  # "much less VRAM, ~20 % slower"
    vram: int = 0  # the estimate once this and the changes before it are made

    def describe(self, old: Any) -> str:
        return f"{self.key} {_fmt(old)} → {_fmt(self.value)}"


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def apply(profile, changes) -> Any:
    """A copy of ``profile`` with ``changes`` ([Change] or [(key, value)]) made."""
    values = {}
    for c in changes:
        key, value = (c.key, c.value) if isinstance(c, Change) else c
        section, name = key.split(".", 1)
        values.setdefault(section, {})[name] = value
    update = {s: getattr(profile, s).model_copy(update=v) for s, v in values.items()}
    return profile.model_copy(update=update)


def candidates(profile, family: str, counted=None) -> list[Change]:
    """Every change that lowers VRAM from this profile, in the guides' order. A transformer
    family's fp8 base and block swap (as many blocks as it can: ``suggest`` lowers the
    count to the fewest that fit) come before a lower resolution or rank, as in
    sd-scripts' FLUX table: they cost speed, not what the LoRA learns."""
    from loratui.engine.families import get_family

    o, d, n = profile.optimization, profile.dataset, profile.network
    out: list[Change] = []
    fam = get_family(family)
    swaps = getattr(fam, "swap_block_count", 0) >= 16  # transformer families (sd-scripts' FLUX/SD3 guides)
    if not o.gradient_checkpointing:
        out.append(Change("optimization.gradient_checkpointing", True, "much less VRAM, ~20 % slower"))
    if d.cache_latents == "off":
        out.append(Change("dataset.cache_latents", "memory", "the VAE leaves the GPU during training"))
    if setting(profile, "cache_text_encoder_outputs", None) == "off" and not n.train_text_encoder:
        out.append(Change(_key(profile, "cache_text_encoder_outputs"), "memory", "the text encoders leave the GPU"))
    if o.optimizer in ("AdamW", "Lion"):
        out.append(Change("optimization.optimizer", o.optimizer + "8bit", "optimizer state in 8 bits"))
    if o.train_batch_size > 1:
        out.append(Change("optimization.train_batch_size", 1, "one image per step"))
        out.append(Change("optimization.gradient_accumulation_steps", o.gradient_accumulation_steps * o.train_batch_size,
                          "the same effective batch"))
    if swaps:
        out += _transformer_savers(profile, fam, counted)
    base = fam.default_resolution
    res = max(d.resolution, d.resolution_height or 0)
    low = max(512, min(base, res) - 256) if res > 512 else None
    if low and low < res:
        out.append(Change("dataset.resolution", low, "fewer latent pixels"))
        if d.resolution_height:
            out.append(Change("dataset.resolution_height", 0, "square"))
    if n.network_dim > 8:
        out.append(Change("network.network_dim", max(8, n.network_dim // 2), "a smaller LoRA"))
    if not swaps:
        out += _transformer_savers(profile, fam, counted)
    return out


def _transformer_savers(profile, fam, counted) -> list[Change]:
    out = []
    from loratui.engine.registries import NETWORK_TYPES

    lycoris = getattr(NETWORK_TYPES.get(profile.network.network_type), "algo", None) is not None
    if setting(profile, "fp8_base", None) is False and not lycoris:  # (LyCORIS cannot compute from fp8 weights)
        out.append(Change(_key(profile, "fp8_base"), True, f"the {fam.denoiser_label}'s weights in 8 bits"))
    groups = getattr(counted, "swap_groups", None) or []
    most = fam.max_blocks_to_swap([len(g) for g in groups]) if groups else getattr(fam, "swap_block_count", 0) // 2
    if setting(profile, "blocks_to_swap", None) == 0 and most and getattr(fam, "swap_block_count", 0) >= 16:
        out.append(Change(_key(profile, "blocks_to_swap"), most, _swap_why(most)))
    return out


def _swap_why(n: int) -> str:
    return f"{n} blocks' weights wait in CPU memory (slower steps)"


def _key(profile, name: str) -> str:
    for section in ("model", "dataset", "network", "optimization", "output"):
        if name in type(getattr(profile, section)).model_fields:
            return f"{section}.{name}"
    return name


def reestimate(profile, est: Estimate) -> Estimate:
    """The estimate of a changed ``profile`` from ``est``'s count, without a new
    count: activations and FLOPs scale with the latent area, the LoRA with its rank."""
    import dataclasses

    from loratui.engine.estimate import figures

    shape, c = est.shape, est.counted
    d, n = profile.dataset, profile.network
    h, w = int(d.resolution_height or d.resolution) // 8 * 8, int(d.resolution) // 8 * 8
    area = (h * w) / (shape.height * shape.width)
    if area != 1.0 or n.network_dim != shape.rank:
        c = dataclasses.replace(
            c, saved=int(c.saved * area), outside=int(c.outside * area), unit_inputs=int(c.unit_inputs * area),
            max_unit=int(c.max_unit * area), largest=int(c.largest * area),
            flops_forward=(c.flops_forward - c.flops_text) * area + c.flops_text,  # the captions' cost stays
            flops_units=c.flops_units * area,
            lora_shapes=[(_rank_shape(s, shape.rank, n.network_dim), t, z) for s, t, z in c.lora_shapes],
        )
        shape = dataclasses.replace(shape, height=h, width=w, rank=n.network_dim)
    return figures(profile, est.device, shape, c, *est.context)


def _rank_shape(s: tuple[int, ...], old: int, new: int) -> tuple[int, ...]:
    return tuple(new if d == old else d for d in s[:2]) + tuple(s[2:])


def suggest(profile, est: Estimate) -> list[Change]:
    """The smallest list of changes (guides' order) after which the run fits
    ``est.device``; [] when it fits or no card is known. When even all of them
    are not enough, all of them (the last figure says by how much it misses)."""
    if est.vram.have is None or est.fits:
        return []

    pool = candidates(profile, est.shape.family, est.counted)
    chosen: list[Change] = []
    current = profile
    for c in pool:
        chosen.append(c)
        current = apply(profile, chosen)
        if reestimate(current, est).fits:
            break
    chosen = _fewest_swapped(profile, est, chosen)
    # the smallest list: drop each earlier change that the rest do not need
    for c in list(chosen[:-1]):
        trial = [x for x in chosen if x is not c and not _paired(x, c)]
        if reestimate(apply(profile, trial), est).fits:
            chosen = trial
    out, so_far = [], []
    for c in chosen:
        so_far.append(c)
        out.append(Change(c.key, c.value, c.why, reestimate(apply(profile, so_far), est).vram.total))
    return out


def _fewest_swapped(profile, est: Estimate, chosen: list[Change]) -> list[Change]:
    """``chosen`` with its block-swap count lowered to the fewest blocks that still fit
    (more blocks, less VRAM: a binary search); as it is when even the most do not fit."""
    at = next((i for i, c in enumerate(chosen) if c.key.endswith(".blocks_to_swap")), None)
    if at is None:
        return chosen

    def fits(n: int) -> bool:
        trial = [*chosen[:at], Change(chosen[at].key, n, ""), *chosen[at + 1:]]
        return reestimate(apply(profile, trial), est).fits

    lo, hi = 1, int(chosen[at].value)
    if not fits(hi):
        return chosen
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
    return [*chosen[:at], Change(chosen[at].key, hi, _swap_why(hi)), *chosen[at + 1:]]


def _paired(x: Change, c: Change) -> bool:
    """Batch 1 and its accumulation go together."""
    pair = {"optimization.train_batch_size", "optimization.gradient_accumulation_steps"}
    return x.key in pair and c.key in pair
