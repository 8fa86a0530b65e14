"""Data-parallel training (engine/distributed.py, engine/launch.py): two CPU
processes on gloo, started by accelerate's launcher as `loratui train --gpus 2`
starts them.

* 2 processes × batch 1 train the LoRA 1 process × batch 2 does (fp32 on the
  CPU, with AdamW's eps large so the optimizer is linear in the gradient: the
  LoRAs agree to ~1e-8 relative; with the usual eps Adam's normalisation turns
  last-bit differences of near-zero gradients into ±lr steps);
* only rank 0 writes; the shards of every epoch cover it exactly once;
* resume 2 → 2 is bitwise exact, 2 → 1 continues from the same place in the data;
* a request in the control file reaches the run; a killed process ends the run
  within seconds, with its rank, the last state intact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loratui.engine.events import CheckpointSaved, Failed, Finished, RunPlanned, StepEvent, WarningEvent
from loratui.engine.schema import profile_to_toml
from loratui.engine.train import run_training
from tiny_runs import tiny_profile

pytestmark = pytest.mark.usefixtures("one_thread")

LINEAR_ADAM = {"optimization__optimizer_args": "eps=1.0", "optimization__learning_rate": 1.0}  # see the module's doc


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from loratui.engine.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("ddp") / "images", {"2_toy": 4}, size=(64, 64))


def _profile(model, data, out, **over):
    return tiny_profile(model, data, out, **{"output__save_every_n_epochs": 0, "output__save_precision": "float",
                                             "optimization__noise_offset": 0.05, "optimization__lr_scheduler": "cosine",
                                             **LINEAR_ADAM, **over})


def _write(profile, path: Path) -> Path:
    path.write_text(profile_to_toml(profile))
    return path


def _train_cli(argv: list[str], timeout: float = 240, env=None) -> subprocess.CompletedProcess:
    """`loratui train ...` in a child, as a user runs it."""
    code = "import sys; from loratui.engine.cli import run_command; raise SystemExit(run_command(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "train", *argv], capture_output=True, text=True, timeout=timeout, env=env)


def _events(out: Path, name: str = "tiny") -> list:
    from loratui.engine.metrics import MetricsTail

    return MetricsTail(out / f"{name}.metrics.jsonl").read()[0]


def _rel_diff(a: dict, b: dict) -> float:
    num = sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a) ** 0.5
    den = sum((a[k].double() ** 2).sum() for k in a) ** 0.5
    return float(num / den)


@pytest.fixture(scope="module")
def two_process_run(tiny_sd1_dir, data, tmp_path_factory):
    """2 processes × batch 1, a state every 2 steps (8 steps), the latent cache on disk (rank 0 writes it)."""
    root = tmp_path_factory.mktemp("two")
    out = root / "out"
    p = _profile(tiny_sd1_dir, data, out, optimization__train_batch_size=1, output__save_every_n_steps=2,
                 output__save_state=True, output__save_last_n_states=0, dataset__cache_latents="disk")
    path = _write(p, root / "two.toml")
    proc = _train_cli([str(path), "--gpus", "2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return p, path, out, proc


def test_two_processes_batch_1_train_the_lora_one_process_batch_2_does(tiny_sd1_dir, data, tmp_path, two_process_run):
    p2, _, out2, proc = two_process_run
    p1 = _profile(tiny_sd1_dir, data, tmp_path / "one", optimization__train_batch_size=2)
    result = run_training(p1, lambda ev: None)
    assert isinstance(result, Finished) and result.steps == 8
    assert proc.stdout.strip().splitlines()[-1] == str(out2 / "tiny.safetensors")
    a, b = load_file(result.path), load_file(str(out2 / "tiny.safetensors"))
    assert a.keys() == b.keys() and len(a) > 50
    assert _rel_diff(a, b) < 1e-6
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a if "lora_up" in k)  # it trained
    # the same losses step by step (the global batch's mean, summed across the processes)
    l1 = [e.loss for e in _events(tmp_path / "one") if isinstance(e, StepEvent)]
    l2 = [e.loss for e in _events(out2) if isinstance(e, StepEvent)]
    assert l1 == pytest.approx(l2, rel=1e-6) and len(l2) == 8


def test_the_plan_and_the_metadata_count_the_global_batch(two_process_run):
    p, _, out, proc = two_process_run
    (planned,) = [e for e in _events(out) if isinstance(e, RunPlanned)]  # one RunPlanned: rank 0's alone
    assert planned.plan.processes == 2 and planned.plan.batch_size == 1 and planned.plan.total_steps == 8
    assert "(batch 1 × 2 processes)" in planned.plan.describe()
    assert "(batch 1 × 2 processes)" in proc.stdout
    from loratui.engine.lora_file import read_lora_file

    _, md = read_lora_file(out / "tiny.safetensors")
    assert md["ss_total_batch_size"] == "2"


def test_only_rank_0_writes(two_process_run):
    _, _, out, _ = two_process_run
    names = sorted(f.name for f in out.iterdir())
    states = [n for n in names if "-state-" in n]
    assert states == [f"tiny-state-step{s:08d}" for s in (2, 4, 6)]  # none after the last step: the final LoRA
    loras = [n for n in names if n.endswith(".safetensors")]
    assert loras == [f"tiny-step{s:08d}.safetensors" for s in (2, 4, 6)] + ["tiny.safetensors"]
    assert set(names) - set(states) - set(loras) - {"tiny.control.jsonl"} == {"tiny.metrics.jsonl", "tiny.run", ".loratui.lock"}
    saved = [e.path for e in _events(out) if isinstance(e, CheckpointSaved)]
    assert len(saved) == len(set(saved)) == 7  # each file written once
    assert not list((out / "tiny.run").glob("rank*.failed.json"))
    meta = json.loads((out / "tiny-state-step00000004" / "state.json").read_text())
    assert meta["extra"]["processes"] == 2


def test_resume_two_on_two_processes_is_exact(two_process_run, tmp_path):
    p, path, out, _ = two_process_run
    before = load_file(str(out / "tiny.safetensors"))
    proc = _train_cli([str(path), "--gpus", "2", "--resume", str(out / "tiny-state-step00000004"), "--overwrite"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = load_file(str(out / "tiny.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    steps = [e.step for e in _events(out) if isinstance(e, StepEvent)]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8, 5, 6, 7, 8]  # a resumed run appends to the metrics file


def test_resume_a_two_process_state_on_one_process_continues_from_the_same_place(two_process_run, tmp_path):
    import shutil

    p, _, out, _ = two_process_run
    mine = tmp_path / "out"
    shutil.copytree(out / "tiny-state-step00000002", mine / "tiny-state-step00000002")
    one = p.model_copy(update={"output": p.output.model_copy(update={"output_dir": str(mine)}),
                               "compute": p.compute.model_copy(update={"processes": 1})})
    events: list = []
    result = run_training(one, events.append, resume="latest")
    assert isinstance(result, Finished), getattr(result, "message", result)
    warns = [e.message for e in events if isinstance(e, WarningEvent) and e.message.startswith("compute:")]
    assert len(warns) == 1 and "saved by a run of 2 process(es), this one has 1" in warns[0]
    assert "continuing at step 4 of 16" in warns[0]  # 4 samples seen = 4 batches of 1
    steps = [e.step for e in events if isinstance(e, StepEvent)]
    assert steps[0] == 5 and steps[-1] == 16 and result.steps == 16


def test_two_machines_of_one_process_each_train_the_same_lora(two_process_run, tmp_path):
    """compute.machines = 2 (two launchers on one host here, as two nodes run them): the same
    LoRA as 2 processes on one machine; each machine's launcher keeps its own log."""
    from loratui.engine.launch import free_port

    p, _, out2, _ = two_process_run
    out = tmp_path / "out"
    nodes = p.compute.model_copy(update={"processes": 1, "machines": 2, "main_process_ip": "127.0.0.1",
                                         "main_process_port": free_port()})
    path = _write(p.model_copy(update={"output": p.output.model_copy(update={"output_dir": str(out)}), "compute": nodes}),
                  tmp_path / "nodes.toml")
    code = "import sys; from loratui.engine.cli import run_command; raise SystemExit(run_command(sys.argv[1:]))"
    one_core = dict(os.environ, OMP_NUM_THREADS="1")  # both "machines" share this host's cores
    second = subprocess.Popen([sys.executable, "-c", code, "train", str(path), "--set", "compute.machine_rank=1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=one_core)
    try:
        first = _train_cli([str(path)], env=one_core)
        stdout, stderr = second.communicate(timeout=120)
    finally:
        if second.poll() is None:
            second.kill()
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:] + stderr[-2000:]
    assert "this is machine 1" in stderr and stdout == ""  # machine 0 has the metrics and says the rest
    a, b = load_file(str(out2 / "tiny.safetensors")), load_file(str(out / "tiny.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "tiny.run" / "launch.log").is_file() and (out / "tiny.run-machine1" / "launch.log").is_file()


def test_the_shards_of_every_epoch_cover_it_exactly_once():
    from loratui.engine.dataset.batches import epoch_batches, shard
    from loratui.engine.dataset.items import ImageItem

    items = [ImageItem(path=Path(f"/x/{i}.png"), caption="c", concept="a", folder="/x/3_a", repeats=3, is_reg=False,
                       image_size=(64, 64), bucket=(64, 64) if i % 3 else (64, 96), resized=(64, 64)) for i in range(11)]
    for world, per in ((2, 1), (3, 2), (4, 3)):
        for epoch in (1, 2):
            seen = []
            for batch in epoch_batches(items, per * world, epoch, seed=5):
                parts = [shard(batch, r, world, per) for r in range(world)]
                assert all(n <= per for _, n in parts)
                got = [i for off, n in parts for i in batch[off:off + n]]
                assert got == batch  # in order, no overlap, nothing left out
                seen += got
            assert sorted(seen) == sorted(i for i in range(11) for _ in range(3))


def _rank_pid(run_folder: Path, rank: int) -> int | None:
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LORATUI_WORKER={run_folder}".encode() in env and f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + str(rank).encode() in env:
            cmd = (d / "cmdline").read_bytes()
            if b"loratui.engine.worker" in cmd:
                return int(d.name)
    return None


def _wait_for(out: Path, what, timeout: float = 180):
    from loratui.engine.metrics import MetricsTail

    tail = MetricsTail(out / "tiny.metrics.jsonl")
    seen: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += tail.read()[0]
        hit = next((e for e in seen if what(e)), None)
        if hit is not None:
            return hit, seen
        time.sleep(0.1)
    raise AssertionError(f"not seen in {timeout} s; events: {[type(e).__name__ for e in seen][-20:]}")


async def test_a_two_process_run_from_the_form_takes_the_dashboards_controls_and_a_killed_process_ends_it(
        tiny_sd1_dir, data, tmp_path, monkeypatch):
    """Started from the form like any run; pause, resume and save now reach every process
    through the control file; a killed process ends the run within seconds, with its rank,
    the state saved before intact."""
    import asyncio

    from textual import events

    from loratui.engine.events import Phase
    from loratui.engine.state import read_state
    from loratui.screens.dashboard import DashboardScreen
    from loratui.tui.app import LoraTuiApp

    monkeypatch.setenv("LORATUI_CONFIG_DIR", str(tmp_path / "cfg"))
    out = tmp_path / "out"
    p = _profile(tiny_sd1_dir, data, out, optimization__train_batch_size=1, optimization__max_train_epochs=400,
                 output__save_state=True)
    p = p.model_copy(update={"compute": p.compute.model_copy(update={"processes": 2})})
    app = LoraTuiApp(_write(p, tmp_path / "mine.toml"), gpu=False, check_live_runs=False)

    async def until(cond, what: str, timeout: float = 180.0):
        for _ in range(int(timeout / 0.05)):
            if cond():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+r")
        await until(lambda: app.launched is not None and app.run_state is not None, "the launch")
        assert isinstance(app.screen, DashboardScreen)
        state = app.run_state
        assert state.readonly and state.controllable
        await until(lambda: state.step >= 2 or state.done, "the first steps")
        assert state.planned.plan.processes == 2 and state.planned.plan.steps_per_epoch == 4

        app.post_message(events.Key("space", " "))  # pause: every process waits before its next step
        await until(lambda: state.phase == Phase.PAUSED, "the run to say it paused")
        frozen = state.step
        app.post_message(events.Key("space", " "))  # resume
        await until(lambda: state.phase == Phase.TRAINING and state.step > frozen, "the run to go on")
        app.post_message(events.Key("s", "s"))  # save now: a LoRA and (save_state) a state
        await until(lambda: any(c.kind == "state" for c in state.checkpoints), "the state")
        saved = next(c for c in state.checkpoints if c.kind == "state")
        assert read_state(saved.path).extra["processes"] == 2

        pid = _rank_pid(out / "tiny.run", 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        await until(lambda: state.failed is not None, "the run to end", 60)
        took = time.monotonic() - t0
        await until(lambda: app.launched.poll() is not None, "the processes to end", 30)
        print(f"killed process 1: the run ended {took:.1f} s later")
        assert took < 30
        assert state.failed.message.startswith("process 1 of 2 was killed by signal 9 (SIGKILL"), state.failed.message
        assert "--resume latest" in state.failed.hint and str(out / "tiny.run" / "launch.log") in state.failed.hint
    assert read_state(saved.path).step == saved.step  # the last state is intact and resumable
    assert isinstance(_events(out)[-1], Failed)  # the launcher wrote the end the killed run could not


def test_more_processes_or_gpu_ids_than_the_machine_has_gpus_stop_the_run_with_the_field_named():
    from loratui.engine.schema import profile_from_dict
    from loratui.engine.training.prepare import compute_problems

    four = profile_from_dict({"compute": {"processes": 4}})
    (p,) = compute_problems(four, gpu_count=2)
    assert p.key == "compute.processes" and "4 processes, but this machine has 2 GPU(s)" in str(p) and "at most 2" in str(p)
    assert compute_problems(four, gpu_count=4) == []
    assert compute_problems(four, gpu_count=0) == []  # no GPU: CPU processes (gloo)
    ids = profile_from_dict({"compute": {"processes": 2, "gpu_ids": "1,3"}})
    (p,) = compute_problems(ids, gpu_count=2)
    assert p.key == "compute.gpu_ids" and "names GPU 3, but this machine has 2 (0 to 1)" in str(p)
    assert compute_problems(ids, gpu_count=4) == []


def test_cuda_visible_devices_counts_as_the_gpus_a_run_may_use(monkeypatch):
    from loratui.engine.schema import profile_from_dict
    from loratui.engine.training.prepare import compute_problems

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # 8 GPUs, 2 left to this shell
    four = profile_from_dict({"compute": {"processes": 4}})
    (p,) = compute_problems(four, gpu_count=8)
    assert p.key == "compute.processes" and "CUDA_VISIBLE_DEVICES=0,1 leaves 2 GPU(s)" in str(p), str(p)
    # named GPUs: the launcher gives them to the processes itself
    assert compute_problems(profile_from_dict({"compute": {"processes": 4, "gpu_ids": "2,3,4,5"}}), gpu_count=8) == []
    one = profile_from_dict({"compute": {"gpu_ids": "5"}})
    (p,) = compute_problems(one, gpu_count=8)
    assert p.key == "compute.gpu_ids" and "GPU 5 is hidden from this process (CUDA_VISIBLE_DEVICES=0,1)" in str(p), str(p)
    assert compute_problems(profile_from_dict({"compute": {"gpu_ids": "1"}}), gpu_count=8) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2a0c1e-1111-2222-3333-444455556666,MIG-1")  # UUIDs: not counted
    assert compute_problems(profile_from_dict({"compute": {"processes": 2}}), gpu_count=8) == []


def test_a_one_process_run_trains_on_the_gpu_its_gpu_ids_names(monkeypatch):
    """pick_device makes that GPU the thread's current one ("cuda" then means it), counted
    within CUDA_VISIBLE_DEVICES where that is set; the engine numbers GPUs as nvidia-smi does."""
    import os

    import torch

    from loratui.engine.schema import profile_from_dict
    from loratui.engine.training.paths import TrainingError
    from loratui.engine.training.setup import pick_device

    assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # set by importing the engine (unless the user set it)
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    one = profile_from_dict({"compute": {"gpu_ids": "3"}})
    assert pick_device(one) == "cuda" and chosen == [3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert pick_device(one) == "cuda" and chosen == [3, 1]
    assert pick_device(profile_from_dict({})) == "cuda" and chosen == [3, 1]  # no gpu_ids: the current device
    assert pick_device(profile_from_dict({"compute": {"processes": 2, "gpu_ids": "2,3"}})) == "cuda"  # the launcher's
    assert chosen == [3, 1]
    with pytest.raises(TrainingError, match=r"GPU 5 is hidden from this process \(CUDA_VISIBLE_DEVICES=2,3\)"):
        pick_device(profile_from_dict({"compute": {"gpu_ids": "5"}}))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert pick_device(profile_from_dict({"compute": {"gpu_ids": "9"}})) == "cuda" and chosen == [3, 1]  # 4 GPUs:
    # no set_device past the last one (the run's checks name compute.gpu_ids), no "invalid device ordinal"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2a0c1e-1111-2222-3333-444455556666")  # a UUID: not checked
    assert pick_device(one) == "cuda" and chosen == [3, 1, 3]
