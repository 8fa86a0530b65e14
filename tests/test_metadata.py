"""ss_* / modelspec.* metadata and the hashes AUTOMATIC1111 uses (engine/metadata.py)."""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from loratui.engine.metadata import (
    build_metadata,
    finalize_metadata,
    model_hashes,
    tag_frequency,
    with_progress,
)
from loratui.engine.plan import ConceptReport, DatasetReport, plan_steps
from loratui.engine.registries import OPTIMIZERS, parse_key_values
from loratui.engine.schema import profile_from_dict


def _profile(tmp_path: Path, **overrides):
    data = {
        "model": {"base_model": str(tmp_path / "base.safetensors"), "clip_skip": 2},
        "dataset": {"train_data_dir": str(tmp_path / "img"), "resolution": 768, "resolution_height": 512,
                    "shuffle_caption": True, "keep_tokens": 1, "caption_dropout_rate": 0.05, "flip_aug": True,
                    "prior_loss_weight": 0.5},
        "network": {"network_type": "locon", "network_dim": 16, "network_alpha": 8.0, "conv_dim": 4, "conv_alpha": 1.0},
        "optimization": {"optimizer": "AdamW8bit", "optimizer_args": "weight_decay=0.1 betas=0.9,0.99",
                         "learning_rate": 2e-4, "unet_lr": 1e-4, "text_encoder_lr": 5e-5, "lr_scheduler": "cosine",
                         "lr_warmup_steps": 10, "train_batch_size": 2, "gradient_accumulation_steps": 2,
                         "max_train_epochs": 3, "seed": 1234, "min_snr_gamma": 5.0, "noise_offset": 0.0,
                         "mixed_precision": "bf16"},
        "output": {"output_name": "mychar", "metadata_title": "My Char", "metadata_author": "me",
                   "metadata_description": "a test", "metadata_tags": "character, test",
                   "trigger_words": "mychar, red hair"},
    }
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        data.setdefault(section, {})[key] = value
    return profile_from_dict(data)


def _report(tmp_path: Path) -> DatasetReport:
    return DatasetReport(
        root=str(tmp_path / "img"),
        concepts=[
            ConceptReport(folder=str(tmp_path / "img" / "10_mychar"), name="mychar", repeats=10, images=5, missing_captions=0),
            ConceptReport(folder=str(tmp_path / "img" / "2_style"), name="style", repeats=2, images=3, missing_captions=1),
        ],
        reg_concepts=[
            ConceptReport(folder=str(tmp_path / "reg" / "1_person"), name="person", repeats=1, images=4,
                          missing_captions=0, is_reg=True),
        ],
    )


def _build(tmp_path, profile, family="sd1", **kw):
    report = _report(tmp_path)
    plan = plan_steps(report.images_x_repeats, batch_size=2, grad_accum=2, epochs=3, reg_samples=4)
    args = dict(
        family=family,
        report=report,
        plan=plan,
        tag_frequency={"10_mychar": {"mychar": 5, "red hair": 3}, "2_style": {"style": 3}},
        bucket_info={"buckets": {0: {"resolution": (768, 512), "count": 56}}, "mean_img_ar_error": 0.0125},
        base_model_hashes={"model_hash": "abcdef12", "sha256": "f" * 64},
        training_started_at=1700000000.25,
        training_finished_at=1700000600.5,
        steps=42,
        epoch=2,
        session_id=123456,
    )
    args.update(kw)
    return build_metadata(profile, **args), plan


# --------------------------------------------------------------------------- helpers


def test_tag_frequency_counts_like_sd_scripts():
    items = [
        ("10_mychar", "mychar, Red Hair,  smile ,"),
        ("10_mychar", "mychar,red hair"),
        ("2_style", "style, , ,"),
        ("2_style", ""),
    ]
    assert tag_frequency(items) == {
        "10_mychar": {"mychar": 2, "red hair": 2, "smile": 1},
        "2_style": {"style": 1},
    }


