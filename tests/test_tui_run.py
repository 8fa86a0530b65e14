"""End to end in the app: start a real run on a tiny model from the form, watch the
events reach the dashboard, pause / resume / save now / stop, files on disk."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from loratui.engine.events import Phase
from loratui.engine.schema import Profile, save_profile
from loratui.screens.dashboard import DashboardScreen
from loratui.tui.app import LoraTuiApp
from loratui.tui.widgets.dialogs import ChoiceDialog


@pytest.fixture(autouse=True)
def no_run_outlives_its_test(monkeypatch):
    """A test that fails half-way leaves its run's (non-daemon) thread training, or
    paused for ever: abort it, so the session ends with the failure instead of hanging."""
    import loratui.engine.run as run_module

    handles = []
    real = run_module.start_run

    def recording(*args, **kwargs):
        handle = real(*args, **kwargs)
        handles.append(handle)
        return handle

    monkeypatch.setattr(run_module, "start_run", recording)
    yield
    for handle in handles:
        if not handle.done:
            handle.control.abort()
        handle.join(60)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LORATUI_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def tiny_profile(tmp_path: Path, model: Path, dataset: Path, **optimization) -> Path:
    p = Profile.model_validate(
        {
            "model": {"base_model": str(model)},
            "dataset": {"train_data_dir": str(dataset), "resolution": 64, "enable_bucket": False},
            "network": {"network_dim": 2, "network_alpha": 2.0, "train_text_encoder": False},
            "optimization": {"train_batch_size": 2, "mixed_precision": "no", "learning_rate": 1e-3,
                             "max_train_epochs": 100, **optimization},
            "output": {"output_dir": str(tmp_path / "out"), "output_name": "tiny", "save_every_n_epochs": 0},
        }
    )
    path = tmp_path / "tiny.toml"
    save_profile(p, path)
    return path


async def key(app, name: str, char: str | None = None) -> None:
    """A key press as the terminal sends it, without waiting for the screen to be idle
    (it is not, while a run keeps the dashboard moving; Pilot.press would wait)."""
    from textual import events

    app.post_message(events.Key(name, char if char is not None else (name if len(name) == 1 else None)))
    await asyncio.sleep(0.1)


async def until(pilot, cond, timeout: float = 120.0, what: str = ""):
    # a plain sleep, not pilot.pause(): the UI thread must stay idle, as it is for a
    # person watching, or the training thread waits for the GIL after every torch call
    for _ in range(int(timeout / 0.05)):
        if cond():
            await pilot.pause()
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or cond}")


async def test_train_from_the_form_pause_resume_save_and_stop(env, tiny_sd1_dir, synthetic_dataset):
    app = LoraTuiApp(tiny_profile(env, tiny_sd1_dir, synthetic_dataset), gpu=False, check_live_runs=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, lambda: app.run_state is not None, 5, "the run state")
        assert isinstance(app.screen, DashboardScreen)
        state = app.run_state
        await until(pilot, lambda: state.step >= 2 or state.done, what="the first steps")
        assert state.failed is None, state.failed
        assert state.planned is not None and state.planned.plan.steps_per_epoch == 12  # 6 img × 4 rep ÷ 2
        assert state.phase == "training" and len(state.losses) >= 2

        # pause: the step count stops moving
        await key(app, "space", " ")
        await until(pilot, lambda: state.paused and app.handle.control.paused, 10, "the pause request")
        assert state.paused and app.handle.control.paused
        # the step in flight finishes, then the engine reports that it waits
        await until(pilot, lambda: state.phase == Phase.PAUSED, 60, "the engine to pause")
        frozen = state.step
        await asyncio.sleep(0.6)  # negative check: no step may happen within this window
        await pilot.pause()
        assert state.step == frozen
        dash = app.screen
        dash.update_from(state, force=True)
        assert str(dash.query_one("#status").render()).startswith("PAUSED")
        await key(app, "space", " ")
        await until(pilot, lambda: state.step > frozen, 30, "training to resume")

        # ctrl+c asks first; esc keeps training
        await key(app, "ctrl+c")
        await until(pilot, lambda: isinstance(app.screen, ChoiceDialog), 10, "the ctrl+c dialog")
        await key(app, "escape")
        await until(pilot, lambda: app.screen is dash, 10, "the dialog to close")
        assert app.screen is dash and not app.handle.control.stop_requested and not app.handle.control.aborted

        # save now: an intermediate LoRA at the next step
        await key(app, "s")
        await until(pilot, lambda: any(c.kind == "manual" for c in state.checkpoints), 60, "the manual save")
        manual = next(c for c in state.checkpoints if c.kind == "manual")
        assert Path(manual.path).is_file() and Path(manual.path).stat().st_size == manual.size
        # ... and the "save at the next step" badge goes once it is saved
        await until(pilot, lambda: state.pending is None, 10, "the save-now badge to clear")
        dash.update_from(state, force=True)
        assert "save at the next step" not in str(dash.query_one("#status").render())

        # stop: saves at the next step, then ends
        await key(app, "x")
        await until(pilot, lambda: state.done, 60, "the run to stop")
        assert state.finished is not None and state.finished.stopped_early
        last = state.finished.summary["last_saved"]
        assert Path(last).is_file() and last != manual.path
        await until(pilot, lambda: "STOPPED" in str(dash.query_one("#status").render()), 10, "the STOPPED status")
        assert "STOPPED" in str(dash.query_one("#status").render())

        # the metrics file holds the same story, for `loratui watch`
        lines = app.handle.metrics_path.read_text().splitlines()
        types = [json.loads(line)["type"] for line in lines]
        assert types[-1] == "Finished" and types.count("StepEvent") == state.step
        # the form is usable again and says how the run ended
        await pilot.press("f")
        await pilot.pause()
        assert app.screen is app.form and "run done" in str(app.form.query_one("#run-badge").render())


async def test_a_run_to_its_end_writes_the_final_lora_and_sigterm_path(env, tiny_sd1_dir, synthetic_dataset):
    """A short run ends on its own with <name>.safetensors; SIGTERM while idle quits."""
    app = LoraTuiApp(
        tiny_profile(env, tiny_sd1_dir, synthetic_dataset, max_train_steps=3), gpu=False, check_live_runs=False
    )
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, lambda: app.run_state is not None and app.run_state.done, what="the run to finish")
        state = app.run_state
        assert state.failed is None, state.failed
        final = Path(state.finished.path)
        assert final.name == "tiny.safetensors" and final.is_file() and state.finished.steps == 3
        await until(pilot, lambda: str(final) in str(app.screen.query_one("#status").render()), 10, "the DONE status")
        assert str(final) in str(app.screen.query_one("#status").render())
        # starting again asks before replacing the final LoRA
        await pilot.press("f", "ctrl+r")
        await pilot.pause()
        assert isinstance(app.screen, ChoiceDialog) and "exists already" in app.screen.title_text
        await pilot.press("escape")
        app.handle_terminate()  # no run: SIGTERM just ends the app
        await pilot.pause()
    assert app.return_code == 0
