"""The estimate (engine.estimate) against what really happens on this CPU.

Activations: the bytes the meta-device count says autograd saves for a tiny
SD1 / SDXL model equal the bytes saved_tensors_hooks see in a real CPU
forward of that model with its LoRA, with and without gradient
checkpointing, at batch 2 (the count is made at batch 1). Optimizer state:
the count equals a real optimizer's state after one step.
"""

from __future__ import annotations

import math

import pytest


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LORATUI_CACHE_DIR", str(tmp_path / "cache"))


def _real_model(folder, family):
    import diffusers
    import torch
    import transformers

    from loratui.engine.families import get_family

    fam = get_family(family)
    unet = getattr(diffusers, fam.denoiser_class).from_pretrained(folder / fam.denoiser_subfolder)
    tes = [getattr(transformers, s.model_class).from_pretrained(folder / s.subfolder) for s in fam.text_encoders]
    for m in (unet, *tes):
        m.to(torch.float32)
    return unet, tes


def _measure_saved(fn, models) -> int:
    """Bytes of the distinct storages autograd saves while ``fn`` runs (parameters left out)."""
    import torch

    params = {t.untyped_storage().data_ptr() for m in models for t in [*m.parameters(), *m.buffers()]}
    seen: dict[int, int] = {}
    keep = []

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params and st.data_ptr() not in seen:
            seen[st.data_ptr()] = st.nbytes()
            keep.append(st)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    loss.backward()  # the forward is a real training forward: its backward runs
    return sum(seen.values())


def _shape(folder, family, **over):
    from loratui.engine.estimate.model import RunShape

    kw = dict(family=family, config_dir=str(folder), height=64, width=64, batch=1, weight_dtype="fp32", amp=False,
              rank=4, alpha=4.0, conv_rank=None, conv_alpha=None, train_unet=True, train_text_encoder=True)
    kw.update(over)
    return RunShape(**kw)


@pytest.fixture(scope="module")
def tiny_flow_dirs(tmp_path_factory):
    from loratui.engine.tiny import save_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-flow")
    return {f: save_tiny_pipeline(root / f, f) for f in ("flux", "sd3")}


def _folder(family, tiny_sd1_dir, tiny_sdxl_dir, tiny_flow_dirs):
    return {"sd1": tiny_sd1_dir, "sdxl": tiny_sdxl_dir}.get(family) or tiny_flow_dirs[family]


T5_TOKENS = 24  # the tiny flow models' T5 captions (the real ones: 256 / 512)


