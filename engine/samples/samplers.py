"""sd-scripts' sampler names (``--sample_sampler`` / ``--ss``) and the diffusers
scheduler each one is (as sd-scripts' ``get_my_scheduler`` maps them). The
names are cheap to import; :func:`make_scheduler` imports diffusers."""

from __future__ import annotations

from typing import Any

# name -> (diffusers class, extra config)
_MAP: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsingle": ("DPMSolverSinglestepScheduler", {}),
}
K_ALIASES = {"k_lms": "lms", "k_euler": "euler", "k_euler_a": "euler_a", "k_dpm_2": "dpm_2", "k_dpm_2_a": "dpm_2_a"}
SAMPLERS: tuple[str, ...] = (*_MAP, *K_ALIASES)


def canonical_sampler(name: str) -> str | None:
    """The sampler ``name`` names (case-insensitive; ``k_`` names as sd-scripts
    writes them are kept as given), or None."""
    n = name.strip().lower()
    return n if n in _MAP or n in K_ALIASES else None


def scheduler_class_name(name: str) -> str:
    n = canonical_sampler(name) or "ddim"
    return _MAP[K_ALIASES.get(n, n)][0]


def make_scheduler(name: str, noise_scheduler_config: Any):
    """A fresh diffusers scheduler for sampler ``name``, built from the training
    noise schedule (so v-prediction and the beta schedule carry over)."""
    import diffusers

    n = canonical_sampler(name) or "ddim"
    cls_name, extra = _MAP[K_ALIASES.get(n, n)]
    cls = getattr(diffusers, cls_name)
    config = dict(noise_scheduler_config)
    config.update(extra)
    if cls_name == "DDIMScheduler":
        config.setdefault("clip_sample", False)
    return cls.from_config(config)
