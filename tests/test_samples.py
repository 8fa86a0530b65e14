"""Sample images: sd-scripts' prompt files, the settings, rendering during a
tiny training run with the LoRA being trained (CPU, seconds)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loratui.engine.samples.prompts import PromptError, load_prompt_file, load_prompts, parse_line, parse_text  # noqa: E402
from loratui.engine.samples.samplers import SAMPLERS, make_scheduler, scheduler_class_name  # noqa: E402

FIXTURE = Path("/work/shared/fixtures/sd_scripts/sample_prompts.txt")


# --------------------------------------------------------------------------- prompt files


def test_sd_scripts_fixture_reads_every_option():
    if not FIXTURE.is_file():
        pytest.skip("shared fixture not present")
    a, b, c = load_prompt_file(FIXTURE)
    assert a.prompt.startswith("masterpiece, best quality, 1girl") and a.prompt.endswith("simple background")
    assert a.negative_prompt.startswith("low quality, worst quality") and a.negative_prompt.endswith("low effort")
    assert (a.width, a.height, a.seed, a.scale, a.sample_steps, a.index) == (768, 768, 1, 7.5, 28, 0)
    assert (b.width, b.height, b.seed, b.scale, b.sample_steps, b.index) == (576, 832, 2, 5.5, 40, 1)
    assert (c.guidance_scale, c.scale, c.sample_steps, c.index) == (0.0, 4.0, 20, 2)


def test_comments_blank_lines_and_sampler_option():
    ps = parse_text("# a comment\n\n  cat on a mat --ss k_euler_a --d 7\n#x\ndog --s 5\n")
    assert [p.prompt for p in ps] == ["cat on a mat", "dog"]
    assert ps[0].sampler == "k_euler_a" and ps[0].seed == 7 and ps[1].sample_steps == 5
    assert [p.index for p in ps] == [0, 1]
    assert parse_line("x --SS DDIM").sampler == "ddim"


@pytest.mark.parametrize("line, words", [
    ("a cat --q 3", ["line 2", "unknown option --q"]),
    ("a cat --w big", ["line 2", "--w 'big' is not a whole number"]),
    ("a cat --l", ["line 2", "--l needs a value"]),
    ("a cat --ss warp", ["line 2", "--ss 'warp' is not a sampler"]),
    ("a cat --s 0", ["line 2", "out of range"]),
    ("--w 512", ["line 2", "the prompt is empty"]),
])
def test_bad_options_name_the_file_and_line(tmp_path, line, words):
    f = tmp_path / "p.txt"
    f.write_text(f"# ok\n{line}\n")
    with pytest.raises(PromptError) as e:
        load_prompt_file(f)
    assert str(e.value).startswith(str(f))
    for w in words:
        assert w in str(e.value)


def test_toml_and_json_prompt_files(tmp_path):
    t = tmp_path / "p.toml"
    t.write_text('[prompt]\nwidth = 256\nsample_steps = 12\n\n[[prompt.subset]]\nprompt = "one"\nseed = 3\n\n'
                 '[[prompt.subset]]\nprompt = "two"\nwidth = 320\nscale = 5\n')
    one, two = load_prompt_file(t)
    assert (one.prompt, one.width, one.sample_steps, one.seed) == ("one", 256, 12, 3)
    assert (two.prompt, two.width, two.scale, two.index) == ("two", 320, 5.0, 1)
    j = tmp_path / "p.json"
    j.write_text(json.dumps(["a --w 128", {"prompt": "b", "negative_prompt": "ugly", "sample_sampler": "heun"}]))
    a, b = load_prompt_file(j)
    assert a.width == 128 and (b.negative_prompt, b.sampler, b.index) == ("ugly", "heun", 1)
    j.write_text(json.dumps([{"prompt": "b", "colour": 1}]))
    with pytest.raises(PromptError, match=r"p.json, item 1: unknown key 'colour'"):
        load_prompt_file(j)
    with pytest.raises(PromptError, match="no such prompt file"):
        load_prompts(str(tmp_path / "missing.txt"))


def test_prompts_typed_in_place():
    ps = load_prompts("a red circle --d 1\nblue square")
    assert [p.prompt for p in ps] == ["a red circle", "blue square"]
    with pytest.raises(PromptError, match=r"output.sample_prompts, line 2: unknown option --zz"):
        load_prompts("ok\nbad --zz 1")


def test_sampler_names_map_to_diffusers_schedulers(tiny_sd1_dir):
    from diffusers import DDPMScheduler

    assert {"ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++",
            "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a"} <= set(SAMPLERS)
    assert scheduler_class_name("k_euler_a") == "EulerAncestralDiscreteScheduler"
    cfg = DDPMScheduler.from_pretrained(tiny_sd1_dir, subfolder="scheduler").config
    for name in SAMPLERS:
        s = make_scheduler(name, {**cfg, "prediction_type": "v_prediction"})
        assert type(s).__name__ == scheduler_class_name(name)
        assert s.config.prediction_type == "v_prediction"
    assert make_scheduler("dpmsolver++", cfg).config.algorithm_type == "dpmsolver++"


# --------------------------------------------------------------------------- kohya names


def test_kohya_sample_and_logging_keys_are_imported(tmp_path):
    from loratui.engine.kohya import import_kohya

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat --d 1\n")
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f'sample_every_n_epochs = 2\nsample_every_n_steps = 50\nsample_prompts = "{prompts}"\n'
                   'sample_sampler = "Euler_A"\nsample_at_first = true\nlogging_dir = "/logs"\nlog_prefix = "mine-"\n'
                   'log_with = "tensorboard"\n')
    r = import_kohya(cfg)
    o = r.profile().output
    assert (o.sample_every_n_epochs, o.sample_every_n_steps, o.sample_prompts) == (2, 50, str(prompts))
    assert (o.sample_sampler, o.sample_at_first, o.logging_dir, o.log_prefix, o.log_with) == (
        "euler_a", True, "/logs", "mine-", "tensorboard")
    assert not [k for k, _, _ in r.ignored if k.startswith(("sample_", "log"))]


def test_typed_prompts_export_to_a_prompt_file_sd_scripts_reads_and_back(tmp_path):
    import tomllib

    from loratui.engine.kohya import export_sd_scripts, import_kohya
    from loratui.engine.schema import profile_from_dict

    p = profile_from_dict({"output": {"sample_prompts": "a cat --d 1\nblue dog", "sample_every_n_epochs": 1}})
    res = export_sd_scripts(p, tmp_path / "x")
    cfg = tomllib.loads(res.config_path.read_text())
    written = Path(cfg["sample_prompts"])
    assert written.name == "sample_prompts.txt" and [q.prompt for q in load_prompt_file(written)] == ["a cat", "blue dog"]
    assert import_kohya(res.config_path).profile().output.sample_prompts == "a cat --d 1\nblue dog"


# --------------------------------------------------------------------------- during training


@pytest.fixture
def data(tmp_path):
    from loratui.engine.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path / "images", {"2_toy": 4}, size=(64, 64))


def _train(profile):
    from loratui.engine.train import run_training

    events = []
    return run_training(profile, events.append), events


def test_samples_every_epoch_same_lora_as_without(tiny_sd1_dir, data, tmp_path):
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    from loratui.engine.events import Finished, SampleSaved, event_from_dict
    from tiny_runs import tiny_profile

    prompts = "toy, a red circle --d 5 --s 3\ntoy --s 2 --w 72 --h 64"
    common = dict(optimization__max_train_epochs=1, output__save_precision="float", optimization__learning_rate=1e-2)
    with_s = tiny_profile(tiny_sd1_dir, data, tmp_path / "a", output__sample_every_n_epochs=1, output__sample_at_first=True,
                          output__sample_prompts=prompts, output__sample_sampler="ddim",
                          output__logging_dir=str(tmp_path / "logs"), output__log_prefix="tiny-", **common)
    a, ev_a = _train(with_s)
    b, _ = _train(tiny_profile(tiny_sd1_dir, data, tmp_path / "b", **common))
    assert isinstance(a, Finished) and isinstance(b, Finished), (a, b)
    sa, sb = load_file(a.path), load_file(b.path)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)  # the RNG of training untouched

    saved = [e for e in ev_a if isinstance(e, SampleSaved)]
    assert [(e.epoch, e.step, e.index) for e in saved] == [(0, 0, 0), (0, 0, 1), (1, 4, 0), (1, 4, 1)]
    names = sorted(p.name for p in (tmp_path / "a" / "sample").iterdir())
    assert len(names) == 4 and all(n.startswith("tiny_") and n.endswith(".png") for n in names)
    first = Path(saved[0].path).name.split("_")
    assert first[1] == "000000" and first[2] == "00" and len(first[3]) == 14 and first[4] == "5.png"
    assert Path(saved[2].path).name.startswith("tiny_e000001_00_")
    img = Image.open(saved[3].path)
    assert img.size == (72, 64)
    meta = json.loads(img.text["loratui"])
    assert meta["prompt"] == "toy" and meta["sample_steps"] == 2 and meta["sampler"] == "ddim" and meta["epoch"] == 1
    assert img.text["parameters"].startswith("toy\nSteps: 2, Sampler: ddim")
    # the same seed renders the base model (before training) and the trained LoRA differently
    base, last = np.asarray(Image.open(saved[0].path)), np.asarray(Image.open(saved[2].path))
    assert base.shape == last.shape and np.abs(base.astype(int) - last.astype(int)).max() > 0
    # the metrics file holds the samples like the other events
    lines = [json.loads(x) for x in (tmp_path / "a" / "tiny.metrics.jsonl").read_text().splitlines()]
    back = [event_from_dict(d) for d in lines if d["type"] == "SampleSaved"]
    assert [e.path for e in back] == [e.path for e in saved]
    # TensorBoard, as sd-scripts' log_with: <logging_dir>/<log_prefix><date-time>, loss/lr scalars and the samples
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run_dir,) = (tmp_path / "logs").iterdir()
    assert run_dir.name.startswith("tiny-") and len(run_dir.name) == len("tiny-") + 14
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/current")] == [1, 2, 3, 4]
    assert {"loss/average", "lr/unet", "speed/it_per_s"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Images("sample_1")] == [0, 4] and acc.Images("sample_1")[0].width == 72


def test_failing_sample_is_a_warning_not_a_failed_run(tiny_sd1_dir, data, tmp_path, monkeypatch):
    from loratui.engine.events import Finished, SampleSaved, WarningEvent
    from loratui.engine.samples import render as render_mod
    from tiny_runs import tiny_profile

    def broken(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(render_mod, "render", broken)
    p = tiny_profile(tiny_sd1_dir, data, tmp_path / "o", optimization__max_train_epochs=1, output__sample_every_n_epochs=1,
                     output__sample_prompts="toy --s 2")
    res, events = _train(p)
    assert isinstance(res, Finished)
    warnings = [e.message for e in events if isinstance(e, WarningEvent)]
    assert any("sample 1 (toy) failed: out of memory" in w and "training goes on" in w for w in warnings), warnings
    assert not [e for e in events if isinstance(e, SampleSaved)]


def test_bad_prompt_file_stops_the_run_before_the_model_loads(tiny_sd1_dir, data, tmp_path):
    from loratui.engine.events import Failed, PhaseChanged
    from tiny_runs import tiny_profile

    f = tmp_path / "p.txt"
    f.write_text("a cat\nbad --zz 3\n")
    p = tiny_profile(tiny_sd1_dir, data, tmp_path / "o", output__sample_every_n_epochs=1, output__sample_prompts=str(f))
    res, events = _train(p)
    assert isinstance(res, Failed)
    assert f"output.sample_prompts: {f}, line 2: unknown option --zz" in res.message
    assert "loading_model" not in [e.phase for e in events if isinstance(e, PhaseChanged)]


def test_wandb_asked_for_but_missing_is_refused_with_what_to_do(tiny_sd1_dir, data, tmp_path, monkeypatch):
    import importlib.util

    from loratui.engine.samples.tracking import logging_problems
    from tiny_runs import tiny_profile

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    p = tiny_profile(tiny_sd1_dir, data, tmp_path / "o", output__log_with="wandb")
    (problem,) = logging_problems(p)
    assert problem.key == "output.log_with" and "wandb package" in problem.message and "pip install wandb" in problem.hint
    tb = tiny_profile(tiny_sd1_dir, data, tmp_path / "o", output__log_with="tensorboard")
    assert [q.key for q in logging_problems(tb)] == ["output.logging_dir"]


# --------------------------------------------------------------------------- loratui sample (contact sheet)


def _lora_files(model_dir, folder: Path) -> Path:
    """Two LoRA files of one name (an epoch's and the final), with random nonzero weights."""
    import torch

    from loratui.engine.loading import load_components
    from loratui.engine.lora import LoRANetwork
    from loratui.engine.schema import ModelSettings

    comp = load_components(ModelSettings(base_model=str(model_dir)))
    net = LoRANetwork.create(comp.unet, comp.text_encoders, comp.family, rank=4, alpha=4)
    meta = {"ss_output_name": "toy", "ss_tag_frequency": json.dumps({"2_toy": {"toy": 8, "red circle": 2}})}
    torch.manual_seed(0)
    for i, name in enumerate(("toy-000001.safetensors", "toy.safetensors")):
        for p in net.parameters():
            p.data.normal_(0, 0.3 * (i + 1))
        net.save(folder / name, meta)
    return folder / "toy.safetensors"


def test_a_second_sheet_in_the_same_second_does_not_replace_the_first(tmp_path, monkeypatch):
    import time

    from loratui.engine.samples.sheet import sheet_path

    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20261203120000")
    lora = tmp_path / "toy.safetensors"
    first = sheet_path(lora)
    assert first == tmp_path / "sample" / "toy_sheet_20261203120000.png"
    first.parent.mkdir()
    first.write_bytes(b"png")
    assert sheet_path(lora) == tmp_path / "sample" / "toy_sheet_20261203120000_2.png"


def test_sample_command_writes_a_contact_sheet_of_weights_and_epochs(tiny_sd1_dir, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from loratui.engine.cli import run_command
    from loratui.engine.samples.sheet import trigger_words

    folder = tmp_path / "loras"
    folder.mkdir()
    lora = _lora_files(tiny_sd1_dir, folder)
    assert trigger_words({"ss_tag_frequency": json.dumps({"2_toy": {"toy": 8, "red circle": 2}})}) == "toy"
    out = tmp_path / "sheet.png"
    rc = run_command(["sample", str(lora), "--base", str(tiny_sd1_dir), "--weights", "0,1", "--epochs-from", str(folder),
                      "--out", str(out), "--cpu", "--sampler", "ddim", "--prompt", "toy --s 2 --w 64 --h 64 --d 3"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "loras    toy-000001.safetensors, toy.safetensors" in text and f"wrote    {out}" in text
    sheet = Image.open(out)
    assert sheet.size == (160 + 2 * 68, 24 + 2 * 68)
    a = np.asarray(sheet.convert("RGB")).astype(int)

    def cell(r, c):
        x, y = 160 + c * 68, 24 + r * 68
        return a[y:y + 64, x:x + 64]

    assert np.array_equal(cell(0, 0), cell(1, 0))  # weight 0: the base model, whatever the file
    assert np.abs(cell(0, 1) - cell(0, 0)).max() > 0 and np.abs(cell(1, 1) - cell(0, 1)).max() > 0
    assert "weights" in json.loads(sheet.text["loratui"])
    # bad input: a clear message, nothing written
    assert run_command(["sample", str(lora), "--base", str(tiny_sd1_dir), "--weights", "a,b"]) == 2
    assert "--weights 'a,b': expected numbers" in capsys.readouterr().err
    assert run_command(["sample", str(tmp_path / "nope.safetensors"), "--base", str(tiny_sd1_dir)]) == 2
    assert "file not found" in capsys.readouterr().err


def test_text_encoders_off_the_device_encode_where_they_are():
    """A run that cached the text-encoder outputs moved the encoders off the GPU: samples
    encode their prompts there and bring the outputs to the sampling device (here: a CPU
    module, outputs to the meta device, the one other device every machine has)."""
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from loratui.engine.samples.render import encoders_where_they_are

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(2, 2)

        def forward(self, ids, attention_mask=None):
            assert ids.device.type == "cpu" and attention_mask.device.type == "cpu"
            h = self.proj(ids)
            return BaseModelOutputWithPooling(last_hidden_state=h, pooler_output=h[:, 0], hidden_states=(h, h))

    te, on_device = Encoder(), torch.nn.Linear(2, 2).to("meta")
    with encoders_where_they_are([te, on_device, None], "meta"):
        out = te(torch.ones(1, 2), attention_mask=torch.ones(1, 2))
        assert not on_device._forward_hooks  # on the device already: untouched
    assert out.last_hidden_state.device.type == "meta" and out.pooler_output.device.type == "meta"
    assert out.hidden_states[1].device.type == "meta" and out[0].device.type == "meta"
    assert not te._forward_hooks and not te._forward_pre_hooks
    assert te(torch.ones(1, 2), attention_mask=torch.ones(1, 2)).last_hidden_state.device.type == "cpu"


def test_a_sample_decodes_in_tiles_only_where_the_card_is_short_of_memory(monkeypatch):
    import torch

    from loratui.engine.samples import render
    from loratui.engine.training import fastpath

    class Vae(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float16))
            self.use_tiling = False

        def enable_tiling(self):
            self.use_tiling = True

        def disable_tiling(self):
            self.use_tiling = False

    vae = Vae()
    need = render.decode_need(vae, 1024, 1024)
    assert 8 * 2**30 < need < 10 * 2**30  # SDXL's VAE at 1024² in 16 bits: ~9 GiB
    for free, tiled in ((need // 4, True), (need * 2, False), (None, False)):  # None: not a CUDA device
        monkeypatch.setattr(fastpath, "free_memory", lambda device, free=free: free)
        with render._tiled_if_short(vae, "cuda", 1024, 1024):
            assert vae.use_tiling is tiled
        assert vae.use_tiling is False


def test_samples_run_a_compiled_denoiser_eagerly():
    """no_grad, eval and the CFG batch of 2 would each compile the denoiser again."""
    import torch

    from loratui.engine.samples.render import _eager

    calls = []

    def backend(gm, inputs):
        calls.append(1)
        return gm.forward

    f = torch.compile(lambda x: x * 2, backend=backend)
    with _eager():
        assert torch.equal(f(torch.ones(3)), torch.full((3,), 2.0))
    assert calls == []
    f(torch.ones(3))
    assert calls == [1]
