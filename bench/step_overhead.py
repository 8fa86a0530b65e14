"""Engine overhead per optimizer step, against a minimal hand-written loop.

Both train the same small SD-architecture model (engine/tiny.py, SD 1.x shape)
on the same cached latents, with LoRA on the same U-Net and text-encoder
modules (peft), AdamW, the same batch size — in the same process, alternating
runs so that machine noise hits both.  The baseline is the loop the diffusers
LoRA example would write, stripped of everything but the work.

    python bench/step_overhead.py [--steps 60] [--rounds 2] [--resolution 128]
    python bench/step_overhead.py --family flux   # a flow model: tiny FLUX.1-shaped transformer,
                                                  # text-encoder outputs cached, transformer-only LoRA

Prints seconds per step for each and the ratio engine ÷ baseline
(target ≤ 1.02). By default the two loops alternate step by step (one baseline step runs
inside each engine step's event, its time left out of the engine's), which a shared,
noisy machine disturbs far less than whole runs one after the other (``--mode rounds``).
``--mode pieces`` prints where a step's time goes (rest / backward / update), engine and baseline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


FLOW_T5_TOKENS = 64  # both loops: the T5 caption length (the transformer's text sequence)


def engine_run(model_dir: Path, data_dir: Path, out_dir: Path, steps: int, resolution: int, batch: int,
               family: str = "sd1", between=None) -> list[float]:
    """The engine's step times as stamps (one per StepEvent). ``between``: called at each
    StepEvent (another loop's step, run there); the time it takes is left out of the stamps."""
    from loratui.engine.events import StepEvent
    from loratui.engine.schema import profile_from_dict
    from loratui.engine.train import run_training

    d = {
        "model": {"base_model": str(model_dir)},
        "dataset": {"train_data_dir": str(data_dir), "resolution": resolution, "enable_bucket": False,
                    "min_bucket_reso": 64, "cache_latents": "memory"},
        "network": {"network_dim": 8, "network_alpha": 8.0},
        "optimization": {"optimizer": "AdamW", "learning_rate": 1e-4, "text_encoder_lr": 1e-4,
                         "lr_scheduler": "constant", "max_train_epochs": 1000, "max_train_steps": steps,
                         "train_batch_size": batch, "mixed_precision": "no", "max_grad_norm": 1.0},
        "output": {"output_dir": str(out_dir), "output_name": "bench", "save_every_n_epochs": 0},
    }
    if family == "flux":  # as the guides train it: transformer only, text-encoder outputs cached
        d["model"].update({"t5xxl_max_token_length": FLOW_T5_TOKENS, "weighting_scheme": "none",  # the baseline's math
                           "timestep_sampling": "sigmoid", "model_prediction_type": "raw", "guidance_scale": 1.0})
        d["dataset"]["cache_text_encoder_outputs"] = "memory"
        d["network"]["train_text_encoder"] = False
    profile = profile_from_dict(d)
    stamps: list[float] = []
    left_out = [0.0]

    def on_event(ev):
        if isinstance(ev, StepEvent):
            t = time.perf_counter()
            stamps.append(t - left_out[0])
            if between is not None:
                between()
                left_out[0] += time.perf_counter() - t

    result = run_training(profile, on_event, overwrite=True)
    if not stamps:
        raise SystemExit(f"engine run failed: {result}")
    return stamps


def baseline_run(model_dir: Path, data_dir: Path, steps: int, resolution: int, batch: int, *,
                 device: str = "cpu", dtype=None, pipe=None) -> list[float]:
    """The minimal loop's step stamps (see ``baseline_steps``)."""
    return list(baseline_steps(model_dir, data_dir, steps, resolution, batch, device=device, dtype=dtype, pipe=pipe))


def baseline_steps(model_dir: Path, data_dir: Path, steps: int, resolution: int, batch: int, *,
                   device: str = "cpu", dtype=None, pipe=None):
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
        yield _update(torch.nn.functional.mse_loss(pred.float(), noise.float()), params, opt)


def _update(loss, params, opt) -> float:
    """The plain loop's optimizer step (clip to 1.0, as the engine's profile does); when it ended."""
    import torch

    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    loss.item()
    return time.perf_counter()


def flow_baseline_run(model_dir: Path, data_dir: Path, steps: int, resolution: int, batch: int) -> list[float]:
    return list(flow_baseline_steps(model_dir, data_dir, steps, resolution, batch))


def flow_baseline_steps(model_dir: Path, data_dir: Path, steps: int, resolution: int, batch: int):
    """The minimal FLUX.1 LoRA loop: diffusers + peft, cached latents and text-encoder
    outputs, LoRA on every Linear of the transformer's blocks (sd-scripts' lora_flux
    targets), flow matching with a logit-normal sigma, guidance 1.0."""
    import random

    import numpy as np
    import torch
    from diffusers import FluxPipeline
    from peft import LoraConfig, inject_adapter_in_model
    from PIL import Image

    torch.manual_seed(0)
    pipe = FluxPipeline.from_pretrained(model_dir)
    tr, clip, t5, vae = pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, pipe.vae
    for m in (tr, clip, t5, vae):
        m.requires_grad_(False)
    targets = [n for n, m in tr.named_modules() if isinstance(m, torch.nn.Linear)
               and n.startswith(("transformer_blocks.", "single_transformer_blocks."))]
    inject_adapter_in_model(LoraConfig(r=8, lora_alpha=8, target_modules=targets), tr)
    params = [p for n, p in tr.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    files = sorted(Path(data_dir).rglob("*.png"))
    caps = [f.with_suffix(".txt").read_text().strip() for f in files]
    with torch.no_grad():
        pix = torch.stack([
            torch.from_numpy(np.asarray(Image.open(f).convert("RGB").resize((resolution, resolution)), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
            for f in files
        ])
        latents_all = (vae.encode(pix).latent_dist.mode() - vae.config.shift_factor) * vae.config.scaling_factor
        ids = pipe.tokenizer(caps, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                             return_tensors="pt").input_ids
        ids2 = pipe.tokenizer_2(caps, padding="max_length", max_length=FLOW_T5_TOKENS, truncation=True,
                                return_tensors="pt").input_ids
        pooled_all, t5_all = clip(ids).pooler_output, t5(ids2).last_hidden_state
    b, c, h, w = batch, *latents_all.shape[1:]
    img_ids = torch.zeros(h // 2, w // 2, 3)
    img_ids[..., 1] += torch.arange(h // 2)[:, None]
    img_ids[..., 2] += torch.arange(w // 2)[None, :]
    img_ids, txt_ids = img_ids.reshape(-1, 3), torch.zeros(FLOW_T5_TOKENS, 3)
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = [rng.randrange(len(files)) for _ in range(batch)]
        latents = latents_all[idx]
        noise = torch.randn(latents.shape, generator=gen)
        s = torch.sigmoid(torch.randn(b, generator=gen))
        noisy = (1 - s.view(-1, 1, 1, 1)) * latents + s.view(-1, 1, 1, 1) * noise
        packed = noisy.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
        guidance = torch.full((b,), 1.0) if tr.config.guidance_embeds else None
        out = tr(hidden_states=packed, encoder_hidden_states=t5_all[idx], pooled_projections=pooled_all[idx],
                 timestep=s, img_ids=img_ids, txt_ids=txt_ids, guidance=guidance, return_dict=False)[0]
        pred = out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
        yield _update(torch.nn.functional.mse_loss(pred.float(), (noise - latents).float()), params, opt)


def per_step(stamps: list[float], warmup: int) -> float:
    d = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]
    return statistics.median(d)


def interleaved(args, model: Path, data: Path, tmp: Path) -> int:
    """Each engine step's event runs one step of the baseline loop (its time left out of the
    engine's): the two alternate step by step, so a slower or faster moment of a shared machine
    hits both, and the ratio is taken per pair of neighbouring steps."""
    steps_of = baseline_steps if args.family == "sd1" else flow_baseline_steps
    pairs: list[float] = []
    all_b: list[float] = []
    all_e: list[float] = []
    for r in range(args.rounds):
        gen = steps_of(model, data, args.steps + 1, args.resolution, args.batch)
        next(gen)  # its set-up and first step, before the engine starts
        base: list[float] = []

        def one_step():
            t = time.perf_counter()
            next(gen)
            base.append(time.perf_counter() - t)

        stamps = engine_run(model, data, tmp / f"out{r}", args.steps, args.resolution, args.batch, args.family,
                            between=one_step)
        eng = [b - a for a, b in zip(stamps, stamps[1:])]  # eng[k]: the step between events k and k + 1
        b_k, e_k = base[1 + args.warmup:], eng[args.warmup:]
        n = min(len(b_k), len(e_k))
        b_k, e_k = b_k[:n], e_k[:n]
        ratios = [e / b for e, b in zip(e_k, b_k)]
        pairs += ratios
        all_b += b_k
        all_e += e_k
        print(f"round {r + 1}: baseline {statistics.median(b_k) * 1000:.1f} ms/step   engine "
              f"{statistics.median(e_k) * 1000:.1f} ms/step   median of {n} paired ratios {statistics.median(ratios):.3f}")
    q = statistics.quantiles(pairs, n=4)
    b, e = statistics.median(all_b), statistics.median(all_e)
    print(f"interleaved: baseline {b * 1000:.1f} ms/step, engine {e * 1000:.1f} ms/step (medians); "
          f"engine/baseline per step: median {statistics.median(pairs):.3f} (quartiles {q[0]:.3f}–{q[2]:.3f}, "
          f"{len(pairs)} pairs), ratio of medians {e / b:.3f} (target ≤ 1.02)")
    return 0


def pieces(args, model: Path, data: Path, tmp: Path) -> int:
    """Where a step's time goes, engine and baseline side by side (medians, ms): the backward
    pass, the optimizer update (clip, step, zero_grad; the engine's non-finite guard and
    stats included) and the rest (batch, forward, loss, the loop). Runs one after the other:
    compare the pieces, not the totals, on a noisy machine."""
    import torch

    from loratui.engine.training import step as st

    eng: dict[str, list[float]] = {"loss": [], "add": [], "apply": []}
    saved = {n: getattr(c, n) for c, n in ((st.Objective, "loss"), (st.Accumulator, "add"), (st.OptimizerStep, "apply"))}

    def timed(name):
        fn = saved[name]

        def wrapper(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            eng[name].append(time.perf_counter() - t)
            return out
        return wrapper

    st.Objective.loss, st.Accumulator.add, st.OptimizerStep.apply = timed("loss"), timed("add"), timed("apply")
    try:
        stamps = engine_run(model, data, tmp / "pieces", args.steps, args.resolution, args.batch, args.family)
    finally:
        st.Objective.loss, st.Accumulator.add, st.OptimizerStep.apply = saved["loss"], saved["add"], saved["apply"]
    w = args.warmup
    e_step = per_step(stamps, w)
    e_bwd = statistics.median(a - b for a, b in zip(eng["add"][w:], eng["loss"][w:]))
    e_upd = statistics.median(eng["apply"][w:])

    base: dict[str, list[float]] = {"bwd": [], "upd": []}
    plain = globals()["_update"]

    def timed_update(loss, params, opt) -> float:
        t0 = time.perf_counter()
        loss.backward()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        t2 = time.perf_counter()
        base["bwd"].append(t1 - t0)
        base["upd"].append(t2 - t1)
        return t2

    globals()["_update"] = timed_update
    try:
        run = baseline_run if args.family == "sd1" else flow_baseline_run
        b_stamps = run(model, data, args.steps, args.resolution, args.batch)
    finally:
        globals()["_update"] = plain
    b_step = per_step(b_stamps, w)
    b_bwd, b_upd = statistics.median(base["bwd"][w:]), statistics.median(base["upd"][w:])
    print(f"{'median ms/step':<44}{'engine':>8}{'baseline':>10}")
    for label, e, b in (("batch, forward, loss, the loop (the rest)", e_step - e_bwd - e_upd, b_step - b_bwd - b_upd),
                        ("backward", e_bwd, b_bwd), ("optimizer update (clip, step, zero_grad)", e_upd, b_upd),
                        ("step", e_step, b_step)):
        print(f"{label:<44}{e * 1000:>8.2f}{b * 1000:>10.2f}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--mode", choices=("interleaved", "rounds", "pieces"), default="interleaved",
                    help="interleaved (default): one baseline step inside each engine step's event, so both "
                         "see the machine as it is at that moment, ratios taken step by step; rounds: whole "
                         "runs one after the other; pieces: where a step's time goes, engine and baseline")
    ap.add_argument("--family", choices=("sd1", "flux"), default="sd1",
                    help="sd1: a U-Net with LoRA on it and its text encoder; flux: a flow transformer")
    args = ap.parse_args()

    import torch

    from loratui.engine import quiet_libraries
    from loratui.engine.synthetic import write_synthetic_dataset
    from loratui.engine.tiny import save_tiny_pipeline

    quiet_libraries()
    tmp = Path(tempfile.mkdtemp(prefix="loratui-bench-"))
    model = save_tiny_pipeline(tmp / "model", args.family)
    data = write_synthetic_dataset(tmp / "images", {"1_toy": 16}, size=(args.resolution, args.resolution))
    shape = "SD1-shaped model" if args.family == "sd1" else f"FLUX.1-shaped transformer, T5 {FLOW_T5_TOKENS} tokens"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu, "
          f"tiny {shape}, {args.resolution}px, batch {args.batch}, rank 8, {args.steps} steps × {args.rounds} rounds")
    if args.mode == "interleaved":
        return interleaved(args, model, data, tmp)
    if args.mode == "pieces":
        return pieces(args, model, data, tmp)
    baseline = baseline_run if args.family == "sd1" else flow_baseline_run
    eng, base = [], []
    for r in range(args.rounds):
        b = per_step(baseline(model, data, args.steps, args.resolution, args.batch), args.warmup)
        e = per_step(engine_run(model, data, tmp / f"out{r}", args.steps, args.resolution, args.batch, args.family),
                     args.warmup)
        base.append(b)
        eng.append(e)
        print(f"round {r + 1}: baseline {b * 1000:.1f} ms/step   engine {e * 1000:.1f} ms/step   ratio {e / b:.3f}")
    b, e = statistics.median(base), statistics.median(eng)
    print(f"median: baseline {b * 1000:.1f} ms/step, engine {e * 1000:.1f} ms/step, ratio engine/baseline = {e / b:.3f} (target ≤ 1.02)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
