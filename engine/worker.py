"""One process of a multi-process run, as accelerate's launcher starts it:

    python -m loratui.engine.worker RUN_FOLDER/profile.toml [--resume STATE] [--overwrite]

It joins the others (engine/distributed.py) and runs the same training as a
single process (engine/train.py ``run_training``); rank 0 writes the metrics
file, the LoRAs and the states. A process that fails leaves its error in the
run folder, where the others and the launcher read it. Exit code 0 when the
run ended well (done, or stopped with a save), 1 when it failed: torch elastic
takes any other code for a failure.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loratui.engine.worker")
    ap.add_argument("profile")
    ap.add_argument("--resume", default=None)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    from loratui.engine.distributed import WORKER_ENV, join, leave, write_rank_failure
    from loratui.engine.events import Failed, Finished
    from loratui.engine.schema import ProfileError, load_profile, resolve_paths
    from loratui.engine.training.paths import TrainingError

    folder = os.environ.get(WORKER_ENV) or str(Path(args.profile).parent)
    rank = int(os.environ.get("RANK", "0"))
    try:
        profile = resolve_paths(load_profile(args.profile))
    except ProfileError as exc:
        write_rank_failure(folder, rank, f"{args.profile}: " + "; ".join(map(str, exc.problems)))
        return 1
    try:
        w = join(profile, folder)
    except (TrainingError, RuntimeError, ValueError) as exc:
        message = getattr(exc, "message", None) or f"could not join the other processes: {exc}"
        write_rank_failure(folder, rank, message, getattr(exc, "hint", ""))
        print(f"loratui worker {rank}: {message}", file=sys.stderr)
        return 1
    from loratui.engine.train import run_training

    def emit(ev) -> None:  # the metrics file is the run's voice; the log gets what went wrong
        if isinstance(ev, Failed):
            print(f"loratui worker {w.rank}: {ev.message}" + (f" — {ev.hint}" if ev.hint else ""), file=sys.stderr, flush=True)

    result = run_training(profile, emit, overwrite=args.overwrite, resume=args.resume)
    leave()
    return 0 if isinstance(result, Finished) else 1  # stopped early is a good end too (the metrics file says which)


if __name__ == "__main__":
    raise SystemExit(main())
