"""The GPU fast path, proven on the CPU: no host-device synchronisation in a
steady-state step, a non-finite step skipped on the device, the optimizer and
copy choices (engine/training/fastpath.py, step.py)."""

from __future__ import annotations

import collections
import copy
import math

import pytest
import torch

from loratui.engine.events import Control, Finished, StepEvent
from loratui.engine.train import run_training
from loratui.engine.training import fastpath as fp
from tiny_runs import tiny_profile

# Tensor methods that make the host wait for the device when called on a CUDA tensor.
SYNCING = ("item", "__bool__", "__float__", "__int__", "cpu", "numpy", "tolist")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from loratui.engine.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("fastpath") / "images", {"2_toy": 4}, size=(64, 64))


def count_host_reads(monkeypatch, window: range):
    """Count the SYNCING calls made while the run is between the StepEvents of
    ``window`` (steady state: past the first steps, before the last). Tensors a
    torch optimizer keeps on the host on CUDA too (its non-capturable ``step``
    counters) are left out: reading them never waits for the GPU."""
    from loratui.engine.training.step import OptimizerStep

    state = {"on": False, "host": set()}
    counts = collections.Counter()
    real_apply = OptimizerStep.apply

    def apply(self, *a, **k):
        out = real_apply(self, *a, **k)
        inner = fp.inner_optimizer(self.optimizer)
        state["host"] = {id(s["step"]) for s in inner.state.values() if "step" in s and s["step"].device.type == "cpu"
                         and not (inner.defaults.get("fused") or inner.defaults.get("capturable"))}
        return out

    monkeypatch.setattr(OptimizerStep, "apply", apply)
    for name in SYNCING:
        real = getattr(torch.Tensor, name)

        def f(self, *a, _real=real, _name=name, **k):
            if state["on"] and id(self) not in state["host"]:
                counts[_name] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, f)

    def on_event(ev):
        if isinstance(ev, StepEvent):
            state["on"] = ev.step in window

    return counts, on_event


@pytest.mark.parametrize("optimizer_args", ["", "fused=True"], ids=["foreach", "fused"])
def test_steady_state_steps_read_nothing_from_the_device_but_the_last_steps_numbers(
        optimizer_args, monkeypatch, tiny_sd1_dir, data, tmp_path):
    monkeypatch.setattr(fp, "HOST_DECIDES", ())  # the CUDA way on this CPU: nothing decided on the host
    counts, on_event = count_host_reads(monkeypatch, range(2, 7))
    profile = tiny_profile(tiny_sd1_dir, data, tmp_path / "out", optimization__max_train_steps=8,
                           optimization__max_train_epochs=10, output__save_every_n_epochs=0,
                           optimization__optimizer_args=optimizer_args)
    events = []
    result = run_training(profile, lambda ev: (events.append(ev), on_event(ev)), Control())
    assert isinstance(result, Finished) and result.steps == 8, result
    # steps 3..7 ran in the window (its events arrive one step late); each read the numbers of the step before,
    # through one host copy, and nothing else
    assert dict(counts) == {"tolist": 5}, counts
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [e.step for e in steps] == list(range(1, 9))
    assert all(math.isfinite(e.loss) and e.loss > 0 for e in steps)


