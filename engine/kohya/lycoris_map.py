"""kohya_ss / sd-scripts ↔ loratui for LyCORIS networks: the GUI fields (``factor``,
``use_tucker``, ``LyCORIS_preset``...) and ``network_args`` (``algo=``, ``preset=``,
``factor=``...) to the network settings, and back to ``network_args`` as kohya_ss
writes them. Cheap to import: no torch.
"""

from __future__ import annotations

from typing import Any

from loratui.engine.kohya.builder import Builder
from loratui.engine.registries import LYCORIS_ARG_NAMES, NetworkType, lycoris_args
from loratui.engine.schema.coerce import blank, is_off

# setting -> the kohya_ss GUI field(s) holding it (LoKr's Tucker switch is use_cp in the GUI)
GUI_FIELDS: dict[str, tuple[str, ...]] = {
    "lycoris_preset": ("LyCORIS_preset",), "factor": ("factor",), "use_tucker": ("use_tucker", "use_cp"),
    "use_scalar": ("use_scalar",), "decompose_both": ("decompose_both",), "rank_dropout": ("rank_dropout",),
    "module_dropout": ("module_dropout",), "train_norm": ("train_norm",), "bypass_mode": ("bypass_mode",),
    "dora_wd": ("dora_wd",), "constrain": ("constrain",), "rescaled": ("rescaled",), "dylora_unit": ("unit",),
}
# setting -> the network_args names LyCORIS reads for it
ARG_NAMES: dict[str, tuple[str, ...]] = {
    key: (LYCORIS_ARG_NAMES.get(key, key),) for key in GUI_FIELDS
} | {"use_tucker": ("use_tucker", "use_cp", "use_conv_cp"), "constrain": ("constraint", "constrain"),
     "dylora_unit": ("block_size", "unit")}
# fields and args kohya_ss writes that LyCORIS (lycoris-lora 4.1.3) does not read
NOT_READ = {
    "rank_dropout_scale": "lycoris.kohya does not read rank_dropout_scale (no effect in kohya_ss either)",
    "train_on_input": "lycoris.kohya reads train_on_input only from its ia3 preset (no effect as a field)",
    "conv_dims": "per-block conv ranks are not passed to LyCORIS by kohya_ss",
    "conv_alphas": "per-block conv alphas are not passed to LyCORIS by kohya_ss",
}


def _gui_key(entry: NetworkType, key: str) -> str:
    """The GUI field kohya_ss passes for this setting and algorithm."""
    if key == "use_tucker":
        return "use_cp" if entry.algo == "lokr" else "use_tucker"
    return GUI_FIELDS[key][0]


def map_lycoris(cfg: dict[str, Any], b: Builder, K, args: dict[str, str], entry: NetworkType) -> None:
    """Pop the LyCORIS GUI fields from ``cfg`` and the LyCORIS items from ``args``;
    map what ``entry``'s algorithm reads, report the rest (ignored: no effect)."""
    if entry.algo == "dylora":
        b.note("DyLoRA is trained by LyCORIS's DyLoRA (lycoris.kohya algo=dylora); the file has the "
               "lora_down / lora_up / alpha keys of sd-scripts' networks.dylora")
    for key, fields in GUI_FIELDS.items():
        dotted = f"network.{key}"
        arg = next(((n, args.pop(n)) for n in ARG_NAMES[key] if n in args), None)
        for other in ARG_NAMES[key]:  # a second spelling of the same option
            if other in args:
                b.ignore(K(f"network_args {other}"), args.pop(other), f"network_args {arg[0]} decides" if arg else "")
        passed = _gui_key(entry, key)
        present = {f: cfg.pop(f) for f in fields if f in cfg}
        applies = key in entry.applies
        if arg is not None:
            if applies:
                b.put(dotted, arg[1], K(f"network_args {arg[0]}"))
            else:
                b.ignore(K(f"network_args {arg[0]}"), arg[1], f"not read by {entry.label}")
        for field, value in present.items():
            if not applies:
                b.ignore(K(field), value, f"not read by {entry.label} (kohya_ss does not pass it)")
            elif field != passed:
                b.ignore(K(field), value, f"kohya_ss passes {passed} for {entry.label}")
            elif arg is not None:
                b.ignore(K(field), value, "network_args decides")
            elif blank(value):
                b.ignore(K(field), value, "empty: the default")
            else:
                b.put(dotted, value, K(field))
    for name, why in NOT_READ.items():
        if name in cfg:
            b.ignore(K(name), cfg.pop(name), why)
        if name in args:
            b.ignore(K(f"network_args {name}"), args.pop(name), why)
    if "dropout" in args:
        v = args.pop("dropout")
        if is_off(v, 0):
            b.ignore(K("network_args dropout"), v, "off")
        else:
            b.unsupported_(K("network_args dropout"), v, "LyCORIS neuron dropout is not a loratui setting; trained without it")


def network_args_for(p: Any) -> list[str]:
    """``network_args`` of a LyCORIS network for an sd-scripts config, as kohya_ss writes them."""
    return [f"{k}={v}" for k, v in lycoris_args(p.network).items()]
