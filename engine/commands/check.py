"""`loratui check PROFILE.toml` — validate, scan the dataset, plan steps; no model load.

It runs the checks `loratui train` runs before it loads anything
(``engine.training.prepare.prepare_run``), so it says "ready" exactly when
`train` would start.
"""

from __future__ import annotations

import argparse
import sys

NAME = "check"
HELP = "validate a profile and show the dataset report and step plan (no model is loaded)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("profile", help="profile .toml file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--overwrite", action="store_true", help="do not complain about an existing final LoRA")
    p.add_argument("--resume", metavar="STATE_DIR", default=None,
                   help="check resuming from a saved state folder, or 'latest' (as `train --resume`)")
    from loratui.engine.estimate.cli import add_device_arguments

    add_device_arguments(p)  # --gpu NAME | --vram GB: the VRAM / RAM / disk / time estimate for that card
    p.add_argument("--modules", action="store_true",
                   help="also list the LoRA modules the run would train, by their saved (kohya) names, with shape "
                        "and rank (built on the meta device: no weights are read)")


def run(args: argparse.Namespace) -> int:
    from loratui.engine.commands.train import load_for_cli

    profile = load_for_cli(args.profile, args.overrides)
    if profile is None:
        return 2
    from loratui.engine.console import report_lines
    from loratui.engine.estimate.cli import DeviceError, device_from_args, print_estimate
    from loratui.engine.training.prepare import prepare_run

    try:
        device = device_from_args(args)
    except DeviceError as exc:
        print(f"error    {exc}", file=sys.stderr)
        return 2
    prepared = prepare_run(profile, resume=args.resume, overwrite=args.overwrite)
    print(f"profile  {args.profile}: valid")
    for w in prepared.profile_warnings:
        print(f"warning  {w}")
    info = prepared.model
    print(f"model    {info.describe()}")
    for w in info.warnings:
        print(f"warning  {w}")
    for p in info.problems:
        print(f"error    {p}")
    from loratui.engine.schema.lycoris_checks import describe_network

    print(f"network  {describe_network(profile.network)}")
    for line in report_lines(prepared.report, prepared.plan):
        print(line)
    for w in prepared.resume_warnings:
        print(f"warning  {w}")
    for p in prepared.checks:
        print(f"error    {p}")
    print_estimate(prepared, device)
    if not prepared.problems and prepared.plan.total_steps <= 0:
        print("error    nothing to train: the plan has 0 steps — add images or raise epochs/repeats")
    ok = prepared.ok
    if getattr(args, "modules", False):
        from loratui.engine.lora_modules import plan_modules

        plan = plan_modules(profile)
        if plan.assumed:
            print(f"modules  (listed for {plan.assumed}: {profile.model.base_model} is not here yet)")
        for line in plan.lines():
            print(line)
        if plan.problems and info.problems:
            print("modules  — (the base model has problems (see above))")
        else:
            for p in plan.problems:
                print(f"error    {p}")
        ok = ok and not plan.problems
    print("ready to train" if ok else "not ready: fix the errors above")
    return 0 if ok else 1
