"""The dashboard and the bridge, driven by synthetic engine events (no torch)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from textual.widgets import RichLog

from loratui.engine.events import (
    CheckpointSaved,
    Failed,
    Finished,
    LogEvent,
    PhaseChanged,
    RunPlanned,
    StepEvent,
    WarningEvent,
    event_to_dict,
)
from loratui.engine.gpu import GpuSample
from loratui.engine.plan import ConceptReport, DatasetReport, plan_steps
from loratui.screens.dashboard import DashboardScreen
from loratui.tui.app import LoraTuiApp
from loratui.engine.metrics import MetricsTail, find_live_run, last_event
from loratui.engine.runstate import RunState
from loratui.tui.bridge import Bridge, Coalescer, RunUpdated
from loratui.tui.widgets.chart import LineChart, columns, plot
from loratui.tui.widgets.panels import gpu_line, gpu_text, status_text
from pilot_wait import until


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LORATUI_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def planned(total: int = 100) -> RunPlanned:
    report = DatasetReport(root="/data/images", concepts=[ConceptReport("/data/images/10_toy", "toy", 10, 10, 0)])
    return RunPlanned(
        report=report,
        plan=plan_steps(100, batch_size=1, grad_accum=1, epochs=total // 100 or 1),
        output_dir="/out",
        output_name="toy_v1",
        device="cpu",
    )


def step(i: int, total: int = 100) -> StepEvent:
    return StepEvent(
        epoch=1 + i * 4 // total, epochs=4, step=i, total_steps=total, loss=0.2 - i * 0.001, smoothed_loss=0.19 - i * 0.001,
        lr=1e-4 * (1 - i / total), its=12.5, elapsed=i / 12.5, eta=(total - i) / 12.5,
    )


class NVMLError_LibraryNotFound(Exception):  # noqa: N801 - the name NVML gives it
    pass


class NoDriver:
    """NVML as it behaves on a machine without the NVIDIA driver."""

    def nvmlInit(self):  # noqa: N802
        raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")


def dashboard_app(tmp_path, gpu=None) -> LoraTuiApp:
    from loratui.engine.gpu import GpuMonitor
    from loratui.engine.schema import Profile, save_profile

    path = tmp_path / "p.toml"
    save_profile(Profile(), path)
    return LoraTuiApp(path, gpu=gpu or GpuMonitor(nvml=NoDriver()), check_live_runs=False)


def rendered(screen, selector: str) -> str:
    return str(screen.query_one(selector).render())


async def open_dashboard(app: LoraTuiApp, pilot, readonly: bool = False) -> Bridge:
    state = RunState(profile_name="p", run_name="toy_v1", readonly=readonly)
    app.run_state = state
    app.bridge = Bridge(app, state, interval=0.1)
    app._show_dashboard()
    await pilot.pause()
    return app.bridge


# --------------------------------------------------------------------------- pure parts


def test_state_folds_events():
    s = RunState()
    s.apply(planned())
    s.apply(PhaseChanged(phase="caching_latents", current=3, total=10))
    assert s.display_phase == "caching_latents" and "3/10" in status_text(s).plain
    for i in range(1, 51):
        s.apply(step(i))
    assert s.step == 50 and len(s.losses) == 50 and s.epoch == 3
    text = status_text(s, 120).plain
    assert "TRAINING" in text and "step 50/100" in text and "50%" in text and "12.50 it/s" in text and "ETA 4s" in text
    s.paused = True
    assert status_text(s).plain.startswith("PAUSED")
    s.apply(CheckpointSaved(path="/out/toy_v1-000002.safetensors", kind="epoch", size=2048, epoch=2, step=50))
    s.apply(Finished(path="/out/toy_v1.safetensors", steps=100, elapsed=8.0))
    assert s.done and status_text(s).plain.startswith("DONE  /out/toy_v1.safetensors")
    assert any("done: /out/toy_v1.safetensors" in line for _, _, line in s.log)


def test_coalescer_posts_at_most_once_per_interval():
    async def go():
        posted = []
        c = Coalescer(lambda: posted.append(time.monotonic()), interval=0.05)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.5:
            c.poke()
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.1)
        return posted

    posted = asyncio.run(go())
    assert 5 <= len(posted) <= 13  # ~0.55 s / 0.05 s, not hundreds
    gaps = [b - a for a, b in zip(posted, posted[1:])]
    assert min(gaps) >= 0.045


def test_run_updated_replaces_an_older_one():
    s = RunState()
    a, b = RunUpdated(s), RunUpdated(s)
    assert b.can_replace(a)
    assert not b.can_replace(RunUpdated(RunState()))


def test_braille_chart_plots_a_falling_line():
    cells, lo, hi = plot([(list(range(10, 0, -1)), "cyan")], width=5, height=2)
    assert (lo, hi) == (1, 10)
    assert cells[0][0][0] != 0 and cells[1][0][0] == 0  # starts top-left
    assert cells[1][-1][0] != 0 and cells[0][-1][0] == 0  # ends bottom-right
    # x_max leaves room for the steps still to come
    cols = columns([1.0, 2.0], 10, x_max=10)
    assert cols[0] == 1.0 and cols[1] == 2.0 and cols[5] is None


def test_gpu_panel_text():
    s = GpuSample(0, "NVIDIA H100 80GB HBM3", 87, 21 * 1024**3, 80 * 1024**3, 64, 412.0, 700.0)
    text = gpu_text([s], "", 40).plain
    assert "H100 80GB HBM3" in text and "87 %" in text and "21.0/80 GB" in text and "64 °C" in text and "412/700 W" in text
    assert "no GPU" in gpu_text([], "no GPU (no NVIDIA driver library)").plain
    assert gpu_line([s], "").plain.startswith("GPU H100")
    missing = GpuSample(0, "Tesla T4", None, None, None, None, None, None)
    assert "n/a" in gpu_text([missing], "").plain


# --------------------------------------------------------------------------- the screen


async def test_dashboard_draws_a_run_and_its_end(env):
    app = dashboard_app(env)
    async with app.run_test(size=(120, 40)) as pilot:
        bridge = await open_dashboard(app, pilot)
        dash = app.screen
        assert isinstance(dash, DashboardScreen)
        bridge.feed(planned())
        bridge.feed(PhaseChanged(phase="loading_model", detail="Loading U-Net"))
        await until(pilot, lambda: "LOADING MODEL" in rendered(dash, "#status"), "the loading phase")
        assert "LOADING MODEL" in str(dash.query_one("#status").render())
        bridge.feed(PhaseChanged(phase="training", total=100))
        for i in range(1, 61):
            bridge.feed(step(i))
        bridge.feed(CheckpointSaved(path="/out/toy_v1-000002.safetensors", kind="epoch", size=217 * 2**20, epoch=2, step=50))
        bridge.feed(WarningEvent(message="dataset.flip_aug: flipped once"))
        bridge.feed(LogEvent(message="cached latents: 10 images"))
        # the GPU panel comes from a thread (the GPU worker); the rest is drawn below
        await until(pilot, lambda: "no GPU (no NVIDIA driver library)" in rendered(dash, "#gpu"), "the GPU panel")
        dash.update_from(app.run_state, force=True)
        await pilot.pause()
        status = str(dash.query_one("#status").render())
        assert "TRAINING" in status and "step 60/100" in status and "60%" in status
        loss = dash.query_one("#loss", LineChart)
        assert loss.redraws >= 1
        assert any(ch in str(loss.render()) for ch in "⠁⠂⠄⡀⠈⠐⠠⢀")  # braille dots
        assert "toy_v1-000002" in str(dash.query_one("#saved").render()) and "217.0 MB" in str(dash.query_one("#saved").render())
        assert "no GPU (no NVIDIA driver library)" in str(dash.query_one("#gpu").render())
        log_text = "\n".join(line.text for line in dash.query_one(RichLog).lines)
        assert "flipped once" in log_text and "cached latents" in log_text and "10 × toy" in log_text
        bridge.feed(Finished(path="/out/toy_v1.safetensors", steps=100, elapsed=8.0, summary={"final_loss": 0.1}))
        await until(pilot, lambda: "DONE" in rendered(dash, "#status"), "the DONE status")
        status = str(dash.query_one("#status").render())
        assert "DONE" in status and "/out/toy_v1.safetensors" in status and "100 steps in 8s" in status
        # the form says so too, and f goes there
        await pilot.press("f")
        await pilot.pause()
        assert app.screen is app.form
        assert "run done" in str(app.form.query_one("#run-badge").render())


async def test_a_failed_run_shows_the_message_and_the_hint(env):
    app = dashboard_app(env)
    async with app.run_test(size=(120, 40)) as pilot:
        bridge = await open_dashboard(app, pilot)
        bridge.feed(Failed(message="the GPU ran out of memory", hint="lower train_batch_size", last_saved="/out/x-000001.safetensors"))
        dash = app.screen
        await until(pilot, lambda: "FAILED" in rendered(dash, "#status"), "the FAILED status")
        assert "FAILED  the GPU ran out of memory" in str(dash.query_one("#status").render())
        log_text = "\n".join(line.text for line in dash.query_one(RichLog).lines)
        assert "hint: lower train_batch_size" in log_text and "last saved: /out/x-000001" in log_text


async def test_events_are_coalesced_into_few_redraws(env):
    app = dashboard_app(env)
    updates = []
    versions = []  # the run state's version each dispatched RunUpdated was posted at

    def hook(message):
        if isinstance(message, RunUpdated):
            updates.append(time.monotonic())
            versions.append(message.version)

    async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
        bridge = await open_dashboard(app, pilot)
        dash = app.screen
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < 1.0:  # a fast engine: ~10 events per ms
            for _ in range(10):
                n += 1
                bridge.feed(step(n, total=100000))
            await asyncio.sleep(0.001)
        elapsed = time.monotonic() - t0
        # settled: the coalescer's last RunUpdated (of the final state) is dispatched, so
        # no more come, and the dashboard has no throttled redraw left (status, charts)
        await until(pilot, lambda: versions and versions[-1] == app.run_state.version and dash._pending is None,
                    "the last state to be drawn")
        assert n > 200
        assert app.run_state.step == n and len(app.run_state.losses) == n  # nothing lost
        # (+ 0.8 s: the slack for settling the bound has always allowed)
        assert len(updates) <= (elapsed + 0.8) / 0.1 + 2, (len(updates), elapsed)
        # the dashboard drew the last state
        assert f"step {n:,}/100,000" in str(dash.query_one("#status").render())
        assert dash.query_one("#loss", LineChart).redraws <= elapsed / 2.0 + 3


async def test_read_only_dashboard_ignores_run_keys(env):
    app = dashboard_app(env)
    async with app.run_test(size=(120, 40)) as pilot:
        bridge = await open_dashboard(app, pilot, readonly=True)
        bridge.feed(step(5))
        await until(pilot, lambda: "5/100" in rendered(app.screen, "#status"), "step 5 drawn")
        await pilot.press("space", "s", "x")  # returns once the keys are handled
        await pilot.pause(0.2)  # negative check: nothing may be requested within this window either
        state = app.run_state
        assert not state.paused and state.requested == ""
        assert "watching, read-only" in str(app.screen.query_one("#title").render())


async def test_dashboard_at_80x24_keeps_progress_loss_and_a_gpu_line(env):
    sample = GpuSample(0, "NVIDIA RTX 4090", 55, 8 * 1024**3, 24 * 1024**3, 60, 300.0, 450.0)

    class FakeMonitor:  # an NVML-less machine cannot report a GPU; this one can
        reason = ""

        def sample(self):
            return [sample]

    app = dashboard_app(env, gpu=FakeMonitor())
    async with app.run_test(size=(80, 24)) as pilot:
        bridge = await open_dashboard(app, pilot)
        for i in range(1, 30):
            bridge.feed(step(i))
        dash = app.screen
        # the GPU line comes from a thread (the GPU worker); the status line is throttled
        await until(pilot, lambda: "RTX 4090" in rendered(dash, "#gpu-line"), "the GPU line")
        await until(pilot, lambda: "29/100" in rendered(dash, "#status"), "step 29 drawn")
        assert "-narrow" in dash.classes
        assert dash.query_one("#gpu-line").display and "RTX 4090  55%  8.0/24 GB" in str(dash.query_one("#gpu-line").render())
        assert dash.query_one("#loss-box").display and not dash.query_one("#log-box").display
        await pilot.press("l")
        await pilot.pause()
        assert dash.query_one("#log-box").display and not dash.query_one("#charts").display
        assert dash.query_one("#saved-box").region.height > 0
        assert "29/100" in str(dash.query_one("#status").render())


# --------------------------------------------------------------------------- metrics file


def write_events(path, events, mode="a"):
    with open(path, mode, encoding="utf-8") as fh:
        for ev in events:
            fh.write(json.dumps(event_to_dict(ev)) + "\n")


def test_metrics_tail_reads_new_lines_and_restarts_on_a_new_file(tmp_path):
    path = tmp_path / "toy.metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.read() == ([], False)  # no file yet
    write_events(path, [planned(), step(1)])
    with open(path, "a") as fh:
        fh.write('{"type": "StepEvent", "epoch": 1')  # half a line, still being written
    events, reset = tail.read()
    assert [type(e).__name__ for e in events] == ["RunPlanned", "StepEvent"] and not reset
    with open(path, "a") as fh:
        fh.write(', "epochs": 4, "step": 2, "total_steps": 100, "loss": 0.1, "smoothed_loss": 0.1, "lr": 1e-4, '
                 '"its": 1.0, "elapsed": 1.0, "eta": 98.0, "time": 1.0}\nnot json\n')
    events, _ = tail.read()
    assert len(events) == 1 and events[0].step == 2 and tail.bad_lines == 1
    write_events(path, [step(1)], mode="w")  # a new run of the same name
    events, reset = tail.read()
    assert reset and len(events) == 1


def test_find_live_run(tmp_path):
    path = tmp_path / "toy.metrics.jsonl"
    assert find_live_run(path) is None
    write_events(path, [planned(), step(7)])
    live = find_live_run(path)
    assert live is not None and "step 7/100" in live.describe()
    write_events(path, [Finished(path="/out/toy.safetensors", steps=100, elapsed=1.0)])
    assert find_live_run(path) is None
    assert isinstance(last_event(path), Finished)


class ControlledHandle:
    """What the app holds of a run started in this process: here only its Control
    (the events come from the test, through the bridge)."""

    def __init__(self) -> None:
        from loratui.engine.events import Control

        self.control = Control()


async def test_save_now_badge_shows_then_clears_once_the_save_happened(env):
    app = dashboard_app(env)
    async with app.run_test(size=(120, 40)) as pilot:
        bridge = await open_dashboard(app, pilot)
        app.handle = ControlledHandle()
        state, dash = app.run_state, app.screen
        bridge.feed(planned())
        bridge.feed(PhaseChanged(phase="training", total=100))
        bridge.feed(step(1))

        def status() -> str:
            return str(dash.query_one("#status").render())

        async def until(cond, what: str) -> None:
            for _ in range(60):
                await pilot.pause(0.05)
                if cond():
                    return
            raise AssertionError(f"timed out waiting for {what}: {status()!r}")

        await pilot.press("s")
        assert app.handle.control.take_save_request()  # the engine was asked
        await until(lambda: "(save at the next step)" in status(), "the badge")
        # the next step, and the engine starts saving: still pending
        bridge.feed(step(2))
        bridge.feed(PhaseChanged(phase="saving", detail="toy_v1-step00000002.safetensors"))
        await until(lambda: status().startswith("SAVING"), "the saving phase")
        assert "(save at the next step)" in status()
        # saved (as engine/train.py reports it): the badge goes
        bridge.feed(CheckpointSaved(path="/out/toy_v1-step00000002.safetensors", kind="manual", size=2048, step=2))
        bridge.feed(PhaseChanged(phase="training"))
        await until(lambda: status().startswith("TRAINING"), "training again")
        assert "save at the next step" not in status() and state.pending is None
        bridge.feed(step(3))
        await until(lambda: "step 3/100" in status(), "the next step")
        assert "save at the next step" not in status()


async def test_ctrl_c_without_a_run_quits(env):
    app = dashboard_app(env)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert app.return_code is None
        await pilot.press("ctrl+c")  # a clean form: nothing to ask about
        await pilot.pause()
        assert app.return_code == 0


def test_the_gpu_panel_shows_every_gpu_a_multi_gpu_run_uses():
    gb = 1024**3
    cards = [GpuSample(i, "NVIDIA H100 80GB HBM3", 90 + i, (30 + i) * gb, 80 * gb, 60 + i, 500.0, 700.0) for i in range(4)]
    text = gpu_text(cards, "", 40, indices=[1, 2, 3]).plain
    lines = text.splitlines()
    assert lines[0] == "3 × H100 80GB HBM3"
    assert [ln.split()[0] for ln in lines[1:]] == ["1", "2", "3"]  # the run's GPUs, not GPU 0
    assert "91%" in lines[1] and "33.0/80G" in lines[3] and "63°C" in lines[3]
    assert all(len(ln) <= 40 for ln in lines)
    line = gpu_line(cards, "", indices=[1, 2, 3]).plain
    assert line == "GPU H100 80GB HBM3  ×3  91–93%  max 33.0/80 GB (GPU 3)  ≤63°C"
    # one GPU: the single-GPU box as before
    assert "91 %" in gpu_text(cards, "", 40, index=1, indices=[1]).plain


async def test_a_second_and_third_run_in_one_session_each_get_a_fresh_dashboard(tmp_path, env):
    """Train, look at the result, go back to the form (f), train again: the old dashboard
    goes away (its id no longer clashes with the new one's), its timers with it."""
    app = dashboard_app(tmp_path)
    app._run_worker = lambda profile, overwrite: None  # no torch: each run's events are fed by hand
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        seen = []
        for i in range(3):
            app.begin_run(app.session.profile)
            await until(pilot, lambda: isinstance(app.screen, DashboardScreen), "the dashboard")
            dash = app.screen
            assert all(dash is not old for old in seen)
            seen.append(dash)
            app.bridge.feed(Finished(path=str(tmp_path / f"run{i}.safetensors"), steps=10, elapsed=1.0))
            await until(pilot, lambda: app.run_state.done, "the run's end")
            await pilot.press("f")
            await until(pilot, lambda: not isinstance(app.screen, DashboardScreen), "the form")
        await until(pilot, lambda: all(not old.is_attached for old in seen[:-1]), "the old dashboards removed")


def _resumed_run_file(path, end=None):
    """A run that failed at step 60 (steps 10-19 skipped: non-finite), resumed from its state at
    step 50 (the same metrics file)."""
    write_events(path, [planned(), *(step(i) for i in range(1, 61) if not 10 <= i < 20),
                        Failed(message="CUDA out of memory")], mode="w")
    write_events(path, [planned(), *(step(i) for i in range(51, 81))] + ([end] if end is not None else []))


def test_a_resumed_run_is_live_again_and_its_chart_goes_on_from_the_step_it_resumed_at(tmp_path):
    path = tmp_path / "toy.metrics.jsonl"
    _resumed_run_file(path)
    s = RunState()
    for ev in MetricsTail(path).read()[0]:
        s.apply(ev)
    assert not s.done and s.display_phase == "training" and s.step == 80
    assert len(s.losses) == len(s.lrs) == len(s.smoothed_losses) == 70  # the overlap once, the skipped ones not at all
    assert s.loss_steps == [*range(1, 10), *range(20, 81)]
    assert s.losses[-1] == step(80).loss and s.losses[s.loss_steps.index(50)] == step(50).loss


def test_watch_plain_follows_a_resumed_run_to_its_real_end(tmp_path, capsys):
    from loratui.engine.metrics import follow_plain

    path = tmp_path / "toy.metrics.jsonl"
    _resumed_run_file(path, Finished(path="/out/toy_v1.safetensors", steps=80, elapsed=9.0))
    assert follow_plain(path, poll=0.01) == 0  # not 1 at the earlier attempt's Failed
    assert "done     80 steps in 9s" in capsys.readouterr().out


async def test_a_run_on_eight_gpus_shows_every_one_of_them(env):
    from dataclasses import replace

    samples = [GpuSample(i, "NVIDIA H100 80GB HBM3", 90, (20 + i) * 1024**3, 80 * 1024**3, 70, 600.0, 700.0)
               for i in range(8)]

    class FakeMonitor:
        reason = ""

        def sample(self):
            return samples

    app = dashboard_app(env, gpu=FakeMonitor())
    async with app.run_test(size=(120, 40)) as pilot:
        bridge = await open_dashboard(app, pilot)
        bridge.feed(replace(planned(), gpus=list(range(8))))
        dash = app.screen
        await until(pilot, lambda: "27.0" in rendered(dash, "#gpu"), "GPU 7's figures")
        lines = rendered(dash, "#gpu").splitlines()
        assert len(lines) > 5  # more than the box's usual 5 rows
        await until(pilot, lambda: dash.query_one("#gpu").region.height >= len(lines), "a box that holds them")


def test_a_terminal_progress_line_is_redrawn_about_ten_times_a_second_not_every_step():
    """`loratui watch --plain` on a terminal replays a long run's file: 100k redraws over SSH before."""
    import io

    from loratui.engine.console import ConsolePrinter

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    printer = ConsolePrinter(out)
    for i in range(1, 1001):  # at once, as a replay
        printer(step(i, total=1000))
    redraws = out.getvalue().count("\r")
    assert 1 <= redraws <= 5, redraws
    assert "step 1000/1000" in out.getvalue()  # the last one always drawn
