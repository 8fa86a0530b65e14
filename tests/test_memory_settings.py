"""The memory settings in kohya import/export, resume and the metadata (no torch)."""

from __future__ import annotations

import tomllib

from loratui.engine.kohya import export_sd_scripts, import_kohya
from loratui.engine.schema import profile_from_dict


def _profile(family="sdxl", **over):
    d = {"model": {"base_model": "/m/x.safetensors", "family": family}, "dataset": {"train_data_dir": "/d"},
         "output": {"output_dir": "/o", "output_name": "n"}}
    for dotted, value in over.items():
        section, key = dotted.split("__")
        d.setdefault(section, {})[key] = value
    return profile_from_dict(d)


def _export(p, tmp_path):
    out = export_sd_scripts(p, tmp_path / "cfg")
    cfg_path = tmp_path / "cfg" / "config.toml"
    return tomllib.loads(cfg_path.read_text()), cfg_path.read_text(), cfg_path


def test_import_text_caching_and_memory_keys(tmp_path):
    f = tmp_path / "a.toml"
    f.write_text('pretrained_model_name_or_path = "/m/x.safetensors"\ntrain_data_dir = "/d"\n'
                 'cache_text_encoder_outputs = true\ncache_text_encoder_outputs_to_disk = true\n'
                 'fp8_base = true\nblocks_to_swap = 12\ncpu_offload_checkpointing = true\n')
    r = import_kohya(f)
    p = r.profile_dict
    assert p["dataset"]["cache_text_encoder_outputs"] == "disk"
    assert p["model"]["fp8_base"] is True
    assert p["optimization"]["blocks_to_swap"] == 12 and p["optimization"]["cpu_offload_checkpointing"] is True
    assert not r.unsupported, r.unsupported
    f.write_text('cache_text_encoder_outputs = false\n')
    assert import_kohya(f).profile_dict["dataset"]["cache_text_encoder_outputs"] == "off"


def test_export_writes_what_the_script_takes_and_round_trips(tmp_path):
    for family, mode, fp8, swap in (("sdxl", "disk", True, 4), ("sd1", "memory", False, 0), ("sdxl", "auto", False, 0),
                                    ("sd1", "off", True, 8)):
        p = _profile(family, dataset__cache_text_encoder_outputs=mode, model__fp8_base=fp8, optimization__blocks_to_swap=swap)
        cfg, text, path = _export(p, tmp_path / f"{family}-{mode}")
        if family == "sdxl" and mode != "auto":
            assert cfg["cache_text_encoder_outputs"] is True and cfg["cache_text_encoder_outputs_to_disk"] is (mode == "disk")
        else:  # train_network.py has no such argument; auto is not written at all
            assert "cache_text_encoder_outputs" not in cfg
        assert cfg.get("fp8_base", False) is fp8
        assert "blocks_to_swap" not in cfg  # not an argument of these scripts
        back = import_kohya(path).profile_dict
        assert back["dataset"].get("cache_text_encoder_outputs", "auto") == mode, text
        assert back["optimization"].get("blocks_to_swap", 0) == swap, text
        assert back["model"].get("fp8_base", False) is fp8


def test_memory_settings_are_harmless_on_resume_except_fp8():
    from loratui.engine.state import HARMLESS_ON_RESUME

    for key in ("dataset.cache_text_encoder_outputs", "optimization.blocks_to_swap", "optimization.cpu_offload_checkpointing"):
        assert key in HARMLESS_ON_RESUME
    assert not any("fp8_base".startswith(h) or h.endswith("fp8_base") for h in HARMLESS_ON_RESUME)
