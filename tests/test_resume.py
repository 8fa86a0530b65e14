"""Exact resume: on the CPU with a fixed seed, a run stopped (one or more times)
and resumed ends with the very same LoRA as an uninterrupted one — bitwise,
``torch.equal`` on every tensor — and a resume that would not be exact is
refused with the differences listed."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loratui.engine.events import CheckpointSaved, Control, Failed, Finished, LogEvent, StepEvent, WarningEvent
from loratui.engine.state import list_states, read_state
from loratui.engine.train import run_training
from tiny_runs import tiny_profile


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models train fastest on one thread


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from loratui.engine.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("resume") / "images", {"2_toy": 4}, size=(64, 64))


RESUME_DEFAULTS = {
    "optimization__lr_scheduler": "cosine",
    "optimization__lr_warmup_steps": 2.0,
    "optimization__noise_offset": 0.05,
    "output__save_every_n_epochs": 0,
    "output__save_precision": "float",
}


def make_profile(model, data, out, **over):
    return tiny_profile(model, data, out, **{**RESUME_DEFAULTS, **over})


def train(profile, *, stop_at: int | None = None, **kw):
    events = []
    control = Control()

    def emit(ev):
        events.append(ev)
        if stop_at is not None and isinstance(ev, StepEvent) and ev.step == stop_at:
            control.stop()

    result = run_training(profile, emit, control, **kw)
    return result, events


def assert_same_lora(a: str | Path, b: str | Path):
    sa, sb = load_file(str(a)), load_file(str(b))
    assert sa.keys() == sb.keys() and len(sa) > 0
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[0]}"


def steps_of(events):
    return [e.step for e in events if isinstance(e, StepEvent)]


def interrupted_run(model, data, out, stops: list[int], **over):
    """Run, stop at stops[0]; resume ('latest'), stop at stops[1]; ... then resume to the end."""
    profile = make_profile(model, data, out, **over)
    seen: list[int] = []
    result, events = train(profile, stop_at=stops[0])
    assert isinstance(result, Finished) and result.stopped_early, result
    seen += steps_of(events)
    for stop in stops[1:] + [None]:
        result, events = train(profile, stop_at=stop, resume="latest")
        assert isinstance(result, (Finished,)), result
        log = [e.message for e in events if isinstance(e, LogEvent)]
        assert any(m.startswith("resumed from tiny-state-step") for m in log)
        seen += steps_of(events)
    return result, seen


SCENARIOS = {
    # 4 images × 2 repeats ÷ batch 2 = 4 steps per epoch, 2 epochs = 8 steps
    "mid-epoch": ([3], {}),
    "epoch-end": ([4], {}),
    # batch 1 × accumulation 3: 8 batches per epoch = 3 steps (3 + 3 + a partial window of 2);
    # stopped mid-epoch, at the epoch end after the partial window, and early in epoch 2
    "grad-accumulation": ([2, 3, 4], {"optimization__train_batch_size": 1, "optimization__gradient_accumulation_steps": 3}),
    "no-latent-cache-flip": ([3], {"dataset__cache_latents": "off", "dataset__flip_aug": True}),
    "caption-shuffle-dropout-cached-flip": (
        [5],
        {"dataset__shuffle_caption": True, "dataset__keep_tokens": 1, "dataset__caption_dropout_rate": 0.3,
         "dataset__flip_aug": True},
    ),
    "unet-only-min-snr": ([3], {"network__train_text_encoder": False, "optimization__min_snr_gamma": 5.0}),
}

_references: dict = {}


@pytest.fixture(scope="module")
def reference(tiny_sd1_dir, data, tmp_path_factory):
    """The uninterrupted run of a profile (run once per profile in this module)."""

    def get(over: dict):
        key = tuple(sorted(over.items()))
        if key not in _references:
            out = tmp_path_factory.mktemp("ref")
            result, events = train(make_profile(tiny_sd1_dir, data, out, **over))
            assert isinstance(result, Finished) and not result.stopped_early, result
            _references[key] = (result, events)
        return _references[key]

    return get


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_interrupted_then_resumed_equals_uninterrupted_bitwise(name, tiny_sd1_dir, data, tmp_path, reference):
    stops, over = SCENARIOS[name]
    ref, ref_events = reference(over)
    total = steps_of(ref_events)[-1]
    result, seen = interrupted_run(tiny_sd1_dir, data, tmp_path / "cut", stops, **over)
    # steps continue where they were: each step exactly once, none repeated or lost
    assert seen == list(range(1, total + 1))
    assert result.steps == total
    assert_same_lora(ref.path, result.path)


def test_resume_from_a_periodic_state_after_a_crash(tiny_sd1_dir, data, tmp_path, reference):
    """A state written at a save point (not at a stop) resumes exactly too; the
    resumed run may write elsewhere and under another name (harmless changes)."""
    over = {"output__save_every_n_steps": 3, "output__save_state": True, "output__save_last_n_states": 0}
    crashed, _ = train(make_profile(tiny_sd1_dir, data, tmp_path / "crashed", **over))
    assert isinstance(crashed, Finished)
    ref, _ = reference({})  # the same training without the saves
    assert_same_lora(ref.path, crashed.path)
    states = list_states(make_profile(tiny_sd1_dir, data, tmp_path / "crashed", **over))
    assert [s.name for s in states] == ["tiny-state-step00000003", "tiny-state-step00000006"]
    st = read_state(states[0])
    assert (st.step, st.epoch, st.batch_in_epoch) == (3, 1, 3)
    moved = make_profile(tiny_sd1_dir, data, tmp_path / "elsewhere", output__output_name="again",
                         output__save_every_n_steps=0, output__save_precision="float")
    result, events = train(moved, resume=str(states[0]))
    assert isinstance(result, Finished) and not result.stopped_early, result
    assert steps_of(events) == [4, 5, 6, 7, 8]
    assert_same_lora(ref.path, result.path)


def test_state_holds_everything_needed(tiny_sd1_dir, data, tmp_path):
    profile = make_profile(tiny_sd1_dir, data, tmp_path / "out")
    result, events = train(profile, stop_at=4)
    folder = Path(result.summary["last_state"])
    assert sorted(p.name for p in folder.iterdir()) == ["lora.safetensors", "state.json", "training.pt"]
    meta = json.loads((folder / "state.json").read_text())
    assert (meta["step"], meta["epoch"], meta["batch_in_epoch"]) == (4, 2, 0)  # epoch end: continue with epoch 2
    assert meta["profile"] == profile.to_dict()
    assert meta["extra"]["dataset"]["images"] == 4 and meta["extra"]["dataset"]["total_steps"] == 8
    tr = torch.load(folder / "training.pt", weights_only=True)
    assert {"optimizer", "scheduler", "scaler", "torch_rng", "gen", "caption_rng"} <= tr.keys()
    assert tr["scheduler"]["last_epoch"] == 4
    assert all(s["step"].item() == 4 for s in tr["optimizer"]["state"].values())
    # the state's weights are the fp32 weights of the LoRA saved at the stop
    assert_same_lora(folder / "lora.safetensors", result.summary["last_saved"])
    saved = [e for e in events if isinstance(e, CheckpointSaved)]
    assert [e.kind for e in saved] == ["manual", "state"]


# --------------------------------------------------------------------------- refusals


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def stopped(tiny_sd1_dir, data, tmp_path):
    """A run stopped at step 3, with its state; returns (profile overrides → profile, out)."""
    out = tmp_path / "out"
    result, _ = train(make_profile(tiny_sd1_dir, data, out), stop_at=3)
    assert isinstance(result, Finished) and result.stopped_early
    return out


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"optimization__learning_rate": 2e-3}, ["optimization.learning_rate: 0.001 in the state, 0.002 now"]),
        (
            {"network__network_dim": 8, "optimization__seed": 7},
            ["network.network_dim: 4 in the state, 8 now", "optimization.seed: 42 in the state, 7 now"],
        ),
        ({"optimization__max_train_epochs": 3}, ["optimization.max_train_epochs: 2 in the state, 3 now"]),
        ({"dataset__flip_aug": True}, ["dataset.flip_aug: False in the state, True now"]),
    ],
    ids=["learning-rate", "rank-and-seed", "epochs", "flip-aug"],
)
def test_resume_with_a_changed_setting_is_refused_with_the_differences(over, expected, stopped, tiny_sd1_dir, data):
    before = _snapshot(stopped)
    result, events = train(make_profile(tiny_sd1_dir, data, stopped, **over), resume="latest")
    assert isinstance(result, Failed)
    assert "output.resume: the profile differs from the one tiny-state-step00000003 was trained with" in result.message
    for line in expected:
        assert line in result.message
    assert "undo these changes" in result.message
    assert not any(isinstance(e, StepEvent) for e in events)
    assert _snapshot(stopped) == before  # nothing written, not even the metrics file


@pytest.mark.parametrize(
    "over",
    [
        {"output__save_every_n_steps": 1, "output__save_state": True},
        {"output__save_precision": "fp16", "output__output_name": "renamed", "output__save_every_n_epochs": 1},
        {"optimization__gradient_checkpointing": True, "dataset__cache_latents": "off", "optimization__max_bad_steps": 3},
    ],
    ids=["save-frequency", "output-name-precision", "memory-settings"],
)
def test_harmless_changes_are_allowed(over, stopped, tiny_sd1_dir, data):
    state = stopped / "tiny-state-step00000003"
    result, events = train(make_profile(tiny_sd1_dir, data, stopped, **over), resume=str(state))
    assert isinstance(result, Finished) and not result.stopped_early, result
    assert steps_of(events) == [4, 5, 6, 7, 8]


def test_state_from_another_profile_is_refused(stopped, tiny_sd1_dir, data, tmp_path):
    from loratui.engine.synthetic import write_synthetic_dataset

    other_data = write_synthetic_dataset(tmp_path / "other", {"3_thing": 5}, size=(64, 64), seed=5)
    other = make_profile(tiny_sd1_dir, other_data, tmp_path / "other-out", network__network_alpha=4.0,
                         optimization__optimizer="Lion", output__output_name="thing")
    result, _ = train(other, resume=str(stopped / "tiny-state-step00000003"))
    assert isinstance(result, Failed)
    msg = result.message
    assert "the profile differs from the one tiny-state-step00000003 was trained with" in msg
    assert f"dataset.train_data_dir: '{data}' in the state, '{other_data}' now" in msg
    assert "network.network_alpha: 2.0 in the state, 4.0 now" in msg
    assert "optimization.optimizer: 'AdamW' in the state, 'Lion' now" in msg
    assert "output.output_name" not in msg  # harmless, not listed
    assert not (tmp_path / "other-out").exists()


def test_changed_dataset_is_refused_but_an_edited_caption_only_warns(tiny_sd1_dir, tmp_path):
    from loratui.engine.synthetic import write_synthetic_dataset

    images = write_synthetic_dataset(tmp_path / "images", {"2_toy": 4}, size=(64, 64))
    out = tmp_path / "out"
    profile = make_profile(tiny_sd1_dir, images, out)
    result, _ = train(profile, stop_at=3)
    assert result.stopped_early
    # an image more: more steps, other batches — cannot continue exactly
    shutil.copy(images / "2_toy" / "img_000.png", images / "2_toy" / "img_009.png")
    result, _ = train(profile, resume="latest")
    assert isinstance(result, Failed)
    assert ("output.resume: dataset: 4 images (8 samples per epoch, 8 steps) when tiny-state-step00000003 was saved, "
            "5 images (10 samples, 10 steps) now") in result.message
    assert "restore the dataset" in result.message
    (images / "2_toy" / "img_009.png").unlink()
    # a caption fixed between the runs: allowed, with a warning
    (images / "2_toy" / "img_001.txt").write_text("toy, a fixed caption\n")
    result, events = train(profile, resume="latest")
    assert isinstance(result, Finished) and not result.stopped_early, result
    warnings = [e.message for e in events if isinstance(e, WarningEvent)]
    assert any(w.startswith("output.resume: dataset: images or captions changed") for w in warnings)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("no-state", "output.resume: latest: no saved state of 'tiny' in"),
        ("missing-folder", "no such state folder"),
        ("not-a-state", "not a loratui state folder (no state.json)"),
        ("bad-json", "state.json is damaged"),
        ("no-training", "training.pt is missing; the state is incomplete"),
    ],
)
def test_unusable_states_are_refused_with_a_message(damage, expected, stopped, tiny_sd1_dir, data, tmp_path):
    state = stopped / "tiny-state-step00000003"
    profile = make_profile(tiny_sd1_dir, data, stopped)
    resume = str(state)
    if damage == "no-state":
        profile = make_profile(tiny_sd1_dir, data, tmp_path / "empty")
        resume = "latest"
    elif damage == "missing-folder":
        resume = str(stopped / "tiny-state-step00000099")
    elif damage == "not-a-state":
        resume = str(stopped)
    elif damage == "bad-json":
        (state / "state.json").write_text('{"version": 1, "epo')
    elif damage == "no-training":
        (state / "training.pt").unlink()
    before = _snapshot(stopped)
    result, _ = train(profile, resume=resume)
    assert isinstance(result, Failed)
    assert expected in result.message and "output.resume:" in result.message
    assert "Traceback" not in result.message
    assert _snapshot(stopped) == before


def test_resume_latest_takes_the_newest_state(tiny_sd1_dir, data, tmp_path):
    out = tmp_path / "out"
    over = {"output__save_every_n_steps": 2, "output__save_state": True, "output__save_last_n_states": 0}
    profile = make_profile(tiny_sd1_dir, data, out, **over)
    result, _ = train(profile, stop_at=5)
    assert [p.name for p in list_states(profile)] == [f"tiny-state-step{n:08d}" for n in (2, 4, 5)]
    result, events = train(profile, resume="latest")
    assert isinstance(result, Finished) and steps_of(events) == [6, 7, 8]


def test_last_n_states_kept_and_pruned_only_after_the_new_one_is_complete(tiny_sd1_dir, data, tmp_path, monkeypatch):
    import loratui.engine.fsutil as fsutil

    out = tmp_path / "out"
    profile = make_profile(tiny_sd1_dir, data, out, output__save_every_n_steps=1, output__save_state=True,
                           output__save_last_n_states=2)
    real = fsutil.atomic_dir
    seen = []

    def watching(target, fill):
        before = [p.name for p in list_states(profile)]
        done = real(target, fill)
        after_write = [p.name for p in list_states(profile)]
        seen.append((Path(target).name, before, after_write))
        return done

    monkeypatch.setattr(fsutil, "atomic_dir", watching)
    result, _ = train(profile)
    assert isinstance(result, Finished)
    assert len(seen) == 7  # steps 1..7 (step 8 is the final LoRA)
    for i, (name, before, after_write) in enumerate(seen, start=1):
        assert name == f"tiny-state-step{i:08d}"
        # the older states are all still there when the new one lands
        assert before == [f"tiny-state-step{n:08d}" for n in range(max(1, i - 2), i)]
        assert after_write == before + [name]
    assert [p.name for p in list_states(profile)] == ["tiny-state-step00000006", "tiny-state-step00000007"]
    assert not [p for p in out.iterdir() if p.name.startswith(".loratui-tmp-")]


def test_a_state_a_kill_left_moved_aside_is_put_back_and_resumed(stopped, tiny_sd1_dir, data):
    """atomic_dir replaces an existing state folder by moving it aside, then
    moving the new one in; a kill between the two leaves only the moved-aside
    copy (and the new one under its temporary name)."""
    from loratui.engine.fsutil import TMP_PREFIX

    state = stopped / "tiny-state-step00000003"
    aside = stopped / f"{TMP_PREFIX}old-{state.name}"
    state.rename(aside)
    half = stopped / f"{TMP_PREFIX}k3j2h1"
    half.mkdir()
    (half / "lora.safetensors").write_bytes(b"\x00" * 64)
    result, events = train(make_profile(tiny_sd1_dir, data, stopped), resume="latest")
    assert isinstance(result, Finished) and not result.stopped_early, result
    warnings = [e.message for e in events if isinstance(e, WarningEvent)]
    assert any("put back tiny-state-step00000003" in w for w in warnings)
    assert any(f"removed 1 leftover(s) of an interrupted save in {stopped} ({half.name})" in w for w in warnings)
    assert steps_of(events) == [4, 5, 6, 7, 8]
    assert not aside.exists() and not half.exists()


def test_a_state_saved_on_a_gpu_resumes_on_the_cpu_with_a_warning(stopped, tiny_sd1_dir, data):
    """A CUDA generator's state (16 bytes: Philox seed and offset) does not fit the CPU's
    (5056 bytes): the run goes on, its draws from the seed, and says so."""
    state = stopped / "tiny-state-step00000003"
    tr = torch.load(state / "training.pt", weights_only=True)
    tr["gen"] = torch.zeros(16, dtype=torch.uint8)
    torch.save(tr, state / "training.pt")
    result, events = train(make_profile(tiny_sd1_dir, data, stopped), resume=str(state))
    assert isinstance(result, Finished) and not result.stopped_early, result
    assert steps_of(events) == [4, 5, 6, 7, 8]
    warned = [e.message for e in events if isinstance(e, WarningEvent)]
    assert any("tiny-state-step00000003 was saved on another kind of device" in m for m in warned), warned


def test_the_cuda_rng_is_restored_for_this_processs_device_only(monkeypatch):
    """States keep this device's CUDA RNG; older ones kept one per GPU then visible, and a
    resume may see fewer (4 GPUs saved, 1 now): the current device's entry, or none."""
    from loratui.engine.training.checkpoint import restore_cuda_rng

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": restored.append(int(s[0])))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    restore_cuda_rng(torch.tensor([7], dtype=torch.uint8))
    restore_cuda_rng([torch.tensor([i], dtype=torch.uint8) for i in range(4)])  # saved by 4 GPUs: this one's
    restore_cuda_rng([torch.tensor([0], dtype=torch.uint8)])  # saved by one GPU: none for device 1
    restore_cuda_rng(None)
    assert restored == [7, 1]


