"""`loratui dataset DIR`: the dataset report, and the edits made before training.

    loratui dataset DIR [--resolution 512] [--json]           the report
    loratui dataset DIR --set-repeats CONCEPT N                rename 10_x -> N_x
    loratui dataset DIR --balance [--dry-run]                  repeats so concepts get similar steps
    loratui dataset DIR --make-kohya SRC --name NAME [--repeats N] [--link [hard|sym]]
                                                                DIR/<repeats>_NAME from a flat folder SRC
"""

from __future__ import annotations

import argparse
import json
import os
import sys

NAME = "dataset"
HELP = "inspect a dataset folder (concepts, captions, buckets, tags, problems); set repeats, balance, make a kohya folder"
DESCRIPTION = (
    "Show what training will see in DIR (the folder holding <repeats>_<name> concept folders): concepts with "
    "repeats, caption coverage, image sizes and buckets, a tag frequency table, unreadable, tiny and duplicate "
    "images. With an action flag, change the dataset first (folders are renamed, never overwritten; the "
    "source of --make-kohya is never changed). Exit status: 0 fine, 1 problems that stop training or a "
    "refused action, 2 bad arguments."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="DIR", help="dataset folder holding <repeats>_<name> folders (with --make-kohya: where to create one)")
    p.add_argument("--resolution", type=int, default=512, metavar="PX", help="training resolution for the buckets (default 512; SDXL 1024)")
    p.add_argument("--caption-extension", default=".txt", metavar=".EXT", help="caption file extension (default .txt)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--top", type=int, default=20, metavar="N", help="tags to list (default 20; 0: all)")
    p.add_argument("--no-decode", action="store_true",
                   help="read image headers only: faster, but no duplicate or corrupt-data check")
    g = p.add_argument_group("actions (one at a time)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--set-repeats", nargs=2, metavar=("CONCEPT", "N"),
                   help="rename a concept folder (10_x, or just x) to N repeats; refused when N_x exists")
    x.add_argument("--balance", action="store_true",
                   help="rename concept folders so each gets about the same samples (images × repeats) per epoch")
    x.add_argument("--make-kohya", metavar="SRC", help="make DIR/<repeats>_NAME from the images in the flat folder SRC")
    g.add_argument("--name", metavar="NAME", help="--make-kohya: the class tokens / trigger word of the new folder")
    g.add_argument("--repeats", type=int, metavar="N", help="--make-kohya: repeats (default: suggested from the image count)")
    g.add_argument("--link", nargs="?", const="hard", choices=("hard", "sym"),
                   help="--make-kohya: hard-link (default with --link) or symlink the images instead of copying")
    g.add_argument("--dry-run", action="store_true", help="--balance / --set-repeats: say what would change, change nothing")


class _Refused(Exception):
    def __init__(self, message: str, hint: str = "", code: int = 1):
        super().__init__(message)
        self.message, self.hint, self.code = message, hint, code


def _usage_checks(args: argparse.Namespace) -> None:
    if args.make_kohya is None:
        for flag, value in (("--name", args.name), ("--repeats", args.repeats), ("--link", args.link)):
            if value is not None:
                raise _Refused(f"{flag} goes with --make-kohya SRC", "e.g. --make-kohya ./pics --name mychar", 2)
    elif not args.name:
        raise _Refused("--make-kohya needs --name NAME (the class tokens, e.g. your trigger word)", "", 2)
    if args.dry_run and not (args.balance or args.set_repeats):
        raise _Refused("--dry-run goes with --balance or --set-repeats", "", 2)
    if args.top < 0:
        raise _Refused(f"--top: {args.top} must be 0 (all) or more", "", 2)


# --------------------------------------------------------------------------- text report


def _pct(a: int, b: int) -> str:
    return f"{100 * a // b}%" if b else "-"


_FOLDED = ("tiny", "warning")  # kinds that can run to hundreds of lines: the first few, then a count
_FOLD_AFTER = 8


