"""`loratui watch OUTPUT_DIR`: follow a run started elsewhere from its metrics file
— plain lines, or the dashboard whose controls go through the run's control file —
and the app's prompt when it finds one."""

from __future__ import annotations

import json
import threading
import time

import pytest
from textual.worker import Worker, WorkerState

from loratui.tui.cli import main as cli_main
from loratui.engine.events import Finished, PhaseChanged, StepEvent, event_to_dict
from loratui.engine.schema import Profile, save_profile
from loratui.screens.dashboard import DashboardScreen
from loratui.tui.app import LoraTuiApp
from loratui.tui.widgets.dialogs import ChoiceDialog
from pilot_wait import until


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LORATUI_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def step(i: int, total: int = 40) -> StepEvent:
    return StepEvent(epoch=1, epochs=2, step=i, total_steps=total, loss=0.1, smoothed_loss=0.1, lr=1e-4,
                     its=5.0, elapsed=i / 5, eta=(total - i) / 5)


def append(path, *events) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        for ev in events:
            fh.write(json.dumps(event_to_dict(ev)) + "\n")
            fh.flush()


def test_watch_plain_prints_the_run_and_reports_bad_folders(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    metrics = out / "toy.metrics.jsonl"
    append(metrics, PhaseChanged(phase="training", total=40), *(step(i) for i in range(1, 41)),
           Finished(path=str(out / "toy.safetensors"), steps=40, elapsed=8.0))
    assert cli_main(["watch", str(out), "--plain"]) == 0
    text = capsys.readouterr().out
    assert "step 40/40" in text and "done     40 steps in 8s" in text
    assert cli_main(["watch", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert cli_main(["watch", str(tmp_path)]) == 2
    assert "holds no *.metrics.jsonl" in capsys.readouterr().err
    assert cli_main(["watch", str(out), "--name", "other"]) == 2
    assert "other.metrics.jsonl: no such metrics file" in capsys.readouterr().err


async def test_the_dashboard_follows_a_run_written_elsewhere(env):
    metrics = env / "toy.metrics.jsonl"
    append(metrics, PhaseChanged(phase="training", total=40), step(1))
    app = LoraTuiApp(watch_path=metrics, gpu=False)
    stop = threading.Event()

    def writer():  # "another process" appending as it trains
        for i in range(2, 31):
            if stop.wait(0.01):
                return
            append(metrics, step(i))

    async with app.run_test(size=(120, 40)) as pilot:
        t = threading.Thread(target=writer)
        t.start()
        try:
            await until(pilot, lambda: app.run_state.step == 30, "step 30", timeout=20)
        finally:
            stop.set()
            t.join()
        state = app.run_state
        assert state.readonly and state.step == 30 and len(state.losses) == 30
        dash = app.screen
        assert isinstance(dash, DashboardScreen) and dash.readonly
        await pilot.press("space", "x")  # the controls go to the run's control file, which its main process follows
        control = env / "toy.control.jsonl"
        await until(pilot, lambda: control.exists() and len(control.read_text().splitlines()) >= 2, "two requests")
        await until(pilot, lambda: state.requested != "", "the stop request in the state")
        sent = [json.loads(line)["request"] for line in control.read_text().splitlines()]
        assert sent == ["pause", "stop"]
        assert state.requested == "stopping: saving at the next step"
        assert "(watching)" in str(dash.query_one("#title").render())
        append(metrics, Finished(path=str(env / "toy.safetensors"), steps=40, elapsed=8.0))
        await until(pilot, lambda: state.done, "the run to end")
        await until(pilot, lambda: "DONE" in str(dash.query_one("#status").render()), "the DONE status")
        assert "DONE" in str(dash.query_one("#status").render())
        # a new run of the same name starts the file over: the dashboard starts over too
        metrics.write_text(json.dumps(event_to_dict(step(1, total=10))) + "\n")
        await until(pilot, lambda: app.run_state.total_steps == 10, "the new run")
        assert app.run_state.step == 1 and not app.run_state.done and len(app.run_state.losses) == 1


async def test_the_app_offers_to_watch_a_live_run_of_the_open_profile(env):
    out = env / "out"
    out.mkdir()
    append(out / "mine.metrics.jsonl", PhaseChanged(phase="training", total=40), step(12))
    path = env / "mine.toml"
    save_profile(Profile.model_validate({"output": {"output_dir": str(out), "output_name": "mine"}}), path)
    app = LoraTuiApp(path, gpu=False)
    async with app.run_test(size=(120, 40)) as pilot:
        # pushed, and composed
        await until(pilot, lambda: isinstance(app.screen, ChoiceDialog) and app.screen.query(".body"), "the dialog")
        dialog = app.screen
        assert isinstance(dialog, ChoiceDialog) and "looks live" in dialog.title_text
        assert "step 12/40" in str(dialog.query_one(".body").render())
        await pilot.press("w")
        await until(pilot, lambda: app.run_state is not None and app.run_state.step == 12, "the watched run's step")
        assert isinstance(app.screen, DashboardScreen) and app.run_state.readonly
        # a finished run is not offered
    (out / "mine.metrics.jsonl").write_text(
        json.dumps(event_to_dict(Finished(path="x", steps=40, elapsed=1.0, time=time.time()))) + "\n"
    )
    app = LoraTuiApp(path, gpu=False)
    checked = []

    def hook(message):
        if isinstance(message, Worker.StateChanged) and message.worker.group == "live":
            checked.append(message.state)

    async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
        await until(pilot, lambda: WorkerState.SUCCESS in checked, "the live-run check")
        await pilot.pause(0.2)  # negative check: no dialog may follow the check within this window
        assert not isinstance(app.screen, ChoiceDialog)
