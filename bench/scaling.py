"""Data-parallel scaling: training throughput of N processes ÷ 1 process.

The same tiny SD 1.x-shaped model (engine/tiny.py), the same dataset and the
same per-process batch, started as a user starts it: `loratui train PROFILE`
for one process, `loratui train PROFILE --gpus N` (accelerate's launcher, DDP)
for N. Throughput is samples per second between the first and the last step
(start-up, model loading and caching left out). On a machine without a GPU
each process gets cores ÷ N threads, the single process as many as one of the
N do, so that the ratio measures the parallel engine, not thread scaling.

    python bench/scaling.py [--processes 1 2] [--samples 96] [--resolution 64] [--batch 1]

Prints one row per N: samples/s, speed-up over one process, and the
efficiency per process (speed-up ÷ N; 1.0 is perfect scaling).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _throughput(metrics: Path, global_batch: int) -> tuple[float, int]:
    steps = [json.loads(line) for line in metrics.read_text().splitlines() if '"StepEvent"' in line]
    if len(steps) < 3:
        raise SystemExit(f"{metrics}: too few steps to time ({len(steps)})")
    first, last = steps[0], steps[-1]
    span = last["elapsed"] - first["elapsed"]
    return (last["step"] - first["step"]) * global_batch / span, len(steps)


def run(n: int, root: Path, model: Path, data: Path, args, threads: int) -> tuple[float, int]:
    from loratui.engine.schema import profile_from_dict, profile_to_toml

    out = root / f"out-{n}"
    epochs = max(2, args.samples // 8)  # 8 images per epoch: the same samples for every N
    profile = profile_from_dict({
        "model": {"base_model": str(model)},
        "dataset": {"train_data_dir": str(data), "resolution": args.resolution, "enable_bucket": False},
        "network": {"network_dim": 4, "network_alpha": 4.0},
        "optimization": {"optimizer": "AdamW", "max_train_epochs": epochs, "train_batch_size": args.batch,
                         "mixed_precision": "no", "lr_scheduler": "constant"},
        "output": {"output_dir": str(out), "output_name": "scale", "save_every_n_epochs": 0},
    })
    path = root / f"p{n}.toml"
    path.write_text(profile_to_toml(profile))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if n == 1 else dict(os.environ)
    cmd = [sys.executable, "-m", "loratui.tui.cli", "train", str(path), "--overwrite"] + (["--gpus", str(n)] if n > 1 else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{n} process(es) failed:\n{proc.stderr[-3000:]}")
    return _throughput(out / "scale.metrics.jsonl", args.batch * n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--samples", type=int, default=96, help="samples each configuration trains on (about)")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1, help="per-process batch")
    args = ap.parse_args()
    from loratui.engine.gpu import default_monitor
    from loratui.engine.synthetic import write_synthetic_dataset
    from loratui.engine.tiny import save_tiny_pipeline

    root = Path(tempfile.mkdtemp(prefix="loratui-scaling-"))
    model = save_tiny_pipeline(root / "model", "sd1")
    data = write_synthetic_dataset(root / "images", {"1_toy": 8}, size=(args.resolution, args.resolution))
    gpu = default_monitor().available
    cores = os.cpu_count() or 1
    threads = max(1, cores // max(args.processes))
    where = "GPU" if gpu else f"CPU, {cores} cores, {threads} thread(s) per process"
    print(f"tiny SD 1.x model, {args.resolution} px, batch {args.batch} per process ({where})")
    print(f"{'processes':>9}  {'samples/s':>9}  {'speed-up':>8}  {'per process':>11}  steps")
    base = None
    for n in sorted(set(args.processes)):
        rate, steps = run(n, root, model, data, args, threads)
        base = base or rate if n == 1 else base
        speed = rate / base if base else float("nan")
        print(f"{n:>9}  {rate:9.2f}  {speed:7.2f}×  {speed / n:10.0%}  {steps}")


if __name__ == "__main__":
    main()
