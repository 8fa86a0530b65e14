"""`loratui caption DIR`: write caption files with the WD14 tagger or BLIP."""

from __future__ import annotations

import argparse
import sys
import time

from loratui.engine.modelstore.rate import Rate

NAME = "caption"
HELP = "Caption a folder of images with the WD14 tagger (tags) or BLIP / BLIP-2 / GIT (sentences)."
DESCRIPTION = (
    "Write <image>.txt caption files. Existing captions are kept unless you pass --mode overwrite "
    "(replace them) or --mode append (add the new tags they lack). Models come from the Hugging Face "
    "Hub (cached) or a local folder."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="DIR", help="folder of images (with --recursive: its concept sub-folders too)")
    p.add_argument("--tagger", choices=("wd14", "blip", "blip2", "git"), default="wd14",
                   help="wd14: tags (default); blip, blip2 (BLIP-2), git: a sentence")
    p.add_argument("--model", default="", metavar="ID_OR_DIR",
                   help="Hub repo id or local folder (wd14: model.onnx + selected_tags.csv). "
                   "Default: SmilingWolf/wd-v1-4-convnextv2-tagger-v2 / Salesforce/blip-image-captioning-large / "
                   "Salesforce/blip2-opt-2.7b / microsoft/git-large-coco")
    p.add_argument("--mode", choices=("skip", "overwrite", "append"), default="skip",
                   help="images that already have a caption: skip (default), overwrite, append new tags")
    p.add_argument("--ext", default=".txt", metavar=".EXT", help="caption file extension (default .txt)")
    p.add_argument("--recursive", action="store_true", help="also caption images in sub-folders")
    p.add_argument("--trigger", default="", metavar="WORD", help="trigger word(s) put first in every caption")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per model call (default 8)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="where the model runs")
    g = p.add_argument_group("wd14")
    g.add_argument("--threshold", type=float, default=0.35, metavar="T", help="general tag threshold (default 0.35)")
    g.add_argument(
        "--character-threshold", type=float, default=0.85, metavar="T", help="character tag threshold (default 0.85)"
    )
    g.add_argument("--exclude", default="", metavar="A,B", help="tags never written, comma-separated")
    g.add_argument("--rating", choices=("none", "first", "last"), default="none", help="add the rating tag")
    g.add_argument("--character-first", action="store_true", help="character tags before general tags")
    g.add_argument("--keep-underscores", action="store_true", help="write long_hair, not long hair")
    b = p.add_argument_group("blip")
    b.add_argument("--beams", type=int, default=3, metavar="N", help="beam-search width (default 3)")
    b.add_argument("--min-length", type=int, default=5, metavar="N", help="shortest caption in tokens (default 5)")
    b.add_argument("--max-length", type=int, default=75, metavar="N", help="longest caption in tokens (default 75)")
    b.add_argument("--prompt", default="", metavar="TEXT", help="text the caption starts from, e.g. 'a photo of'")
    b.add_argument("--quantize", choices=("auto", "8bit", "none"), default="auto",
                   help="blip2/git on CUDA: 8-bit when fp16 does not fit in the free GPU memory (auto), always, never")


def settings_from_args(args: argparse.Namespace):
    from loratui.engine.captioners import CaptionSettings
    from loratui.engine.captioners.common import split_tags

    ext = args.ext if args.ext.startswith(".") or not args.ext else "." + args.ext
    return CaptionSettings(
        tagger=args.tagger,
        model=args.model,
        mode=args.mode,
        caption_extension=ext,
        recursive=args.recursive,
        trigger=args.trigger,
        batch_size=args.batch_size,
        device=args.device,
        general_threshold=args.threshold,
        character_threshold=args.character_threshold,
        exclude=split_tags(args.exclude),
        rating=args.rating,
        character_first=args.character_first,
        replace_underscores=not args.keep_underscores,
        num_beams=args.beams,
        min_length=args.min_length,
        max_length=args.max_length,
        prompt=args.prompt,
        quantize=args.quantize,
    )


