"""kill -9 a headless run (``python -m tui.cli train``) at several moments —
in the middle of a state save, of a LoRA save, of a step — and resume it each
time with ``--resume latest``: every LoRA and state left on disk is whole, the
leftovers of the killed saves are cleaned up, and the run that finally
completes ends with the same LoRA as one that was never interrupted.

Kill points are chosen deterministically: the test follows the run's metrics
file and kills the process as soon as a given line appears — for a save, once
the save's temporary file is there.  Saves are made slow (every ``os.fsync``
sleeps, through a ``sitecustomize`` on the child's PYTHONPATH) so the test
sees them under way.
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
from safetensors import safe_open
from safetensors.torch import load_file

from loratui.engine.events import Finished
from loratui.engine.schema import load_profile
from loratui.engine.state import list_states, load_training, read_state
from loratui.engine.train import run_training

FSYNC_DELAY = 0.05
SITECUSTOMIZE = f"""
import os, time
_fsync = os.fsync
def _slow_fsync(fd):
    time.sleep({FSYNC_DELAY})
    return _fsync(fd)
os.fsync = _slow_fsync
"""


@pytest.fixture
def setup(tiny_sd1_dir, tmp_path):
    from loratui.engine.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "images", {"2_toy": 4}, size=(64, 64))
    out = tmp_path / "out"
    toml = tmp_path / "kill.toml"
    toml.write_text(
        f'[model]\nbase_model = "{tiny_sd1_dir}"\n'
        f'[dataset]\ntrain_data_dir = "{data}"\nresolution = 64\nenable_bucket = false\nmin_bucket_reso = 64\n'
        "flip_aug = true\nshuffle_caption = true\n"
        '[network]\nnetwork_dim = 4\nnetwork_alpha = 2.0\n'
        '[optimization]\nmax_train_epochs = 3\ntrain_batch_size = 2\nmixed_precision = "no"\nlearning_rate = 1e-3\n'
        'lr_scheduler = "cosine"\n'
        f'[output]\noutput_dir = "{out}"\noutput_name = "kill"\nsave_every_n_steps = 1\nsave_every_n_epochs = 1\n'
        'save_state = true\nsave_last_n_states = 2\nsave_precision = "float"\n'
    )
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return toml, out, env


def metrics_lines(path: Path, offset: int) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return []
    return [line for line in data.decode("utf-8", "replace").split("\n")[:-1]]  # whole lines only


def run_until(cmd: list[str], env: dict, metrics: Path, match, mid_save: Path | None,
              timeout: float = 60.0) -> tuple[str, list[dict]]:
    """Start the CLI; kill -9 it as soon as a metrics line (of this run)
    satisfies ``match`` — with ``mid_save`` (the output folder), only once the
    save it announces has its temporary file or folder there."""
    offset = metrics.stat().st_size if metrics.exists() else 0
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    hit = None
    try:
        while True:
            if hit is None:
                events = [json.loads(line) for line in metrics_lines(metrics, offset)]
                hit = next((e for e in events if match(e)), None)
            if hit is not None and (mid_save is None or tmp_entries(mid_save)):
                os.kill(proc.pid, signal.SIGKILL)
                break
            if proc.poll() is not None:
                raise AssertionError(f"the run ended before the kill point (rc {proc.returncode}):\n{proc.stdout.read()}")
            if time.monotonic() > deadline:
                raise AssertionError("the kill point never came")
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL
    return output, [json.loads(line) for line in metrics_lines(metrics, offset)]


def tmp_entries(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if p.name.startswith(".loratui-tmp-")] if out.is_dir() else []


def saving(detail: str):
    return lambda e: e["type"] == "PhaseChanged" and e["phase"] == "saving" and e["detail"] == detail


def lora_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["ss_network_dim"] == "4"
        return {k: f.get_tensor(k) for k in f.keys()}


def check_whole(out: Path, profile, before: dict[str, dict]) -> dict[str, dict]:
    """Every LoRA loads (and one that existed before holds the same tensors:
    a resumed run rewrites a step file with exactly what it had); every
    complete state reads back whole."""
    now = {}
    for p in sorted(out.glob("*.safetensors")):
        if p.name.startswith(".loratui-tmp-"):
            continue  # the half-written file of the killed save: never read by anyone
        now[p.name] = lora_tensors(p)
        assert len(now[p.name]) == 66 * 3
        if p.name in before:
            assert all(torch.equal(now[p.name][k], before[p.name][k]) for k in now[p.name]), p.name
    states = list_states(profile)
    assert 1 <= len(states) <= profile.output.save_last_n_states + 1
    for folder in states:
        st = read_state(folder)
        assert st.step == int(folder.name[-8:])
        json.loads((folder / "state.json").read_text())
        assert set(load_training(folder)) >= {"optimizer", "scheduler", "torch_rng", "gen", "caption_rng"}
        assert len(load_file(str(folder / "lora.safetensors"))) == 66 * 3
    return now


def test_kill_9_at_many_moments_then_resume_each_time(setup, tmp_path):
    toml, out, env = setup
    profile = load_profile(toml)
    metrics = out / "kill.metrics.jsonl"
    train = [sys.executable, "-m", "loratui.tui.cli", "train", str(toml)]
    resume = train + ["--resume", "latest"]
    # 4 images × 2 repeats ÷ batch 2 = 4 steps per epoch, 12 steps in all
    # (command, the line to wait for, whether to wait until the save it announces is under way)
    kill_points = [
        (train, saving("kill-state-step00000002"), True),  # inside a state save
        # (a step LoRA save is the same atomic save as the epoch one below: not killed again, one process start less)
        (resume, lambda e: e["type"] == "StepEvent" and e["step"] == 7, False),  # right after a step
        (resume, saving("kill-000002.safetensors"), True),  # inside an epoch LoRA save (end of epoch 2)
    ]
    files: dict[str, dict] = {}
    leftovers: list[str] = []

    def removed_leftovers(events) -> bool:
        return any(e["type"] == "WarningEvent" and f"removed {len(leftovers)} leftover(s) of an interrupted save" in e["message"]
                   for e in events)

    for i, (cmd, match, mid_save) in enumerate(kill_points):
        output, events = run_until(cmd, env, metrics, match, out if mid_save else None)
        assert "Traceback" not in output
        if i > 0:
            assert any(e["type"] == "LogEvent" and e["message"].startswith("resumed from kill-state-step") for e in events)
        if leftovers:  # the previous kill's half-written files were cleaned up before training
            assert removed_leftovers(events)
        leftovers = tmp_entries(out)
        if mid_save:
            assert leftovers  # killed while the file was being written
        files = check_whole(out, profile, files)

    # the last resume runs to the end
    offset = metrics.stat().st_size
    done = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    final = out / "kill.safetensors"
    assert done.stdout.strip().splitlines()[-1] == str(final)
    last_run = [json.loads(line) for line in metrics_lines(metrics, offset)]
    if leftovers:
        assert removed_leftovers(last_run)
    assert last_run[-1]["type"] == "Finished" and last_run[-1]["steps"] == 12
    check_whole(out, profile, files)
    assert not [p for p in out.iterdir() if p.name.startswith(".loratui-tmp-")]
    # every line of the metrics file, across the four processes, is whole JSON
    lines = metrics.read_text().splitlines()
    assert all(json.loads(line)["type"] for line in lines)
    steps = [json.loads(line)["step"] for line in lines if json.loads(line)["type"] == "StepEvent"]
    assert max(steps) == 12 and set(steps) == set(range(1, 13))

    # and the result is the LoRA of a run that was never interrupted
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref_profile = load_profile(toml, [f"output.output_dir={tmp_path / 'ref'}"])
        ref = run_training(ref_profile, lambda ev: None)
    finally:
        torch.set_num_threads(torch_threads)
    assert isinstance(ref, Finished)
    a, b = load_file(ref.path), load_file(str(final))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