def report_text(insp, top: int = 20) -> list[str]:
    """The report as plain lines (also what the tests read)."""
    from loratui.engine.inspection import NEAR_DUPLICATE_BITS

    lines = [f"dataset   {insp.root}  (resolution {insp.resolution}, captions {insp.caption_extension})"]
    if insp.concepts:
        w = max(8, *(len(c.folder_name) for c in insp.concepts))
        lines.append(f"  {'concept':<{w}}  repeats  images  captions     samples/epoch  suggested  balanced")
        for c in insp.concepts:
            caps = f"{c.captioned}/{c.images} {_pct(c.captioned, c.images):>4}"
            lines.append(
                f"  {c.folder_name:<{w}}  {c.repeats:>7}  {c.images:>6}  {caps:<11}  {c.samples:>13}"
                f"  {c.suggested.repeats:>9}  {c.balanced_repeats:>8}"
            )
        caps = f"{insp.captioned}/{insp.image_count} {_pct(insp.captioned, insp.image_count):>4}"
        lines.append(f"  {'total':<{w}}  {'':>7}  {insp.image_count:>6}  {caps:<11}  {insp.samples_per_epoch:>13}")
        if len(insp.concepts) == 1:
            s = insp.concepts[0].suggested
            lines.append(f"  suggested: {s.reason}")
    buckets = insp.bucket_table()
    if buckets:
        lines.append(f"buckets   at {insp.resolution}px")
        for (bw, bh), n, samples in buckets:
            lines.append(f"  {bw:>5}×{bh:<5} {n:>5} images  {samples:>6} samples/epoch")
        sizes: dict[tuple[int, int], int] = {}
        for im in insp.images:
            if im.ok and im.size:
                sizes[im.size] = sizes.get(im.size, 0) + 1
        common = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        lines.append("sizes     " + ", ".join(f"{w}×{h} ({n})" for (w, h), n in common)
                     + (f" and {len(sizes) - 5} more" if len(sizes) > 5 else ""))
    tags = insp.tag_table()
    if tags:
        shown = tags if top == 0 else tags[:top]
        lines.append(f"tags      {len(tags)} distinct" + (f", top {len(shown)}" if len(shown) < len(tags) else ""))
        for tag, n in shown:
            lines.append(f"  {n:>5}  {tag}")
    issues = insp.issues()
    if not insp.decoded and insp.images:
        lines.append("note      images not decoded (--no-decode): duplicates and corrupt data not checked")
    if issues:
        lines.append(f"problems  {len(issues)}")
        shown: dict[str, int] = {}
        for i in issues:
            shown[i.kind] = shown.get(i.kind, 0) + 1
            if i.kind in _FOLDED and shown[i.kind] > _FOLD_AFTER and top:
                continue
            lines.append(f"  {i.kind:<14} {i.message}")
        for kind in _FOLDED:
            extra = shown.get(kind, 0) - _FOLD_AFTER
            if extra > 0 and top:
                lines.append(f"  {kind:<14} … and {extra} more (--top 0 lists them all)")
    else:
        lines.append(
            "problems  none" + (f" (duplicates checked: exact bytes, look-alikes within {NEAR_DUPLICATE_BITS}/64 bits)"
                                if insp.decoded else "")
        )
    for h in insp.hints:
        lines.append(f"hint      {h}")
    return lines


# --------------------------------------------------------------------------- actions


