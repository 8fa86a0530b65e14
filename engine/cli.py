"""The headless command line: `loratui <command> ...` without the TUI.

Commands are modules of a commands package (``NAME``, ``HELP``,
``add_arguments``, ``run``), discovered.  This module knows only the engine's
(``loratui.engine.commands``); the console script, ``tui.cli.main``, passes the
engine's and the app's (``loratui.tui.commands``: ``demo``, ``watch``) and opens
the app when no sub-command is given.  ``python -m loratui.engine.cli`` runs the
engine's alone.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

ENGINE_COMMANDS = ("loratui.engine.commands",)


def command_modules(packages: Sequence[str] = ENGINE_COMMANDS) -> dict[str, ModuleType]:
    """The commands of ``packages`` by name; a later package's command of the same
    name wins."""
    mods: dict[str, ModuleType] = {}
    for package in packages:
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            mod = importlib.import_module(f"{package}.{info.name}")
            if hasattr(mod, "NAME") and hasattr(mod, "run"):
                mods[mod.NAME] = mod
    return dict(sorted(mods.items()))


def build_parser(prog: str = "loratui", packages: Sequence[str] = ENGINE_COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train LoRAs for SD 1.x, SD 2.x, SDXL, SD3/3.5 and FLUX.1. With no command (or a PROFILE.toml) the terminal UI opens.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in command_modules(packages).items():
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def run_command(argv: list[str], packages: Sequence[str] = ENGINE_COMMANDS) -> int:
    parser = build_parser(packages=packages)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return run_command(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