def test_a_flux_step_with_cached_text_outputs_reads_nothing_either(monkeypatch, tiny_flux_dir, data, tmp_path):
    """The cached T5/CLIP outputs come to the device like the latents: pinned, without
    blocking (a plain .to from pageable memory waits for the GPU's queue), their layout read once."""
    monkeypatch.setattr(fp, "HOST_DECIDES", ())
    counts, on_event = count_host_reads(monkeypatch, range(2, 7))
    copies = collections.Counter()
    real_to_device = fp.to_device
    monkeypatch.setattr(fp, "to_device", lambda t, *a, **k: (copies.update([tuple(t.shape[1:])]), real_to_device(t, *a, **k))[1])
    profile = tiny_profile(tiny_flux_dir, data, tmp_path / "out", optimization__max_train_steps=8,
                           optimization__max_train_epochs=10, output__save_every_n_epochs=0,
                           network__train_text_encoder=False, dataset__cache_text_encoder_outputs="memory",
                           model__t5xxl_max_token_length=16)
    result = run_training(profile, on_event, Control())
    assert isinstance(result, Finished) and result.steps == 8, result
    assert dict(counts) == {"tolist": 5}, counts
    # each of the 8 steps: the latents, the T5 states (16 tokens) and CLIP's pooled output (FLUX's encode_text)
    assert len(copies) == 3 and set(copies.values()) == {8} and any(s[:1] == (16,) and len(s) == 2 for s in copies), copies


def _model_and_optimizer(kind: str):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    params = list(model.parameters())
    opt = {"fused": lambda: torch.optim.AdamW(params, lr=0.1, fused=True),
           "foreach": lambda: torch.optim.AdamW(params, lr=0.1, foreach=True),
           "sgd": lambda: torch.optim.SGD(params, lr=0.1, momentum=0.9)}[kind]()
    return model, params, opt


def _backward(model, scale=1.0):
    loss = model(torch.ones(2, 4)).pow(2).mean() * scale
    loss.backward()
    return loss


def _snapshot(params, opt):
    state = [t.clone() for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    return [p.detach().clone() for p in params], state


@pytest.mark.parametrize("on_host", [False, None])  # False: the CUDA way (put back on the device); None: the CPU's
@pytest.mark.parametrize("kind", ["fused", "foreach", "sgd"])
def test_a_non_finite_step_changes_neither_weights_nor_optimizer_state(kind, on_host):
    model, params, opt = _model_and_optimizer(kind)
    for _ in range(2):  # state exists: the steady state
        _backward(model)
        fp.guarded_step(opt, fp.total_norm([p.grad for p in params]), on_host)
        opt.zero_grad()
    w0, s0 = _snapshot(params, opt)
    loss = _backward(model, float("nan"))
    grads = [p.grad for p in params]
    fp.poison_if_not_finite(grads, loss.detach(), on_host)
    norm = fp.total_norm(grads)
    assert not torch.isfinite(norm)
    fp.guarded_step(opt, norm, on_host)
    w1, s1 = _snapshot(params, opt)
    assert all(torch.equal(a, b) for a, b in zip(w0, w1))
    if kind != "foreach" or on_host is None:  # foreach AdamW counts steps on the host (left as they are: no sync)
        assert len(s0) == len(s1) and all(torch.equal(a, b) for a, b in zip(s0, s1))
    # and a finite one is applied exactly as a plain step would
    opt.zero_grad()
    ref_model, ref_params, ref_opt = _model_and_optimizer(kind)
    ref_model.load_state_dict(model.state_dict())
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # not sharing the state tensors
    _backward(model)
    _backward(ref_model)
    fp.poison_if_not_finite([p.grad for p in params], torch.tensor(1.0), on_host)
    fp.guarded_step(opt, fp.total_norm([p.grad for p in params]), on_host)
    ref_opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, ref_params))
    assert not all(torch.equal(a, b) for a, b in zip(params, w0))


def test_the_first_step_without_optimizer_state_is_decided_on_the_host():
    model, params, opt = _model_and_optimizer("sgd")
    _backward(model, float("inf"))
    w0 = [p.detach().clone() for p in params]
    fp.guarded_step(opt, fp.total_norm([p.grad for p in params]))
    assert all(torch.equal(a, b) for a, b in zip(w0, params)) and not opt.state


@pytest.mark.parametrize("on_host", [False, None])  # False: the CUDA way (no read of the loss); None: the CPU's
def test_a_finite_loss_leaves_the_gradients_bit_for_bit(on_host):
    g = torch.randn(5, 3)
    before = g.clone()
    fp.poison_if_not_finite([g], torch.tensor(0.25), on_host)
    assert torch.equal(g, before)
    fp.poison_if_not_finite([g], torch.tensor(float("nan")), on_host)
    assert not torch.isfinite(g).any()


