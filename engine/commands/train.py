"""`loratui train PROFILE.toml [--set section.key=value ...]` — headless training."""

from __future__ import annotations

import argparse
import signal
import sys

NAME = "train"
HELP = "train a LoRA from a profile, headless (progress on stdout, final path last)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("profile", help="profile .toml file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a setting, e.g. --set network.network_dim=16 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing final LoRA of the same name")
    p.add_argument("--resume", metavar="STATE_DIR", default=None, help="resume from a saved state folder (<name>-state-stepNNNNNNNN), or 'latest' for the newest one of this output name")


def load_for_cli(path: str, overrides: list[str]):
    """Load + validate a profile; print the problems and return None when invalid."""
    from loratui.engine.schema import ProfileError, load_profile, resolve_paths

    try:
        return resolve_paths(load_profile(path, overrides))
    except ProfileError as exc:
        print(f"{path}: {len(exc.problems)} problem(s):" if len(exc.problems) > 1 else "", file=sys.stderr, end="\n" if len(exc.problems) > 1 else "")
        for line in exc.problems:
            print(f"  {line}" if len(exc.problems) > 1 else line, file=sys.stderr)
        return None


def run(args: argparse.Namespace) -> int:
    profile = load_for_cli(args.profile, args.overrides)
    if profile is None:
        return 2
    from loratui.engine.console import ConsolePrinter
    from loratui.engine.events import Failed, Finished
    from loratui.engine.run import start_run

    handle = start_run(profile, overwrite=args.overwrite, resume=args.resume)
    printer = ConsolePrinter()
    signals = _Signals(handle.control)
    old_int = signal.signal(signal.SIGINT, signals.on_sigint)
    old_term = signal.signal(signal.SIGTERM, signals.on_sigterm)
    try:
        result = None
        for ev in handle.iter_events():
            printer(ev)
            result = ev
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    handle.join()
    if isinstance(result, Finished):
        if result.path:
            print(result.path)
            return 0
        last = result.summary.get("last_saved", "")
        if last:
            print(last)
        return 3  # stopped before the end
    assert isinstance(result, Failed)
    return 1


class _Signals:
    """Ctrl+C once: stop at the next step boundary with a save; twice: abort. SIGTERM: stop."""

    def __init__(self, control):
        self.control = control
        self.interrupts = 0

    def on_sigint(self, signum, frame) -> None:
        self.interrupts += 1
        if self.interrupts == 1:
            print("\nstopping: saving at the next step boundary (Ctrl+C again to abort without saving)", file=sys.stderr)
            self.control.stop()
        else:
            self.control.abort()

    def on_sigterm(self, signum, frame) -> None:
        self.control.stop()