_FLAGS = {
    "general_threshold": "--threshold", "character_threshold": "--character-threshold",
    "caption_extension": "--ext", "batch_size": "--batch-size", "num_beams": "--beams",
    "min_length": "--min-length", "max_length": "--max-length",
}  # fmt: skip


class _Printer:
    """Plain progress lines (no colours, no cursor tricks: fine in logs and over SSH)."""

    def __init__(self, out=None, err=None) -> None:
        self._out, self._err = out, err
        self.last_download = 0.0
        self.rate = Rate()  # bytes/s and ETA of the model download
        self.outcome = None

    @property
    def out(self):
        return self._out or sys.stdout

    @property
    def err(self):
        return self._err or sys.stderr

    def __call__(self, ev: object) -> None:
        try:
            self._print(ev)
        except BrokenPipeError:
            # `loratui caption DIR | head`: the reader left; keep captioning quietly.
            import os

            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)

    def _print(self, ev: object) -> None:
        from loratui.engine.events import Failed, Finished, LogEvent, Phase, PhaseChanged, WarningEvent

        if isinstance(ev, PhaseChanged):
            if ev.phase == Phase.DOWNLOADING:
                now = time.monotonic()
                rate = self.rate
                rate.update(ev.current, now)
                if ev.total and (now - self.last_download >= 2 or ev.current >= ev.total):
                    self.last_download = now
                    print(f"downloading {ev.detail}: {rate.text(ev.current, ev.total)}", file=self.out, flush=True)
                elif not ev.total:
                    print(f"downloading {ev.detail}", file=self.out, flush=True)
            elif ev.phase == Phase.LOADING_MODEL:
                print(f"loading model {ev.detail}", file=self.out, flush=True)
            elif ev.phase == Phase.CAPTIONING and ev.current:
                width = len(str(ev.total))
                detail = ev.detail if len(ev.detail) <= 110 else ev.detail[:107] + "..."
                print(f"[{ev.current:>{width}}/{ev.total}] {detail}", file=self.out, flush=True)
        elif isinstance(ev, LogEvent):
            print(ev.message, file=self.out, flush=True)
        elif isinstance(ev, WarningEvent):
            print(f"warning: {ev.message}", file=self.err, flush=True)
        elif isinstance(ev, Failed):
            self.outcome = ev
            print(f"error: {ev.message}", file=self.err, flush=True)
            if ev.hint:
                print(f"hint: {ev.hint}", file=self.err, flush=True)
        elif isinstance(ev, Finished):
            self.outcome = ev
            s = ev.summary
            parts = [f"{s.get('written', 0)} written"]
            for key, label in (("overwritten", "overwritten"), ("appended", "appended"),
                               ("unchanged", "unchanged"), ("skipped_existing", "kept (already captioned)"),
                               ("empty", "empty (not written)")):
                if s.get(key):
                    parts.append(f"{s[key]} {label}")
            if s.get("failed"):
                parts.append(f"{len(s['failed'])} unreadable")
            head = "stopped" if ev.stopped_early else "done"
            print(f"{head}: {', '.join(parts)} ({ev.elapsed:.1f} s)", file=self.out, flush=True)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from loratui.engine.captioners import run_captioner
    from loratui.engine.events import Control, Failed

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            lines = msg.splitlines() if not loc else [f"{loc}: {msg}"]
            for line in lines:  # cross-field checks come as "key: message" lines
                key, _, text = line.partition(": ")
                print(f"error: {_FLAGS.get(key, '--' + key.replace('_', '-'))}: {text}", file=sys.stderr)
        return 2
    control = Control()
    printer = _Printer()
    try:
        run_captioner(settings, args.folder, control=control, on_event=printer)
    except KeyboardInterrupt:
        control.abort()
        print("interrupted; every caption file written so far is complete", file=sys.stderr)
        return 130
    return 1 if isinstance(printer.outcome, Failed) else 0
