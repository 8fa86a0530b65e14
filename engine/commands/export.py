"""`loratui export PROFILE.toml --to sd-scripts`: reproduce a run with sd-scripts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "export"
HELP = "export a profile as sd-scripts config files (or its command line)"
DESCRIPTION = (
    "Write an sd-scripts --config_file TOML and --dataset_config TOML for a profile, or print the "
    "equivalent `accelerate launch train_network.py ...` command line, so the run can be reproduced "
    "with kohya-ss/sd-scripts."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("profile", metavar="PROFILE.toml", help="the profile to export")
    parser.add_argument("--to", choices=["sd-scripts"], required=True, help="target format")
    parser.add_argument(
        "-o", "--output-dir", metavar="DIR",
        help="folder for config.toml and dataset.toml (default: <profile name>-sd-scripts beside the profile)",
    )
    parser.add_argument("--print-command", action="store_true", help="print the command line instead of writing files")
    parser.add_argument("--overwrite", action="store_true", help="replace files in DIR that exist")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set network.network_dim=16 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from loratui.engine.kohya import export_problems, export_sd_scripts, export_warnings, friendlier, sd_scripts_command
    from loratui.engine.schema import ProfileError, load_profile

    try:
        profile = load_profile(args.profile, args.overrides)
    except ProfileError as exc:
        for problem in exc.problems:
            print(f"error: {friendlier(problem)}", file=sys.stderr)
        return 2
    problems = export_problems(profile)
    if problems:
        for problem in problems:
            print(f"error: {problem.with_source(args.profile)}", file=sys.stderr)
        return 2
    if args.print_command:
        for note in export_warnings(profile):
            print(f"note: {note}", file=sys.stderr)
        print(sd_scripts_command(profile))
        return 0
    src = Path(args.profile)
    out_dir = Path(args.output_dir) if args.output_dir else src.with_name(f"{src.stem}-sd-scripts")
    try:
        result = export_sd_scripts(profile, out_dir, source=str(src), overwrite=args.overwrite)
    except FileExistsError as exc:
        print(f"error: {exc}: already exists; use --overwrite to replace, or -o DIR for another folder", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {out_dir}: cannot be written ({exc.strerror or exc})", file=sys.stderr)
        return 1
    print(f"Wrote {result.config_path}")
    if result.dataset_path:
        print(f"Wrote {result.dataset_path}")
    for note in result.notes:
        print(f"note: {note}")
    print(f"Run it with:\n  {result.command}")
    return 0
