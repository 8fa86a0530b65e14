"""Main-memory (anonymous RSS) peak of loading a FLUX.1 transformer from a bf16 single file,
against the file's size, in one process.

A .safetensors file is mapped, not read: tensors the model keeps in the file's dtype stay
views of the mapping (page cache, which the kernel can drop), so only what is converted
costs memory of its own. This builds a FLUX.1 transformer of full width with fewer blocks
(``--double``/``--single``; full size is 19/38), writes it as a BFL-named bf16 file, and
loads it with tiny text encoders and AE as a run does (``engine.loading.load_components``
into main memory in bf16, then ``engine.fp8.apply_fp8``), sampling /proc/self/status every 10 ms.

    python bench/load_ram.py                # 2 double + 4 single blocks: a 2.7 GB file
    python bench/load_ram.py --double 4 --single 8

It prints the file size, the anonymous-memory peak above the process's baseline for each
phase, and their ratio. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def anon() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


class Peak:
    def __init__(self):
        self.value, self._stop = anon(), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.01):
            self.value = max(self.value, anon())

    def __enter__(self):
        self.value = anon()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._stop.clear()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.value = max(self.value, anon())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--double", type=int, default=2)
    ap.add_argument("--single", type=int, default=4)
    args = ap.parse_args()

    import os

    import torch
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    from flow_files import flux_to_bfl, write_flux_split_files, write_hub_t5_tokenizer
    from loratui.engine.configs import config_dir
    from loratui.engine.fp8 import apply_fp8
    from loratui.engine.loading import load_components
    from loratui.engine.schema import ModelSettings
    from loratui.engine.tiny import save_tiny_pipeline

    from loratui.engine import quiet_libraries

    quiet_libraries()
    tmp = Path(tempfile.mkdtemp(prefix="loratui-load-ram-"))
    try:
        # tiny text encoders, AE and tokenizers (their files are not the question), a big transformer file
        os.environ["HF_HUB_CACHE"] = str(write_hub_t5_tokenizer(tmp / "hub"))
        os.environ["HF_HUB_OFFLINE"] = "1"
        files = write_flux_split_files(save_tiny_pipeline(tmp / "tiny", "flux"), tmp / "files")
        cfg = json.loads((config_dir("flux") / "transformer" / "config.json").read_text())
        cfg.update(num_layers=args.double, num_single_layers=args.single)
        with torch.device("meta"):
            tr = FluxTransformer2DModel.from_config(cfg)
        tr = tr.to_empty(device="cpu").to(torch.bfloat16)
        with torch.no_grad():
            for p in tr.parameters():
                p.normal_(0, 0.02)
        path = Path(files["base_model"])
        save_file({k: v.contiguous() for k, v in flux_to_bfl(tr).items()}, str(path))
        size = path.stat().st_size
        del tr
        parts = {k: v for k, v in files.items() if k != "base_model"}
        ms = ModelSettings(base_model=str(path), family="flux", fp8_base=True, **parts)
        base = anon()
        with Peak() as load:  # as a run loads it: into main memory, in the run's dtype
            comp = load_components(ms, device="cpu", dtype=torch.bfloat16)
        after_load = anon()
        with Peak() as fp8:
            n = apply_fp8(comp.unet, torch.bfloat16)
        assert n > 0, "apply_fp8 converted no layer"
        after_fp8 = anon()
        gb = 1e9
        print(f"file {size / gb:.2f} GB (bf16, {args.double} double + {args.single} single blocks at full width)")
        print(f"load into main memory: peak +{(load.value - base) / gb:.2f} GB anonymous "
              f"({(load.value - base) / size:.3f} of the file), after it +{(after_load - base) / gb:.2f} GB")
        print(f"fp8 base (apply_fp8):   peak +{(fp8.value - base) / gb:.2f} GB anonymous "
              f"({(fp8.value - base) / size:.3f} of the file), after it +{(after_fp8 - base) / gb:.2f} GB "
              f"(fp8 weights: half the file)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
