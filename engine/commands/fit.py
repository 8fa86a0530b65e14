"""`loratui fit PROFILE --vram 8 -o fitted.toml` — a copy of the profile that fits a card.

The estimate (engine.estimate) of the profile on that card; when it does not
fit, the smallest list of changes in the guides' order (gradient
checkpointing, cached latents, an 8-bit optimizer, batch 1 + accumulation, a
lower resolution, a lower rank, ...) is made, counted again, and written to
``-o`` with the input's comments kept. The input is never overwritten.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "fit"
HELP = "write a copy of a profile changed to fit a GPU's memory (--vram GB or --gpu NAME)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from loratui.engine.estimate.cli import add_device_arguments

    p.add_argument("profile", help="profile .toml file (not changed)")
    p.add_argument("-o", "--output", required=True, help="the fitted profile to write (.toml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    add_device_arguments(p)


def run(args: argparse.Namespace) -> int:
    from loratui.engine.commands.train import load_for_cli
    from loratui.engine.estimate.cli import DeviceError, device_from_args, estimate_for
    from loratui.engine.estimate.fit import apply, suggest
    from loratui.engine.estimate.report import change_lines, size
    from loratui.engine.training.prepare import prepare_run

    src, dst = Path(args.profile), Path(args.output)
    if dst.expanduser().resolve() == src.expanduser().resolve():
        print(f"error    -o {dst}: that is the input profile; fit never overwrites it — choose another file", file=sys.stderr)
        return 2
    if dst.exists() and not args.force:
        print(f"error    {dst} already exists; choose another file or pass --force", file=sys.stderr)
        return 2
    try:
        device = device_from_args(args)
    except DeviceError as exc:
        print(f"error    {exc}", file=sys.stderr)
        return 2
    if device is None:
        print("error    no GPU here: say which card to fit with --vram GB or --gpu NAME", file=sys.stderr)
        return 2
    profile = load_for_cli(args.profile, args.overrides)
    if profile is None:
        return 2
    prepared = prepare_run(profile, overwrite=True)
    for problem in prepared.model.problems:  # what "the base model has problems" means (check prints them too)
        print(f"error    {problem}", file=sys.stderr)
    est, why = estimate_for(prepared, device)
    if est is None:
        print(f"error    no estimate: {why}", file=sys.stderr)
        return 1
    for note in est.notes:  # e.g. the model is not here yet: counted as its family's bundled shape
        print(f"note     {note}")
    changes = suggest(profile, est)
    if est.fits:
        print(f"{src} already fits {device.name}: ~{size(est.vram.total)} of {size(device.vram)}; written unchanged")
    for line in change_lines(profile, changes):
        print(f"change   {line}")
    fitted = apply(profile, changes)
    from loratui.engine.estimate import estimate

    final = estimate(fitted, device, prepared.model, prepared.plan, est.context[2])  # counted again
    if not final.fits:
        print(f"error    even with these changes it needs ~{size(final.vram.total)} of {size(device.vram)}; "
              f"nothing written — use a card with more memory", file=sys.stderr)
        return 1
    _write(src, dst, apply(_raw(args), changes))
    print(f"wrote    {dst}: ~{size(final.vram.total)} of {size(device.vram)} on {device.name}")
    return 0


def _raw(args):
    """The profile as written (paths not resolved), with the --set items."""
    from loratui.engine.schema import load_profile

    return load_profile(args.profile, args.overrides)


def _write(src: Path, dst: Path, profile) -> None:
    from loratui.engine.fsutil import atomic_write_text
    from loratui.engine.schema import profile_to_toml

    existing = src.read_text(encoding="utf-8")
    atomic_write_text(dst, profile_to_toml(profile, existing=existing))
