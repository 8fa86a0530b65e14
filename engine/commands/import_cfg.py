"""`loratui import CONFIG -o PROFILE.toml`: a kohya_ss / sd-scripts config as a profile."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "import"
HELP = "import a kohya_ss GUI .json or sd-scripts .toml config as a loratui profile"
DESCRIPTION = (
    "Import a kohya_ss GUI LoRA config (.json) or an sd-scripts --config_file / --dataset_config "
    "(.toml) as a loratui profile. Every key is reported: mapped, ignored (no effect here) or "
    "not supported (changes training)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="kohya_ss .json or sd-scripts .toml file")
    parser.add_argument("-o", "--output", metavar="PROFILE.toml", required=True, help="profile file to write")
    parser.add_argument(
        "--dataset-config",
        metavar="DATASET.toml",
        help="sd-scripts --dataset_config to read (default: the one CONFIG names, if any)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace PROFILE.toml if it exists")


def run(args: argparse.Namespace) -> int:
    from loratui.engine.kohya import KohyaImportError, import_kohya, save_import

    src = Path(args.config)
    out = Path(args.output)
    try:
        same = out.resolve() == src.resolve()
    except OSError:
        same = False
    if same:
        print(f"error: {out}: is the config being imported; write the profile to another file", file=sys.stderr)
        return 2
    if out.is_dir():
        print(f"error: {out}: is a folder; give a profile file name such as {out / 'profile.toml'}", file=sys.stderr)
        return 2
    if out.exists() and not args.overwrite:
        print(f"error: {out}: already exists; use --overwrite to replace it", file=sys.stderr)
        return 1
    try:
        result = import_kohya(src, dataset_config=args.dataset_config)
    except KohyaImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    print(result.report())
    try:
        save_import(result, out, overwrite=args.overwrite)
    except FileExistsError:
        print(f"error: {out}: already exists; use --overwrite to replace it", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {out}: cannot be written ({exc.strerror or exc})", file=sys.stderr)
        return 1
    print(f"\nWrote {out}")
    if result.problems():
        print("It cannot be trained until the settings listed above are changed.")
    return 0
