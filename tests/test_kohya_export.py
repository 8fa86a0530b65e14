"""Exporting profiles for sd-scripts, and import → export → import round trips."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import pytest
from conftest import SHARED_FIXTURES

from loratui.engine.cli import run_command
from loratui.engine.kohya import export_sd_scripts, import_kohya, sd_scripts_command
from loratui.engine.schema import load_profile, profile_from_dict, save_profile

FIXTURES = Path(__file__).parent / "fixtures" / "kohya"
SHARED = SHARED_FIXTURES / "kohya_ss"

# sd-scripts argument names the export may use (train_network.py / sdxl_train_network.py).
SD_SCRIPTS_ARGS = {
    "pretrained_model_name_or_path", "vae", "v2", "v_parameterization", "clip_skip", "dataset_config",
    "train_data_dir", "reg_data_dir", "resolution", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
    "bucket_reso_steps", "bucket_no_upscale", "caption_extension", "shuffle_caption", "keep_tokens",
    "caption_dropout_rate", "flip_aug", "train_batch_size", "prior_loss_weight", "cache_latents",
    "cache_latents_to_disk", "network_module", "network_dim", "network_alpha", "network_args",
    "network_weights", "network_train_unet_only", "network_train_text_encoder_only", "optimizer_type",
    "optimizer_args", "learning_rate", "unet_lr", "text_encoder_lr", "lr_scheduler", "lr_warmup_steps",
    "lr_scheduler_num_cycles", "lr_scheduler_power", "max_train_steps", "max_train_epochs",
    "gradient_accumulation_steps", "gradient_checkpointing", "mixed_precision", "seed", "max_grad_norm",
    "min_snr_gamma", "noise_offset", "sdpa", "output_dir", "output_name", "save_model_as", "save_precision",
    "save_every_n_epochs", "save_every_n_steps", "save_state", "save_last_n_epochs_state",
    "save_last_n_steps_state", "resume", "metadata_title", "metadata_author", "metadata_description",
    "metadata_tags", "training_comment",
    # issue 11: the training options presets use
    "network_dropout", "scale_weight_norms", "multires_noise_iterations", "multires_noise_discount",
    "adaptive_noise_scale", "noise_offset_random_strength", "ip_noise_gamma", "ip_noise_gamma_random_strength",
    "debiased_estimation_loss", "min_timestep", "max_timestep", "loss_type", "huber_c", "huber_schedule",
    "huber_scale", "max_token_length", "lr_scheduler_type", "lr_scheduler_args", "full_bf16", "full_fp16",
    "sample_every_n_epochs", "sample_every_n_steps", "sample_prompts", "sample_sampler", "sample_at_first",
    "log_with", "logging_dir", "log_prefix", "ddp_timeout",
}
DATASET_KEYS = {
    "general": {"caption_extension", "shuffle_caption", "keep_tokens", "caption_dropout_rate", "flip_aug"},
    "dataset": {"resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
                "bucket_reso_steps", "bucket_no_upscale", "subsets"},
    "subset": {"image_dir", "num_repeats", "class_tokens", "is_reg"},
}


def _trainable_configs() -> list[Path]:
    files = sorted(FIXTURES.iterdir())
    if SHARED.is_dir():
        files += sorted(SHARED.iterdir())
    out = []
    for f in files:
        r = import_kohya(f)
        if not r.problems():
            out.append(f)
    return out


def _concepts(root: Path, names: list[str]) -> Path:
    for n in names:
        (root / n).mkdir(parents=True)
    return root


def test_round_trip_without_dataset_folders(tmp_path):
    """import → export (train_data_dir form: the folders are not here) → import."""
    configs = _trainable_configs()
    assert len(configs) >= 4
    for i, path in enumerate(configs):
        p1 = import_kohya(path).profile()
        out = tmp_path / f"x{i}"
        res = export_sd_scripts(p1, out, source=str(path))
        assert res.dataset_path is None
        p2 = import_kohya(res.config_path).profile()
        assert p2.to_dict() == p1.to_dict(), path.name


def test_round_trip_with_dataset_config(tmp_path):
    """import → export (config_file + dataset_config from the concept folders) → import."""
    img = _concepts(tmp_path / "img", ["10_mychar", "3_red outfit"])
    reg = _concepts(tmp_path / "reg", ["1_person"])
    for i, path in enumerate(_trainable_configs()):
        d = import_kohya(path).profile().to_dict()
        d["dataset"]["train_data_dir"] = str(img)
        d["dataset"]["reg_data_dir"] = str(reg) if i % 2 else ""
        p1 = profile_from_dict(d)
        res = export_sd_scripts(p1, tmp_path / f"out{i}")
        assert res.dataset_path is not None
        r2 = import_kohya(res.config_path)
        assert r2.unsupported == [], (path.name, r2.unsupported)
        assert r2.profile().to_dict() == p1.to_dict(), path.name


def test_round_trip_of_settings_sd_scripts_has_no_key_for(tmp_path):
    img = _concepts(tmp_path / "img", ["2_a"])
    d = import_kohya(FIXTURES / "gui_sdxl_prodigy.json").profile().to_dict()
    d["dataset"].update(train_data_dir=str(img), balance_concepts=True, reg_data_dir=str(tmp_path / "empty-reg"))
    d["network"].update(conv_dim=12, conv_alpha=3.0)  # kept for a plain LoRA
    d["model"].update(model_config_dir="/cfg/sdxl")
    d["optimization"].update(max_train_steps=500, max_train_epochs=9)
    p1 = profile_from_dict(d)
    res = export_sd_scripts(p1, tmp_path / "out")
    text = res.config_path.read_text()
    assert "# loratui: family = \"sdxl\"" in text and "# loratui: balance_concepts = true" in text
    cfg = tomllib.loads(text)
    assert "max_train_epochs" not in cfg  # sd-scripts would let it override max_train_steps
    assert "conv_dim" not in str(cfg.get("network_args", ""))  # would turn a LoRA into a LoCon
    assert import_kohya(res.config_path).profile().to_dict() == p1.to_dict()


def test_exported_files_use_sd_scripts_names_only(tmp_path):
    img = _concepts(tmp_path / "img", ["10_mychar", "4_style"])
    reg = _concepts(tmp_path / "reg", ["1_person"])
    d = import_kohya(FIXTURES / "gui_sd15_locon_messy.json").profile().to_dict()
    d["dataset"].update(train_data_dir=str(img), reg_data_dir=str(reg))
    p = profile_from_dict(d)
    res = export_sd_scripts(p, tmp_path / "out", source="p.toml")
    cfg = tomllib.loads(res.config_path.read_text())
    assert set(cfg) <= SD_SCRIPTS_ARGS, set(cfg) - SD_SCRIPTS_ARGS
    assert cfg["network_module"] == "networks.lora"
    assert cfg["network_args"] == ["conv_dim=8", "conv_alpha=4", "rank_dropout=0.1"]  # networks.lora reads it
    assert cfg["optimizer_type"] == "AdamW8bit" and cfg["optimizer_args"] == ["weight_decay=0.1", "betas=0.9,0.99"]
    assert cfg["network_train_unet_only"] is True
    assert cfg["cache_latents"] is True and cfg["cache_latents_to_disk"] is True
    assert cfg["lr_warmup_steps"] == 0.1 and cfg["clip_skip"] == 2
    assert cfg["dataset_config"] == str(res.dataset_path.resolve())
    assert "train_data_dir" not in cfg  # sd-scripts ignores it next to a dataset_config
    ds = tomllib.loads(res.dataset_path.read_text())
    assert set(ds["general"]) <= DATASET_KEYS["general"]
    (dataset,) = ds["datasets"]
    assert set(dataset) <= DATASET_KEYS["dataset"]
    assert dataset["resolution"] == [768, 512] and dataset["batch_size"] == 2
    subsets = {Path(s["image_dir"]).name: s for s in dataset["subsets"]}
    assert all(set(s) <= DATASET_KEYS["subset"] for s in subsets.values())
    assert subsets["10_mychar"] == {"image_dir": str(img / "10_mychar"), "num_repeats": 10, "class_tokens": "mychar"}
    assert subsets["4_style"]["num_repeats"] == 4
    assert subsets["1_person"]["is_reg"] is True
    assert res.script == "train_network.py"
    assert res.command == f"accelerate launch train_network.py --config_file {res.config_path.resolve()}"


def test_print_command_for_sdxl():
    p = import_kohya(FIXTURES / "gui_sdxl_prodigy.json").profile()
    cmd = sd_scripts_command(p)
    argv = shlex.split(cmd)
    assert argv[:5] == ["accelerate", "launch", "--num_cpu_threads_per_process", "1", "sdxl_train_network.py"]
    assert "--network_train_unet_only" in argv and "--gradient_checkpointing" in argv
    assert "--pretrained_model_name_or_path=stabilityai/stable-diffusion-xl-base-1.0" in argv
    assert "--resolution=1024,1024" in argv and "--network_dim=16" in argv
    i = argv.index("--optimizer_args")
    assert argv[i + 1 : i + 5] == ["decouple=True", "weight_decay=0.01", "d_coef=2", "use_bias_correction=True"]
    assert "--v2" not in argv and "--flip_aug" in argv and "--shuffle_caption" in argv
    assert not any(a.startswith("--enable_bucket=") for a in argv)  # flags, not =True


def test_print_command_quotes_paths_with_spaces():
    d = import_kohya(FIXTURES / "gui_sd15_lokr.json").profile_dict
    d["network"]["network_type"] = "lora"
    d["network"]["network_dim"] = 8  # the file's LoKr "full dimension" 100000 is LoKr's only
    d["dataset"]["train_data_dir"] = "/data/my images"
    cmd = sd_scripts_command(profile_from_dict(d))
    argv = shlex.split(cmd)
    assert "--train_data_dir=/data/my images" in argv and "--v2" in argv and "--v_parameterization" in argv
    assert "train_network.py" in argv


# --------------------------------------------------------------------------- the CLI


def test_cli_import_export_import(tmp_path, capsys):
    p1 = tmp_path / "p1.toml"
    assert run_command(["import", str(FIXTURES / "sd_scripts_config.toml"), "-o", str(p1)]) == 0
    out = tmp_path / "sd"
    assert run_command(["export", str(p1), "--to", "sd-scripts", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"Wrote {out / 'config.toml'}" in printed and "accelerate launch train_network.py" in printed
    p2 = tmp_path / "p2.toml"
    assert run_command(["import", str(out / "config.toml"), "-o", str(p2)]) == 0
    assert load_profile(p2).to_dict() == load_profile(p1).to_dict()
    # a second export refuses to overwrite, and leaves the files as they were
    before = (out / "config.toml").read_text()
    assert run_command(["export", str(p1), "--to", "sd-scripts", "-o", str(out), "--set", "network.network_dim=4"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (out / "config.toml").read_text() == before
    assert run_command(["export", str(p1), "--to", "sd-scripts", "-o", str(out), "--overwrite",
                        "--set", "network.network_dim=4"]) == 0
    assert tomllib.loads((out / "config.toml").read_text())["network_dim"] == 4


def test_cli_export_default_folder_and_print_command(tmp_path, capsys):
    p = tmp_path / "style.toml"
    save_profile(import_kohya(FIXTURES / "gui_sdxl_prodigy.json").profile(), p)
    assert run_command(["export", str(p), "--to", "sd-scripts", "--print-command"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("accelerate launch --num_cpu_threads_per_process 1 sdxl_train_network.py ")
    assert not (tmp_path / "style-sd-scripts").exists()
    assert run_command(["export", str(p), "--to", "sd-scripts"]) == 0
    assert (tmp_path / "style-sd-scripts" / "config.toml").is_file()


def test_cli_export_refuses_an_untrainable_network_type(tmp_path, capsys):
    p = tmp_path / "fa.toml"
    p.write_text('[network]\nnetwork_type = "lora-fa"\n')
    assert run_command(["export", str(p), "--to", "sd-scripts", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "lora-fa" in err and "cannot be trained" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content, message", [(None, "no such file"), ("[model\n", "not valid TOML")])
def test_cli_export_bad_profile(tmp_path, capsys, content, message):
    p = tmp_path / "bad.toml"
    if content is not None:
        p.write_text(content)
    assert run_command(["export", str(p), "--to", "sd-scripts"]) == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- generated from the declarations


def _other_value(s):
    """A valid value of setting ``s`` that is not its default."""
    if s.type == "bool":
        return not s.default
    if s.type == "choice":
        return next(c for c in s.choices if c != s.default)
    if s.type == "str":
        return {"caption_extension": ".cap", "output_name": "my-lora", "gpu_ids": "0,1", "main_process_ip": "10.0.0.1"}.get(s.key, f"/x/{s.key}")
    if s.optional and s.default is None:
        return 0.001
    if s.type == "int":
        value = s.default * 2 if s.default else 1
        return value if s.le is None or value <= s.le else s.default // 2  # max_timestep 1000: 500
    value = s.default * 2 if s.default else 0.5
    return value if s.le is None or value <= s.le else s.default / 2


def test_every_one_to_one_setting_round_trips_by_its_declared_names(tmp_path):
    """Export writes each setting under its declared sd-scripts name (in dataset.toml where
    declared), and import reads it back: no hand-written table to forget a setting in."""
    from loratui.engine.schema import settings

    img = _concepts(tmp_path / "img", ["2_a"])
    checked = 0
    for s in settings():
        if s.special or s.sd_scripts is None:
            continue
        value = _other_value(s)
        for with_dataset in (False, True):
            d = profile_from_dict({"dataset": {"train_data_dir": str(img)}} if with_dataset else {}).to_dict()
            if s.dotted == "dataset.train_data_dir" and with_dataset:
                continue
            d[s.section][s.key] = value
            p1 = profile_from_dict(d)
            out = tmp_path / f"{s.key}-{with_dataset}"
            res = export_sd_scripts(p1, out)
            cfg = tomllib.loads(res.config_path.read_text())
            if with_dataset and s.sd_dataset:
                ds = tomllib.loads(res.dataset_path.read_text())
                level, key = s.sd_dataset
                table = ds["general"] if level == "general" else ds["datasets"][0]
                if level != "subsets":
                    assert table[key] == value, s.dotted
                assert s.sd_scripts not in cfg, s.dotted
            else:
                assert cfg[s.sd_scripts] == value, s.dotted
            assert import_kohya(res.config_path).profile().get(s.dotted) == value, (s.dotted, with_dataset)
        checked += 1
    assert checked >= 30


def test_kept_states_round_trip_under_the_names_import_reads(tmp_path):
    """save_last_n_states: export writes sd-scripts' save_last_n_epochs_state (a count, its declared
    sd-scripts name) and, for step saving, save_last_n_steps_state (steps, the kohya_ss GUI name);
    import reads back the same count either way."""
    from loratui.engine.schema import setting_info

    info = setting_info("output.save_last_n_states")
    assert (info.kohya, info.sd_scripts) == ("save_last_n_steps_state", "save_last_n_epochs_state")
    for every_steps, keep in ((0, 3), (50, 4), (50, 0), (0, 0)):
        p1 = profile_from_dict({"output": {"save_state": True, "save_every_n_steps": every_steps, "save_last_n_states": keep}})
        res = export_sd_scripts(p1, tmp_path / f"o{every_steps}-{keep}")
        cfg = tomllib.loads(res.config_path.read_text())
        assert cfg[info.sd_scripts] == keep
        if every_steps and keep:
            assert cfg[info.kohya] == keep * every_steps
        assert import_kohya(res.config_path).profile().output.save_last_n_states == keep
        # a kohya_ss GUI file holds only the steps form: read through the declared GUI name
        if every_steps and keep:
            gui = tmp_path / f"gui{every_steps}-{keep}.json"
            gui.write_text(f'{{"save_every_n_steps": {every_steps}, "{info.kohya}": {keep * every_steps}}}')
            assert import_kohya(gui).profile().output.save_last_n_states == keep


def test_settings_sd_scripts_has_no_argument_for_round_trip_as_comments(tmp_path):
    from loratui.engine.schema import settings

    kept = [s for s in settings() if s.sd_scripts is None and not s.special]
    assert {"model.model_config_dir", "dataset.balance_concepts", "optimization.max_bad_steps"} <= {s.dotted for s in kept}
    for s in kept:
        d = profile_from_dict({}).to_dict()
        if s.section == "compute":  # machine_rank and main_process_ip need more than one machine
            d["compute"].update(machines=2, main_process_ip="10.0.0.1")
        d[s.section][s.key] = _other_value(s)
        p1 = profile_from_dict(d)
        res = export_sd_scripts(p1, tmp_path / s.key)
        text = res.config_path.read_text()
        assert f"# loratui: {s.key} = " in text and s.key not in tomllib.loads(text), s.dotted
        assert import_kohya(res.config_path).profile().get(s.dotted) == p1.get(s.dotted), s.dotted


def test_what_sd_scripts_will_stop_on_is_a_warning_naming_the_setting(tmp_path, capsys):
    from loratui.engine.problems import Severity

    p = profile_from_dict({"dataset": {"balance_concepts": True}})  # no model, no images, family auto
    res = export_sd_scripts(p, tmp_path / "out")
    keys = [n.key for n in res.notes]
    assert {"model.base_model", "dataset.train_data_dir", "model.family"} <= set(keys)
    assert all(n.severity is Severity.WARNING for n in res.notes)
    prof = tmp_path / "p.toml"
    save_profile(p, prof)
    assert run_command(["export", str(prof), "--to", "sd-scripts", "--print-command"]) == 0
    err = capsys.readouterr().err
    assert "note: model.base_model: is empty — set pretrained_model_name_or_path before running sd-scripts" in err


def test_a_multi_gpu_profile_exports_the_matching_accelerate_launch_line(tmp_path):
    from loratui.engine.kohya.exporter import sd_scripts_command

    p = profile_from_dict({"compute": {"processes": 4, "gpu_ids": "0,1,2,3", "main_process_port": 29511}})
    res = export_sd_scripts(p, tmp_path / "out")
    assert res.command.startswith("accelerate launch --multi_gpu --num_processes 4 --main_process_port 29511 --gpu_ids 0,1,2,3 train_network.py ")
    assert res.command.split(" --config_file")[0] in res.config_path.read_text()  # the "Run:" line says the same
    two = profile_from_dict({"compute": {"processes": 8, "machines": 2, "machine_rank": 1, "main_process_ip": "10.1.2.3"}})
    assert sd_scripts_command(two).startswith(
        "accelerate launch --multi_gpu --num_processes 16 --num_machines 2 --machine_rank 1 --main_process_ip 10.1.2.3 "
        "--main_process_port 29500 --num_cpu_threads_per_process 1 train_network.py")
    one = sd_scripts_command(profile_from_dict({}))
    assert one.startswith("accelerate launch --num_cpu_threads_per_process 1 train_network.py") and "--multi_gpu" not in one
