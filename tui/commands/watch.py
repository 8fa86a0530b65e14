"""`loratui watch OUTPUT_DIR` — follow a run started elsewhere (another session,
`loratui train`, a multi-GPU run, a dropped SSH connection) from its metrics file.

The dashboard opens by default, with the run's controls (space pause, s save now,
x stop & save), which reach the run through its control file; ``--plain`` prints
progress lines instead (no UI, no controls).
The metrics file is ``<output_dir>/<output_name>.metrics.jsonl``; reading it is
engine code (``loratui.engine.metrics``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "watch"
HELP = "follow a run started elsewhere: its dashboard and controls, from OUTPUT_DIR's metrics and control files"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="OUTPUT_DIR", help="the run's output folder (or its .metrics.jsonl file)")
    p.add_argument("--name", help="the run's output name, when the folder holds several runs (default: the newest)")
    p.add_argument("--plain", action="store_true", help="print progress lines instead of opening the dashboard")


def run(args: argparse.Namespace) -> int:
    from loratui.engine.metrics import find_metrics_file, follow_plain

    target = Path(args.target).expanduser()
    if args.name:
        path = target / f"{args.name}.metrics.jsonl"
        if not path.is_file():
            print(f"loratui watch: {path}: no such metrics file — is --name the run's output name?", file=sys.stderr)
            return 2
    else:
        found = find_metrics_file(target)
        if found is None:
            what = "no such folder" if not target.exists() else "holds no *.metrics.jsonl file (no run wrote there yet)"
            print(f"loratui watch: {target}: {what}", file=sys.stderr)
            return 2
        path = found
    if args.plain:
        return follow_plain(path)
    from loratui.tui.app import run_watch  # the UI only when asked for

    return run_watch(path)
