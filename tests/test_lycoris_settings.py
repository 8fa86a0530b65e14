"""LyCORIS network settings: checks naming the setting, kohya import of network_args and
GUI fields, export back to sd-scripts network_args, ss_network_args. No model here."""

from __future__ import annotations

import json
import tomllib

import pytest

from loratui.engine.kohya import import_kohya
from loratui.engine.kohya.exporter import sd_scripts_args
from loratui.engine.registries import NETWORK_TYPES, lycoris_args
from loratui.engine.schema import ProfileError, profile_from_dict
from loratui.engine.schema.lycoris_checks import describe_network
from loratui.engine.schema.validation import profile_warnings


def _net(**n):
    return profile_from_dict({"network": n})


@pytest.mark.parametrize(
    "settings, key, words",
    [
        ({"network_type": "lora", "dora_wd": True}, "network.dora_wd", "lycoris-locon"),
        ({"network_type": "ia3", "dora_wd": True}, "network.dora_wd", "DoRA"),
        ({"network_type": "dylora", "network_dim": 6, "dylora_unit": 4}, "network.dylora_unit", "multiple"),
        ({"network_type": "loha", "network_dim": 100000}, "network.network_dim", "LoKr"),
        ({"network_type": "lokr", "lycoris_preset": "attn"}, "network.lycoris_preset", "attn-mlp"),
        ({"network_type": "lokr", "lycoris_preset": "/nope/p.toml"}, "network.lycoris_preset", "does not exist"),
        ({"network_type": "full", "bypass_mode": True}, "network.bypass_mode", "bypass"),
        ({"network_type": "lokr", "factor": 0}, "network.factor", "factor"),
    ],
)
def test_bad_combinations_are_refused_naming_the_setting(settings, key, words):
    with pytest.raises(ProfileError) as exc:
        _net(**settings)
    (p,) = exc.value.problems
    assert p.key == key and words in str(p)


def test_a_setting_the_algorithm_does_not_read_is_a_warning():
    p = _net(network_type="loha", factor=8, constrain=0.5)
    warned = {w.key: str(w) for w in profile_warnings(p)}
    assert "lokr" in warned["network.factor"] and "diag-oft" in warned["network.constrain"]
    assert not [w for w in profile_warnings(_net(network_type="lokr", factor=8)) if w.key.startswith("network.f")]
    # LoKr's full dimension is allowed
    assert _net(network_type="lokr", network_dim=100000, conv_dim=100000).network.network_dim == 100000


def test_ss_network_args_as_kohya_ss_writes_them():
    n = _net(network_type="lokr", factor=8, use_tucker=True, lycoris_preset="attn-mlp", conv_dim=8, conv_alpha=4.0).network
    args = lycoris_args(n)
    assert list(args)[-1] == "algo" and args["algo"] == "lokr"
    assert args["preset"] == "attn-mlp" and args["factor"] == "8" and args["use_cp"] == "True"  # LoKr: use_cp
    assert args["conv_dim"] == "8" and args["conv_alpha"] == "4" and "use_tucker" not in args
    assert lycoris_args(_net(network_type="lora").network) == {}
    assert json.loads(json.dumps(args)) == args
    d = lycoris_args(_net(network_type="dylora", network_dim=8, dylora_unit=4).network)
    assert d["block_size"] == "4" and d["algo"] == "dylora"
    assert "algo=lokr" in describe_network(n) and "factor=8" in describe_network(n)


@pytest.mark.parametrize(
    "network_args, expected",
    [
        (["algo=loha", "preset=attn-mlp", "use_tucker=True", "conv_dim=8", "conv_alpha=2"],
         {"network_type": "loha", "lycoris_preset": "attn-mlp", "use_tucker": True, "conv_dim": 8, "conv_alpha": 2.0}),
        (["algo=locon", "dora_wd=True", "rank_dropout=0.1"], {"network_type": "lycoris-locon", "dora_wd": True, "rank_dropout": 0.1}),
        (["algo=lokr", "factor=16", "use_cp=True", "decompose_both=True"],
         {"network_type": "lokr", "factor": 16, "use_tucker": True, "decompose_both": True}),
        (['algo="dylora"', "block_size=2"], {"network_type": "dylora", "dylora_unit": 2}),
        (["algo=diag-oft", "constraint=0.5", "rescaled=True"], {"network_type": "diag-oft", "constrain": 0.5, "rescaled": True}),
        (["algo=boft", "constrain=0.5"], {"network_type": "boft", "constrain": 0.5}),
        (["algo=full", "train_norm=True"], {"network_type": "full", "train_norm": True}),
        (["algo=glora", "module_dropout=0.2"], {"network_type": "glora", "module_dropout": 0.2}),
        (["algo=ia3"], {"network_type": "ia3"}),
    ],
)
def test_sd_scripts_lycoris_network_args_import(tmp_path, network_args, expected):
    cfg = tmp_path / "c.toml"
    cfg.write_text('pretrained_model_name_or_path = "m"\nnetwork_module = "lycoris.kohya"\nnetwork_dim = 8\n'
                   f"network_args = {json.dumps(network_args)}\n")
    r = import_kohya(cfg)
    n = r.profile_dict["network"]
    assert {k: n[k] for k in expected} == expected
    assert r.problems() == []
    assert not [k for k, _, _ in r.unsupported if "network" in k]


