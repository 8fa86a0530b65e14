"""Optimizer and LR scheduler, built from the registries (engine.registries)."""

from __future__ import annotations

from typing import Any

from loratui.engine.registries import OPTIMIZERS, SCHEDULERS, ArgsError, parse_key_values
from loratui.engine.schema import Profile
from loratui.engine.training.paths import TrainingError

OPTIMIZER_ARGS_HINT = "e.g. weight_decay=0.1 betas=0.9,0.99"


def param_groups(profile: Profile, network) -> list[dict]:
    """One group per trained part, each with its learning rate."""
    opt, net = profile.optimization, profile.network
    groups = []
    if net.train_unet:
        groups.append({"params": network.unet_parameters(), "lr": opt.unet_lr or opt.learning_rate})
    if net.train_text_encoder:
        from loratui.engine.training.schedulers import text_encoder_groups

        groups += text_encoder_groups(profile, network)
    return [g for g in groups if g["params"]]


def optimizer_kwargs(profile: Profile) -> dict[str, Any]:
    """``optimization.optimizer_args`` as keyword arguments; TrainingError for an item that is not key=value."""
    try:
        return parse_key_values(profile.optimization.optimizer_args)
    except ArgsError as exc:
        raise TrainingError(f"optimization.optimizer_args: {exc}", OPTIMIZER_ARGS_HINT) from None


def make_optimizer(profile: Profile, groups: list[dict]):
    o = profile.optimization
    kwargs = optimizer_kwargs(profile)
    entry = OPTIMIZERS.get(o.optimizer)
    if entry is None:
        raise TrainingError(f"optimization.optimizer: unknown optimizer {o.optimizer!r}")
    try:
        return entry.build(groups, o.learning_rate, kwargs)
    except TypeError as exc:
        raise TrainingError(f"optimization.optimizer_args: {o.optimizer} does not accept them ({exc})", "remove or rename the argument") from None


def make_scheduler(profile: Profile, optimizer, total_steps: int):
    from diffusers.optimization import get_scheduler

    from loratui.engine.training.schedulers import special_scheduler

    o = profile.optimization
    warmup = o.lr_warmup_steps
    warmup_steps = int(round(warmup * total_steps)) if warmup < 1 else int(warmup)
    special = special_scheduler(profile, optimizer, warmup_steps, total_steps)
    if special is not None:
        return special
    entry = SCHEDULERS.get(o.lr_scheduler)
    kwargs = entry.kwargs(o) if entry is not None else {}
    return get_scheduler(
        o.lr_scheduler,
        optimizer,
        num_warmup_steps=warmup_steps,
        num_training_steps=max(total_steps, 1),
        **kwargs,
    )
