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


def option_problems(profile: Any) -> list:
    """Problems of the options that involve more than one section or the disk (before a run)."""
    from pathlib import Path

    from loratui.engine.problems import error
    from loratui.engine.registries import ArgsError, parse_key_values

    o, d = profile.optimization, profile.dataset
    out = []
    if o.masked_loss and not (d.alpha_mask or d.conditioning_data_dir):
        out.append(error("optimization.masked_loss", "needs masks: set dataset.alpha_mask or dataset.conditioning_data_dir",
                         "alpha_mask uses each image's transparency; conditioning_data_dir a folder of mask images"))
    if d.conditioning_data_dir and not Path(d.conditioning_data_dir).expanduser().is_dir():
        out.append(error("dataset.conditioning_data_dir", f"{d.conditioning_data_dir} is not a folder", "the folder of mask images"))
    if o.lr_scheduler == "adafactor" and o.optimizer != "Adafactor":
        out.append(error("optimization.lr_scheduler", f"adafactor works with the Adafactor optimizer only (it is {o.optimizer})",
                         "set optimization.optimizer to Adafactor, or choose another scheduler"))
    try:
        parse_key_values(o.lr_scheduler_args)
    except ArgsError as exc:
        out.append(error("optimization.lr_scheduler_args", str(exc), "space-separated key=value items, e.g. T_max=1000"))
    return out