def test_pending_stats_read_the_steps_numbers():
    p = fp.PendingStats.record(3, 1, torch.tensor(0.5), torch.tensor(float("inf")), 1e-4)
    assert p.read() == (0.5, math.inf) and (p.step, p.epoch, p.lr) == (3, 1, 1e-4)
    assert fp.PendingStats.record(1, 1, torch.tensor(0.5), None, 0.0).read() == (0.5, 0.0)


def test_adamw_is_fused_on_cuda_and_foreach_elsewhere(monkeypatch):
    from loratui.engine.registries import OPTIMIZERS

    p = torch.nn.Parameter(torch.zeros(3))
    opt = OPTIMIZERS["AdamW"].build([{"params": [p]}], 1e-3, {})
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    made = {}
    monkeypatch.setattr(torch.optim, "AdamW", lambda groups, **kw: (made.clear(), made.update(kw)))
    OPTIMIZERS["AdamW"].build([{"params": [p]}], 1e-3, {})
    assert made["fused"] is True and "foreach" not in made
    OPTIMIZERS["AdamW"].build([{"params": [p]}], 1e-3, {"foreach": False})
    assert made["foreach"] is False and "fused" not in made  # the user's choice stays


def test_batches_are_copied_pinned_and_without_blocking_on_cuda(monkeypatch):
    calls = []
    t = torch.zeros(2, 4, dtype=torch.float32)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pin") or self)
    real_to = torch.Tensor.to

    def to(self, *a, **k):
        calls.append(("to", str(a[0]) if a else k.get("device"), k.get("non_blocking", False), k.get("dtype")))
        return real_to(self, "cpu", dtype=k.get("dtype"))

    monkeypatch.setattr(torch.Tensor, "to", to)
    out = fp.to_device(t, "cuda", torch.float16)
    assert out.dtype == torch.float16
    assert calls[-2:] == ["pin", ("to", "cuda", True, torch.float16)]
    calls.clear()
    fp.to_device(t, "cpu")
    assert "pin" not in calls


def test_the_unet_attention_runs_through_sdpa(tiny_sd1_dir):
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    unet = UNet2DConditionModel.from_pretrained(tiny_sd1_dir, subfolder="unet")
    assert fp.attention_processors(unet) == {"AttnProcessor2_0"}
    unet.set_attn_processor(AttnProcessor())  # the math without SDPA: replaced
    assert fp.attention_processors(unet) == {"AttnProcessor2_0"}


# --------------------------------------------------------------------------- torch.compile


def test_batch_shapes_are_the_buckets_and_their_batch_sizes():
    from types import SimpleNamespace

    from loratui.engine.training.compile import batch_shapes

    items = [SimpleNamespace(bucket=(512, 768))] * 5 + [SimpleNamespace(bucket=(640, 640))] * 2
    source = SimpleNamespace(items=items, epoch=lambda e: [[0, 1], [2, 3], [4], [5, 6]])
    assert batch_shapes(source) == [(2, 96, 64), (1, 96, 64), (2, 80, 80)]


