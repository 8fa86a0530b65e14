"""The training options kohya_ss presets use (issue 11), end to end: tiny SD 1.x / SDXL runs
with them, masked loss, kohya import / export, configs of other training kinds refused, and
the measure over every shared kohya_ss fixture."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loratui.engine.schema import profile_from_dict  # noqa: E402
from loratui.engine.training import regularize  # noqa: E402
from tiny_runs import tiny_profile  # noqa: E402


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def data(tmp_path):
    from loratui.engine.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path / "images", {"2_toy": 4}, size=(64, 64))


def _train(profile):
    from loratui.engine.train import run_training

    events: list = []
    result = run_training(profile, events.append)
    return result, events


def test_sd1_trains_with_the_preset_options_and_max_norm_reaches_the_step_events(tiny_sd1_dir, data, tmp_path):
    from safetensors.torch import load_file

    from loratui.engine.events import Finished, StepEvent

    p = tiny_profile(
        tiny_sd1_dir, data, tmp_path / "out", optimization__max_train_epochs=1,
        optimization__multires_noise_iterations=4, optimization__multires_noise_discount=0.3,
        optimization__ip_noise_gamma=0.1, optimization__debiased_estimation_loss=True,
        optimization__loss_type="huber", optimization__min_timestep=100, optimization__max_timestep=900,
        optimization__max_token_length=150, optimization__learning_rate=0.5,
        network__network_dropout=0.1, network__scale_weight_norms=0.01, output__save_precision="float",
    )
    result, events = _train(p)
    assert isinstance(result, Finished), result
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert steps and all(e.keys_scaled is not None and e.max_norm is not None for e in steps)
    assert steps[-1].keys_scaled > 0 and steps[-1].max_norm <= 0.01 + 1e-6
    sd = load_file(result.path)
    names = {k.rsplit(".", 2)[0] for k in sd if k.endswith("lora_down.weight")}
    for name in names:
        down, up, alpha = sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"], sd[f"{name}.alpha"]
        norm = regularize.delta_weight(down, up, float(alpha) / down.shape[0]).norm().item()
        assert norm <= 0.01 * (1 + 1e-4), name
    meta = json.loads(json.dumps(__import__("safetensors").safe_open(result.path, "pt").metadata()))
    assert meta["ss_multires_noise_iterations"] == "4" and meta["ss_scale_weight_norms"] == "0.01"
    assert meta["ss_loss_type"] == "huber" and meta["ss_debiased_estimation"] == "True"
    assert meta["ss_max_token_length"] == "150" and meta["ss_min_timestep"] == "100"


def test_step_events_carry_no_norm_figures_without_max_norm(tiny_sd1_dir, data, tmp_path):
    from loratui.engine.events import StepEvent

    p = tiny_profile(tiny_sd1_dir, data, tmp_path / "out", optimization__max_train_epochs=1, optimization__max_train_steps=1)
    _, events = _train(p)
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert steps and all(e.keys_scaled is None and e.mean_norm is None for e in steps)


def test_sdxl_trains_with_long_captions_and_two_text_encoder_rates(tiny_sdxl_dir, data, tmp_path):
    from loratui.engine.events import Finished

    p = tiny_profile(
        tiny_sdxl_dir, data, tmp_path / "out", optimization__max_train_epochs=1, optimization__max_train_steps=2,
        optimization__max_token_length=225,
        optimization__learning_rate_te1=1e-4, optimization__learning_rate_te2=2e-4, optimization__loss_type="smooth_l1",
        optimization__huber_schedule="exponential",
    )
    result, _ = _train(p)
    assert isinstance(result, Finished), result


def test_bucket_steps_below_8_bucket_as_sd_scripts_then_cut_to_8_pixel_blocks():
    from loratui.engine.buckets import BucketManager

    bm = BucketManager((512, 512), min_size=256, max_size=1024, step=1)
    assert bm.problems() == []
    for size in ((517, 611), (1000, 333), (512, 512), (300, 900)):
        c = bm.select(*size)
        assert c.bucket[0] % 8 == 0 and c.bucket[1] % 8 == 0, (size, c)
        assert c.resized[0] >= c.bucket[0] and c.resized[1] >= c.bucket[1]
        one = BucketManager((512, 512), min_size=256, max_size=1024, step=1)._select(*size)
        assert c.bucket == (one.bucket[0] // 8 * 8, one.bucket[1] // 8 * 8)
    assert BucketManager((512, 512), step=64).select(517, 611) == BucketManager((512, 512), step=64)._select(517, 611)


# --------------------------------------------------------------------------- kohya import / export


def _write(tmp_path, name, data) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


BASE_GUI = {"pretrained_model_name_or_path": "runwayml/stable-diffusion-v1-5", "train_data_dir": "./img",
            "output_dir": "./out", "learning_rate": 1e-4, "max_resolution": "512,512"}


@pytest.mark.parametrize("kind, extra", [
    ("Textual Inversion", {"token_string": "zxc", "init_word": "*", "num_vectors_per_token": 8, "template": "style template"}),
    ("DreamBooth", {"learning_rate_te": 1e-5, "learning_rate_te1": 1e-5, "learning_rate_te2": 1e-5}),
    ("DreamBooth", {}),
    ("fine-tune", {"train_dir": "./test", "image_folder": "./img", "caption_metadata_filename": "meta_cap.json"}),
])
def test_configs_of_other_training_kinds_are_refused_with_the_reason(tmp_path, kind, extra):
    from loratui.engine.cli import run_command
    from loratui.engine.kohya import KohyaImportError, import_kohya

    path = _write(tmp_path, "other.json", BASE_GUI | extra)
    with pytest.raises(KohyaImportError) as exc:
        import_kohya(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: is a kohya_ss {kind} config") and "LoRA" in msg
    code = run_command(["import", str(path), "-o", str(tmp_path / "p.toml")])
    assert code != 0 and not (tmp_path / "p.toml").exists()
    # the same file with the LoRA tab's keys is a LoRA config
    lora = _write(tmp_path, "lora.json", BASE_GUI | {"LoRA_type": "Standard", "network_dim": 8})
    assert import_kohya(lora).profile_dict["network"]["network_dim"] == 8


def test_gui_noise_type_decides_which_noise_keys_apply(tmp_path):
    from loratui.engine.kohya import import_kohya

    common = BASE_GUI | {"LoRA_type": "Standard", "network_dim": 8, "noise_offset": 0.05, "adaptive_noise_scale": 0.01,
                         "noise_offset_random_strength": True, "multires_noise_iterations": 8, "multires_noise_discount": 0.2}
    r = import_kohya(_write(tmp_path, "m.json", common | {"noise_offset_type": "Multires"}))
    o = r.profile_dict["optimization"]
    assert (o["multires_noise_iterations"], o["multires_noise_discount"], o["noise_offset"]) == (8, 0.2, 0.0)
    assert o["adaptive_noise_scale"] == 0.0 and o["noise_offset_random_strength"] is False
    ign = {k: why for k, _, why in r.ignored}
    assert "Multires" in ign["adaptive_noise_scale"] and "Multires" in ign["noise_offset"]
    r = import_kohya(_write(tmp_path, "o.json", common | {"noise_offset_type": "Original"}))
    o = r.profile_dict["optimization"]
    assert (o["noise_offset"], o["adaptive_noise_scale"], o["noise_offset_random_strength"]) == (0.05, 0.01, True)
    assert o["multires_noise_iterations"] == 0
    r = import_kohya(_write(tmp_path, "h.json", common | {"loss_type": "huber", "huber_c": 0.2, "huber_schedule": "exponential"}))
    o = r.profile_dict["optimization"]
    assert (o["loss_type"], o["huber_c"], o["huber_schedule"]) == ("huber", 0.2, "exponential")
    assert r.unsupported == [] and r.problems() == []


def test_new_options_export_to_sd_scripts_and_import_back(tmp_path):
    from loratui.engine.kohya import import_kohya
    from loratui.engine.kohya.exporter import sd_scripts_args
    from loratui.engine.synthetic import write_synthetic_dataset

    img = write_synthetic_dataset(tmp_path / "img", {"2_a": 1}, size=(64, 64))
    p = profile_from_dict({
        "model": {"base_model": "/m.safetensors", "family": "sdxl"},
        "dataset": {"train_data_dir": str(img), "bucket_reso_steps": 1, "min_bucket_reso": 256},
        "network": {"network_dropout": 0.1, "scale_weight_norms": 1.0},
        "optimization": {"multires_noise_iterations": 6, "multires_noise_discount": 0.2, "ip_noise_gamma": 0.1,
                         "loss_type": "huber", "huber_schedule": "constant", "max_token_length": 225,
                         "learning_rate_te1": 1e-5, "learning_rate_te2": 2e-5, "lr_scheduler_type": "CosineAnnealingLR",
                         "lr_scheduler_args": "T_max=10", "min_timestep": 100, "mixed_precision": "bf16", "full_bf16": True},
        "output": {"output_dir": str(tmp_path / "o"), "output_name": "x"},
    })
    a, _ = sd_scripts_args(p)
    assert a["text_encoder_lr"] == [1e-5, 2e-5] and a["lr_scheduler_args"] == ["T_max=10"]
    assert (a["network_dropout"], a["scale_weight_norms"], a["max_token_length"], a["full_bf16"]) == (0.1, 1.0, 225, True)
    assert (a["multires_noise_iterations"], a["loss_type"], a["huber_schedule"], a["min_timestep"]) == (6, "huber", "constant", 100)
    assert "max_timestep" not in a and "huber_c" not in a  # sd-scripts' defaults are left out
    import tomli_w

    cfg = tmp_path / "c.toml"
    cfg.write_text(tomli_w.dumps(a))
    back = import_kohya(cfg).profile_dict
    for section, key in (("network", "network_dropout"), ("network", "scale_weight_norms"), ("optimization", "ip_noise_gamma"),
                         ("optimization", "multires_noise_iterations"), ("optimization", "max_token_length"),
                         ("optimization", "lr_scheduler_type"), ("optimization", "lr_scheduler_args"), ("dataset", "bucket_reso_steps"),
                         ("optimization", "learning_rate_te1"), ("optimization", "learning_rate_te2"), ("optimization", "full_bf16")):
        assert back[section][key] == p.to_dict()[section][key], key


# --------------------------------------------------------------------------- measure: every fixture


# settings of families / training kinds loratui does not have (Flux.1), and the LyCORIS
# network types with their options (issue 11's other half, the lycoris branch)
NOT_THIS_ISSUE = {
    # Flux.1 (no such family here)
    "ae", "apply_t5_attn_mask", "clip_l", "discrete_flow_shift", "flux1_cache_text_encoder_outputs",
    "flux1_cache_text_encoder_outputs_to_disk", "flux1_checkbox", "fp8_base", "guidance_scale",
    "model_prediction_type", "sdxl_cache_text_encoder_outputs", "t5xxl", "t5xxl_max_token_length",
    "timestep_sampling", "train_blocks",
    # network types loratui does not train
    "LoRA_type",
}


def test_every_kohya_ss_fixture_lists_only_settings_of_what_loratui_lacks_as_unsupported():
    from conftest import SHARED_FIXTURES

    from loratui.engine.kohya import import_kohya

    files = sorted((SHARED_FIXTURES / "kohya_ss").iterdir()) if (SHARED_FIXTURES / "kohya_ss").is_dir() else []
    allowed = NOT_THIS_ISSUE
    if not files:  # without ../shared: our own fixtures, whose messy one holds two keys on purpose
        files = sorted((Path(__file__).parent / "fixtures" / "kohya").iterdir())
        allowed = NOT_THIS_ISSUE | {"color_aug", "some_future_option"}
    total = 0
    for path in files:
        r = import_kohya(path)
        keys = {k.split(":")[-1].removeprefix("additional_parameters --").split(" ")[-1] for k, _, _ in r.unsupported}
        keys = {k.rsplit(".", 1)[-1] for k in keys}
        assert keys <= allowed, (path.name, sorted(keys - allowed))
        total += len(r.unsupported)
    if files[0].parent.name == "kohya_ss":
        # 43 before issue 11; the last was the resolution 512,650, now taken as sd-scripts takes it
        assert total == 0


# --------------------------------------------------------------------------- masked loss, end to end


def _rgba_dataset(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    folder = root / "2_toy"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        arr = rng.integers(0, 255, (64, 64, 4), dtype=np.uint8)
        arr[..., 3] = 255
        arr[:, 32:, 3] = 0  # the right half is transparent
        Image.fromarray(arr, "RGBA").save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text("toy")
    return root


def test_alpha_and_folder_masks_follow_the_image_geometry(tmp_path):
    import numpy as np
    from PIL import Image

    from loratui.engine.dataset.items import ImageItem
    from loratui.engine.training.masks import load_mask

    root = _rgba_dataset(tmp_path / "img")
    path = root / "2_toy" / "img0.png"
    item = ImageItem(path=path, caption="toy", concept="toy", folder=str(root / "2_toy"), repeats=2, is_reg=False,
                     image_size=(64, 64), bucket=(64, 64), resized=(64, 64))
    ds = profile_from_dict({"dataset": {"alpha_mask": True}}).dataset
    m = load_mask(item, ds, flip=False)
    assert m.shape == (64, 64) and m[:, :32].min() == 1.0 and m[:, 32:].max() == 0.0
    flipped = load_mask(item, ds, flip=True)
    assert flipped[:, 32:].min() == 1.0 and flipped[:, :32].max() == 0.0
    masks = tmp_path / "masks"
    masks.mkdir()
    red = np.zeros((64, 64, 3), dtype=np.uint8)
    red[:32, :, 0] = 255  # top half trained
    Image.fromarray(red).save(masks / "img0.png")
    ds = profile_from_dict({"dataset": {"conditioning_data_dir": str(masks)}}).dataset
    m = load_mask(item, ds, flip=False)
    assert m[:32].min() == 1.0 and m[32:].max() == 0.0
    from loratui.engine.training.paths import TrainingError

    other = ImageItem(path=root / "2_toy" / "img1.png", caption="", concept="toy", folder=str(root / "2_toy"), repeats=2,
                      is_reg=False, image_size=(64, 64), bucket=(64, 64), resized=(64, 64))
    with pytest.raises(TrainingError, match="no mask for .*img1.png"):
        load_mask(other, ds, flip=False)


def test_masked_loss_trains_and_a_fully_masked_image_does_not_move_the_lora(tiny_sd1_dir, tmp_path):
    from safetensors.torch import load_file

    from loratui.engine.events import Finished
    from loratui.engine.training.prepare import preflight

    root = _rgba_dataset(tmp_path / "img")
    p = tiny_profile(tiny_sd1_dir, root, tmp_path / "out", optimization__max_train_epochs=1,
                     optimization__masked_loss=True, dataset__alpha_mask=True, output__save_precision="float")
    result, _ = _train(p)
    assert isinstance(result, Finished), result
    # every pixel masked out: zero loss, zero gradients, the LoRA's up weights stay at their zero init
    from PIL import Image

    for f in (root / "2_toy").glob("*.png"):
        img = Image.open(f)
        img.putalpha(0)
        img.save(f)
    p2 = tiny_profile(tiny_sd1_dir, root, tmp_path / "out2", optimization__max_train_epochs=1, optimization__max_train_steps=2,
                      optimization__masked_loss=True, dataset__alpha_mask=True, output__save_precision="float")
    result, _ = _train(p2)
    sd = load_file(result.path)
    assert all(not v.any() for k, v in sd.items() if k.endswith("lora_up.weight"))
    bad = tiny_profile(tiny_sd1_dir, root, tmp_path / "out3", optimization__masked_loss=True)
    assert [x.key for x in preflight(bad, overwrite=False)] == ["optimization.masked_loss"]


def test_an_imported_preset_with_these_options_trains_one_step(tiny_sd1_dir, data, tmp_path):
    """sd15_locon_adamw8bit.json (IP noise, debiased loss, adaptive / random noise offset,
    network dropout, max-norm) as imported, on the tiny model: one step on the CPU."""
    from conftest import SHARED_FIXTURES

    from loratui.engine.events import Finished, StepEvent
    from loratui.engine.kohya import import_kohya

    path = SHARED_FIXTURES / "kohya_ss" / "sd15_locon_adamw8bit.json"  # ../shared (CI has it)
    d = import_kohya(path).profile().to_dict()
    o = d["optimization"]
    assert (o["ip_noise_gamma"], o["debiased_estimation_loss"], o["adaptive_noise_scale"]) == (0.1, True, 0.005)
    assert d["network"]["scale_weight_norms"] == 1.0 and d["network"]["network_dropout"] == 0.1
    assert (d["network"]["rank_dropout"], d["network"]["module_dropout"]) == (0.1, 0.1)  # networks.lora's network_args
    # what only a GPU has (8-bit AdamW, bf16) and the paths, set for the tiny model
    d["model"].update(base_model=str(tiny_sd1_dir), family="auto")
    d["dataset"].update(train_data_dir=str(data), resolution=64, resolution_height=0, enable_bucket=False,
                        min_bucket_reso=64, cache_latents="memory", reg_data_dir="")
    o.update(optimizer="AdamW", mixed_precision="no", max_train_steps=1, train_batch_size=2)
    d["network"].update(network_dim=4, conv_dim=4, network_weights="")
    d["output"].update(output_dir=str(tmp_path / "out"), output_name="preset", resume="",
                       logging_dir=str(tmp_path / "logs"))  # the preset's ./test/logs would land in the cwd
    result, events = _train(profile_from_dict(d))
    assert isinstance(result, Finished), result
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert len(steps) == 1 and steps[0].keys_scaled is not None and math.isfinite(steps[0].loss)
    meta = __import__("safetensors").safe_open(result.path, "pt").metadata()
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "8", "rank_dropout": "0.1",
                                                   "module_dropout": "0.1"}  # as sd-scripts writes its net_kwargs