# (not SD3: the CPU's flash-attention kernel copies the joint attention's concatenated q and k
# into its own layout and saves the copies; the CUDA kernels, which the count follows, take them as they are)
@pytest.mark.parametrize("family", ["sd1", "sdxl", "flux"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_bytes_equal_a_real_cpu_forward(family, checkpointing, tiny_sd1_dir, tiny_sdxl_dir, tiny_flow_dirs):
    import torch

    from loratui.engine.estimate.meta import training_forward
    from loratui.engine.estimate.model import attach_lora, count_run
    from loratui.engine.families import get_family

    folder = _folder(family, tiny_sd1_dir, tiny_sdxl_dir, tiny_flow_dirs)
    train_te = not checkpointing  # the text encoder's own checkpointing is not counted (tiny at 77 tokens)
    shape = _shape(folder, family, train_text_encoder=train_te, text_tokens=T5_TOKENS)
    counted = count_run(shape)

    unet, tes = _real_model(folder, family)
    network = attach_lora(shape, unet, tes)
    if checkpointing:
        network.enable_gradient_checkpointing()
    torch.manual_seed(0)
    # the count is made at batch 1 and scaled; Flux's rotary tables are per resolution, not per
    # sample (~5 MB of a full-size 1024² run's GBs), so its real forward is compared at batch 1
    batch = 1 if family == "flux" else 2
    measured = _measure_saved(
        lambda: training_forward(get_family(family), unet, tes, batch=batch, height=64, width=64, device="cpu",
                                 dtype=torch.float32, train_text_encoder=train_te, text_tokens=T5_TOKENS),
        [unet, *tes],
    )
    # with checkpointing autograd keeps what is saved outside the blocks and the blocks' inputs
    estimated = (counted.outside + counted.unit_inputs if checkpointing else counted.saved) * batch
    assert measured > 0
    assert estimated == measured
    if checkpointing:
        assert counted.units > 0 and counted.activations(True) < counted.activations(False)


@pytest.mark.parametrize("name", ["AdamW", "Adafactor", "Lion", "Prodigy", "DAdaptAdam"])
def test_optimizer_state_bytes_equal_a_real_optimizer(name, tiny_sd1_dir):
    import torch

    from loratui.engine.estimate.model import attach_lora, count_run
    from loratui.engine.estimate.optimizers import state_bytes
    from loratui.engine.registries import OPTIMIZERS

    shape = _shape(tiny_sd1_dir, "sd1", conv_rank=2, conv_alpha=1.0)  # LoCon: 4-d tensors too
    counted = count_run(shape)
    unet, tes = _real_model(tiny_sd1_dir, "sd1")
    network = attach_lora(shape, unet, tes)
    params = [p for m in network.modules for p in (m.down.weight, m.up.weight)]
    opt = OPTIMIZERS[name].build([{"params": params}], 1e-4 if not OPTIMIZERS[name].adaptive_lr else 1.0, {})
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    real = sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values() if torch.is_tensor(v))
    shapes = [(s, zero) for s, trainable, zero in counted.lora_shapes if trainable]
    assert sorted(s for s, _ in shapes) == sorted(tuple(p.shape) for p in params)
    assert state_bytes(name, shapes) == real


def test_eight_bit_state_uses_32_bit_for_small_tensors():
    from loratui.engine.estimate.optimizers import state_bytes

    assert state_bytes("AdamW8bit", [(4, 320)]) == 2 * 4 * 1280 + 4  # < 4096 values: fp32 moments
    big = 16 * 1280
    assert state_bytes("AdamW8bit", [(16, 1280)]) == 2 * (big + 4 * (big // 256) + 4 * 256) + 4
    assert state_bytes("AdamW8bit", [(16, 1280)]) < state_bytes("AdamW", [(16, 1280)]) / 3


def test_batch_scales_and_checkpointing_lowers_vram(tiny_sd1_dir):
    from loratui.engine.estimate import figures
    from loratui.engine.estimate.devices import find_device
    from loratui.engine.estimate.model import count_run
    from loratui.engine.estimate.fit import apply
    from loratui.engine.plan import plan_steps
    from loratui.engine.schema import Profile

    shape = _shape(tiny_sd1_dir, "sd1")
    c = count_run(shape)
    p = Profile()
    p = apply(p, [("optimization.train_batch_size", 1), ("optimization.gradient_checkpointing", False)])
    plan = plan_steps(40, batch_size=1, grad_accum=1, epochs=1)
    card = find_device("RTX 4090")
    one = figures(p, card, shape, c, None, plan, 10)
    four = figures(apply(p, [("optimization.train_batch_size", 4)]), card, shape, c, None, plan, 10)
    act1 = [v for k, v in one.vram.terms.items() if k.startswith("activations")][0]
    act4 = [v for k, v in four.vram.terms.items() if k.startswith("activations")][0]
    assert act4 == 4 * act1 == 4 * c.saved
    gc = figures(apply(p, [("optimization.gradient_checkpointing", True)]), card, shape, c, None, plan, 10)
    assert gc.vram.total < one.vram.total
    assert gc.seconds > one.seconds  # the recompute costs time
    assert one.vram.fits is True and one.seconds > 0


def test_the_oom_message_quotes_the_estimate(tiny_sd1_dir, synthetic_dataset, tmp_path):
    from loratui.engine.errors import explain_exception
    from loratui.engine.estimate import estimate
    from loratui.engine.estimate.report import size
    from loratui.engine.plan import plan_steps
    from loratui.engine.schema import Profile

    p = Profile.model_validate({
        "model": {"base_model": str(tiny_sd1_dir)},
        "dataset": {"train_data_dir": str(synthetic_dataset), "resolution": 128, "enable_bucket": False},
        "optimization": {"train_batch_size": 2, "mixed_precision": "bf16"},
        "output": {"output_dir": str(tmp_path / "out"), "output_name": "x"},
    })
    failed = explain_exception(RuntimeError("CUDA out of memory. Tried to allocate 20 MiB"), p, where="at step 2 of 8")
    expected = estimate(p, None, plan=plan_steps(1, batch_size=2, grad_accum=1, epochs=1), images=0)
    assert f"Estimated before the run: ~{size(expected.vram.total)} (activations ~" in failed.hint
    assert failed.hint.index("This run:") < failed.hint.index("Estimated before the run")


def _meta_count(folder, shape, *, lazy: bool, replay: bool):
    """A count on freshly built meta models: LoRA injected in full (``lazy`` False) or
    only into the first block of each kind (``engine.estimate.lazy``)."""
    import torch

    from loratui.engine.estimate.lazy import LazyLoRA
    from loratui.engine.estimate.meta import count_forward
    from loratui.engine.estimate.model import attach_lora, build_meta, param_table
    from loratui.engine.families import get_family
    from loratui.engine.lora import ADAPTER_NAME

    unet, tes = build_meta(shape.family, folder)
    deferred = LazyLoRA(shape.train_unet, shape.train_text_encoder) if lazy else None
    network = attach_lora(shape, unet, tes, deferred)
    counted = count_forward(get_family(shape.family), unet, tes, replay=replay, lazy=deferred, batch=1,
                            height=shape.height, width=shape.width, device="meta", dtype=torch.float32,
                            train_text_encoder=shape.train_text_encoder, text_tokens=shape.text_tokens)
    counted.params, counted.lora_shapes = param_table(unet, tes, network, 4, deferred)
    lora_layers = sorted(n for n, _ in unet.named_modules() if n.endswith(f".lora_A.{ADAPTER_NAME}"))
    return counted, deferred, lora_layers


def _figures(c):
    return (c.saved, c.outside, c.unit_inputs, c.max_unit, c.largest, c.flops_forward, c.flops_units, c.flops_text,
            c.units,
            c.params, sorted(c.lora_shapes))


@pytest.mark.parametrize("family", ["sdxl", "flux", "sd3"])
@pytest.mark.parametrize("train_te", [False, True])
def test_replayed_copies_count_as_if_every_block_ran(family, train_te, tiny_sd1_dir, tiny_sdxl_dir, tiny_flow_dirs):
    """The fast count (copies of a block replayed, their LoRA never injected) gives
    the figures of the plain one (every block run, LoRA everywhere)."""
    folder = _folder(family, tiny_sd1_dir, tiny_sdxl_dir, tiny_flow_dirs)
    shape = _shape(folder, family, train_text_encoder=train_te, text_tokens=T5_TOKENS)
    plain, _, all_layers = _meta_count(folder, shape, lazy=False, replay=False)
    fast, deferred, layers = _meta_count(folder, shape, lazy=True, replay=True)
    assert plain.replayed == 0 and fast.replayed > 0
    assert deferred.shapes
    if family == "sdxl":  # the tiny SD3 / Flux have two blocks of a kind: the second one's first inputs differ
        assert len(layers) < len(all_layers)  # some copies never got their LoRA
    assert _figures(fast) == _figures(plain)


def test_a_copy_that_runs_gets_its_lora_first(tiny_sdxl_dir):
    """Nothing replayed: every copy runs, and each gets its deferred LoRA as it starts."""
    shape = _shape(tiny_sdxl_dir, "sdxl", train_text_encoder=False)
    plain, _, all_layers = _meta_count(tiny_sdxl_dir, shape, lazy=False, replay=False)
    ran, deferred, layers = _meta_count(tiny_sdxl_dir, shape, lazy=True, replay=False)
    assert ran.replayed == 0 and not deferred.pending
    assert layers == all_layers
    assert _figures(ran) == _figures(plain)


def test_flux_split_files_are_counted_from_the_transformer_file_header(tiny_flow_dirs, tmp_path, synthetic_dataset):
    """Flux as kohya_ss users have it (transformer file + clip_l, t5xxl, ae; configs only for
    the odd-sized parts): the transformer's shape comes from the file's header, the estimate
    counts it, and fp8 base stores its weights in one byte."""
    import json
    import sys
    from pathlib import Path

    from safetensors import safe_open

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from flow_files import write_flux_split_files
    from tiny_runs import tiny_profile

    from loratui.engine.estimate import estimate
    from loratui.engine.estimate.devices import find_device

    files = write_flux_split_files(tiny_flow_dirs["flux"], tmp_path / "files")
    assert not (Path(files["model_config_dir"]) / "transformer").exists()
    over = {f"model__{k}": v for k, v in files.items() if k != "base_model"}
    profile = tiny_profile(files["base_model"], synthetic_dataset, tmp_path / "out", **over,
                           dataset__cache_latents="memory", optimization__mixed_precision="bf16")
    est = estimate(profile, find_device("RTX 4090"))
    tiny = json.loads((tiny_flow_dirs["flux"] / "transformer" / "config.json").read_text())
    shape = dict(est.shape.denoiser_config)
    assert (shape["num_layers"], shape["num_single_layers"]) == (tiny["num_layers"], tiny["num_single_layers"])
    with safe_open(files["base_model"], "pt") as f:
        n = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert est.counted.params["unet"]["count"] == n  # every transformer weight of the file, none more
    weights = est.vram.terms["transformer weights"]
    assert weights == 2 * n  # bf16
    fp8 = estimate(profile.model_copy(update={"model": profile.model.model_copy(update={"fp8_base": True})}),
                   find_device("RTX 4090"))
    assert fp8.vram.terms["transformer weights"] == n and fp8.vram.total < est.vram.total


@pytest.mark.parametrize("family", ["sd1", "flux"])
def test_the_text_encoders_flops_count_once_frozen_and_not_at_all_when_cached(family, tiny_sd1_dir, tiny_flow_dirs):
    """flops_text is what the text encoders alone cost (FlopCounterMode on them alone); a
    step costs the denoiser's forward and backward plus the text encoders' forward when
    frozen, forward and backward when trained, nothing when their outputs are cached."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from loratui.engine.estimate.model import build_meta
    from loratui.engine.families import get_family

    folder = _folder(family, tiny_sd1_dir, None, tiny_flow_dirs)
    shape = _shape(folder, family, train_text_encoder=False, text_tokens=T5_TOKENS)
    c, _, _ = _meta_count(folder, shape, lazy=False, replay=False)
    fam = get_family(family)
    _, tes = build_meta(family, folder)
    tokens = [77] * (len(tes) - 1) + [T5_TOKENS if fam.flow_matching else 77]
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        for te, n in zip(tes, tokens):
            te(torch.zeros((1, n), dtype=torch.long, device="meta"))
    assert c.flops_text > 0
    # (T5 computes its attention with plain matmuls, which the count's Linear hooks do not see: ~2 % of it)
    assert abs(c.flops_text - fc.get_total_flops()) / fc.get_total_flops() < (0.03 if family == "flux" else 1e-9)
    denoiser = c.flops_forward - c.flops_text
    assert c.step_flops(False, "cached") == 2 * denoiser
    assert c.step_flops(False, "frozen") == 2 * denoiser + c.flops_text
    assert c.step_flops(True, "trained") == 2 * c.flops_forward + c.flops_units
