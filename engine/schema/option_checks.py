"""Cross-field rules of the training options kohya_ss presets use: what cannot train,
said with the field to change. (Options that only scale another one that is off —
random strengths, the adaptive noise scale — have no effect, as in sd-scripts; full_bf16 /
full_fp16 without the matching mixed precision, and the adafactor scheduler without the
Adafactor optimizer, are said when the run starts.)

Cheap to import: no torch.
"""

from __future__ import annotations

from typing import Any


def optimization_checks(o: Any) -> list[tuple[str, str]]:
    """(key, message) for ``OptimizationSettings`` combinations that cannot train."""
    out: list[tuple[str, str]] = []
    if o.min_timestep > o.max_timestep:
        out.append(("min_timestep", f"{o.min_timestep} is above max_timestep {o.max_timestep}"))
    elif o.min_timestep == 1000:
        out.append(("min_timestep", "1000 leaves no timestep to train (timesteps are 0-999)"))
    if o.full_bf16 and o.full_fp16:
        out.append(("full_fp16", "full_bf16 and full_fp16 are both on: choose one"))
    if o.max_token_length not in (75, 150, 225):
        out.append(("max_token_length", f"{o.max_token_length} is not 75, 150 or 225"))
    return out
