"""Profile files: saving keeps the author's comments and layout; --set problems name --set;
problems are structured (key, message) and print as before."""

from __future__ import annotations

import tomllib

import pytest

from loratui.engine.problems import Problem, Severity
from loratui.engine.schema import ProfileError, load_profile, profile_from_dict, profile_warnings, save_profile

HAND_WRITTEN = """\
# My character LoRA. Tuned by hand — do not let the app eat this.
# second header line

[model]
base_model = "/models/sd15.safetensors"   # the pruned one
clip_skip = 2  # anime models

[network]
# rank first, then alpha
network_dim = 16
network_alpha = 8.0   # half the rank

[optimization]
learning_rate = 0.0001
# a cosine schedule worked best
lr_scheduler = "cosine"
unet_lr = 0.0002  # will be unset
"""


def _keys_in_order(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            out.append(line.split("=", 1)[0].strip())
    return out


def test_saving_keeps_every_comment_and_the_key_order(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(HAND_WRITTEN)
    p = load_profile(path)
    n = p.network.model_copy(update={"network_dim": 32})
    o = p.optimization.model_copy(update={"lr_scheduler": "linear", "unet_lr": None})
    save_profile(p.model_copy(update={"network": n, "optimization": o}), path, header="ignored: the file has its own")
    text = path.read_text()
    for line in HAND_WRITTEN.splitlines():
        if "#" in line and "unet_lr" not in line:
            assert line.split("#", 1)[1] in text, line  # every comment, word for word
    assert "network_alpha = 8.0   # half the rank" in text  # untouched lines stay as written
    assert "ignored: the file has its own" not in text
    order = _keys_in_order(text)
    assert order[:5] == ["base_model", "clip_skip", "network_dim", "network_alpha", "learning_rate"]
    assert order.index("network_dim") < order.index("network_alpha")
    assert order.index("learning_rate") < order.index("lr_scheduler")
    assert "unet_lr" not in order  # unset: removed
    again = load_profile(path)
    assert again.network.network_dim == 32 and again.optimization.lr_scheduler == "linear"
    assert again.optimization.unet_lr is None and again.model.clip_skip == 2
    data = tomllib.loads(text)
    assert data["network"]["network_dim"] == 32 and "conv_dim" not in data["network"]  # defaults not added
    assert [f.name for f in tmp_path.iterdir()] == ["mine.toml"]  # atomic, no .orig copy
    # a setting the file did not hold is added at the end of its section
    save_profile(again.model_copy(update={"network": again.network.model_copy(update={"conv_dim": 12})}), path)
    text = path.read_text()
    assert _keys_in_order(text)[2:5] == ["network_dim", "network_alpha", "conv_dim"]
    assert "# half the rank" in text and "# a cosine schedule worked best" in text
    assert load_profile(path).network.conv_dim == 12


def test_a_new_file_gets_the_header(tmp_path):
    path = tmp_path / "new.toml"
    save_profile(profile_from_dict({"network": {"network_dim": 4}}), path, header="first\nbased on: x")
    text = path.read_text()
    assert text.startswith("# first\n# based on: x\n")
    assert load_profile(path).network.network_dim == 4


def test_set_problems_name_the_set_item(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[network]\nnetwork_dim = 8\n[dataset]\nresolution = 32\n")
    with pytest.raises(ProfileError) as err:
        load_profile(path, ["network.network_dim=0", "network.rank=4"])
    lines = [str(p) for p in err.value.problems]
    assert "--set network.network_dim=0: 0 is out of range: must be ≥ 1" in lines
    assert any(line.startswith("--set network.rank=4: unknown setting") for line in lines)
    # the file's own problem still names the file
    assert f"{path}:dataset.resolution: 32 is out of range: must be ≥ 64" in lines
    by_key = {p.key: p for p in err.value.problems}
    assert by_key["network.network_dim"].source == "--set network.network_dim=0"
    assert by_key["dataset.resolution"].source == str(path)
    with pytest.raises(ProfileError) as err:
        load_profile(path, ["network_dim=3"])
    assert str(err.value) == "--set network_dim=3: the key must be section.key, e.g. network.network_dim=16"


def test_problems_are_structured():
    with pytest.raises(ProfileError) as err:
        profile_from_dict({"dataset": {"min_bucket_reso": 1024, "max_bucket_reso": 512}, "network": {"network_dim": "x"}}, "f.toml")
    problems = err.value.problems
    assert all(isinstance(p, Problem) and p.is_error for p in problems)
    keys = {p.key: p for p in problems}
    assert keys["dataset.min_bucket_reso"].message == "1024 is larger than max_bucket_reso 512"
    assert keys["network.network_dim"].message == "'x' is not a whole number" and keys["network.network_dim"].value == "x"
    assert str(keys["network.network_dim"]) == "f.toml:network.network_dim: 'x' is not a whole number"
    (w,) = profile_warnings(profile_from_dict({"optimization": {"optimizer": "Prodigy", "learning_rate": 1e-4}}))
    assert (w.key, w.severity) == ("optimization.learning_rate", Severity.WARNING)
    assert str(w) == "optimization.learning_rate: Prodigy expects a learning rate around 1.0, not 0.0001"


def test_an_untrainable_network_type_says_what_to_do():
    with pytest.raises(ProfileError) as err:
        profile_from_dict({"network": {"network_type": "lora-fa"}}, "f.toml")
    (p,) = err.value.problems
    assert p.key == "network.network_type" and p.value == "lora-fa" and p.message.startswith("'lora-fa' is not one of")
    assert "cannot be trained here yet" in p.hint
    assert str(p) == f"f.toml:network.network_type: {p.message} — {p.hint}"


@pytest.mark.parametrize("text", [
    'model = { base_model = "x", clip_skip = 2 }  # inline\n[network]\nnetwork_dim = 4\n',
    '# dotted keys\nmodel.base_model = "x"\nmodel.clip_skip = 2\nnetwork.network_dim = 4  # rank\n',
])
def test_saving_other_layouts_keeps_them_and_their_comments(tmp_path, text):
    path = tmp_path / "p.toml"
    path.write_text(text)
    p = load_profile(path)
    changed = p.model_copy(update={"network": p.network.model_copy(update={"network_dim": 32}),
                                   "model": p.model.model_copy(update={"clip_skip": 3, "vae": "v"})})
    save_profile(changed, path)
    out = path.read_text()
    assert load_profile(path) == changed
    for comment in ("# inline", "# dotted keys", "# rank"):
        assert (comment in out) == (comment in text)
    assert ("model = {" in out) == ("model = {" in text) and ("model.clip_skip = 3" in out) == ("model.clip_skip" in text)