def test_an_optimizer_state_keeps_how_this_run_steps(monkeypatch):
    """A state saved by a foreach AdamW (the CPU's) loaded into a fused one (the GPU's): the
    optimizer stays fused (its found_inf guard needs it), its state is the saved one."""
    from loratui.engine.training import fastpath as fp
    from loratui.engine.training.checkpoint import load_optimizer_state

    def model_and(**kw):
        torch.manual_seed(0)
        m = torch.nn.Linear(4, 3)
        return m, torch.optim.AdamW(m.parameters(), lr=0.1, **kw)

    m, saved_by = model_and(foreach=True)
    for _ in range(2):
        m(torch.ones(2, 4)).pow(2).mean().backward()
        saved_by.step()
        saved_by.zero_grad()
    m2, fused = model_and(fused=True)
    m2.load_state_dict(m.state_dict())
    load_optimizer_state(fused, saved_by.state_dict())
    assert fused.param_groups[0]["fused"] is True and fp.supports_found_inf(fused)
    assert all(torch.equal(fused.state[p]["exp_avg"], saved_by.state[q]["exp_avg"])
               for p, q in zip(m2.parameters(), m.parameters()))
    m2(torch.ones(2, 4)).pow(2).mean().backward()
    fp.guarded_step(fused, fp.total_norm([p.grad for p in m2.parameters()]), on_host=False)  # the GPU's way
    assert all(int(s["step"]) == 3 for s in fused.state.values())
