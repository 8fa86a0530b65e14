"""End to end: the real engine trains tiny SD 1.x / SDXL models and writes LoRAs
that diffusers loads (no network, CPU, a few steps each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ldm_convert  # noqa: E402

from loratui.engine.events import CheckpointSaved, Control, Failed, Finished, PhaseChanged, RunPlanned, StepEvent  # noqa: E402
from loratui.engine.run import start_run  # noqa: E402
from loratui.engine.train import run_training
from tiny_runs import tiny_profile  # noqa: E402


make_profile = tiny_profile


def train(profile, **kw):
    events = []
    result = run_training(profile, events.append, **kw)
    return result, events


@pytest.fixture
def data(tmp_path):
    from loratui.engine.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path / "images", {"2_toy": 4}, size=(64, 64))


def test_sd1_folder_end_to_end(tiny_sd1_dir, data, tmp_path):
    out = tmp_path / "out"
    profile = make_profile(tiny_sd1_dir, data, out, output__save_every_n_epochs=1)
    result, events = train(profile)
    assert isinstance(result, Finished), result
    # 4 images × 2 repeats ÷ batch 2 = 4 steps per epoch, 2 epochs
    planned = next(e for e in events if isinstance(e, RunPlanned))
    assert planned.plan.total_steps == 8 and planned.report.images == 4
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [s.step for s in steps] == list(range(1, 9))
    assert steps[-1].epoch == 2 and all(s.total_steps == 8 for s in steps)
    assert all(torch.isfinite(torch.tensor(s.loss)) for s in steps)
    phases = [e.phase for e in events if isinstance(e, PhaseChanged)]
    for p in ("preparing", "loading_model", "caching_latents", "training", "saving", "done"):
        assert p in phases
    saved = [e for e in events if isinstance(e, CheckpointSaved)]
    assert [Path(e.path).name for e in saved] == ["tiny-000001.safetensors", "tiny.safetensors"]
    assert result.path == str(out / "tiny.safetensors")
    # kohya-format keys, fp16, ss_* metadata
    sd = load_file(result.path)
    assert any(k.startswith("lora_unet_down_blocks_0_attentions_0_") for k in sd)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj") for k in sd)
    assert all(v.dtype == torch.float16 for v in sd.values())
    ups = [v for k, v in sd.items() if k.endswith("lora_up.weight")]
    assert any(v.abs().sum() > 0 for v in ups), "training changed nothing"
    with safe_open(result.path, "pt") as f:
        md = f.metadata()
    assert md["ss_network_module"] == "networks.lora" and md["ss_network_dim"] == "4"
    assert md["ss_base_model_version"] == "sd_v1" and md["ss_steps"] == "8"
    assert "sshs_model_hash" in md
    # every event is in the metrics file, in order
    lines = (out / "tiny.metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["type"] == "Finished"
    assert sum(1 for line in lines if json.loads(line)["type"] == "StepEvent") == 8


def test_lora_loads_in_diffusers_and_changes_the_output(tiny_sd1_dir, data, tmp_path):
    from diffusers import StableDiffusionPipeline

    profile = make_profile(tiny_sd1_dir, data, tmp_path / "out", optimization__max_train_epochs=1)
    result, _ = train(profile)
    assert isinstance(result, Finished)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd1_dir)
    ids = pipe.tokenizer(["toy, a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    lat = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])

    def outputs():
        with torch.no_grad():
            h = pipe.text_encoder(ids).last_hidden_state
            return h, pipe.unet(lat, t, h).sample

    h0, u0 = outputs()
    pipe.load_lora_weights(result.path)
    h1, u1 = outputs()
    assert not torch.allclose(h0, h1) and not torch.allclose(u0, u1)


def test_same_seed_same_lora_tensor_for_tensor(tiny_sd1_dir, data, tmp_path):
    a, _ = train(make_profile(tiny_sd1_dir, data, tmp_path / "a", optimization__max_train_epochs=1, output__save_precision="float"))
    b, _ = train(make_profile(tiny_sd1_dir, data, tmp_path / "b", optimization__max_train_epochs=1, output__save_precision="float"))
    c, _ = train(make_profile(tiny_sd1_dir, data, tmp_path / "c", optimization__max_train_epochs=1, output__save_precision="float", optimization__seed=7))
    sa, sb, sc = load_file(a.path), load_file(b.path), load_file(c.path)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_sdxl_single_file_end_to_end(tiny_sdxl_dir, data, tmp_path):
    single = ldm_convert.save_single_file(tiny_sdxl_dir, "sdxl", tmp_path / "tiny-sdxl.safetensors")
    profile = make_profile(
        single, data, tmp_path / "out",
        model__model_config_dir=str(tiny_sdxl_dir),
        optimization__max_train_epochs=1,
        network__network_type="locon", network__conv_dim=2, network__conv_alpha=1.0,
        optimization__gradient_checkpointing=True, optimization__min_snr_gamma=5.0, optimization__noise_offset=0.05,
    )
    result, events = train(profile)
    assert isinstance(result, Finished), result
    sd = load_file(result.path)
    assert any(k.startswith("lora_unet_input_blocks_") and "transformer_blocks" in k for k in sd)
    assert any(k.startswith("lora_te1_text_model_") for k in sd) and any(k.startswith("lora_te2_text_model_") for k in sd)
    assert any(k.endswith("in_layers_2.lora_down.weight") for k in sd)  # LoCon on the ResBlocks
    with safe_open(result.path, "pt") as f:
        assert f.metadata()["ss_base_model_version"] == "sdxl_base_v1-0"
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    pipe.load_lora_weights(result.path)  # must not raise


def test_sd1_single_file_unet_only(tiny_sd1_dir, data, tmp_path):
    single = ldm_convert.save_single_file(tiny_sd1_dir, "sd1", tmp_path / "tiny-sd1.safetensors")
    profile = make_profile(single, data, tmp_path / "out", model__model_config_dir=str(tiny_sd1_dir),
                           network__train_text_encoder=False, optimization__max_train_epochs=1,
                           dataset__cache_latents="off", dataset__flip_aug=True)
    result, _ = train(profile)
    assert isinstance(result, Finished), result
    keys = load_file(result.path).keys()
    assert keys and all(k.startswith("lora_unet_") for k in keys)


def test_eight_bit_optimizer_on_cpu_refused_before_model_load(tiny_sd1_dir, data, tmp_path):
    profile = make_profile(tiny_sd1_dir, data, tmp_path / "out", optimization__optimizer="AdamW8bit")
    result, events = train(profile)
    assert isinstance(result, Failed)
    assert "optimization.optimizer: AdamW8bit needs an NVIDIA GPU" in result.message
    assert not any(isinstance(e, PhaseChanged) and e.phase == "loading_model" for e in events)


def test_existing_final_lora_is_not_overwritten(tiny_sd1_dir, data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "tiny.safetensors").write_bytes(b"precious")
    result, _ = train(make_profile(tiny_sd1_dir, data, out))
    assert isinstance(result, Failed) and "already exists" in result.message and "--overwrite" in result.message
    assert (out / "tiny.safetensors").read_bytes() == b"precious"
    result, _ = train(make_profile(tiny_sd1_dir, data, out, optimization__max_train_epochs=1), overwrite=True)
    assert isinstance(result, Finished)
    assert (out / "tiny.safetensors").read_bytes() != b"precious"


def test_stop_saves_then_ends_and_pause_holds(tiny_sd1_dir, data, tmp_path):
    import asyncio
    import time

    profile = make_profile(tiny_sd1_dir, data, tmp_path / "out", optimization__max_train_epochs=50,
                           output__save_every_n_epochs=0)
    handle = start_run(profile)

    async def follow():
        seen = []
        async for ev in handle.events():
            seen.append(ev)
            if isinstance(ev, StepEvent) and ev.step == 2 and not handle.control.paused:
                handle.control.pause()
                t0 = time.monotonic()
                await asyncio.sleep(0.6)
                steps_during_pause = [e for e in seen if isinstance(e, StepEvent)]
                assert len(steps_during_pause) == 2 and time.monotonic() - t0 >= 0.6
                handle.control.resume()
            if isinstance(ev, StepEvent) and ev.step == 4:
                handle.control.stop()
        return seen

    seen = asyncio.run(follow())
    handle.join(30)
    result = seen[-1]
    assert isinstance(result, Finished) and result.stopped_early and result.path == ""
    steps = [e.step for e in seen if isinstance(e, StepEvent)]
    assert steps[-1] in (4, 5) and steps[-1] < 400
    saved = {Path(e.path).name for e in seen if isinstance(e, CheckpointSaved)}
    assert f"tiny-step{steps[-1]:08d}.safetensors" in saved
    assert any(n.startswith("tiny-state-step") for n in saved)
    assert not (tmp_path / "out" / "tiny.safetensors").exists()


def test_cli_train_prints_final_path_last_and_check(tiny_sd1_dir, data, tmp_path, capsys):
    from loratui.engine.cli import run_command

    profile = tmp_path / "p.toml"
    profile.write_text(
        f'[model]\nbase_model = "{tiny_sd1_dir}"\n[dataset]\ntrain_data_dir = "{data}"\nresolution = 64\n'
        f'enable_bucket = false\nmin_bucket_reso = 64\n[optimization]\nmax_train_epochs = 1\nmixed_precision = "no"\n'
        f'[output]\noutput_dir = "{tmp_path / "out"}"\noutput_name = "cli"\n'
    )
    assert run_command(["check", str(profile)]) == 0  # in-process: one process start less (seconds of imports)
    check = capsys.readouterr().out
    assert "ready to train" in check and "2 × toy" in check
    proc = subprocess.run(
        [sys.executable, "-m", "loratui.tui.cli", "train", str(profile), "--set", "network.network_dim=2"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last == str(tmp_path / "out" / "cli.safetensors")
    assert "Traceback" not in proc.stdout + proc.stderr
    with safe_open(last, "pt") as f:
        assert f.metadata()["ss_network_dim"] == "2"
    assert run_command(["train", str(profile), "--set", "network.network_dim=0"]) == 2
    assert "--set network.network_dim=0: 0 is out of range" in capsys.readouterr().err


def test_refused_run_leaves_the_previous_metrics_alone(tiny_sd1_dir, data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "tiny.safetensors").write_bytes(b"old lora")
    (out / "tiny.metrics.jsonl").write_text('{"type": "LogEvent", "message": "old", "time": 1}\n')
    result, _ = train(make_profile(tiny_sd1_dir, data, out))
    assert isinstance(result, Failed)
    assert sorted(p.name for p in out.iterdir()) == ["tiny.metrics.jsonl", "tiny.safetensors"]
    assert "old" in (out / "tiny.metrics.jsonl").read_text()


def test_finished_loss_is_the_bias_corrected_smoothed_loss(tiny_sd1_dir, data, tmp_path):
    profile = make_profile(tiny_sd1_dir, data, tmp_path / "out", optimization__max_train_epochs=1,
                           output__save_every_n_epochs=0)
    result, events = train(profile)
    assert isinstance(result, Finished), result
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert len(steps) == 4
    assert result.summary["final_loss"] == steps[-1].smoothed_loss
    # the uncorrected EMA after 4 steps is about a third of the mean loss: far below every step's loss
    assert result.summary["final_loss"] >= min(s.loss for s in steps) - 1e-9


def test_cli_train_prints_each_dataset_warning_once(tiny_sd1_dir, data, tmp_path, capsys):
    from PIL import Image

    from loratui.engine.cli import run_command

    (data / "extra").mkdir()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(data / "extra" / "x.png")  # a folder without a <repeats>_ prefix
    profile = tmp_path / "w.toml"
    profile.write_text(
        f'[model]\nbase_model = "{tiny_sd1_dir}"\n[dataset]\ntrain_data_dir = "{data}"\nresolution = 64\n'
        'enable_bucket = false\nmin_bucket_reso = 64\n[optimization]\nmax_train_epochs = 1\nmax_train_steps = 1\n'
        f'mixed_precision = "no"\n[output]\noutput_dir = "{tmp_path / "out"}"\noutput_name = "w"\nsave_every_n_epochs = 0\n'
    )
    assert run_command(["train", str(profile)]) == 0
    out = capsys.readouterr().out
    warning = "extra has no <repeats>_ number prefix"
    assert out.count(warning) == 1, out
    assert run_command(["check", str(profile), "--overwrite"]) == 0
    assert capsys.readouterr().out.count(warning) == 1
