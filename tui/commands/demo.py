"""`loratui demo [--headless]` — build the tiny demo model + dataset, then train
(in the app, or with plain progress output)."""

from __future__ import annotations

import argparse
import sys

NAME = "demo"
HELP = "build a tiny local model and dataset (once) and train the demo profile (~1 min on a CPU)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--headless", action="store_true", help="train with plain progress output instead of the app")


def run(args: argparse.Namespace) -> int:
    from loratui.engine.demo import prepare_demo

    path = prepare_demo(on_progress=lambda msg: print(msg, file=sys.stderr))
    if not args.headless:
        from loratui.tui.app import run_app  # the app imports textual; only here, on request

        return run_app(str(path)) or 0
    from loratui.engine.commands import train

    return train.run(train_args([str(path), "--overwrite"]))


def train_args(argv: list[str]) -> argparse.Namespace:
    """`loratui train ARGV`'s arguments, parsed by its own parser (every option at its default)."""
    from loratui.engine.commands import train

    p = argparse.ArgumentParser(prog="loratui train")
    train.add_arguments(p)
    return p.parse_args(argv)
