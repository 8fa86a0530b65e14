"""Learning rates beyond the registry's schedulers, as sd-scripts has them
(library/train_util.py ``get_scheduler_fix``):

- ``lr_scheduler = adafactor``: transformers' ``AdafactorSchedule`` (the Adafactor
  optimizer's own relative step size; the initial LR is ``learning_rate``);
- ``lr_scheduler_type``: any scheduler class, a ``torch.optim.lr_scheduler`` name or a
  ``module.Class`` path, built as ``Class(optimizer, **lr_scheduler_args)``;
- ``lr_scheduler_args`` without a type: extra arguments of the ``lr_scheduler`` function
  (``lr_end=1e-6`` for polynomial...);
- SDXL's two text encoders with their own rates (``learning_rate_te1`` / ``_te2``).
"""

from __future__ import annotations

import importlib
from typing import Any

from loratui.engine.registries import ArgsError, parse_key_values
from loratui.engine.training.paths import TrainingError

ARGS_HINT = "space-separated key=value items, e.g. T_max=1000 eta_min=1e-6"


def scheduler_kwargs(profile: Any) -> dict[str, Any]:
    try:
        return parse_key_values(profile.optimization.lr_scheduler_args)
    except ArgsError as exc:
        raise TrainingError(f"optimization.lr_scheduler_args: {exc}", ARGS_HINT) from None


def scheduler_class(name: str):
    """The class ``lr_scheduler_type`` names; TrainingError when it does not exist."""
    import torch

    module_name, _, cls = name.rpartition(".")
    try:
        module = importlib.import_module(module_name) if module_name else torch.optim.lr_scheduler
        return getattr(module, cls)
    except (ImportError, AttributeError, ValueError):
        raise TrainingError(
            f"optimization.lr_scheduler_type: {name!r} is not a scheduler class",
            "use a torch.optim.lr_scheduler name (CosineAnnealingLR) or a module.Class path; empty: lr_scheduler",
        ) from None


def special_scheduler(profile: Any, optimizer, warmup_steps: int, total_steps: int):
    """The custom-class or Adafactor scheduler; None for the registry's."""
    o = profile.optimization
    if o.lr_scheduler_type.strip():
        cls = scheduler_class(o.lr_scheduler_type.strip())
        try:
            return cls(optimizer, **scheduler_kwargs(profile))
        except (TypeError, ValueError) as exc:
            raise TrainingError(f"optimization.lr_scheduler_args: {o.lr_scheduler_type} refused them ({exc})", ARGS_HINT) from None
    if o.lr_scheduler == "adafactor":
        from transformers.optimization import Adafactor, AdafactorSchedule

        inner = getattr(optimizer, "optimizer", optimizer)
        if not isinstance(inner, Adafactor):
            raise TrainingError("optimization.lr_scheduler: adafactor works with the Adafactor optimizer only",
                                "set optimization.optimizer to Adafactor, or choose another scheduler")
        return AdafactorSchedule(optimizer, initial_lr=o.learning_rate)
    if o.lr_scheduler_args.strip():
        return _with_args(profile, optimizer, warmup_steps, total_steps)
    return None


def _with_args(profile: Any, optimizer, warmup_steps: int, total_steps: int):
    """A registry scheduler with ``lr_scheduler_args`` added to its arguments (as sd-scripts
    passes them to the scheduler function)."""
    import inspect

    from diffusers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType

    from loratui.engine.registries import SCHEDULERS

    o = profile.optimization
    func = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(o.lr_scheduler)]
    accepted = inspect.signature(func).parameters
    standard = {"num_warmup_steps": warmup_steps, "num_training_steps": max(total_steps, 1), **SCHEDULERS[o.lr_scheduler].kwargs(o)}
    kwargs = {k: v for k, v in standard.items() if k in accepted} | scheduler_kwargs(profile)
    try:
        return func(optimizer, **kwargs)
    except TypeError as exc:
        raise TrainingError(f"optimization.lr_scheduler_args: {o.lr_scheduler} refused them ({exc})", ARGS_HINT) from None


def text_encoder_groups(profile: Any, network) -> list[dict]:
    """The text-encoder parameter group(s): one, or SDXL's two when their rates differ."""
    o = profile.optimization
    base = o.text_encoder_lr or o.learning_rate
    if o.learning_rate_te1 is None and o.learning_rate_te2 is None:
        return [{"params": network.text_encoder_parameters(), "lr": base}]
    params = set(map(id, network.text_encoder_parameters()))
    groups = []
    for comp, lr in (("te1", o.learning_rate_te1), ("te2", o.learning_rate_te2), ("te", None)):
        ps = [p for m in network.text_encoder_modules if m.component == comp
              for p in (m.down.weight, m.up.weight) if id(p) in params]
        groups.append({"params": ps, "lr": lr or base})
    return groups
