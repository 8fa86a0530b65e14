"""Every kohya_ss config in ../shared/fixtures/kohya_ss imports with nothing under "not
supported" and trains one step on the tiny model of its family, with its network and
training options as imported. Only what a CPU cannot run (8-bit optimizers, bf16/fp16
mixed precision), the paths and the size are replaced."""

from __future__ import annotations

import json
import math

import pytest
from safetensors import safe_open

from conftest import SHARED_FIXTURES
from loratui.engine.events import Finished, StepEvent, WarningEvent
from loratui.engine.train import run_training

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURES = sorted((SHARED_FIXTURES / "kohya_ss").glob("*.json"))
# the tensor every module of a LyCORIS file has, by algorithm
MARKER = {"ia3": ".on_input", "loha": ".hada_w1_a", "lokr": ".lokr_w1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from loratui.engine.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("kohya-fixtures") / "images", {"1_toy": 2}, size=(64, 96))


def test_the_fixtures_are_here():
    # CI has ../shared; without it the parametrized test below would silently be empty
    assert len(FIXTURES) >= 8, SHARED_FIXTURES


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_every_kohya_ss_config_trains_one_step_as_imported(path, tiny_sd1_dir, tiny_sdxl_dir, tiny_flux_dir, data,
                                                           tmp_path):
    from loratui.engine.kohya import import_kohya
    from loratui.engine.schema import profile_from_dict

    r = import_kohya(path)
    assert r.unsupported == [] and r.problems() == []
    d = r.profile_dict
    family = d["model"]["family"]
    tiny = {"sd1": tiny_sd1_dir, "sdxl": tiny_sdxl_dir, "flux": tiny_flux_dir}[family]
    d["model"].update(base_model=str(tiny), clip_l="", clip_g="", t5xxl="", ae="", vae="")
    if family == "flux":
        d["model"]["t5xxl_max_token_length"] = 8  # the tiny T5's length
    ds = d["dataset"]
    # the same shape at the tiny model's size: 512×650 without buckets → 64×82 (trained at 64×80)
    fixed = not ds["enable_bucket"]
    height = ds.get("resolution_height") or ds["resolution"]
    ds.update(train_data_dir=str(data), reg_data_dir="", resolution=64,
              resolution_height=round(64 * height / ds["resolution"]) if fixed else 0,
              min_bucket_reso=64, max_bucket_reso=128)
    o = d["optimization"]
    if "8bit" in o["optimizer"].lower():
        o["optimizer"] = "AdamW"  # bitsandbytes' 8-bit optimizers need CUDA
    o.update(mixed_precision="no", max_train_steps=1, train_batch_size=1, gradient_accumulation_steps=1)
    d["output"].update(output_dir=str(tmp_path / "out"), output_name="k", logging_dir=str(tmp_path / "logs"),
                       resume="", save_state=False, save_every_n_epochs=0, save_every_n_steps=0)
    d["network"]["network_weights"] = ""
    d.get("samples", {}).update(sample_every_n_steps=0, sample_every_n_epochs=0)

    events: list = []
    result = run_training(profile_from_dict(d), events.append)
    assert isinstance(result, Finished), result
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [e.step for e in steps] == [1] and math.isfinite(steps[0].loss)
    with safe_open(result.path, "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    net_type = d["network"]["network_type"]
    if net_type in MARKER:
        assert meta["ss_network_module"] == "lycoris.kohya"
        assert json.loads(meta["ss_network_args"])["algo"] == net_type
        assert any(k.endswith(MARKER[net_type]) for k in keys)
    else:
        assert meta["ss_network_module"] == ("networks.lora_flux" if family == "flux" else "networks.lora")
    if fixed and height % 8:
        said = [e.message for e in events if isinstance(e, WarningEvent)]
        assert any("64×80" in m and "8-pixel blocks" in m for m in said), said
        assert meta["ss_resolution"] == f"(64, {ds['resolution_height']})"