def _do_action(args: argparse.Namespace, out: dict) -> list[str]:
    """Run the action flag, if any; lines to print before the report."""
    from loratui.engine.inspection import apply_balance, find_concept, inspect_dataset, make_kohya_folder, repeats_target, set_repeats

    lines: list[str] = []
    if args.set_repeats:
        spec, n = args.set_repeats
        folder = find_concept(args.folder, spec)
        try:
            n_int = int(n)
        except ValueError:
            raise _Refused(f"--set-repeats: {n!r} is not a whole number", "e.g. --set-repeats mychar 6", 2) from None
        if args.dry_run:
            target = repeats_target(folder, n_int)
            if target != folder and os.path.lexists(target):
                raise _Refused(f"{target} already exists; {folder.name} would not be renamed",
                               "move its images into one folder first, or pick another number")
            lines.append(f"would rename {folder.name} → {target.name}" if target != folder else f"{folder.name}: unchanged")
            out["action"] = {"set_repeats": {"from": str(folder), "to": str(target), "dry_run": True}}
        else:
            target = set_repeats(folder, n_int)
            lines.append(f"renamed {folder.name} → {target.name}" if target != folder else f"{folder.name}: already {n_int} repeats")
            out["action"] = {"set_repeats": {"from": str(folder), "to": str(target)}}
    elif args.balance:
        insp = inspect_dataset(args.folder, resolution=args.resolution, caption_extension=args.caption_extension,
                               decode=False)
        if insp.problems:
            raise _Refused("the dataset has problems; nothing was renamed", "; ".join(map(str, insp.problems)))
        plan = insp.balance_plan()
        info = {c.folder_name: {"images": c.images, "repeats": c.repeats, "balanced": c.balanced_repeats} for c in insp.concepts}
        if not plan:
            lines.append("balanced already: " + "; ".join(
                f"{c.folder_name} {c.images}×{c.repeats}={c.samples}" for c in insp.concepts))
            out["action"] = {"balance": {"renamed": {}, "concepts": info, "dry_run": args.dry_run}}
        elif args.dry_run:
            for folder, (old, new) in plan.items():
                c = next(c for c in insp.concepts if c.folder == folder)
                lines.append(f"would rename {folder.name} → {new}_{c.name}  ({c.images} images × {new} = {c.images * new} per epoch)")
            out["action"] = {"balance": {"plan": {str(k): list(v) for k, v in plan.items()}, "dry_run": True}}
        else:
            done = apply_balance(plan)
            for src, dst in done.items():
                lines.append(f"renamed {src.name} → {dst.name}")
            out["action"] = {"balance": {"renamed": {str(k): str(v) for k, v in done.items()}, "concepts": info}}
    elif args.make_kohya is not None:
        mode = {None: "copy", "hard": "hardlink", "sym": "symlink"}[args.link]
        res = make_kohya_folder(args.make_kohya, args.folder, args.name, repeats=args.repeats, mode=mode,
                                caption_extension=args.caption_extension)
        verb = {"copy": "copied", "hardlink": "hard-linked", "symlink": "symlinked"}[mode]
        lines.append(f"made {res.folder}: {res.images} images {verb}, {res.captions} captions copied, "
                     f"{res.repeats} repeats" + (" (suggested)" if args.repeats is None else ""))
        lines.append(f"  suggested repeats {res.suggestion.repeats}: {res.suggestion.reason}")
        for s in res.skipped:
            lines.append(f"  skipped (unreadable) {s}")
        out["action"] = {"make_kohya": {"folder": str(res.folder), "images": res.images, "captions": res.captions,
                                        "repeats": res.repeats, "mode": mode, "skipped": res.skipped,
                                        "suggested_repeats": res.suggestion.repeats}}
    return lines


def run(args: argparse.Namespace) -> int:
    from loratui.engine.inspection import InspectError, dataset_settings, inspect_dataset

    out: dict = {}
    try:
        _usage_checks(args)
        try:
            dataset_settings(args.folder, args.resolution, args.caption_extension)
        except InspectError as exc:
            flag = "--caption-extension" if exc.message.startswith("caption_extension") else "--resolution"
            raise _Refused(f"{flag}: {exc.message.split(': ', 1)[-1]}", exc.hint, 2) from None
        pre = _do_action(args, out)
        insp = inspect_dataset(args.folder, resolution=args.resolution, caption_extension=args.caption_extension,
                               decode=not args.no_decode)
    except (InspectError, _Refused) as exc:
        code = getattr(exc, "code", 1)
        if args.json:
            print(json.dumps({"error": exc.message, "hint": exc.hint, **out}, ensure_ascii=False, indent=2))
        else:
            print(f"error: {exc.message}", file=sys.stderr)
            if exc.hint:
                print(f"hint: {exc.hint}", file=sys.stderr)
        return code
    try:
        if args.json:
            print(json.dumps({**out, "report": insp.to_dict()}, ensure_ascii=False, indent=2))
        else:
            for line in pre + report_text(insp, args.top):
                print(line)
        sys.stdout.flush()
    except BrokenPipeError:  # `loratui dataset DIR | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 1 if insp.problems else 0