def test_model_hashes_match_an_independent_computation(tmp_path):
    data = bytes((i * 7 + (i >> 8)) % 251 for i in range(0x100000 + 0x10000 + 5000))
    f = tmp_path / "model.safetensors"
    f.write_bytes(data)
    h = model_hashes(f)
    assert h["sha256"] == hashlib.sha256(data).hexdigest()
    assert h["model_hash"] == hashlib.sha256(data[1048576:1048576 + 65536]).hexdigest()[:8]
    assert model_hashes(f, full=False) == {"model_hash": h["model_hash"]}
    small = tmp_path / "small.ckpt"
    small.write_bytes(b"tiny")
    assert model_hashes(small)["model_hash"] == hashlib.sha256(b"").hexdigest()[:8]  # window past the end
    assert model_hashes(tmp_path) == {} and model_hashes("org/repo-id") == {}


def test_optimizer_class_paths_are_the_real_classes():
    import dadaptation
    import lion_pytorch
    import prodigyopt
    import torch

    for name, cls in (("AdamW", torch.optim.AdamW), ("Lion", lion_pytorch.Lion),
                      ("Prodigy", prodigyopt.Prodigy), ("DAdaptAdam", dadaptation.DAdaptAdam)):
        assert OPTIMIZERS[name].class_path == f"{cls.__module__}.{cls.__name__}"
    # bitsandbytes / transformers are slow to import: read their source files instead
    for name in ("AdamW8bit", "Lion8bit", "Adafactor"):
        module, cls = OPTIMIZERS[name].class_path.rsplit(".", 1)
        top, *rest = module.split(".")
        origin = Path(importlib.util.find_spec(top).origin).parent
        source = origin.joinpath(*rest).with_suffix(".py").read_text()
        assert f"class {cls}(" in source, name


def test_optimizer_args_parse_like_sd_scripts():
    assert parse_key_values("weight_decay=0.1 betas=0.9,0.99 decouple=True mode=fast") == {
        "weight_decay": 0.1, "betas": (0.9, 0.99), "decouple": True, "mode": "fast"}


# --------------------------------------------------------------------------- the keys against the profile


def test_metadata_keys_and_formats_match_the_profile(tmp_path):
    (tmp_path / "base.safetensors").write_bytes(b"x")  # exists: only its file name is recorded
    p = _profile(tmp_path)
    meta, plan = _build(tmp_path, p)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    o, d, n, m, out = p.optimization, p.dataset, p.network, p.model, p.output
    expected = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(n.network_dim),
        "ss_network_alpha": str(float(n.network_alpha)),
        "ss_network_args": json.dumps({"conv_dim": "4", "conv_alpha": "1"}),
        "ss_base_model_version": "sd_v1",
        "ss_v2": "False",
        "ss_resolution": "(768, 512)",
        "ss_num_epochs": str(plan.epochs),
        "ss_epoch": "2",
        "ss_steps": "42",
        "ss_max_train_steps": str(plan.total_steps),
        "ss_learning_rate": str(o.learning_rate),
        "ss_unet_lr": "0.0001",
        "ss_text_encoder_lr": "5e-05",
        "ss_optimizer": "bitsandbytes.optim.adamw.AdamW8bit(weight_decay=0.1,betas=(0.9, 0.99))",
        "ss_lr_scheduler": o.lr_scheduler,
        "ss_lr_warmup_steps": "10",
        "ss_seed": "1234",
        "ss_batch_size_per_device": "2",
        "ss_total_batch_size": "4",
        "ss_gradient_accumulation_steps": "2",
        "ss_mixed_precision": "bf16",
        "ss_clip_skip": "2",
        "ss_min_snr_gamma": "5.0",
        "ss_noise_offset": "None",  # 0 = off = unset in sd-scripts
        "ss_num_train_images": "56",  # 5×10 + 3×2, repeats included
        "ss_num_reg_images": "4",
        "ss_num_batches_per_epoch": str(plan.batches_per_epoch),
        "ss_caption_dropout_rate": "0.05",
        "ss_shuffle_caption": "True",
        "ss_keep_tokens": "1",
        "ss_flip_aug": "True",
        "ss_prior_loss_weight": "0.5",
        "ss_enable_bucket": "True",
        "ss_min_bucket_reso": str(d.min_bucket_reso),
        "ss_max_bucket_reso": str(d.max_bucket_reso),
        "ss_cache_latents": "True",
        "ss_training_comment": out.trigger_words,
        "ss_output_name": "mychar",
        "ss_session_id": "123456",
        "ss_training_started_at": "1700000000.25",
        "ss_training_finished_at": "1700000600.5",
        "ss_sd_model_name": "base.safetensors",
        "ss_sd_model_hash": "abcdef12",
        "ss_new_sd_model_hash": "f" * 64,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": "My Char",
        "modelspec.author": "me",
        "modelspec.description": "a test",
        "modelspec.tags": "character, test",
        "modelspec.trigger_phrase": "mychar, red hair",
        "modelspec.resolution": "768x512",
        "modelspec.prediction_type": "epsilon",
        "modelspec.encoder_layer": "2",
        "modelspec.date": datetime.datetime.fromtimestamp(1700000600).isoformat(),
    }
    for key, value in expected.items():
        assert meta[key] == value, key
    assert json.loads(meta["ss_dataset_dirs"]) == {
        "10_mychar": {"n_repeats": 10, "img_count": 5},
        "2_style": {"n_repeats": 2, "img_count": 3},
    }
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_person": {"n_repeats": 1, "img_count": 4}}
    assert json.loads(meta["ss_tag_frequency"]) == {"10_mychar": {"mychar": 5, "red hair": 3}, "2_style": {"style": 3}}
    assert json.loads(meta["ss_bucket_info"]) == {
        "buckets": {"0": {"resolution": [768, 512], "count": 56}}, "mean_img_ar_error": 0.0125}
    assert float(meta["ss_learning_rate"]) == o.learning_rate