def test_a_compiled_unet_trains_exactly_as_the_eager_one(tiny_sd1_dir, data, tmp_path):
    """torch.compile with the eager backend (inductor needs minutes on this CPU): the
    COMPILING phase comes before the first step, the warm-up changes nothing."""
    from safetensors.torch import load_file

    from loratui.engine.events import LogEvent, PhaseChanged, WarningEvent

    results = {}
    for on in (False, True):
        events = []
        profile = tiny_profile(tiny_sd1_dir, data, tmp_path / f"out{on}", optimization__max_train_steps=2,
                               optimization__torch_compile=on, optimization__dynamo_backend="eager")
        result = run_training(profile, events.append, Control())
        assert isinstance(result, Finished), result
        results[on] = load_file(result.path)
        phases = [e.phase for e in events if isinstance(e, PhaseChanged)]
        assert ("compiling" in phases) is on
        if on:
            assert phases.index("compiling") < phases.index("training")
            logs = [e.message for e in events if isinstance(e, LogEvent)]
            assert any(m.startswith("torch.compile (eager, one static graph per shape): 1 shape(s) [2×64×64]")
                       for m in logs), logs
            assert not [e for e in events if isinstance(e, WarningEvent) and "recompiles" in e.message]
    assert results[True].keys() == results[False].keys()
    assert all(torch.equal(results[True][k], results[False][k]) for k in results[True])


def test_torch_compile_stands_aside_for_block_swap_on_a_gpu():
    """Block swap changes the weights' tensors every step: a compiled graph would recompile
    for each; the run trains uncompiled and says so."""
    from types import SimpleNamespace

    from loratui.engine.schema import profile_from_dict
    from loratui.engine.training.compile import compile_denoiser

    warned = []
    profile = profile_from_dict({"optimization": {"torch_compile": True, "blocks_to_swap": 8}})
    ctx = SimpleNamespace(profile=profile, warn=warned.append)
    objective = SimpleNamespace(device="cuda", comp=None)  # nothing of it is touched
    assert compile_denoiser(ctx, objective, source=None, params=[]) is None
    assert warned and warned[0].startswith("optimization.torch_compile: off for this run: block swap"), warned


def test_torch_compile_stands_aside_for_an_fp8_base_on_a_gpu_before_ada(monkeypatch):
    """Triton has no float8 type below compute capability 8.9 (an A100 is 8.0)."""
    from types import SimpleNamespace

    from loratui.engine.schema import profile_from_dict
    from loratui.engine.training.compile import compile_denoiser

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    warned = []
    profile = profile_from_dict({"model": {"fp8_base": True}, "optimization": {"torch_compile": True}})
    ctx = SimpleNamespace(profile=profile, warn=warned.append)
    assert compile_denoiser(ctx, SimpleNamespace(device="cuda", comp=None), source=None, params=[]) is None
    assert warned and "compute capability 8.0" in warned[0] and "fp8_base" in warned[0], warned


def _grads_after(backward_and_clip):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    loss = model(torch.full((2, 4), 3.0)).pow(2).mean()
    norm = backward_and_clip(loss, list(model.parameters()), opt)
    return norm, [p.grad.clone() for p in model.parameters()]


def test_the_engines_backward_and_clipping_do_what_accelerates_do():
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)

    def theirs(loss, params, opt):
        acc.backward(loss)
        return acc.clip_grad_norm_(params, 0.5)

    def ours(loss, params, opt):
        fp.backward(acc, loss)
        return fp.clip_grad_norm(acc, params, 0.5)

    (n1, g1), (n2, g2) = _grads_after(theirs), _grads_after(ours)
    assert n1.item() > 0.5  # clipping did something
    assert torch.allclose(n1, n2) and all(torch.allclose(a, b) for a, b in zip(g1, g2))


def test_with_a_grad_scaler_the_gradients_are_scaled_then_unscaled_before_the_norm():
    class Amp:  # the part of accelerate's Accelerator an fp16 run uses
        def __init__(self):
            self.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
            self.opt = None

        def unscale_gradients(self):
            self.scaler.unscale_(self.opt)

    amp = Amp()

    def scaled(loss, params, opt):
        amp.opt = opt
        fp.backward(amp, loss)
        scaled.raw = [p.grad.clone() for p in params]
        return fp.clip_grad_norm(amp, params, 1e9)  # no clipping: the unscaled gradients

    def plain(loss, params, opt):
        loss.backward()
        return torch.nn.utils.clip_grad_norm_(params, 1e9)

    (n1, g1), (n2, g2) = _grads_after(scaled), _grads_after(plain)
    assert all(torch.allclose(r, 1024.0 * g) for r, g in zip(scaled.raw, g2))
    assert torch.allclose(n1, n2) and all(torch.allclose(a, b) for a, b in zip(g1, g2))


