"""The lists of things a setting chooses from, declared once.

Optimizers, LR schedulers and network types are registries: each entry
carries everything the schema (choices, help), the trainer (how to build it),
the ``ss_*`` metadata (class path, network module) and kohya_ss import/export
(spellings, sd-scripts names) need. Model families are a registry too, in
:mod:`loratui.engine.families` (one module per family).

No torch here: the UI imports this before its first frame. Builders import
their library when called.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class ArgsError(ValueError):
    """An ``optimizer_args`` / ``network_args`` item that is not ``key=value``."""

    def __init__(self, item: str):
        super().__init__(f"{item!r} is not key=value")
        self.item = item


def parse_key_values(text: str) -> dict[str, Any]:
    """``"weight_decay=0.1 betas=0.9,0.99"`` → ``{"weight_decay": 0.1, "betas": (0.9, 0.99)}``,
    as sd-scripts parses ``--optimizer_args`` (each value through ``ast.literal_eval``,
    a value that is not a literal stays a string). Raises :class:`ArgsError`."""
    out: dict[str, Any] = {}
    for item in str(text or "").split():
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise ArgsError(item)
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def _spelling_key(text: str) -> str:
    """How a name is compared with the spellings kohya_ss configs use:
    the last dotted part, without spaces, underscores, dashes, case."""
    return re.sub(r"[\s_\-]", "", str(text).strip().split(".")[-1]).lower()


# --------------------------------------------------------------------------- optimizers


@dataclass(frozen=True)
class Optimizer:
    name: str  # loratui's (and sd-scripts' --optimizer_type) name
    class_path: str  # ss_optimizer, as sd-scripts writes it
    build: Callable[[list[dict], float, dict[str, Any]], Any]  # (param groups, lr, kwargs) -> torch optimizer
    cuda_only: bool = False  # bitsandbytes' 8-bit optimizers
    adaptive_lr: bool = False  # finds its own step size: LR around 1.0
    spellings: tuple[str, ...] = ()  # other names kohya_ss configs use for exactly this optimizer
    # names of close equivalents mapped to this one, with the reason shown on import
    near: tuple[tuple[str, str], ...] = ()


def _adamw(groups, lr, kw):
    import torch

    kw.setdefault("weight_decay", 0.01)
    if "fused" not in kw and "foreach" not in kw:  # one fused kernel on CUDA (it skips a found_inf step itself)
        on_cuda = all(p.is_cuda for g in groups for p in g["params"])
        kw["fused" if on_cuda else "foreach"] = True
    return torch.optim.AdamW(groups, lr=lr, **kw)


def _adamw8bit(groups, lr, kw):
    import bitsandbytes as bnb

    return bnb.optim.AdamW8bit(groups, lr=lr, **kw)


def _lion(groups, lr, kw):
    from lion_pytorch import Lion

    return Lion(groups, lr=lr, **kw)


def _lion8bit(groups, lr, kw):
    import bitsandbytes as bnb

    return bnb.optim.Lion8bit(groups, lr=lr, **kw)


def _prodigy(groups, lr, kw):
    from prodigyopt import Prodigy

    return Prodigy(groups, lr=lr, **kw)


def _adafactor(groups, lr, kw):
    from transformers.optimization import Adafactor

    kw.setdefault("relative_step", False)
    kw.setdefault("scale_parameter", False)
    kw.setdefault("warmup_init", False)
    return Adafactor(groups, lr=lr, **kw)


def _dadapt_adam(groups, lr, kw):
    from dadaptation import DAdaptAdam

    return DAdaptAdam(groups, lr=lr, **kw)


_PAGED = "paged variant: the same updates, only the optimizer state paging differs"

OPTIMIZERS: dict[str, Optimizer] = {
    o.name: o
    for o in (
        Optimizer("AdamW", "torch.optim.adamw.AdamW", _adamw,
                  near=(("pagedadamw", _PAGED), ("pagedadamw32bit", _PAGED), ("adamw32bit", "32-bit AdamW is plain AdamW"))),
        Optimizer("AdamW8bit", "bitsandbytes.optim.adamw.AdamW8bit", _adamw8bit, cuda_only=True,
                  spellings=("adam8bit", "8bitadamw"), near=(("pagedadamw8bit", _PAGED),)),
        Optimizer("Lion", "lion_pytorch.lion_pytorch.Lion", _lion),
        Optimizer("Lion8bit", "bitsandbytes.optim.lion.Lion8bit", _lion8bit, cuda_only=True,
                  near=(("pagedlion8bit", _PAGED),)),
        Optimizer("Prodigy", "prodigyopt.prodigy.Prodigy", _prodigy, adaptive_lr=True, spellings=("prodigyopt",)),
        Optimizer("Adafactor", "transformers.optimization.Adafactor", _adafactor),
        Optimizer("DAdaptAdam", "dadaptation.dadapt_adam.DAdaptAdam", _dadapt_adam, adaptive_lr=True,
                  near=(("dadaptation", "sd-scripts' DAdaptation is DAdaptAdamPreprint; loratui uses DAdaptAdam (LR around 1.0 either way)"),
                        ("dadaptadampreprint", "loratui uses DAdaptAdam, the released version of the preprint optimizer"))),
    )
}


def optimizer_from_text(text: Any) -> tuple[Optimizer | None, str | None]:
    """A kohya_ss / sd-scripts optimizer name → (our optimizer, note). The note
    says why a close equivalent was chosen; (None, None) when unknown."""
    key = _spelling_key(text)
    for o in OPTIMIZERS.values():
        if key == o.name.lower() or key in o.spellings:
            return o, None
    for o in OPTIMIZERS.values():
        for spelling, why in o.near:
            if key == spelling:
                return o, why
    return None, None


# --------------------------------------------------------------------------- LR schedulers


@dataclass(frozen=True)
class Scheduler:
    name: str  # the diffusers.optimization / sd-scripts --lr_scheduler name
    uses: tuple[str, ...] = ()  # optimization.* settings it reads besides warm-up
    kwargs: Callable[[Any], dict[str, Any]] = field(default=lambda o: {})  # OptimizationSettings -> get_scheduler kwargs


SCHEDULERS: dict[str, Scheduler] = {
    s.name: s
    for s in (
        Scheduler("constant"),
        Scheduler("constant_with_warmup"),
        Scheduler("linear"),
        Scheduler("cosine"),
        Scheduler("cosine_with_restarts", ("lr_scheduler_num_cycles",), lambda o: {"num_cycles": o.lr_scheduler_num_cycles}),
        Scheduler("polynomial", ("lr_scheduler_power",), lambda o: {"power": o.lr_scheduler_power}),
        Scheduler("adafactor"),  # transformers' AdafactorSchedule: the Adafactor optimizer's own step size
    )
}


def scheduler_from_text(text: Any) -> Scheduler | None:
    return SCHEDULERS.get(str(text).strip().lower().replace(" ", "_"))


# --------------------------------------------------------------------------- network types


@dataclass(frozen=True)
class NetworkType:
    name: str  # network.network_type
    label: str  # as the kohya_ss GUI's LoRA_type names it
    network_module: str  # ss_network_module / sd-scripts --network_module
    conv: bool  # trains 3×3 convolutions too (conv_dim / conv_alpha)
    gui_lora_types: tuple[str, ...] = ()  # kohya_ss GUI LoRA_type values that mean exactly this
    algo: str | None = None  # LyCORIS network_args algo= (None: peft LoRA, engine.lora)
    applies: tuple[str, ...] = ()  # the network_args settings (network.*) it reads, in kohya_ss's network_args order


# the network_args settings sd-scripts' networks.lora reads (kohya_ss passes its GUI fields of these names)
_LORA_ARGS = ("rank_dropout", "module_dropout")
# -- lycoris: the LyCORIS settings each algorithm reads, in the order kohya_ss writes network_args
_LYCO_LORA = ("lycoris_preset", "conv_dim", "conv_alpha", "rank_dropout", "bypass_mode", "dora_wd", "module_dropout",
              "use_tucker", "use_scalar", "train_norm")
_LYCO_LOKR = ("lycoris_preset", "conv_dim", "conv_alpha", "rank_dropout", "bypass_mode", "dora_wd", "module_dropout",
              "factor", "use_tucker", "use_scalar", "decompose_both", "train_norm")
_LYCO_OFT = ("lycoris_preset", "conv_dim", "conv_alpha", "module_dropout", "use_tucker", "use_scalar", "rank_dropout",
             "constrain", "rescaled", "train_norm")
_LYCORIS_TYPES = (
    NetworkType("lycoris-locon", "LyCORIS/LoCon", "lycoris.kohya", conv=True, gui_lora_types=("lycoris/locon", "locon"),
                algo="locon", applies=_LYCO_LORA),
    NetworkType("loha", "LyCORIS/LoHa", "lycoris.kohya", conv=True, gui_lora_types=("lycoris/loha",), algo="loha",
                applies=_LYCO_LORA),
    NetworkType("lokr", "LyCORIS/LoKr", "lycoris.kohya", conv=True, gui_lora_types=("lycoris/lokr",), algo="lokr",
                applies=_LYCO_LOKR),
    NetworkType("ia3", "LyCORIS/iA3", "lycoris.kohya", conv=False, gui_lora_types=("lycoris/ia3", "lycoris/(ia)^3"),
                algo="ia3", applies=("lycoris_preset", "train_norm")),
    NetworkType("glora", "LyCORIS/GLoRA", "lycoris.kohya", conv=True, gui_lora_types=("lycoris/glora",), algo="glora",
                applies=("lycoris_preset", "conv_dim", "conv_alpha", "rank_dropout", "module_dropout", "train_norm")),
    NetworkType("diag-oft", "LyCORIS/Diag-OFT", "lycoris.kohya", conv=True, gui_lora_types=("lycoris/diag-oft",),
                algo="diag-oft", applies=_LYCO_OFT),
    NetworkType("boft", "LyCORIS/BOFT", "lycoris.kohya", conv=True, gui_lora_types=("lycoris/boft",), algo="boft",
                applies=_LYCO_OFT),
    NetworkType("full", "LyCORIS/Native Fine-Tuning", "lycoris.kohya", conv=False,
                gui_lora_types=("lycoris/native fine-tuning",), algo="full",
                applies=("lycoris_preset", "rank_dropout", "module_dropout", "use_tucker", "use_scalar", "train_norm")),
    NetworkType("dylora", "LyCORIS/DyLoRA", "lycoris.kohya", conv=True, gui_lora_types=("lycoris/dylora", "kohya dylora"),
                algo="dylora", applies=("lycoris_preset", "conv_dim", "conv_alpha", "use_tucker", "dylora_unit",
                                        "rank_dropout", "module_dropout", "train_norm")),
)
# network.<setting> -> its network_args name (kohya_ss writes use_cp for LoKr, block_size for DyLoRA's unit)
LYCORIS_ARG_NAMES = {"lycoris_preset": "preset", "dylora_unit": "block_size"}


def lycoris_values(n: Any) -> dict[str, Any]:
    """{network_args name: value} of a LyCORIS network (NetworkSettings ``n``), typed,
    ``algo`` after the settings the algorithm reads; {} for peft LoRA/LoCon."""
    entry = NETWORK_TYPES.get(n.network_type)
    if entry is None or entry.algo is None:
        return {}
    out: dict[str, Any] = {}
    for key in entry.applies:
        name = LYCORIS_ARG_NAMES.get(key, key)
        if key == "use_tucker" and entry.algo == "lokr":
            name = "use_cp"
        out[name] = getattr(n, key)
    out["algo"] = entry.algo
    return out


def _arg_text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def lycoris_args(n: Any) -> dict[str, str]:
    """``network_args`` as kohya_ss writes them (and ``ss_network_args``): every value a string."""
    return {k: _arg_text(v) for k, v in lycoris_values(n).items()}


def lora_network_args(n: Any) -> dict[str, str]:
    """``network_args`` of sd-scripts' networks.lora for a plain LoRA / LoCon network
    (``ss_network_args`` too): conv rank and alpha for LoCon, the dropouts that are on;
    {} for a LyCORIS network."""
    entry = NETWORK_TYPES.get(n.network_type)
    if entry is None or entry.algo is not None:
        return {}
    out = {"conv_dim": _arg_text(n.conv_dim), "conv_alpha": _arg_text(float(n.conv_alpha))} if entry.conv else {}
    out |= {k: _arg_text(float(getattr(n, k))) for k in entry.applies if getattr(n, k)}
    return out


NETWORK_TYPES: dict[str, NetworkType] = {
    n.name: n
    for n in (
        # networks.lora's network_args rank_dropout / module_dropout (engine.training.regularize)
        NetworkType("lora", "Standard", "networks.lora", conv=False, gui_lora_types=("standard", "kohya lora", "flux1"),
                    applies=_LORA_ARGS),
        NetworkType("locon", "LoCon (kohya)", "networks.lora", conv=True, gui_lora_types=("kohya locon", "locon"),
                    applies=_LORA_ARGS),
        # -- lycoris: LyCORIS networks (engine.lycoris_net), as kohya_ss trains them
        *_LYCORIS_TYPES,
    )
}


# --------------------------------------------------------------------------- precisions

MIXED_PRECISIONS = ("no", "fp16", "bf16")
SAVE_PRECISIONS = ("fp16", "bf16", "float")
