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

from loratui.engine.families.base import Family

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


__all__ = ["Family", "families", "family_names", "get_family"]
