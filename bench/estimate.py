"""Estimated vs measured memory, for what this machine can run.

    python bench/estimate.py          # CPU: tiny SD1 / SDXL (saved activations, optimizer state), the
                                      # time a first full-size SD1.5 / SDXL / SD3.5 / Flux count takes (target < 1 s for
                                      # SDXL) next to the plain count in the same process (every block run,
                                      # LoRA everywhere: the same figures); with CUDA also full-size runs

On a CUDA machine: torch.cuda.max_memory_allocated of one training step
(random weights, bf16, LoRA rank 16, AdamW, cached latents: no VAE on the GPU)
for full-size SD1.5 at 512² batch 1 and 4 and SDXL at 1024² batch 1, next to
the estimate's allocated bytes (its total less the CUDA context and the
allocator slack, which max_memory_allocated does not see).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

GB = 1024**3


def _profile(family: str, res: int, batch: int, gc: bool, precision: str = "bf16", train_te: bool = False):
    from loratui.engine.schema import Profile

    return Profile.model_validate({
        "model": {"base_model": "/nonexistent", "family": family},
        "dataset": {"resolution": res, "cache_latents": "memory"},
        "network": {"network_dim": 16, "network_alpha": 16.0, "train_text_encoder": train_te},
        "optimization": {"train_batch_size": batch, "gradient_checkpointing": gc, "mixed_precision": precision,
                         "optimizer": "AdamW"},
        "output": {"output_dir": tempfile.gettempdir(), "output_name": "bench"},
    })


def _estimate(profile, device=None):
    from loratui.engine.estimate import figures, run_shape
    from loratui.engine.estimate.cache import counted_for
    from loratui.engine.plan import plan_steps

    info = SimpleNamespace(family=profile.model.family, kind="config", path=None, prediction_type=None, size_bytes=None)
    shape = run_shape(profile, info, device or SimpleNamespace(bf16=True))
    t = time.perf_counter()
    counted = counted_for(shape)
    took = time.perf_counter() - t
    plan = plan_steps(1, batch_size=profile.optimization.train_batch_size, grad_accum=1, epochs=1)
    return figures(profile, device, shape, counted, info, plan, 0), took


def cpu_tiny() -> None:
    import torch

    from loratui.engine.estimate.meta import training_forward
    from loratui.engine.estimate.model import RunShape, attach_lora, count_run
    from loratui.engine.families import get_family
    from loratui.engine.tiny import save_tiny_pipeline

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_estimate import _measure_saved, _real_model

    print("tiny models, CPU fp32, 64², batch 2 (Flux 1): saved activations, estimated vs measured (saved_tensors_hooks)")
    for family in ("sd1", "sdxl", "flux"):
        folder = save_tiny_pipeline(Path(tempfile.mkdtemp()) / "m", family)
        batch = 1 if family == "flux" else 2  # Flux's rotary tables are per resolution, not per sample
        for gc in (False, True):
            shape = RunShape(family, str(folder), 64, 64, 1, "fp32", False, 4, 4.0, None, None, True, not gc,
                             text_tokens=24)
            c = count_run(shape)
            unet, tes = _real_model(folder, family)
            net = attach_lora(shape, unet, tes)
            if gc:
                net.enable_gradient_checkpointing()
            measured = _measure_saved(lambda: training_forward(
                get_family(family), unet, tes, batch=batch, height=64, width=64, device="cpu", dtype=torch.float32,
                train_text_encoder=not gc, text_tokens=24), [unet, *tes])
            est = batch * (c.outside + c.unit_inputs if gc else c.saved)
            print(f"  {family:<5} checkpointing {'on ' if gc else 'off'}  estimated {est:>10,} B  measured {measured:>10,} B"
                  f"  {'equal' if est == measured else f'{(est - measured) / measured:+.1%}'}")


def _plain_count(family: str, res: int, train_te: bool):
    """The count with every block run and the LoRA injected everywhere (no replay)."""
    import torch

    from loratui.engine.estimate import run_shape
    from loratui.engine.estimate.meta import count_forward
    from loratui.engine.estimate.model import attach_lora, build_meta, param_table
    from loratui.engine.families import get_family

    profile = _profile(family, res, 1, True, train_te=train_te)
    info = SimpleNamespace(family=family, kind="config", path=None, prediction_type=None, size_bytes=None)
    shape = run_shape(profile, info, SimpleNamespace(bf16=True))
    t = time.perf_counter()
    unet, tes = build_meta(family, shape.config_dir)
    for m in (unet, *tes):
        m._apply(lambda x: x.to(torch.bfloat16) if x.is_floating_point() else x)
    network = attach_lora(shape, unet, tes)
    c = count_forward(get_family(family), unet, tes, replay=False, amp_dtype=torch.bfloat16, batch=1, height=res,
                      width=res, device="meta", dtype=torch.bfloat16, train_text_encoder=train_te,
                      text_tokens=shape.text_tokens, flow_prediction=shape.flow_prediction)
    c.params, c.lora_shapes = param_table(unet, tes, network, 2)
    return c, time.perf_counter() - t


def cpu_full() -> None:
    from loratui.engine.estimate import run_shape
    from loratui.engine.estimate.cache import counted_for

    print("full-size counts on the meta device, bf16, gradient checkpointing, rank 16 (first time; then cached):")
    for family, res in (("sd1", 512), ("sdxl", 1024), ("sd3", 1024), ("flux", 1024)):
        for train_te in (False, True) if family in ("sd1", "sdxl") else (False,):
            profile = _profile(family, res, 1, True, train_te=train_te)
            est, took = _estimate(profile)
            info = SimpleNamespace(family=family, kind="config", path=None, prediction_type=None, size_bytes=None)
            fast = counted_for(run_shape(profile, info, SimpleNamespace(bf16=True)))  # the cached count
            plain, plain_took = _plain_count(family, res, train_te)
            same = all(getattr(fast, f) == getattr(plain, f) for f in (
                "saved", "outside", "unit_inputs", "max_unit", "largest", "flops_forward", "flops_units", "units",
                "params")) and sorted(fast.lora_shapes) == sorted(plain.lora_shapes)
            print(f"  {family:<5} {res}² batch 1, text encoder {'trained' if train_te else 'frozen '}: first count "
                  f"{took:.2f} s ({fast.replayed} blocks replayed), plain count {plain_took:.2f} s "
                  f"(×{took / plain_took:.2f}), figures {'equal' if same else 'DIFFER'}; ~{est.vram.total / GB:.1f} GB,"
                  f" {est.flops_per_step / 1e12:.1f} TFLOP per step")


def cuda_step(family: str, res: int, batch: int, gc: bool) -> int:
    """max_memory_allocated of one LoRA training step with random weights."""
    import torch

    from loratui.engine.estimate.model import build_meta
    from loratui.engine.families import get_family
    from loratui.engine.lora import LoRANetwork

    fam = get_family(family)
    torch.cuda.empty_cache()
    unet, tes = build_meta(family, fam.config_dir("epsilon"))
    unet = unet.to_empty(device="cuda").to(torch.bfloat16)
    tes = [te.to_empty(device="cuda").to(torch.bfloat16) for te in tes]
    for m in (unet, *tes):
        for p in m.parameters():
            torch.nn.init.normal_(p, std=0.02)
    net = LoRANetwork.create(unet, tes, family, rank=16, alpha=16, train_unet=True, train_text_encoder=False)
    for m in net.modules:
        m.layer.to("cuda")
    if gc:
        net.enable_gradient_checkpointing()
    params = [q for m in net.modules for q in (m.down.weight, m.up.weight)]
    opt = torch.optim.AdamW(params, lr=1e-4)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()  # from here: the weights as they stay, then the step
    lat = torch.randn(batch, 4, res // 8, res // 8, device="cuda")
    ids = [torch.randint(0, 1000, (batch, 77), device="cuda") for _ in tes]
    with torch.no_grad():
        hidden, pooled = fam.encode_text(tes, ids, 1, "cuda")
    crops = [((res, res), (0, 0), (res, res))] * batch
    t = torch.zeros(batch, dtype=torch.long, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        pred = fam.predict(unet, lat, t, hidden, pooled, crops, "cuda", torch.bfloat16)
    loss = torch.nn.functional.mse_loss(pred.float(), lat.float())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del unet, tes, net, opt, pred, loss
    torch.cuda.empty_cache()
    return peak


def cuda_full() -> None:
    import torch

    from loratui.engine.estimate.devices import local_device
    from loratui.engine.estimate.resources import allocated

    dev = local_device()
    print(f"CUDA: {torch.cuda.get_device_name()} — max_memory_allocated of one step vs the estimate's allocated bytes")
    for family, res, batch, gc in (("sd1", 512, 1, False), ("sd1", 512, 1, True), ("sd1", 512, 4, False),
                                   ("sd1", 512, 4, True), ("sdxl", 1024, 1, True), ("sdxl", 1024, 1, False)):
        est, _ = _estimate(_profile(family, res, batch, gc), dev)
        want = allocated(est.vram)
        try:
            got = cuda_step(family, res, batch, gc)
        except torch.cuda.OutOfMemoryError:
            print(f"  {family} {res}² batch {batch} gc {gc}: out of memory (estimate {want / GB:.2f} GB)")
            continue
        print(f"  {family:<5} {res}² batch {batch} checkpointing {'on ' if gc else 'off'}: estimated {want / GB:6.2f} GB"
              f"  measured {got / GB:6.2f} GB  {(want - got) / got:+.1%}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args()
    import os

    os.environ.setdefault("LORATUI_CACHE_DIR", tempfile.mkdtemp(prefix="loratui-est-"))
    cpu_tiny()
    cpu_full()
    import torch

    if torch.cuda.is_available():
        cuda_full()
    else:
        print("no CUDA here: the full-size GPU comparison runs on a CUDA machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
