"""`loratui check PROFILE.toml` — validate, scan the dataset, plan steps; no model load."""

from __future__ import annotations

import argparse

NAME = "check"
HELP = "validate a profile and show the dataset report and step plan (no model is loaded)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("profile", help="profile .toml file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--overwrite", action="store_true", help="do not complain about an existing final LoRA")


def run(args: argparse.Namespace) -> int:
    from loratui.engine.commands.train import load_for_cli

    profile = load_for_cli(args.profile, args.overrides)
    if profile is None:
        return 2
    from loratui.engine.console import report_lines
    from loratui.engine.dataset import plan_for, scan_dataset
    from loratui.engine.models import inspect_model
    from loratui.engine.schema import profile_warnings
    from loratui.engine.train import preflight

    ok = True
    print(f"profile  {args.profile}: valid")
    for w in profile_warnings(profile):
        print(f"warning  {w}")
    info = inspect_model(profile.model)
    print(f"model    {info.describe()}")
    for w in info.warnings:
        print(f"warning  {w}")
    for p in info.problems:
        print(f"error    {p}")
        ok = False
    scan = scan_dataset(profile.dataset)
    plan = plan_for(profile, scan)
    for line in report_lines(scan.report, plan):
        print(line)
    ok = ok and not scan.report.problems
    for p in preflight(profile, overwrite=args.overwrite):
        print(f"error    {p}")
        ok = False
    print("ready to train" if ok else "not ready: fix the errors above")
    return 0 if ok else 1
