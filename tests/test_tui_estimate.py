"""The plan panel's estimate rows and ctrl+f (apply the first change that makes the run fit)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from loratui.engine.gpu import GpuMonitor
from loratui.engine.schema import Profile, save_profile
from loratui.tui.app import LoraTuiApp
from loratui.tui.widgets.plan import PlanPanel

from pilot_wait import until

GB = 1024**3


class OneGpu:
    """NVML with one RTX 4090 that reports ``total`` bytes of memory."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, total: int):
        self.total = total

    def nvmlInit(self): pass  # noqa: E704,N802
    def nvmlShutdown(self): pass  # noqa: E704,N802
    def nvmlDeviceGetCount(self): return 1  # noqa: E704,N802
    def nvmlDeviceGetHandleByIndex(self, i): return i  # noqa: E704,N802
    def nvmlDeviceGetName(self, h): return "NVIDIA GeForce RTX 4090"  # noqa: E704,N802
    def nvmlDeviceGetUtilizationRates(self, h): return SimpleNamespace(gpu=0, memory=0)  # noqa: E704,N802
    def nvmlDeviceGetMemoryInfo(self, h): return SimpleNamespace(used=0, total=self.total, free=self.total)  # noqa: E704,N802
    def nvmlDeviceGetTemperature(self, h, sensor): return 40  # noqa: E704,N802
    def nvmlDeviceGetPowerUsage(self, h): return 100_000  # noqa: E704,N802
    def nvmlDeviceGetEnforcedPowerLimit(self, h): return 450_000  # noqa: E704,N802


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LORATUI_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("LORATUI_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


async def test_the_panel_shows_the_estimate_and_ctrl_f_makes_it_fit(env, tiny_sd1_dir, synthetic_dataset):
    from loratui.engine.estimate import estimate
    from loratui.engine.estimate.devices import vram_device
    from loratui.engine.estimate.fit import apply

    profile = Profile.model_validate({
        "model": {"base_model": str(tiny_sd1_dir)},
        "dataset": {"train_data_dir": str(synthetic_dataset), "resolution": 256, "enable_bucket": False},
        "optimization": {"max_train_epochs": 1, "train_batch_size": 1, "mixed_precision": "bf16",
                         "gradient_checkpointing": False, "optimizer": "Lion"},
        "output": {"output_dir": str(env / "out"), "output_name": "mylora"},
    })
    card = vram_device(24)
    off = estimate(profile, card).vram.total
    on = estimate(apply(profile, [("optimization.gradient_checkpointing", True)]), card).vram.total
    assert on < off
    total = (on + off) // 2  # checkpointing makes it fit, nothing else is needed
    path = env / "mine.toml"
    save_profile(profile, path)
    app = LoraTuiApp(path, gpu=GpuMonitor(nvml=OneGpu(total)), check_live_runs=False)
    async with app.run_test(size=(120, 40)) as pilot:
        form = app.form
        panel = form.query_one(PlanPanel)
        await until(pilot, lambda: panel.estimate is not None and panel.estimate.rows, "the estimate", 60)
        text = str(panel.render())
        assert panel.estimate.rows[0][0] == "est. VRAM" and panel.estimate.rows[0][2] is False
        assert "est. VRAM" in text and "✗ needs ~" in text and "card has" in text
        assert "est. RAM" in text and "est. disk" in text and "(RTX 4090)" in text
        assert [c.key for c in panel.estimate.changes] == ["optimization.gradient_checkpointing"]
        assert "gradient_checkpointing false → true" in text
        form.set_focus(None)
        await pilot.press("ctrl+f")
        await pilot.pause()
        assert form.fields["optimization.gradient_checkpointing"].parsed() is True
        await until(pilot, lambda: panel.estimate is not None and panel.estimate.rows[0][2] is True, "an estimate that fits", 60)
        assert "fits ✓" in str(panel.render()).split("est. VRAM")[1].splitlines()[0]
        assert not panel.estimate.changes
        assert form.valid.optimization.gradient_checkpointing is True


async def test_a_model_not_downloaded_yet_is_estimated_as_its_familys_shape(env, synthetic_dataset):
    """A FLUX profile made before the 24 GB download: the panel counts FLUX.1-dev's shape and
    says so; the model's problem stays listed (a run is still refused)."""
    from loratui.engine.userdirs import bundled_profiles_dir

    path = env / "flux.toml"
    text = (bundled_profiles_dir() / "flux-dev-24gb.toml").read_text()
    path.write_text(text.replace('"/data/mychar/images"', f'"{synthetic_dataset}"'))
    app = LoraTuiApp(path, gpu=GpuMonitor(nvml=OneGpu(24 * GB)), check_live_runs=False)
    async with app.run_test(size=(120, 50)) as pilot:
        panel = app.form.query_one(PlanPanel)
        await until(pilot, lambda: panel.estimate is not None and panel.estimate.rows, "the estimate", 60)
        shown = str(panel.render())
        assert panel.estimate.assumed == "FLUX.1-dev" and "counted as FLUX.1-dev: the model is not here yet" in shown
        assert "est. VRAM" in shown and "(RTX 4090)" in shown
        assert any(p.startswith("model.base_model") for p in panel.problems)
