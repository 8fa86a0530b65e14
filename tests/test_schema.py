from __future__ import annotations

from pathlib import Path

import pytest

from loratui.engine.schema import (
    Profile,
    ProfileError,
    apply_overrides,
    diff_profiles,
    load_profile,
    parse_override,
    profile_from_dict,
    profile_to_toml,
    profile_warnings,
    resolve_paths,
    save_profile,
    setting_info,
    settings,
)

PROFILES = Path(__file__).resolve().parent.parent / "profiles"


def test_every_setting_is_declared_with_help_and_section():
    infos = settings()
    assert len(infos) > 50
    for s in infos:
        assert s.help, s.dotted
        assert s.section in ("model", "dataset", "network", "optimization", "output", "compute")
    keys = {s.dotted for s in infos}
    for needed in ("model.base_model", "dataset.train_data_dir", "network.network_dim", "optimization.optimizer",
                   "optimization.min_snr_gamma", "output.save_every_n_epochs", "output.save_precision"):
        assert needed in keys
    assert setting_info("network.network_dim").kohya == "network_dim"
    assert setting_info("network.network_dim").ge == 1
    assert setting_info("optimization.optimizer").type == "choice"
    assert "Lion8bit" in setting_info("optimization.optimizer").choices
    assert setting_info("optimization.unet_lr").optional


@pytest.mark.parametrize("path", sorted(PROFILES.glob("*.toml")), ids=lambda p: p.name)
def test_bundled_profiles_are_valid(path):
    p = load_profile(path)
    assert p.output.output_name


def test_all_problems_reported_at_once_with_file_and_key(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text(
        "[network]\nnetwork_dim = 0\nrank = 8\n[optimization]\nlearning_rate = -1e-4\noptimizer = 'Adam'\n"
        "[dataset]\nresolution = 500\nflip_aug = 'yes'\n[outptu]\nx = 1\n"
    )
    with pytest.raises(ProfileError) as err:
        load_profile(f)
    problems = [str(p) for p in err.value.problems]
    text = "\n".join(problems)
    assert f"{f}:network.network_dim: 0 is out of range: must be ≥ 1" in problems
    assert f"{f}:network.rank: unknown setting" in text
    assert f"{f}:optimization.learning_rate: -0.0001 is out of range" in text
    assert "optimization.optimizer: 'Adam' is not one of" in text
    assert "dataset.flip_aug: 'yes' is not true or false" in text
    assert "outptu: unknown section" in text
    assert len(problems) == 6


def test_cross_field_rules_name_the_field():
    with pytest.raises(ProfileError) as err:
        profile_from_dict({"dataset": {"caption_extension": "txt", "min_bucket_reso": 1024, "max_bucket_reso": 512}},
                          "p.toml")
    text = "\n".join(str(p) for p in err.value.problems)
    assert "p.toml:dataset.caption_extension: must start with a dot, e.g. '.txt'" in text
    assert "p.toml:dataset.min_bucket_reso: 1024 is larger than max_bucket_reso 512" in text
    with pytest.raises(ProfileError) as err:
        profile_from_dict({"network": {"train_unet": False, "train_text_encoder": False}}, "p.toml")
    assert "nothing to train" in str(err.value.problems[0])


def test_wrong_types_are_not_coerced():
    with pytest.raises(ProfileError) as err:
        profile_from_dict({"network": {"network_dim": "16"}}, "p.toml")
    assert [str(p) for p in err.value.problems] == ["p.toml:network.network_dim: '16' is not a whole number"]
    # an int where a float is wanted is fine
    assert profile_from_dict({"network": {"network_alpha": 4}}).network.network_alpha == 4.0


def test_not_toml_and_missing_file(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text("[model\nbase_model = ")
    with pytest.raises(ProfileError) as err:
        load_profile(f)
    assert str(err.value.problems[0]).startswith(f"{f}: is not valid TOML")
    with pytest.raises(ProfileError) as err:
        load_profile(tmp_path / "nope.toml")
    assert "no such file" in str(err.value.problems[0])
    img = tmp_path / "img.toml"
    img.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(ProfileError) as err:
        load_profile(img)
    assert "not a text file" in str(err.value.problems[0])


def test_overrides_parse_toml_values():
    assert parse_override("network.network_dim=16") == ("network", "network_dim", 16)
    assert parse_override("optimization.learning_rate=1e-4") == ("optimization", "learning_rate", 1e-4)
    assert parse_override("dataset.flip_aug=true") == ("dataset", "flip_aug", True)
    data = apply_overrides({}, ["output.output_name=my lora", "network.network_alpha=4", "output.output_dir=/x/y"])
    p = profile_from_dict(data)
    assert p.output.output_name == "my lora" and p.network.network_alpha == 4.0 and p.output.output_dir == "/x/y"
    with pytest.raises(ProfileError):
        parse_override("network_dim=16")


def test_toml_round_trip_and_atomic_save(tmp_path):
    p = profile_from_dict({"network": {"network_dim": 32}, "optimization": {"unet_lr": 2e-4}})
    target = tmp_path / "p.toml"
    save_profile(p, target, header="made by a test")
    assert target.read_text().startswith("# made by a test")
    again = load_profile(target)
    assert again == p
    assert [f.name for f in tmp_path.iterdir()] == ["p.toml"]  # no temp files left
    assert "unet_lr = 0.0002" in profile_to_toml(p)


def test_unset_optional_is_omitted_and_diff():
    p = Profile()
    assert "unet_lr" not in profile_to_toml(p)
    q = profile_from_dict({"network": {"network_dim": 16}})
    assert diff_profiles(p, q) == [("network.network_dim", 8, 16)]


def test_warnings():
    p = profile_from_dict({"network": {"network_dim": 4, "network_alpha": 16.0}, "dataset": {"train_data_dir": "/data/my images"}})
    w = "\n".join(str(x) for x in profile_warnings(p))
    assert "network.network_alpha: 16 is larger than the rank 4" in w
    assert "dataset.train_data_dir" in w and "spaces" in w


def test_resolve_paths_expands_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    p = resolve_paths(profile_from_dict({"dataset": {"train_data_dir": "~/imgs"}, "model": {"base_model": "org/model"}}))
    assert p.dataset.train_data_dir == str(tmp_path / "imgs")
    assert p.model.base_model == "org/model"
