"""Importing kohya_ss GUI / sd-scripts configs (engine/kohya.py, `loratui import`)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from loratui.engine.registries import NETWORK_TYPES
from conftest import SHARED_FIXTURES

from loratui.engine.cli import run_command
from loratui.engine.kohya import KohyaImportError, import_kohya, network_type_message
from loratui.engine.schema import Profile, ProfileError, load_profile

FIXTURES = Path(__file__).parent / "fixtures" / "kohya"
SHARED = SHARED_FIXTURES / "kohya_ss"


def _base(key: str) -> str:
    """The config key an entry reports, without prefixes like 'additional_parameters --'."""
    key = key.split(":")[-1]
    key = key.removeprefix("additional_parameters --")
    return key.split(" ")[0]


def _accounted(result) -> set[str]:
    entries = result.mapped + result.ignored + result.unsupported
    # "additional_parameters --x" accounts for both the option and the free-form field itself
    return {_base(k) for k, _, _ in entries} | {k.split(" ")[0] for k, _, _ in entries}


def _changed(result) -> dict[str, dict]:
    """The settings that differ from the defaults."""
    defaults = Profile().to_dict()
    out: dict[str, dict] = {}
    for section, values in result.profile_dict.items():
        for key, value in values.items():
            if defaults[section].get(key) != value:
                out.setdefault(section, {})[key] = value
    return out


def _entries(entries) -> dict[str, object]:
    return {k: v for k, v, _ in entries}


def _config_files() -> list[Path]:
    """The real kohya_ss files where ../shared exists (CI has it), else our own of the same shapes."""
    if SHARED.is_dir():
        return sorted(SHARED.iterdir())
    return sorted(FIXTURES.iterdir())


# --------------------------------------------------------------------------- every real file imports


def test_every_kohya_ss_fixture_imports_and_every_key_is_accounted_for():
    files = _config_files()
    assert files, "no kohya_ss fixtures found"
    for path in files:
        result = import_kohya(path)
        if path.suffix == ".json":
            keys = set(json.loads(path.read_text()))
            missing = keys - _accounted(result)
            assert not missing, f"{path.name}: keys neither mapped nor reported: {sorted(missing)}"
        else:
            data = tomllib.loads(path.read_text())
            if "datasets" in data:
                for sub in data["datasets"][0].get("subsets", []):
                    for key in sub:
                        assert any(k.endswith(f".{key}") for k in _entries(result.mapped + result.ignored + result.unsupported)), (path.name, key)
        # each report entry carries the value as written in the file
        for key, value, reason in result.ignored + result.unsupported:
            assert reason, (path.name, key)
        problems = result.problems()
        if result.profile_dict["network"]["network_type"] in NETWORK_TYPES:  # LyCORIS types train too
            assert problems == [], (path.name, problems)
            assert isinstance(result.profile(), Profile)
        else:
            assert len(problems) == 1 and "network_type" in str(problems[0]) and "cannot be trained" in str(problems[0])


def test_real_kohya_ss_files_map_to_the_expected_settings():
    # The real files when they are here; the same expectations hold for our copies of their shapes.
    if not SHARED.is_dir():
        path = FIXTURES / "gui_sd15_locon_messy.json"
        assert import_kohya(path).profile_dict["network"]["network_type"] == "locon"
        return
    r = import_kohya(SHARED / "sd15_lora_edg.json")
    ch = _changed(r)
    assert ch["dataset"]["resolution_height"] == 650  # "512,650", as sd-scripts takes it
    assert not r.unsupported
    o = r.profile_dict["optimization"]
    assert o["learning_rate"] == 1e-4 and o["unet_lr"] == 1e-4  # "0.0001" as strings
    assert o["text_encoder_lr"] == 5e-5  # "5e-05"
    assert ch["optimization"]["noise_offset"] == 0.05 and ch["optimization"]["seed"] == 1234
    assert ch["network"] == {"network_dim": 64, "network_alpha": 64.0}
    assert ch["model"] == {"family": "sd1", "clip_skip": 2}

    r = import_kohya(SHARED / "sdxl_lora_standard.json")
    ch = _changed(r)
    assert ch["model"]["family"] == "sdxl" and ch["dataset"]["resolution"] == 1024
    assert ch["dataset"]["cache_latents"] == "disk"
    assert ch["optimization"]["max_train_epochs"] == 50 and ch["optimization"]["min_snr_gamma"] == 5.0

    r = import_kohya(SHARED / "sd15_loha.json")
    assert r.profile_dict["network"]["network_type"] == "loha"
    assert _entries(r.mapped)["LoRA_type"] == "LyCORIS/LoHa" and "LoRA_type" not in _entries(r.unsupported)
    n = r.profile_dict["network"]
    assert (n["network_dim"], n["network_alpha"], n["conv_dim"], n["conv_alpha"]) == (32, 16.0, 8, 4.0)
    assert _entries(r.ignored)["use_cp"] is True  # kohya_ss passes use_tucker (not use_cp) for LoHa
    # issue 11: the training options these presets use are supported now (mapped, not unsupported)
    assert _entries(r.mapped)["multires_noise_iterations"] == 8 and "multires_noise_iterations" not in _entries(r.unsupported)
    assert r.profile_dict["optimization"]["multires_noise_iterations"] == 8
    assert _entries(r.mapped)["bucket_reso_steps"] == 1 and "bucket_reso_steps" not in _entries(r.unsupported)
    assert r.profile_dict["dataset"]["bucket_reso_steps"] == 1

    r = import_kohya(SHARED / "sd15_locon_adamw8bit.json")
    n = r.profile_dict["network"]
    assert (n["network_type"], n["conv_dim"], n["conv_alpha"]) == ("locon", 16, 8.0)
    for key in ("debiased_estimation_loss", "ip_noise_gamma", "network_dropout", "scale_weight_norms"):
        assert key in _entries(r.mapped) and key not in _entries(r.unsupported)  # supported since issue 11
    o = r.profile_dict["optimization"]
    assert (o["debiased_estimation_loss"], o["ip_noise_gamma"], o["ip_noise_gamma_random_strength"]) == (True, 0.1, True)
    assert (r.profile_dict["network"]["network_dropout"], r.profile_dict["network"]["scale_weight_norms"]) == (0.1, 1.0)
    assert _entries(r.ignored)["xformers"] == "xformers"

    r = import_kohya(SHARED / "sd_scripts_dataset.toml")
    assert r.profile_dict["dataset"]["train_data_dir"] == "./test/img"
    assert r.profile_dict["dataset"]["keep_tokens"] == 1
    assert r.profile_dict["optimization"]["train_batch_size"] == 4
    assert r.unsupported == []


# --------------------------------------------------------------------------- our fixtures: messy values


def test_messy_gui_config_imports_to_the_expected_profile():
    r = import_kohya(FIXTURES / "gui_sd15_locon_messy.json")
    assert _changed(r) == {
        "model": {"base_model": "/models/v1-5-pruned-emaonly.safetensors", "family": "sd1", "clip_skip": 2},
        "dataset": {
            "train_data_dir": "/data/mychar/img",
            "resolution": 768,
            "resolution_height": 512,  # "768,512"
            "bucket_no_upscale": True,  # "true"
            "shuffle_caption": True,
            "keep_tokens": 1,  # "1"
            "caption_dropout_rate": 0.1,  # "0.1"
            "cache_latents": "disk",  # cache_latents + cache_latents_to_disk "True"
        },
        "network": {
            "network_type": "locon",  # "Kohya LoCon"
            "network_dim": 32,  # "32.0"
            "network_alpha": 16.0,
            "conv_dim": 8,  # 8.0
            "conv_alpha": 4.0,  # "4"
            "train_text_encoder": False,  # text_encoder_lr "0"
            "rank_dropout": 0.1,  # additional_parameters --network_args "rank_dropout=0.1"
        },
        "optimization": {
            "optimizer": "AdamW8bit",  # "adamw_8bit"
            "optimizer_args": "weight_decay=0.1 betas=0.9,0.99",
            "learning_rate": 0.0002,
            "unet_lr": 0.0001,
            "text_encoder_lr": 0.0002,
            "lr_scheduler": "cosine_with_restarts",  # "Cosine_With_Restarts"
            "lr_scheduler_num_cycles": 3,
            "lr_warmup_steps": 0.1,  # lr_warmup "10" percent
            "max_train_epochs": 12,  # epoch "12", max_train_epochs ""
            "train_batch_size": 2,
            "gradient_accumulation_steps": 2,  # "2.0"
            "gradient_checkpointing": True,
            "mixed_precision": "fp16",  # loratui's default is bf16 (fp16 on cards without it)
            "min_snr_gamma": 5.0,
            "noise_offset": 0.0357,
            "max_grad_norm": 0.5,  # from additional_parameters
        },
        "output": {
            "output_dir": "/data/loras",
            "output_name": "mychar-v1",
            "save_every_n_epochs": 2,  # "2"
            "metadata_title": "My Character",
            "metadata_author": "someone",
            "trigger_words": "mychar",
            "sample_every_n_epochs": 1,  # samples are rendered now: imported, no longer ignored
            "sample_prompts": "mychar, smiling",
        },
    }
    # seed "" = unset: our default stays, and the report says so
    assert _entries(r.ignored)["seed"] == ""
    assert r.problems() == []


def test_unsupported_and_ignored_keys_are_reported_by_name_with_their_values():
    r = import_kohya(FIXTURES / "gui_sd15_locon_messy.json")
    unsupported = _entries(r.unsupported)
    ignored = _entries(r.ignored)
    assert unsupported["some_future_option"] == "turbo"
    # networks.lora's rank dropout (issue 11): mapped from the free-form network_args
    assert _entries(r.mapped)["additional_parameters --network_args rank_dropout"] == "0.1"
    assert r.profile_dict["network"]["rank_dropout"] == 0.1
    assert unsupported["additional_parameters --color_aug"] is True
    assert ignored["xformers"] == "xformers"
    assert ignored["num_cpu_threads_per_process"] == 2
    assert _entries(r.mapped)["sample_prompts"] == "mychar, smiling"  # rendered now (issue 12), no longer ignored
    assert ignored["max_data_loader_n_workers"] == "0"
    # nothing is both mapped and ignored
    assert not ({k for k, _, _ in r.ignored} & {k for k, _, _ in r.mapped})
    text = r.report()
    assert "Ignored, no effect here" in text and "Not supported, changes training" in text
    assert "some_future_option = 'turbo'" in text


def test_sdxl_gui_config_with_prodigy_and_unet_only():
    r = import_kohya(FIXTURES / "gui_sdxl_prodigy.json")
    ch = _changed(r)
    assert ch["model"] == {
        "base_model": "stabilityai/stable-diffusion-xl-base-1.0",
        "vae": "madebyollin/sdxl-vae-fp16-fix",
        "family": "sdxl",
    }
    assert ch["network"] == {"network_dim": 16, "network_alpha": 1.0, "train_text_encoder": False}
    o = ch["optimization"]
    assert o["optimizer"] == "Prodigy" and o["learning_rate"] == 1.0 and o["unet_lr"] == 1.0
    assert o["max_train_epochs"] == 6  # max_train_epochs beats epoch 10, as in kohya_ss
    assert ch["output"]["save_last_n_states"] == 3  # 300 steps of states, saved every 100 steps
    assert ch["dataset"]["bucket_reso_steps"] == 32 and ch["dataset"]["min_bucket_reso"] == 512
    # the GUI's SDXL-tab checkbox is the text-encoder output cache (the text encoder is not trained here)
    assert _entries(r.unsupported) == {} and _entries(r.mapped)["sdxl_cache_text_encoder_outputs"] is True
    assert ch["dataset"]["cache_text_encoder_outputs"] == "memory"
    assert _entries(r.ignored)["epoch"] == 10


def test_lycoris_network_type_imports_and_trains():
    # was refused before LyCORIS: LoKr now maps with its settings, "full dimension" included
    r = import_kohya(FIXTURES / "gui_sd15_lokr.json")
    assert r.profile_dict["network"]["network_type"] == "lokr"
    assert _entries(r.mapped)["LoRA_type"] == "LyCORIS/LoKr"
    # everything else still maps
    ch = _changed(r)
    assert ch["model"]["family"] == "sd2" and ch["model"]["v_parameterization"] is True
    assert ch["optimization"]["optimizer"] == "DAdaptAdam"  # "DAdaptation"
    assert ch["optimization"]["seed"] == 31337 and ch["output"]["save_precision"] == "float"
    assert ch["dataset"]["cache_latents"] == "off"
    n = r.profile_dict["network"]
    assert n["network_dim"] == 100000 and "network_dim" not in _entries(r.unsupported)
    assert n["lycoris_preset"] == "attn-mlp" and n["factor"] == 8
    assert r.problems() == []
    assert r.profile().network.network_type == "lokr"


def test_unsupported_network_type_imports_but_refuses_to_train(tmp_path):
    cfg = tmp_path / "fa.json"
    data = json.loads((FIXTURES / "gui_sd15_lokr.json").read_text())
    data["LoRA_type"] = "LoRA-FA"
    cfg.write_text(json.dumps(data))
    r = import_kohya(cfg)
    assert r.profile_dict["network"]["network_type"] == "lora-fa"
    assert _entries(r.unsupported)["LoRA_type"] == "LoRA-FA"
    problems = r.problems()
    assert len(problems) == 1
    assert "LoRA-FA" in str(problems[0]) and "'lora'" in str(problems[0]) and "'locon'" in str(problems[0])
    assert "lokr" in str(problems[0])  # the LyCORIS types are named as choices
    with pytest.raises(ProfileError) as exc:
        r.profile()
    assert "cannot be trained" in str(exc.value)
    assert network_type_message("lora") is None and network_type_message("locon") is None


def test_sd_scripts_config_with_its_dataset_config():
    r = import_kohya(FIXTURES / "sd_scripts_config.toml")
    ch = _changed(r)
    assert ch["model"] == {"base_model": "/models/sd15.safetensors"}  # family stays auto
    assert any("family is 'auto'" in n for n in r.notes)
    assert ch["network"] == {"network_type": "locon", "network_dim": 16, "conv_dim": 8, "module_dropout": 0.1}
    assert ch["optimization"]["optimizer"] == "AdamW8bit"  # "bitsandbytes.optim.AdamW8bit"
    assert ch["optimization"]["optimizer_args"] == "weight_decay=0.1 betas=0.9,0.99"
    assert ch["optimization"]["lr_warmup_steps"] == 50
    assert ch["optimization"]["train_batch_size"] == 2  # the dataset's batch_size "2" beats train_batch_size
    assert ch["optimization"]["seed"] == 123 and ch["optimization"]["max_train_epochs"] == 8
    d = r.profile_dict["dataset"]
    assert (d["train_data_dir"], d["reg_data_dir"]) == ("train", "reg")
    assert (d["resolution"], d["resolution_height"]) == (768, 512)
    assert (d["shuffle_caption"], d["keep_tokens"]) == (True, 1)
    ign, uns = _entries(r.ignored), _entries(r.unsupported)
    assert ign["train_data_dir"] == "./ignored-because-dataset-config"
    assert "network_args module_dropout" not in uns and r.profile_dict["network"]["module_dropout"] == 0.1
    assert "max_token_length" not in uns and r.profile_dict["optimization"]["max_token_length"] == 225  # supported since issue 11
    pre = "sd_scripts_dataset.toml:datasets[0]"
    assert uns[f"{pre}.subsets[1].num_repeats"] == 3  # folder says 5
    assert uns[f"{pre}.subsets[1].class_tokens"] == "red outfit"  # folder says "outfit"
    assert uns[f"{pre}.subsets[1].keep_tokens"] == 2
    assert uns[f"{pre}.subsets[2].image_dir"] == "elsewhere/2_extra"  # another parent folder
    assert uns[f"{pre}.subsets[3].image_dir"] == "train/no_prefix"  # no <repeats>_ prefix
    assert uns[f"{pre}.subsets[3].color_aug"] is True
    assert uns["sd_scripts_dataset.toml:datasets[1]"] == ["hires/3_mychar"]
    assert "rename the folder to '3_outfit'" in next(w for k, v, w in r.unsupported if k.endswith("subsets[1].num_repeats"))
    assert r.problems() == []


def test_dataset_config_on_its_own_and_concept_folders_on_disk(tmp_path):
    (tmp_path / "img" / "10_mychar").mkdir(parents=True)
    (tmp_path / "img" / "3_unlisted").mkdir()
    ds = tmp_path / "ds.toml"
    ds.write_text(
        "[[datasets]]\nresolution = 512\n"
        f"[[datasets.subsets]]\nimage_dir = '{(tmp_path / 'img' / '10_mychar').as_posix()}'\nnum_repeats = 10\n"
    )
    r = import_kohya(ds)
    assert r.profile_dict["dataset"]["train_data_dir"] == (tmp_path / "img").as_posix()
    assert any("3_unlisted" in n for n in r.notes)  # loratui would train it too


def test_dataset_config_given_separately(tmp_path):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('pretrained_model_name_or_path = "m.safetensors"\ndataset_config = "nowhere.toml"\n')
    r = import_kohya(cfg)
    assert "dataset_config" in _entries(r.unsupported)  # not found: reported, not fatal
    r = import_kohya(cfg, dataset_config=FIXTURES / "sd_scripts_dataset.toml")
    assert r.profile_dict["dataset"]["train_data_dir"] == "train"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.json", None, "no such file"),
        ("broken.json", '{"LoRA_type": "Standard",', "not valid JSON"),
        ("list.json", "[1, 2]", "holds no settings"),
        ("broken.toml", "network_dim = = 4", "not valid TOML"),
        ("binary.json", b"\xff\xfe\x00\x81garbage", "not a text file"),
    ],
)
def test_unreadable_configs_get_a_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(KohyaImportError) as exc:
        import_kohya(path)
    assert message in str(exc.value) and name in str(exc.value)


# --------------------------------------------------------------------------- the CLI


def test_cli_import_writes_the_profile_and_prints_the_report(tmp_path, capsys):
    out = tmp_path / "p.toml"
    rc = run_command(["import", str(FIXTURES / "gui_sd15_locon_messy.json"), "-o", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "some_future_option = 'turbo'" in printed and "xformers" in printed and f"Wrote {out}" in printed
    p = load_profile(out)
    assert p.network.network_type == "locon" and p.network.conv_dim == 8
    assert "some_future_option" in out.read_text()  # the header keeps what was not imported


def test_cli_import_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "p.toml"
    out.write_text("# mine\n")
    rc = run_command(["import", str(FIXTURES / "gui_sdxl_prodigy.json"), "-o", str(out)])
    assert rc == 1
    assert "already exists" in capsys.readouterr().err
    assert out.read_text() == "# mine\n"
    assert run_command(["import", str(FIXTURES / "gui_sdxl_prodigy.json"), "-o", str(out), "--overwrite"]) == 0
    assert load_profile(out).model.family == "sdxl"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".loratui-tmp")]
    # never over the config being imported
    cfg = tmp_path / "c.json"
    cfg.write_text((FIXTURES / "gui_sdxl_prodigy.json").read_text())
    assert run_command(["import", str(cfg), "-o", str(cfg), "--overwrite"]) == 2
    assert json.loads(cfg.read_text())["sdxl"] is True


def test_cli_import_of_an_untrainable_network_type(tmp_path, capsys):
    cfg = tmp_path / "fa.json"
    data = json.loads((FIXTURES / "gui_sd15_lokr.json").read_text())
    data["LoRA_type"] = "LoRA-FA"
    cfg.write_text(json.dumps(data))
    out = tmp_path / "fa.toml"
    assert run_command(["import", str(cfg), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cannot be trained until" in printed and "LoRA-FA" in printed
    data = tomllib.loads(out.read_text())
    assert data["network"]["network_type"] == "lora-fa"
    # the schema refuses it, naming the file, the field, the value and the choices
    with pytest.raises(ProfileError) as exc:
        load_profile(out)
    (problem,) = [str(p) for p in exc.value.problems]
    assert str(out) in problem and "network.network_type" in problem and "'lora-fa'" in problem and "'lora'" in problem


def test_cli_import_error_exit_code(tmp_path, capsys):
    rc = run_command(["import", str(tmp_path / "nope.json"), "-o", str(tmp_path / "p.toml")])
    assert rc == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "p.toml").exists()


@pytest.mark.parametrize(
    "toml_text, network_type, optimizer",
    [
        ('network_module = "lycoris.kohya"\nnetwork_args = ["algo=loha", "preset=full"]\noptimizer_type = "AdamW"', "loha", "AdamW"),
        ('network_module = "lycoris.kohya"\nnetwork_args = ["algo=locon", "conv_dim=4"]\noptimizer_type = "lion"', "lycoris-locon", "Lion"),
        ('network_module = "networks.dylora"\noptimizer_type = "PagedAdamW8bit"', "dylora", "AdamW8bit"),
        ('network_module = "networks.lora"\noptimizer_type = "SGDNesterov"', "lora", "SGDNesterov"),
        ('network_module = "networks.lora"\nuse_8bit_adam = true', "lora", "AdamW8bit"),
    ],
)
def test_sd_scripts_network_modules_and_optimizer_spellings(tmp_path, toml_text, network_type, optimizer):
    cfg = tmp_path / "c.toml"
    cfg.write_text('pretrained_model_name_or_path = "m"\n' + toml_text + "\n")
    r = import_kohya(cfg)
    assert r.profile_dict["network"]["network_type"] == network_type
    assert r.profile_dict["optimization"]["optimizer"] == optimizer
    problems = r.problems()
    if optimizer == "SGDNesterov":
        # written as given: training refuses until the user picks one we have
        assert len(problems) == 1 and "SGDNesterov" in str(problems[0]) and "Prodigy" in str(problems[0])
        assert _entries(r.unsupported)["optimizer_type"] == "SGDNesterov"
    else:
        assert problems == []  # LyCORIS types (and sd-scripts' DyLoRA) train


def test_values_the_schema_refuses_are_reported_and_replaced(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({
        "LoRA_type": "Standard", "output_name": "a/b", "min_bucket_reso": "100", "max_bucket_reso": 1000,
        "keep_tokens": 1.5, "caption_extension": "none", "network_alpha": "-1", "seed": "abc",
        "lr_warmup": 150, "epoch": 0, "max_train_epochs": "", "train_batch_size": "two",
    }))
    r = import_kohya(cfg)
    d = r.profile_dict
    assert r.problems() == []
    assert (d["dataset"]["min_bucket_reso"], d["dataset"]["max_bucket_reso"]) == (128, 960)  # multiples of 64
    assert d["output"]["output_name"] == ""  # not a plain file name: default kept
    assert d["dataset"]["keep_tokens"] == 0 and d["network"]["network_alpha"] == 8.0
    assert d["optimization"]["seed"] == 42 and d["optimization"]["lr_warmup_steps"] == 0
    assert d["dataset"]["caption_extension"] == ".none"
    uns = _entries(r.unsupported)
    for key in ("output_name", "min_bucket_reso", "max_bucket_reso", "keep_tokens", "network_alpha", "seed",
                "lr_warmup", "train_batch_size"):
        assert key in uns, key
    assert uns["output_name"] == "a/b" and uns["train_batch_size"] == "two"


def test_save_import_refuses_to_overwrite(tmp_path):
    from loratui.engine.kohya import save_import

    r = import_kohya(FIXTURES / "gui_sdxl_prodigy.json")
    out = tmp_path / "p.toml"
    save_import(r, out)
    with pytest.raises(FileExistsError):
        save_import(r, out)
    assert load_profile(out).model.family == "sdxl"


def test_the_accelerate_launch_settings_of_a_gui_config_import_into_compute(tmp_path):
    cfg = json.loads((FIXTURES / "gui_sd15_locon_messy.json").read_text())
    cfg.update(num_processes=4, num_machines=1, multi_gpu=True, gpu_ids="0,1,2,3", main_process_port=29601, ddp_timeout=45)
    path = tmp_path / "multi.json"
    path.write_text(json.dumps(cfg))
    r = import_kohya(path)
    c = r.profile().compute
    assert (c.processes, c.machines, c.gpu_ids, c.main_process_port, c.timeout_minutes) == (4, 1, "0,1,2,3", 29601, 45)
    assert _entries(r.ignored)["multi_gpu"] is True  # implied by num_processes
    mapped = _entries(r.mapped)
    assert mapped["num_processes"] == 4 and mapped["gpu_ids"] == "0,1,2,3"
