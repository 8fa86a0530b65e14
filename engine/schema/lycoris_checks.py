"""The LyCORIS network settings' cross-checks: a setting the chosen algorithm
does not read is refused (naming the setting), as are the combinations
LyCORIS itself cannot build. Cheap: no torch."""

from __future__ import annotations

from typing import Any

from loratui.engine.registries import NETWORK_TYPES

# each LyCORIS setting and the value that means "not used"
LYCORIS_DEFAULTS: dict[str, Any] = {
    "lycoris_preset": "full", "factor": -1, "use_tucker": False, "use_scalar": False, "decompose_both": False,
    "rank_dropout": 0.0, "module_dropout": 0.0, "train_norm": False, "bypass_mode": False, "dora_wd": False,
    "constrain": 0.0, "rescaled": False, "dylora_unit": 1,
}
PRESETS = ("full", "full-lin", "attn-mlp", "attn-only", "unet-only", "unet-transformer-only", "unet-convblock-only", "ia3")


def _users(key: str) -> str:
    names = [n.name for n in NETWORK_TYPES.values() if key in n.applies]
    return ", ".join(names)


def lycoris_problems(n: Any) -> list[tuple[str, str]]:
    """(key, message) for NetworkSettings."""
    entry = NETWORK_TYPES.get(n.network_type)
    if entry is None:
        return []
    out: list[tuple[str, str]] = []
    if n.dora_wd and "dora_wd" not in entry.applies:
        out.append(("dora_wd", f"DoRA is not available on {n.network_type!r} networks; it is trained on "
                               f"{_users('dora_wd')} (as kohya_ss's dora_wd)"))
    if entry.algo == "full" and n.bypass_mode:
        out.append(("bypass_mode", "native fine-tuning (full) has no bypass mode"))
    if entry.algo is None:
        pass
    elif str(n.lycoris_preset).endswith(".toml"):
        from pathlib import Path

        if not Path(n.lycoris_preset).expanduser().is_file():
            out.append(("lycoris_preset", f"preset file {n.lycoris_preset!r} does not exist"))
    elif n.lycoris_preset not in PRESETS:
        out.append(("lycoris_preset", f"{n.lycoris_preset!r} is not a LyCORIS preset ({', '.join(PRESETS)}, or a .toml file)"))
    if entry.algo == "dylora" and n.network_dim % n.dylora_unit:
        out.append(("dylora_unit", f"network_dim {n.network_dim} is not a multiple of the DyLoRA unit {n.dylora_unit}"))
    if entry.algo != "lokr":
        for key in ("network_dim", "conv_dim"):
            if getattr(n, key) > 1024:
                out.append((key, f"{getattr(n, key)} is above 1024; only LoKr takes a 'full dimension' "
                                 "(network_dim = 100000, as kohya_ss writes it)"))
    if entry.algo == "lokr" and n.factor == 0:
        out.append(("factor", "0 is not a factor: -1 (automatic) or a whole number ≥ 1"))
    return out


def lycoris_warnings(n: Any) -> list[tuple[str, str]]:
    """(key, message): LyCORIS settings set but not read by the chosen network type."""
    entry = NETWORK_TYPES.get(n.network_type)
    if entry is None:
        return []
    out = [(key, f"{getattr(n, key)!r} has no effect on {n.network_type!r} networks; it is read by {_users(key)}")
           for key, off in LYCORIS_DEFAULTS.items()
           if key != "dora_wd" and getattr(n, key) != off and key not in entry.applies]
    if entry.algo is not None and getattr(n, "network_dropout", 0):  # sd-scripts' networks.lora option
        out.append(("network_dropout", f"has no effect on {n.network_type!r} networks (lycoris.kohya does not read it); "
                                       "use rank_dropout or module_dropout"))
    return out


def describe_network(n: Any) -> str:
    """One line for `loratui check`: the network type, its algorithm and the settings it reads."""
    entry = NETWORK_TYPES.get(n.network_type)
    if entry is None:
        return f"{n.network_type} (cannot be trained)"
    head = f"{entry.label}: rank {n.network_dim}, alpha {n.network_alpha:g}"
    if entry.algo is None:
        return f"{head} ({entry.network_module}" + (f", conv {n.conv_dim}/{n.conv_alpha:g})" if entry.conv else ")")
    from loratui.engine.registries import lycoris_args

    args = lycoris_args(n)
    shown = " ".join(f"{k}={v}" for k, v in args.items() if k != "algo" and (k in ("preset", "conv_dim", "conv_alpha")
                                                                            or v not in ("False", "0", "-1", "1")))
    return f"{head} (lycoris.kohya algo={entry.algo}; {shown})"
