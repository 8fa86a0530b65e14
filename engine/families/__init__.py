"""Model families, one module each (``sd1``, ``sd2``, ``sdxl``).

A family module defines one :class:`~loratui.engine.families.base.Family`
subclass and exposes an instance as ``FAMILY``. Everything the engine knows
about a family lives in that module: how it is named in kohya_ss and in the
``ss_*`` metadata, how it is detected and loaded, how captions are encoded,
what the model is trained to predict, what extra conditioning it takes, which
layers get LoRA modules under which kohya names, and the pipeline that
renders an image with it. The rest of the engine asks the registry.

Adding a family = a new module here, its bundled configs, its tests. Family
modules import torch/diffusers only inside methods: the UI lists families
before its first frame.
"""

from __future__ import annotations

import importlib
import pkgutil

from collections.abc import Mapping, Sequence

from loratui.engine.families.base import Family
from loratui.engine.kohya_names import LORA_PREFIX_TEXT_ENCODER, LORA_PREFIX_UNET, SGMLayout

_REGISTRY: dict[str, Family] | None = None


def families() -> dict[str, Family]:
    """Every family, by name, in ``Family.order``."""
    global _REGISTRY
    if _REGISTRY is None:
        found: list[Family] = []
        for info in pkgutil.iter_modules(__path__):
            if info.name == "base" or info.name.startswith("_"):
                continue
            mod = importlib.import_module(f"{__name__}.{info.name}")
            fam = getattr(mod, "FAMILY", None)
            if isinstance(fam, Family):
                found.append(fam)
        _REGISTRY = {f.name: f for f in sorted(found, key=lambda f: (f.order, f.name))}
    return _REGISTRY


def family_names() -> tuple[str, ...]:
    return tuple(families())


def get_family(name: str) -> Family:
    """The family called ``name``; KeyError names the known ones."""
    fams = families()
    if name not in fams:
        raise KeyError(f"unknown model family {name!r} (known: {', '.join(fams)})")
    return fams[name]


def family_specific_settings() -> frozenset[str]:
    """Settings ("section.key") that only some families train with: those some family lists."""
    out: set[str] = set()
    for fam in families().values():
        out |= fam.settings_used()
    return frozenset(out)


def settings_unused_by(family: str | None) -> frozenset[str]:
    """The family-specific settings ``family`` does not train with (what the form hides for it).
    ``family``: a name, an alias, a guess of several (``sd1-or-sd2``: what none of them uses);
    empty, ``auto`` or unknown: none."""
    names = [n for n in str(family or "").split("-or-") if n]
    fams = []
    for n in names:
        try:
            fams.append(get_family(normalize_family(n)))
        except (KeyError, ValueError):
            return frozenset()
    if not fams:
        return frozenset()
    used: set[str] = set()
    for fam in fams:
        used |= fam.settings_used()
    return family_specific_settings() - used


# --------------------------------------------------------------------------- names and guesses


def normalize_family(family: str) -> str:
    """A family name or one of its aliases (``sd15`` -> ``sd1``, ``sd2-v`` -> ``sd2``) -> its name."""
    want = str(family).lower()
    for fam in families().values():
        if want == fam.name or want in fam.aliases:
            return fam.name
    names = list(families())
    raise ValueError(f"unknown model family {family!r}; expected {', '.join(names[:-1])} or {names[-1]}")


def family_label(name: str) -> str:
    """``SD 1.x``; a guess of several families (``sd1-or-sd2``) -> ``SD 1.x or 2.x``."""
    labels = [get_family(n).label for n in name.split("-or-")]
    if len(labels) == 2 and labels[0].split()[0] == labels[1].split()[0]:
        return f"{labels[0]} or {labels[1].split(' ', 1)[1]}"
    return " or ".join(labels)


def unet_lora_name(module_path: str, family: str, layout: SGMLayout | None = None) -> str:
    """Diffusers U-Net module path -> sd-scripts LoRA name.

    ``layout`` (``SGMLayout.from_config(unet.config)``) is needed for a family
    whose sd-scripts U-Net has the SGM layout (SDXL)."""
    fam = get_family(normalize_family(family))
    if fam.lora_unet_layout == "sgm":
        if layout is None:
            raise ValueError(f"{fam.label} names need the U-Net layout (SGMLayout.from_config(unet.config))")
        module_path = layout.map(module_path)
    return f"{LORA_PREFIX_UNET}_{module_path}".replace(".", "_")


def guess_family(shapes: Mapping[str, Sequence[int]], metadata: Mapping[str, str] | None = None) -> str | None:
    """Best guess of the model family a kohya-format LoRA was trained for, from its
    key names and tensor shapes (``{key: shape}``) and its ``ss_*`` metadata.
    Returns a family name, ``sd1-or-sd2`` (diffusers-layout names of unknown
    widths: any family with that layout) or None."""
    fams = list(families().values())
    keys = list(shapes)
    for f in fams:  # transformer families (SD3, FLUX): their block names
        marks = tuple(f"lora_unet_{m.replace('.', '_')}" for m in f.checkpoint_markers)
        if marks and any(k.startswith(marks) for k in keys):
            return f.name
    sgm = [f for f in fams if f.lora_unet_layout == "sgm"]
    if sgm and (
        any(k.startswith((f"{LORA_PREFIX_TEXT_ENCODER}1_", f"{LORA_PREFIX_TEXT_ENCODER}2_")) for k in keys)
        or any(k.startswith(("lora_unet_input_blocks_", "lora_unet_output_blocks_", "lora_unet_middle_block_")) for k in keys)
    ):
        return sgm[0].name
    for k, shape in shapes.items():
        if k.endswith("attn2_to_k.lora_down.weight") and len(shape) >= 2:
            found = [f.name for f in fams if f.cross_attention_width == int(shape[1])]
            if found:
                return found[0]
    for k, shape in shapes.items():
        if k.startswith("lora_te_") and k.endswith("self_attn_q_proj.lora_down.weight") and len(shape) >= 2:
            found = [f.name for f in fams if f.lora_text_encoder_width == int(shape[1])]
            if found:
                return found[0]
    meta = metadata or {}
    version = str(meta.get("ss_base_model_version", ""))
    for f in fams:
        flagged = any(str(meta.get(f"ss_{flag}", "")).lower() == "true" for flag in f.sd_scripts_flags)
        if version.startswith(f.ss_base_model_prefix or f.ss_base_model_version) or flagged:
            return f.name
    if any(k.startswith(("lora_te_", "lora_unet_down_blocks_", "lora_unet_up_blocks_", "lora_unet_mid_block_")) for k in keys):
        return "-or-".join(f.name for f in fams if f.lora_unet_layout == "diffusers")
    return None


__all__ = ["Family", "families", "family_label", "family_names", "get_family", "guess_family", "normalize_family", "unet_lora_name"]
