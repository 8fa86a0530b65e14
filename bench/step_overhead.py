"""Engine overhead per optimizer step, against a minimal hand-written loop.

Both train the same small SD-architecture model (engine/tiny.py, SD 1.x shape)
on the same cached latents, with LoRA on the same U-Net and text-encoder
modules (peft), AdamW, the same batch size — in the same process, alternating
runs so that machine noise hits both.  The baseline is the loop the diffusers
LoRA example would write, stripped of everything but the work.

    python bench/step_overhead.py [--steps 60] [--rounds 2] [--resolution 128]

Prints seconds per step for each and the ratio engine ÷ baseline
(target ≤ 1.02).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def engine_run(model_dir: Path, data_dir: Path, out_dir: Path, steps: int, resolution: int, batch: int) -> list[float]:
    from loratui.engine.events import StepEvent
    from loratui.engine.schema import profile_from_dict
    from loratui.engine.train import run_training

    profile = profile_from_dict(
        {
            "model": {"base_model": str(model_dir)},
            "dataset": {"train_data_dir": str(data_dir), "resolution": resolution, "enable_bucket": False,
                        "min_bucket_reso": 64, "cache_latents": "memory"},
            "network": {"network_dim": 8, "network_alpha": 8.0},
            "optimization": {"optimizer": "AdamW", "learning_rate": 1e-4, "text_encoder_lr": 1e-4,
                             "lr_scheduler": "constant", "max_train_epochs": 1000, "max_train_steps": steps,
                             "train_batch_size": batch, "mixed_precision": "no", "max_grad_norm": 1.0},
            "output": {"output_dir": str(out_dir), "output_name": "bench", "save_every_n_epochs": 0},
        }
    )
    stamps: list[float] = []

    def on_event(ev):
        if isinstance(ev, StepEvent):
            stamps.append(time.perf_counter())

    result = run_training(profile, on_event, overwrite=True)
    if not stamps:
        raise SystemExit(f"engine run failed: {result}")
    return stamps


def baseline_run(model_dir: Path, data_dir: Path, steps: int, resolution: int, batch: int, *,
                 device: str = "cpu", dtype=None, pipe=None) -> list[float]:
    """The minimal loop: diffusers + peft, cached latents, nothing else. On a GPU
    (bench/gpu_check.py): ``pipe`` with the models on ``device`` in ``dtype``
    (autocast to it), ``model_dir`` for the scheduler config only."""
    import contextlib
    import random

    import numpy as np
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft import LoraConfig, inject_adapter_in_model
    from PIL import Image

    torch.manual_seed(0)
    pipe = pipe or StableDiffusionPipeline.from_pretrained(model_dir)
    unet, te, tok, vae = pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.vae
    autocast = (torch.autocast("cuda", dtype=dtype) if device.startswith("cuda") and dtype is not None
                else contextlib.nullcontext())
    for m in (unet, te, vae):
        m.requires_grad_(False)
    unet_targets = [n for n, m in unet.named_modules()
                    if ".attentions." in n and isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
                    and (".transformer_blocks." in n or n.endswith(("proj_in", "proj_out")))]
    te_targets = [n for n, m in te.named_modules()
                  if isinstance(m, torch.nn.Linear) and n.endswith(("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"))]
    inject_adapter_in_model(LoraConfig(r=8, lora_alpha=8, target_modules=unet_targets), unet)
    inject_adapter_in_model(LoraConfig(r=8, lora_alpha=8, target_modules=te_targets), te)
    params = [p for m in (unet, te) for n, p in m.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    sched = DDPMScheduler.from_pretrained(model_dir, subfolder="scheduler")
    files = sorted(p for p in Path(data_dir).rglob("*.png"))
    caps = [f.with_suffix(".txt").read_text().strip() for f in files]
    with torch.no_grad():
        pix = torch.stack([
            torch.from_numpy(np.asarray(Image.open(f).convert("RGB").resize((resolution, resolution)), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
            for f in files
        ]).to(device, dtype=vae.dtype)
        latents_all = vae.encode(pix).latent_dist.mode() * vae.config.scaling_factor
    rng = random.Random(0)
    gen = torch.Generator(device=device).manual_seed(0)
    stamps = []
    for _ in range(steps):
        idx = [rng.randrange(len(files)) for _ in range(batch)]
        latents = latents_all[idx]
        ids = tok([caps[i] for i in idx], padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids.to(device)
        noise = torch.randn(latents.shape, generator=gen, device=device, dtype=latents.dtype)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen, device=device)
        noisy = sched.add_noise(latents, noise, t)
        with autocast:
            hidden = te(ids).last_hidden_state
            pred = unet(noisy, t, hidden).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        stamps.append(time.perf_counter())
    return stamps


def per_step(stamps: list[float], warmup: int) -> float:
    d = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]
    return statistics.median(d)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args()

    import torch

    from loratui.engine import quiet_libraries
    from loratui.engine.synthetic import write_synthetic_dataset
    from loratui.engine.tiny import save_tiny_pipeline

    quiet_libraries()
    tmp = Path(tempfile.mkdtemp(prefix="loratui-bench-"))
    model = save_tiny_pipeline(tmp / "model", "sd1")
    data = write_synthetic_dataset(tmp / "images", {"1_toy": 16}, size=(args.resolution, args.resolution))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu, "
          f"tiny SD1-shaped model, {args.resolution}px, batch {args.batch}, rank 8, {args.steps} steps × {args.rounds} rounds")
    eng, base = [], []
    for r in range(args.rounds):
        b = per_step(baseline_run(model, data, args.steps, args.resolution, args.batch), args.warmup)
        e = per_step(engine_run(model, data, tmp / f"out{r}", args.steps, args.resolution, args.batch), args.warmup)
        base.append(b)
        eng.append(e)
        print(f"round {r + 1}: baseline {b * 1000:.1f} ms/step   engine {e * 1000:.1f} ms/step   ratio {e / b:.3f}")
    b, e = statistics.median(base), statistics.median(eng)
    print(f"median: baseline {b * 1000:.1f} ms/step, engine {e * 1000:.1f} ms/step, ratio engine/baseline = {e / b:.3f} (target ≤ 1.02)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
