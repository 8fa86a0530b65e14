"""Snapshot tests (pytest-textual-snapshot) of each screen at 80×24 and 120×40.

Everything that could differ between machines is fixed: the profile (a bundled one
with its placeholder paths), the config folder's path, no GPU, event times, the
clock of the "saved … ago" column and the time zone.
Update after a deliberate change of the look: pytest tests/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import pytest

from loratui.engine.events import CheckpointSaved, LogEvent, PhaseChanged, RunPlanned, StepEvent, WarningEvent
from loratui.engine.gpu import GpuMonitor
from loratui.engine.plan import ConceptReport, DatasetReport, plan_steps
from loratui.engine.userdirs import bundled_profiles_dir
from loratui.tui.app import LoraTuiApp
from loratui.engine.runstate import RunState
from loratui.tui.bridge import Bridge
from loratui.tui.widgets.plan import PlanPanel

SIZES = [(80, 24), (120, 40)]
T0 = 1_800_000_000.0  # a fixed wall clock for events
CONFIG = Path("/tmp/loratui-snapshot-config")  # shown on the profiles and help screens


class NVMLError_LibraryNotFound(Exception):  # noqa: N801 - the name NVML gives it
    pass


class NoDriver:
    def nvmlInit(self):  # noqa: N802
        raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")


@pytest.fixture
def fixed_env(monkeypatch):
    shutil.rmtree(CONFIG, ignore_errors=True)
    (CONFIG / "profiles").mkdir(parents=True)
    monkeypatch.setenv("LORATUI_CONFIG_DIR", str(CONFIG))
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    import loratui.tui.widgets.panels as panels

    class Clock:  # "saved 4m ago" against a fixed now
        @staticmethod
        def time() -> float:
            return T0 + 600

    monkeypatch.setattr(panels, "time", Clock)
    yield
    shutil.rmtree(CONFIG, ignore_errors=True)
    monkeypatch.delenv("TZ")
    time.tzset()


def make_app() -> LoraTuiApp:
    return LoraTuiApp(
        bundled_profiles_dir() / "sd15-character.toml",
        gpu=GpuMonitor(nvml=NoDriver()),
        check_live_runs=False,
        prepare_demo=False,
    )


async def settle_form(pilot) -> None:
    panel = pilot.app.form.query_one(PlanPanel)
    for _ in range(200):
        if (panel.report is not None and not panel.scanning and pilot.app.gpu_last[0] is not None
                and pilot.app.form.checks_settled):
            break
        await pilot.pause(0.02)
    await pilot.pause()


def events() -> list:
    report = DatasetReport(
        root="/data/mychar/images",
        concepts=[
            ConceptReport("/data/mychar/images/10_mychar", "mychar", 10, 32, 0),
            ConceptReport("/data/mychar/images/4_outfit", "outfit", 4, 12, 3),
        ],
    )
    plan = plan_steps(368, batch_size=2, grad_accum=1, epochs=10)
    out = [
        RunPlanned(report=report, plan=plan, output_dir="/data/mychar/output", output_name="mychar_v2",
                   device="cpu", time=T0),
        PhaseChanged(phase="loading_model", detail="Loading U-Net", time=T0 + 1),
        LogEvent(message="loaded SD 1.x · diffusers folder · 4 MB", time=T0 + 5),
        PhaseChanged(phase="caching_latents", current=0, total=44, time=T0 + 6),
        PhaseChanged(phase="training", total=plan.total_steps, time=T0 + 40),
        WarningEvent(message="dataset.flip_aug: with cached latents each image is flipped once", time=T0 + 40),
    ]
    total = plan.total_steps
    for i in range(1, 1246):
        loss = 0.05 + 0.07 * math.exp(-i / 300) + 0.02 * math.sin(i * 1.7) ** 2
        lr = 1e-4 * 0.5 * (1 + math.cos(math.pi * i / total))
        out.append(StepEvent(epoch=1 + i // 184, epochs=10, step=i, total_steps=total, loss=loss,
                             smoothed_loss=0.05 + 0.07 * math.exp(-i / 300) + 0.01, lr=lr, its=2.41,
                             elapsed=i / 2.41, eta=(total - i) / 2.41, time=T0 + 40 + i / 2.41))
        if i in (368, 736):
            out.append(CheckpointSaved(path=f"/data/mychar/output/mychar_v2-{i // 184:06d}.safetensors",
                                       kind="epoch", size=227_540_992, epoch=i // 184, step=i,
                                       time=T0 + 40 + i / 2.41))
    return out


async def drive_dashboard(pilot) -> None:
    app = pilot.app
    await settle_form(pilot)
    state = RunState(profile_name="sd15-character", run_name="mychar_v2")
    app.run_state = state
    app.bridge = Bridge(app, state)
    for ev in events():
        state.apply(ev)
    app._show_dashboard()
    await pilot.pause()
    app.screen.update_from(state, force=True)
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_training_form(snap_compare, fixed_env, size):
    assert snap_compare(make_app(), terminal_size=size, run_before=settle_form)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dashboard(snap_compare, fixed_env, size):
    assert snap_compare(make_app(), terminal_size=size, run_before=drive_dashboard)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_profiles(snap_compare, fixed_env, size):
    async def open_profiles(pilot):
        await settle_form(pilot)
        await pilot.press("p")
        await pilot.pause()

    assert snap_compare(make_app(), terminal_size=size, run_before=open_profiles)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_help(snap_compare, fixed_env, size):
    async def open_help(pilot):
        await settle_form(pilot)
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(make_app(), terminal_size=size, run_before=open_help)