@pytest.mark.parametrize(
    "family, v_param, version, arch, impl",
    [
        ("sd1", False, "sd_v1", "stable-diffusion-v1/lora", "diffusers"),
        ("sd2", False, "sd_v2", "stable-diffusion-v2-512/lora", "diffusers"),
        ("sd2", True, "sd_v2_v", "stable-diffusion-v2-768-v/lora", "diffusers"),
        ("sdxl", False, "sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora",
         "https://github.com/Stability-AI/generative-models"),
    ],
)
def test_base_model_version_and_architecture(tmp_path, family, v_param, version, arch, impl):
    p = _profile(tmp_path, model__v_parameterization=v_param, network__network_type="lora",
                 dataset__resolution_height=0, dataset__enable_bucket=False, model__clip_skip=1,
                 output__metadata_title="", output__trigger_words="", optimization__optimizer="AdamW",
                 optimization__optimizer_args="", optimization__unet_lr=None)
    meta, _ = _build(tmp_path, p, family=family, bucket_info=None, base_model_hashes={})
    assert meta["ss_base_model_version"] == version
    assert meta["ss_v2"] == str(family == "sd2")
    assert meta["modelspec.architecture"] == arch and meta["modelspec.implementation"] == impl
    assert meta["modelspec.prediction_type"] == ("v" if v_param else "epsilon")
    assert meta["modelspec.title"] == "mychar"  # the output name when no title is set
    assert meta["modelspec.resolution"] == "768x768" and meta["ss_resolution"] == "(768, 768)"
    assert "ss_network_args" not in meta and "modelspec.trigger_phrase" not in meta
    assert "modelspec.encoder_layer" not in meta and meta["ss_clip_skip"] == "None"
    assert meta["ss_optimizer"] == "torch.optim.adamw.AdamW" and meta["ss_unet_lr"] == "None"
    assert meta["ss_bucket_info"] == "null" and meta["ss_min_bucket_reso"] == "None"
    assert meta["ss_training_comment"] == "None"
    # a repo id is recorded as given, without hashes
    assert meta["ss_sd_model_name"] == str(tmp_path / "base.safetensors")
    assert "ss_sd_model_hash" not in meta