def test_gui_fields_map_for_the_algorithm_and_are_ignored_for_others(tmp_path):
    base = {"pretrained_model_name_or_path": "m", "LoRA_type": "LyCORIS/LoKr", "network_dim": 100000, "network_alpha": 1,
            "factor": 4, "use_cp": True, "use_tucker": False, "constrain": 0.3, "unit": 2, "LyCORIS_preset": "attn-only",
            "dora_wd": True, "rank_dropout_scale": True}
    cfg = tmp_path / "k.json"
    cfg.write_text(json.dumps(base))
    r = import_kohya(cfg)
    n = r.profile_dict["network"]
    assert (n["network_type"], n["network_dim"], n["factor"], n["use_tucker"], n["lycoris_preset"], n["dora_wd"]) == (
        "lokr", 100000, 4, True, "attn-only", True)
    ignored = {k: why for k, _, why in r.ignored}
    assert "not read by LyCORIS/LoKr" in ignored["constrain"] and "not read" in ignored["unit"]
    assert "kohya_ss passes use_cp" in ignored["use_tucker"] and "rank_dropout_scale" in ignored
    assert n["constrain"] == 0.0 and r.problems() == []
    # the GUI's DyLoRA and Native Fine-Tuning names
    for lt, net in (("Kohya DyLoRA", "dylora"), ("LyCORIS/DyLoRA", "dylora"), ("LyCORIS/Native Fine-Tuning", "full"),
                    ("LyCORIS/iA3", "ia3"), ("LyCORIS/BOFT", "boft"), ("LyCORIS/Diag-OFT", "diag-oft"),
                    ("LyCORIS/GLoRA", "glora"), ("LoCon", "lycoris-locon"), ("LyCORIS/LoCon", "lycoris-locon"),
                    ("Kohya LoCon", "locon"), ("Standard", "lora")):
        cfg.write_text(json.dumps({"pretrained_model_name_or_path": "m", "LoRA_type": lt, "network_dim": 8, "unit": 2}))
        r = import_kohya(cfg)
        assert r.profile_dict["network"]["network_type"] == net, lt
        assert r.problems() == [], (lt, r.problems())


@pytest.mark.parametrize("net_type", [n for n, e in NETWORK_TYPES.items() if e.algo])
def test_export_writes_network_args_and_imports_back(tmp_path, net_type):
    over = {"network_type": net_type, "network_dim": 8, "rank_dropout": 0.1} if "rank_dropout" in NETWORK_TYPES[net_type].applies \
        else {"network_type": net_type, "network_dim": 8}
    if net_type == "lokr":
        over |= {"factor": 4, "lycoris_preset": "attn-mlp"}
    p = profile_from_dict({"model": {"base_model": "m"}, "network": over})
    a, _ = sd_scripts_args(p)
    assert a["network_module"] == "lycoris.kohya"
    assert f"algo={NETWORK_TYPES[net_type].algo}" in a["network_args"]
    import tomli_w

    cfg = tmp_path / "config.toml"
    cfg.write_text(tomli_w.dumps(a))
    back = import_kohya(cfg)
    assert back.problems() == []
    assert back.profile().network == p.network
    assert tomllib.loads(cfg.read_text())["network_args"] == a["network_args"]


def test_an_fp8_base_with_a_lycoris_network_is_refused_and_never_suggested():
    """LyCORIS computes its layers' weights from the base ones (w + Δ): not from float8."""
    from loratui.engine.estimate.fit import candidates
    from loratui.engine.training.memory import memory_problems

    loha = profile_from_dict({"model": {"family": "flux", "fp8_base": True}, "network": {"network_type": "loha"}})
    (p,) = memory_problems(loha)
    assert p.key == "model.fp8_base" and "not with a LyCORIS network (loha)" in p.message and "fp8_base off" in p.hint
    assert memory_problems(profile_from_dict({"model": {"family": "flux", "fp8_base": True}})) == []
    plain = {"model": {"family": "flux", "fp8_base": False}}
    assert "model.fp8_base" in [c.key for c in candidates(profile_from_dict(plain), "flux")]
    lokr = profile_from_dict({**plain, "network": {"network_type": "lokr"}})
    assert "model.fp8_base" not in [c.key for c in candidates(lokr, "flux")]