def test_the_total_norm_without_torch_2_6s_get_total_norm(monkeypatch):
    grads = [torch.randn(5, 3), torch.randn(7)]
    expected = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
    assert torch.allclose(fp.total_norm(grads), expected)
    monkeypatch.delattr(torch.nn.utils, "get_total_norm")  # torch 2.4 / 2.5 (pyproject allows them)
    assert torch.allclose(fp.total_norm(grads), expected)


def test_masked_loss_masks_come_to_the_device_like_the_latents(monkeypatch, tiny_sd1_dir, tmp_path):
    """Each step's masks go through to_device (pinned, non-blocking on CUDA), and a masked
    step reads nothing more from the device than a plain one."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "img" / "2_toy"
    folder.mkdir(parents=True)
    for i in range(4):
        arr = np.random.default_rng(i).integers(0, 255, (64, 64, 4), dtype=np.uint8)
        arr[:, 32:, 3] = 0  # the right half masked out
        Image.fromarray(arr, "RGBA").save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text("toy")
    monkeypatch.setattr(fp, "HOST_DECIDES", ())
    counts, on_event = count_host_reads(monkeypatch, range(2, 7))
    copies = collections.Counter()
    real_to_device = fp.to_device
    monkeypatch.setattr(fp, "to_device", lambda t, *a, **k: (copies.update([tuple(t.shape[1:])]), real_to_device(t, *a, **k))[1])
    profile = tiny_profile(tiny_sd1_dir, tmp_path / "img", tmp_path / "out", optimization__max_train_steps=8,
                           optimization__max_train_epochs=10, output__save_every_n_epochs=0,
                           optimization__masked_loss=True, dataset__alpha_mask=True)
    result = run_training(profile, on_event, Control())
    assert isinstance(result, Finished) and result.steps == 8, result
    assert dict(counts) == {"tolist": 5}, counts
    assert copies[(1, 64, 64)] == 8, copies  # one (N, 1, H, W) mask batch per step


def test_a_skipped_step_leaves_prodigys_own_estimates_alone(monkeypatch):
    """Prodigy keeps its step-size estimate in its param groups (d, d_numerator), which the
    device-side undo does not put back: a non-finite step is decided on the host for it."""
    from types import SimpleNamespace

    from loratui.engine.schema import profile_from_dict
    from loratui.engine.training.optim import make_optimizer
    from loratui.engine.training.step import Accumulator, OptimizerStep

    monkeypatch.setattr(fp, "HOST_DECIDES", ())  # the CUDA way on this CPU
    profile = profile_from_dict({"optimization": {"optimizer": "Prodigy", "learning_rate": 1.0, "max_grad_norm": 1.0,
                                                  "max_bad_steps": 3}})
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    params = list(model.parameters())
    opt = make_optimizer(profile, [{"params": params}])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    stepper = OptimizerStep(profile, opt, sched, SimpleNamespace(scaler=None), params, "hint")

    def step(k, scale):
        loss = model(torch.ones(2, 4)).pow(2).mean() * scale
        loss.backward()
        return stepper.apply(Accumulator(loss=loss.detach()), k, 1, "")

    for k in range(2):
        step(k, 1.0)
    before = {k: v for k, v in opt.param_groups[0].items() if isinstance(v, float)}
    (bad,) = step(2, float("nan"))
    assert bad.loss is None and "loss became nan" in bad.why
    after = {k: v for k, v in opt.param_groups[0].items() if isinstance(v, float)}
    assert after == before and math.isfinite(after["d_numerator"]) and math.isfinite(after["d"]), (before, after)
