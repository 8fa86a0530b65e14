"""Faults during a run: NaN/inf loss, CUDA out of memory, a full disk while
saving, a folder that turns read-only.  Each ends in a ``Failed`` event that
says what happened and what to do, keeps every file saved before, leaves no
half-written file, and returns (the process / app stays up)."""

from __future__ import annotations

import gc
import hashlib
import weakref
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loratui.engine.events import CheckpointSaved, Control, Failed, Finished, PhaseChanged, StepEvent, WarningEvent
from loratui.engine.train import run_training
from tiny_runs import tiny_profile


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models train fastest on one thread


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from loratui.engine.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("faults") / "images", {"2_toy": 4}, size=(64, 64))


FAULT_DEFAULTS = {"output__save_every_n_epochs": 0, "output__save_every_n_steps": 1, "output__save_precision": "float"}


def make_profile(model, data, out, **over):
    return tiny_profile(model, data, out, **{**FAULT_DEFAULTS, **over})


def train(profile, **kw):
    events = []
    return run_training(profile, events.append, Control(), **kw), events


def snapshot(folder: Path) -> dict[str, str]:
    """Every file's bytes (the metrics file, appended to by design, left out)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".metrics.jsonl") and p.name != ".loratui.lock"
    }


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".loratui-tmp-")]


def equal(a: Path, b: Path) -> bool:
    sa, sb = load_file(str(a)), load_file(str(b))
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def nan_at(monkeypatch, calls: set[int], value=float("nan")):
    """Make the loss of the given forward passes (1-based) non-finite."""
    real = torch.nn.functional.mse_loss
    n = {"calls": 0}

    def mse(*args, **kwargs):
        n["calls"] += 1
        out = real(*args, **kwargs)
        return out * value if n["calls"] in calls else out

    monkeypatch.setattr(torch.nn.functional, "mse_loss", mse)
    return n


# --------------------------------------------------------------------------- NaN / inf


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_loss_stops_at_once_keeping_the_last_good_lora(value, monkeypatch, tiny_sd1_dir, data, tmp_path):
    out = tmp_path / "out"
    nan_at(monkeypatch, {3}, value)
    result, events = train(make_profile(tiny_sd1_dir, data, out))
    assert isinstance(result, Failed)
    good = out / "tiny-step00000002.safetensors"
    assert result.message.startswith(f"the loss became {value} at step 3 (epoch 1)")
    assert "the run stopped before the LoRA was updated with it" in result.message
    assert f"the last good LoRA is {good}" in result.message and result.last_saved == str(good)
    assert "the learning rate is probably too high: lower optimization.learning_rate 0.001" in result.hint
    assert "optimization.max_bad_steps" in result.hint
    assert [e.step for e in events if isinstance(e, StepEvent)] == [1, 2]
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["tiny-step00000001.safetensors", good.name]
    assert all(torch.isfinite(t).all() for t in load_file(str(good)).values())
    assert not leftovers(out)


def test_max_bad_steps_skips_them_without_updating_the_lora(monkeypatch, tiny_sd1_dir, data, tmp_path):
    out = tmp_path / "out"
    nan_at(monkeypatch, {3, 6})
    result, events = train(make_profile(tiny_sd1_dir, data, out, optimization__max_bad_steps=2))
    assert isinstance(result, Finished) and result.steps == 8, result
    warnings = [e.message for e in events if isinstance(e, WarningEvent)]
    assert ("step 3: the loss became nan; skipped without updating the LoRA "
            "(1 of 2 allowed by optimization.max_bad_steps)") in warnings
    assert any(w.startswith("step 6: the loss became nan; skipped") and "(2 of 2 allowed" in w for w in warnings)
    assert [e.step for e in events if isinstance(e, StepEvent)] == [1, 2, 4, 5, 7, 8]
    step = lambda n: out / f"tiny-step{n:08d}.safetensors"  # noqa: E731
    # a skipped step changes nothing; the steps around it do
    assert equal(step(2), step(3)) and equal(step(5), step(6))
    assert not equal(step(3), step(4)) and not equal(step(1), step(2))


def test_more_bad_steps_than_allowed_stops(monkeypatch, tiny_sd1_dir, data, tmp_path):
    nan_at(monkeypatch, {2, 4})
    result, events = train(make_profile(tiny_sd1_dir, data, tmp_path / "out", optimization__max_bad_steps=1))
    assert isinstance(result, Failed)
    assert result.message.startswith("the loss became nan at step 4 (epoch 1) "
                                     "(2 non-finite steps, more than optimization.max_bad_steps = 1)")
    assert result.last_saved.endswith("tiny-step00000003.safetensors")


def test_non_finite_gradients_are_caught_before_the_update(monkeypatch, tiny_sd1_dir, data, tmp_path):
    """A finite loss whose backward pass overflows: the optimizer never sees it."""
    from diffusers import UNet2DConditionModel

    class NanGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return grad * float("nan")

    real = UNet2DConditionModel.forward
    n = {"calls": 0}

    def forward(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        n["calls"] += 1
        if n["calls"] == 2:
            out.sample = NanGrad.apply(out.sample)
        return out

    monkeypatch.setattr(UNet2DConditionModel, "forward", forward)
    out = tmp_path / "out"
    result, _ = train(make_profile(tiny_sd1_dir, data, out))
    assert isinstance(result, Failed)
    assert result.message.startswith("the gradients became nan at step 2")
    assert result.last_saved == str(out / "tiny-step00000001.safetensors")


def test_weights_that_became_nan_are_never_saved(monkeypatch, tiny_sd1_dir, data, tmp_path):
    """If an update poisons the weights anyway (a diverging optimizer), the next
    save refuses to write them over the good files."""
    real_step = torch.optim.AdamW.step
    n = {"calls": 0}

    def step(self, *args, **kwargs):
        res = real_step(self, *args, **kwargs)
        n["calls"] += 1
        if n["calls"] == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return res

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    out = tmp_path / "out"
    result, _ = train(make_profile(tiny_sd1_dir, data, out))
    assert isinstance(result, Failed)
    assert result.message.startswith("the LoRA weights are no longer finite (NaN/inf) at step 3; "
                                     "nothing was saved over the earlier files")
    assert sorted(p.name for p in out.glob("*.safetensors")) == [f"tiny-step0000000{i}.safetensors" for i in (1, 2)]


def test_nan_hint_names_fp16_and_the_learning_rates(tiny_sd1_dir, data, tmp_path):
    from loratui.engine.errors import nan_hint

    p = make_profile(tiny_sd1_dir, data, tmp_path, optimization__mixed_precision="fp16", optimization__unet_lr=2e-4)
    hint = nan_hint(p)
    assert hint.startswith('fp16 overflow is the usual cause: set optimization.mixed_precision = "bf16"')
    assert "learning_rate 0.001 / unet_lr 0.0002 / text_encoder_lr 5e-05" in hint
    assert nan_hint(p, "no").startswith("the learning rate is probably too high")


# --------------------------------------------------------------------------- out of memory


def test_cuda_oom_fails_with_figures_frees_memory_and_the_app_goes_on(monkeypatch, tiny_sd1_dir, data, tmp_path):
    from diffusers import UNet2DConditionModel

    from loratui.engine.run import start_run

    real = UNet2DConditionModel.forward
    seen: list[weakref.ref] = []

    def forward(self, *args, **kwargs):
        seen.append(weakref.ref(self))
        if len(seen) == 2:
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 7.79 GiB"
            )
        return real(self, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", forward)
    out = tmp_path / "out"
    handle = start_run(make_profile(tiny_sd1_dir, data, out))  # as the app starts it: in a worker thread
    result = handle.join(120)
    assert not handle.thread.is_alive()
    assert isinstance(result, Failed)
    assert result.message == "the GPU ran out of memory at step 2 of 8"
    for tip in ("optimization.train_batch_size 2 → 1 (and gradient_accumulation_steps 1 → 2",
                "optimization.gradient_checkpointing false → true",
                "optimization.optimizer AdamW → AdamW8bit",
                "network.train_text_encoder true → false",
                "optimization.mixed_precision no → fp16 or bf16"):
        assert tip in result.hint
    assert ("This run: batch 2, resolution 64×64, rank 4, gradient checkpointing off, latents cached: memory, "
            "optimizer AdamW, precision no, text encoder trained.") in result.hint
    assert result.last_saved == str(out / "tiny-step00000001.safetensors")
    # the U-Net (and with it everything the run held) is gone, without anyone calling gc
    handle = None
    assert seen and seen[0]() is None
    monkeypatch.setattr(UNet2DConditionModel, "forward", real)
    again, _ = train(make_profile(tiny_sd1_dir, data, tmp_path / "again", optimization__max_train_epochs=1))
    assert isinstance(again, Finished)
    gc.collect()


def test_oom_hint_for_a_heavy_profile(tiny_sd1_dir, data, tmp_path):
    from loratui.engine.errors import explain_exception

    p = make_profile(tiny_sd1_dir, data, tmp_path, dataset__resolution=1024, dataset__cache_latents="off",
                     network__network_dim=64, network__network_type="locon", network__conv_dim=32,
                     optimization__train_batch_size=1, optimization__gradient_checkpointing=True,
                     optimization__optimizer="AdamW8bit")
    failed = explain_exception(RuntimeError("CUDA out of memory. Tried to allocate 20 MiB"), p, where="while caching latents")
    assert failed.message == "the GPU ran out of memory while caching latents"
    hint = failed.hint
    for tip in ("dataset.resolution 1024 → 768", "dataset.cache_latents off → memory", "network.network_dim 64 → 16",
                "network.conv_dim 32 → 8"):
        assert tip in hint
    assert "train_batch_size" not in hint.split(". This run")[0]  # already 1
    assert "gradient_checkpointing" not in hint.split(". This run")[0]  # already on
    assert "This run: batch 1, resolution 1024×1024, rank 64 (conv 32), gradient checkpointing on" in hint


# --------------------------------------------------------------------------- disk full / unwritable


def _disk_full_in(monkeypatch, out: Path, *, lora_calls: set[int] = frozenset(), state_calls: set[int] = frozenset(),
                  error=None):
    """Make the n-th LoRA write (safetensors, straight into ``out``) or the n-th
    state write (training.pt) write half a file, then fail as a full disk does."""
    import safetensors.torch as st
    from safetensors import SafetensorError

    real_save_file, real_torch_save = st.save_file, torch.save
    n = {"lora": 0, "state": 0}

    def save_file(tensors, filename, metadata=None):
        if Path(filename).parent == out:
            n["lora"] += 1
            if n["lora"] in lora_calls:
                Path(filename).write_bytes(b"\x00" * 4096)  # what got written before the disk filled up
                raise error or SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save_file(tensors, filename, metadata=metadata)

    def save(obj, f, *args, **kwargs):
        n["state"] += 1
        if n["state"] in state_calls:
            f.write(b"\x00" * 4096)
            raise error or OSError(28, "No space left on device")
        return real_torch_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(st, "save_file", save_file)
    monkeypatch.setattr(torch, "save", save)


def _run_and_snapshot(profile, out, at_step: int):
    """Train; snapshot the output folder when the state of ``at_step`` is saved."""
    events, snap = [], {}

    def emit(ev):
        events.append(ev)
        if isinstance(ev, CheckpointSaved) and ev.kind == "state" and ev.step == at_step:
            snap.update(snapshot(out))

    return run_training(profile, emit, Control()), events, snap


def test_disk_full_while_saving_a_lora(monkeypatch, tiny_sd1_dir, data, tmp_path):
    out = tmp_path / "out"
    profile = make_profile(tiny_sd1_dir, data, out, output__save_state=True, output__save_last_n_states=2)
    _disk_full_in(monkeypatch, out, lora_calls={3})
    result, events, before = _run_and_snapshot(profile, out, at_step=2)
    assert isinstance(result, Failed)
    assert result.message == f"the disk is full: could not write tiny-step00000003.safetensors in {out} at step 3"
    assert result.hint == ("free some space: the files saved before are intact and no half-written file was left; "
                           "then resume with --resume latest (the newest state is tiny-state-step00000002)")
    assert before and snapshot(out) == before  # every earlier LoRA and state byte for byte
    assert not leftovers(out) and not (out / "tiny-step00000003.safetensors").exists()
    monkeypatch.undo()
    resumed, resumed_events = train(profile, resume="latest")
    assert isinstance(resumed, Finished) and not resumed.stopped_early, resumed
    assert [e.step for e in resumed_events if isinstance(e, StepEvent)] == [3, 4, 5, 6, 7, 8]


def test_disk_full_while_saving_a_state_keeps_the_older_states(monkeypatch, tiny_sd1_dir, data, tmp_path):
    out = tmp_path / "out"
    profile = make_profile(tiny_sd1_dir, data, out, output__save_state=True, output__save_last_n_states=1)
    _disk_full_in(monkeypatch, out, state_calls={3})
    result, events, before = _run_and_snapshot(profile, out, at_step=2)
    assert isinstance(result, Failed)
    assert result.message == f"the disk is full: could not write tiny-state-step00000003 in {out} at step 3"
    assert result.last_saved == str(out / "tiny-step00000003.safetensors")
    after = snapshot(out)
    # the step-3 LoRA was written whole; everything from before is untouched and
    # the only state (keep 1) was not pruned for a state that never completed
    assert {k: v for k, v in after.items() if "step00000003" not in k} == before
    assert any(k.startswith("tiny-state-step00000002/") for k in after)
    assert not leftovers(out)


def test_output_folder_turned_read_only_while_saving(monkeypatch, tiny_sd1_dir, data, tmp_path):
    out = tmp_path / "out"
    _disk_full_in(monkeypatch, out, lora_calls={2}, error=PermissionError(13, "Permission denied"))
    result, _ = train(make_profile(tiny_sd1_dir, data, out))
    assert isinstance(result, Failed)
    assert result.message == (f"output.output_dir: cannot write tiny-step00000002.safetensors in {out} "
                              "(permission denied) at step 2")
    assert result.hint.startswith("make the folder writable again: the files saved before are intact")
    assert not leftovers(out)


def test_almost_full_disk_is_refused_before_the_model_loads(monkeypatch, tiny_sd1_dir, data, tmp_path):
    import shutil

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 10 * 2**30 - 20 * 2**20, 20 * 2**20))
    out = tmp_path / "out"
    result, events = train(make_profile(tiny_sd1_dir, data, out))
    assert isinstance(result, Failed)
    assert f"output.output_dir: only 20 MB free on the disk of {out} — free some space first" in result.message
    assert not any(isinstance(e, PhaseChanged) and e.phase == "loading_model" for e in events)
    assert not out.exists()


@pytest.mark.parametrize(
    ("free_mb", "expected"),
    [
        (5, "only 5.0 MB free on the disk of"),
        (1000, "this run writes about"),
        (10_000, None),
    ],
    ids=["refused", "warned", "plenty"],
)
def test_disk_space_estimate(free_mb, expected, monkeypatch, tiny_sd1_dir, data, tmp_path):
    import shutil

    from loratui.engine.plan import plan_steps
    from loratui.engine.training.paths import TrainingError
    from loratui.engine.training.setup import check_disk_space

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(0, 0, free_mb * 2**20))
    # an SDXL-sized LoRA: 23 M parameters = 45 MB in fp16, a state of 270 MB
    p = make_profile(tiny_sd1_dir, data, tmp_path, output__save_precision="fp16", output__save_state=True,
                     output__save_every_n_epochs=1, output__save_every_n_steps=0, optimization__max_train_epochs=10)
    plan = plan_steps(40, batch_size=2, grad_accum=1, epochs=10, max_train_steps=0, reg_samples=0, batches_per_epoch=20)
    warnings: list[str] = []
    if expected and "only" in expected:
        with pytest.raises(TrainingError) as err:
            check_disk_space(p, plan, 23_000_000, warnings.append)
        assert expected in err.value.message and "one LoRA and one saved state need about" in err.value.message
        return
    check_disk_space(p, plan, 23_000_000, warnings.append)
    if expected is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warnings[0].startswith("output.output_dir: this run writes about")
        assert "10 LoRA file(s) of 43.9 MB, 3 state(s) of 263.3 MB" in warnings[0]


def test_leftovers_of_a_live_run_in_the_same_folder_are_left_alone(tiny_sd1_dir, data, tmp_path):
    """Only a run alone in its output folder removes temporary files there."""
    from loratui.engine.state import OutputDirLock

    out = tmp_path / "out"
    other = OutputDirLock(out).acquire()  # another run, writing into the same folder
    live = out / ".loratui-tmp-live123.safetensors"
    live.write_bytes(b"being written by the other run")
    try:
        result, events = train(make_profile(tiny_sd1_dir, data, out, optimization__max_train_steps=1))
        assert isinstance(result, Finished)
        assert live.exists()
        assert not any(isinstance(e, WarningEvent) and "leftover" in e.message for e in events)
    finally:
        other.release()
    result, events = train(make_profile(tiny_sd1_dir, data, out, optimization__max_train_steps=1), overwrite=True)
    assert isinstance(result, Finished) and not live.exists()
    assert any(isinstance(e, WarningEvent) and "removed 1 leftover(s)" in e.message for e in events)


def test_oom_hint_for_a_flux_run_names_block_swap_and_what_fit_would_change(tmp_path, monkeypatch):
    """FLUX on a 12 GB card, batch 2: the tips speak of the transformer and block swap, and the
    message quotes the estimate with the changes `loratui fit` would make for this card."""
    from loratui.engine.errors import explain_exception
    from loratui.engine.estimate.devices import vram_device
    from loratui.engine.schema import load_profile
    from loratui.engine.userdirs import bundled_profiles_dir

    monkeypatch.setenv("LORATUI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("loratui.engine.estimate.devices.local_device", lambda *a, **k: vram_device(12))
    p = load_profile(bundled_profiles_dir() / "flux-dev-24gb.toml", ["network.train_text_encoder=true"])
    hint = explain_exception(torch.cuda.OutOfMemoryError("CUDA out of memory."), p, where="at step 1 of 400").hint
    tips = hint.split(". This run")[0]
    assert "optimization.blocks_to_swap 0 → 16 (blocks wait in RAM" in tips
    assert "network.train_text_encoder true → false (transformer only)" in tips and "U-Net" not in tips
    assert "model.fp8_base" not in tips  # already on
    assert "This run: batch 2, resolution 1024×1024" in hint and "text encoder trained" in hint
    quote = hint.split("Estimated before the run: ~", 1)[1]
    assert "of the card's 12 GB" in quote and "to fit it, change: " in quote and "`loratui fit PROFILE" in quote
    assert "optimization.blocks_to_swap 0 →" in quote.split("to fit it, change: ", 1)[1]


def test_cublas_failing_to_allocate_its_workspace_counts_as_out_of_gpu_memory():
    from loratui.engine.errors import is_oom

    assert is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle`"))
