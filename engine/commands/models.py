"""`loratui models`: the model files in the models folder and the Hub cache;
`loratui models download REPO [FILE]`: fetch one from the Hub."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "models"
HELP = "list the checkpoints, VAEs, LoRAs and text encoders found (models folder + Hub cache), or download one"
DESCRIPTION = (
    "loratui models                     list what the models folder and the Hugging Face cache hold\n"
    "loratui models download REPO [FILE] fetch a file (or a diffusers repo) from the Hub, resumable\n"
    "loratui models download --list     the usual SD 1.5 / SDXL / SD 3.5 / FLUX.1 files"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("action", nargs="?", choices=("list", "download"), default="list")
    p.add_argument("repo", nargs="?", help="download: Hub repo id, e.g. stabilityai/stable-diffusion-xl-base-1.0")
    p.add_argument("file", nargs="?", help="download: file in the repo, e.g. sd_xl_base_1.0.safetensors")
    p.add_argument("--dir", default=None, help="models folder (default: the setting, see --set-dir)")
    p.add_argument("--set-dir", default=None, metavar="DIR", help="remember DIR as the models folder")
    p.add_argument("--json", action="store_true", help="list as JSON")
    p.add_argument("--no-hub", action="store_true", help="leave out the Hugging Face cache")
    p.add_argument("--list", dest="catalog", action="store_true", help="download: show the usual files")


def run(args: argparse.Namespace) -> int:
    from loratui.engine.userdirs import MODEL_SUBFOLDERS, models_dir, set_models_dir

    if args.set_dir:
        try:
            root = set_models_dir(args.set_dir)
        except OSError as exc:
            print(f"error: cannot save the setting: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"models folder: {root}")
    root = models_dir() if not args.dir else __import__("pathlib").Path(args.dir).expanduser()
    if args.action == "download":
        return _download(args, root)
    from loratui.engine.modelstore import empty_hint, scan

    if not args.dir:
        for sub in MODEL_SUBFOLDERS:
            try:
                (root / sub).mkdir(parents=True, exist_ok=True)
            except OSError:
                break
    entries = scan(root, hub=not args.no_hub)
    if args.json:
        print(json.dumps({"models_dir": str(root), "models": [e.to_dict() for e in entries]}, indent=2))
        return 0
    print(f"models folder {root}")
    if entries:
        for line in table_lines(entries):
            print(line)
    if not any(e.source == "models" for e in entries):
        print(empty_hint(root, DOWNLOAD_HOW))
    bad = [e for e in entries if e.problem]
    return 1 if bad else 0


DOWNLOAD_HOW = "`loratui models download REPO FILE` (`loratui models download --list` shows the usual ones)"


def table_lines(entries) -> list[str]:
    if not entries:
        return []
    rows = [("KIND", "NAME", "FAMILY", "PREC", "SIZE", "WHERE", "DETAILS")]
    for e in entries:
        rows.append((e.kind.replace("_", " "), e.name, e.family_text or "-", e.precision or "-", e.size_text or "-",
                     e.source, ("BROKEN: " if e.problem else "") + e.details))
    widths = [min(48, max(len(r[i]) for r in rows)) for i in range(6)]
    return ["  ".join(c[:w].ljust(w) for c, w in zip(r[:6], widths)) + "  " + r[6] for r in rows]


def _download(args: argparse.Namespace, root) -> int:
    from loratui.engine.modelfiles import format_size
    from loratui.engine.modelstore.catalog import KNOWN_FILES
    from loratui.engine.modelstore.download import DownloadError, download

    if args.catalog or not args.repo:
        for f in KNOWN_FILES:
            gated = "  (gated)" if f.gated else ""
            print(f"{f.label:28} ≈{format_size(f.size):>8}  {f.repo} {f.filename}{gated}")
        return 0 if args.catalog else 2
    tty = sys.stderr.isatty()
    last = [""]

    def show(p) -> None:
        line = p.line()
        if tty:
            print("\r" + line.ljust(100)[:140], end="", file=sys.stderr, flush=True)
        elif line.split("  ")[0] != last[0] or p.done >= p.total:
            print(line, file=sys.stderr)
        last[0] = line.split("  ")[0]

    try:
        res = download(args.repo, args.file, models_dir=root, on_progress=show)
    except DownloadError as exc:
        print(("\n" if tty else "") + f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: what was fetched is kept (in the models folder's .downloads/); "
              "run the same command again to resume", file=sys.stderr)
        return 130
    if tty:
        print(file=sys.stderr)
    if res.note:
        print(f"note: {res.note}", file=sys.stderr)
    print(res.spec)
    return 0