def test_v_prediction_detected_from_the_model_overrides_the_profile(tmp_path):
    p = _profile(tmp_path, model__v_parameterization=False)
    meta, _ = _build(tmp_path, p, family="sd2", v_pred=True)
    assert meta["ss_base_model_version"] == "sd_v2_v"
    assert meta["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert meta["modelspec.prediction_type"] == "v"


def test_family_must_be_resolved(tmp_path):
    with pytest.raises(ValueError, match="resolved"):
        _build(tmp_path, _profile(tmp_path), family="auto")


# --------------------------------------------------------------------------- saved, read back, hashed


def test_saved_lora_metadata_reads_back_and_hashes_match_automatic1111(tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    state = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(16, 320, generator=g, dtype=torch.float32),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(320, 16, generator=g).half(),
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(8.0),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(300, 1024, generator=g),
    }
    p = _profile(tmp_path)
    meta, _ = _build(tmp_path, p)
    final = finalize_metadata(state, meta)
    assert set(final) == set(meta) | {"sshs_model_hash", "sshs_legacy_hash"}
    path = tmp_path / "mychar.safetensors"
    save_file(state, str(path), metadata=final)

    with safe_open(str(path), framework="pt") as f:
        read = f.metadata()
    assert read == final
    assert read["ss_network_dim"] == str(p.network.network_dim)
    assert read["modelspec.trigger_phrase"] == p.output.trigger_words

    # AUTOMATIC1111 / additional-networks: sha256 of the file after the 8-byte length and the header
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert read["sshs_model_hash"] == hashlib.sha256(raw[8 + n:]).hexdigest()
    # legacy: the 64 KiB at 1 MiB of the file written with only the ss_* metadata (as sd-scripts does)
    ss_only = tmp_path / "ss_only.safetensors"
    save_file(state, str(ss_only), metadata={k: v for k, v in meta.items() if k.startswith("ss_")})
    assert len(ss_only.read_bytes()) > 0x110000
    assert read["sshs_legacy_hash"] == hashlib.sha256(ss_only.read_bytes()[0x100000:0x110000]).hexdigest()[:8]

    # user-facing modelspec edits do not change the hashes; another save updates the progress keys
    again = finalize_metadata(state, {**meta, "modelspec.title": "renamed"})
    assert (again["sshs_model_hash"], again["sshs_legacy_hash"]) == (final["sshs_model_hash"], final["sshs_legacy_hash"])
    later = finalize_metadata(state, with_progress(final, steps=84, epoch=3, finished_at=1700001200.0))
    assert later["ss_steps"] == "84" and later["ss_epoch"] == "3"
    assert later["sshs_model_hash"] == final["sshs_model_hash"]  # same tensors
    changed = {**state, "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}
    assert finalize_metadata(changed, meta)["sshs_model_hash"] != final["sshs_model_hash"]


def test_declared_ss_keys_follow_the_settings(tmp_path):
    """The ss_* keys that hold a setting as is come from the settings' declarations:
    each follows its setting, unset / off is "None", floats are written as floats."""
    from loratui.engine.schema import settings

    declared = [s for s in settings() if s.ss]
    assert {s.ss for s in declared} >= {"ss_learning_rate", "ss_network_dim", "ss_seed", "ss_training_comment",
                                         "ss_batch_size_per_device", "ss_clip_skip", "ss_noise_offset"}
    p = _profile(tmp_path)
    meta, _ = _build(tmp_path, p)
    for s in declared:
        value = p.get(s.dotted)
        if s.sd_omit is not None and value == s.sd_omit:
            assert meta[s.ss] == "None", s.dotted
        else:
            assert meta[s.ss] == str(float(value) if s.type == "float" else value), s.dotted
    q = _profile(tmp_path, model__clip_skip=1, optimization__unet_lr=None, optimization__seed=7, output__trigger_words="")
    meta, _ = _build(tmp_path, q)
    assert (meta["ss_clip_skip"], meta["ss_unet_lr"], meta["ss_seed"], meta["ss_training_comment"]) == ("None", "None", "7", "None")
