"""Phases and requests are enums (issue 9 §4): what the engine emits, what the
metrics file holds and what the dashboard compares are the same values."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from loratui.engine.events import (
    CheckpointSaved,
    Control,
    Finished,
    Phase,
    PhaseChanged,
    Request,
    StepEvent,
    event_from_dict,
    event_to_dict,
)
from loratui.engine.metrics import MetricsTail
from loratui.engine.runstate import PHASE_TITLES, RunState

ENGINE = Path(__file__).resolve().parent.parent / "engine"


def emitted_phases() -> set[str]:
    """Every phase in a ``PhaseChanged(...)`` call in the engine's source: a
    ``Phase.NAME`` member (as its value, ``name.lower()``) or a string literal."""
    found = set()
    for path in ENGINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "PhaseChanged":
                args = [node.args[0]] if node.args else [k.value for k in node.keywords if k.arg == "phase"]
                found |= {a.value for a in args if isinstance(a, ast.Constant)}
                found |= {a.attr.lower() for a in args
                          if isinstance(a, ast.Attribute) and isinstance(a.value, ast.Name) and a.value.id == "Phase"}
    return found


def test_every_phase_the_engine_emits_is_a_phase():
    phases = emitted_phases()
    assert {"preparing", "loading_model", "caching_latents", "training", "saving", "done"} <= phases
    assert phases <= {p.value for p in Phase}
    assert all(p.value in PHASE_TITLES for p in Phase)


def test_a_plain_string_becomes_its_phase_and_compares_equal():
    ev = PhaseChanged("caching_latents", current=3, total=10)
    assert ev.phase is Phase.CACHING_LATENTS
    assert ev.phase == "caching_latents" and ev.phase in ("caching_latents",)
    assert PhaseChanged(phase=Phase.TRAINING).phase is Phase.TRAINING
    assert Phase.LOADING_MODEL.label == "loading model"
    with pytest.raises(ValueError):
        PhaseChanged("napping")


def test_phases_keep_their_strings_in_the_metrics_file(tmp_path):
    line = json.dumps(event_to_dict(PhaseChanged(Phase.TRAINING, total=40)))
    assert json.loads(line)["phase"] == "training"
    back = event_from_dict(json.loads(line))
    assert isinstance(back, PhaseChanged) and back.phase is Phase.TRAINING and back.total == 40
    # a file written before the enum (plain strings) reads the same; a phase no
    # version ever wrote is a bad line, skipped
    old = '{"type": "PhaseChanged", "time": 1.0, "phase": "loading_model", "detail": "x", "current": 0, "total": 0}'
    bogus = '{"type": "PhaseChanged", "time": 2.0, "phase": "napping", "detail": "", "current": 0, "total": 0}'
    path = tmp_path / "run.metrics.jsonl"
    path.write_text(old + "\n" + bogus + "\n" + line + "\n")
    tail = MetricsTail(path)
    events, _ = tail.read()
    assert [e.phase for e in events] == [Phase.LOADING_MODEL, Phase.TRAINING] and tail.bad_lines == 1


def test_control_does_what_each_request_asks():
    c = Control()
    c.request(Request.PAUSE)
    assert c.paused
    c.request("resume")
    assert not c.paused
    c.request(Request.SAVE)
    assert c.take_save_request() and not c.take_save_request()
    c.request(Request.STOP)
    assert c.stop_requested and not c.aborted
    c.request(Request.ABORT)
    assert c.aborted
    with pytest.raises(ValueError):
        c.request("explode")


def step(i: int) -> StepEvent:
    return StepEvent(epoch=1, epochs=1, step=i, total_steps=10, loss=0.1, smoothed_loss=0.1, lr=1e-4,
                     its=1.0, elapsed=i, eta=10 - i)


def test_a_save_request_is_pending_until_the_save_happened():
    s = RunState()
    s.apply(PhaseChanged("training", total=10))
    s.apply(step(1))
    s.ask(Request.SAVE)
    assert s.pending is Request.SAVE and s.requested == "save at the next step"
    s.apply(step(2))
    s.apply(PhaseChanged("saving", detail="x-step2.safetensors"))
    assert s.pending is Request.SAVE  # not saved yet
    s.apply(CheckpointSaved(path="/out/x-step2.safetensors", kind="manual", size=10, step=2))
    assert s.pending is None and s.requested == ""
    s.apply(PhaseChanged("training"))
    assert s.pending is None and s.display_phase == Phase.TRAINING


def test_pause_stop_and_abort_as_the_run_state_shows_them():
    s = RunState()
    s.apply(step(1))
    s.ask(Request.PAUSE)
    assert s.paused and s.display_phase is Phase.PAUSED and s.pending is None
    s.ask(Request.RESUME)
    assert not s.paused and s.display_phase is Phase.TRAINING
    s.ask(Request.PAUSE)
    s.ask(Request.STOP, "SIGTERM")
    assert not s.paused and s.requested == "stopping: saving at the next step"
    assert s.log[-1][2] == "SIGTERM: saving at the next step boundary, then ending"
    s.ask(Request.ABORT)
    assert s.requested == "aborting" and s.log[-1][1] == "warning"
    s.apply(Finished(path="", steps=1, elapsed=1.0, stopped_early=True))
    assert s.pending is None and s.display_phase == "stopped"


def test_reset_starts_over_but_keeps_the_names():
    s = RunState(profile_name="/out", run_name="toy", readonly=True)
    s.apply(step(3))
    s.ask(Request.SAVE)
    before = s.version
    s.reset()
    assert (s.profile_name, s.run_name, s.readonly) == ("/out", "toy", True)
    assert s.step == 0 and s.losses == [] and s.log_count == 0 and not s.log and s.pending is None
    assert s.version > before  # a RunUpdated for it is not taken for an old one


def test_a_reports_problems_come_back_from_the_metrics_file_as_problems(tmp_path):
    """`loratui watch` replays RunPlanned: the dataset report's problems keep
    their key, hint and severity; a file written before they were Problems
    (plain strings) still loads."""
    from loratui.engine.dataset import scan_dataset
    from loratui.engine.events import RunPlanned
    from loratui.engine.plan import StepPlan, plan_steps
    from loratui.engine.problems import Severity
    from loratui.engine.schema import DatasetSettings

    (tmp_path / "img" / "plain").mkdir(parents=True)
    scan = scan_dataset(DatasetSettings(train_data_dir=str(tmp_path / "img"), reg_data_dir=str(tmp_path / "nope")))
    assert scan.report.problems and scan.report.warnings
    plan = plan_steps(10, batch_size=1, grad_accum=1, epochs=1)
    ev = RunPlanned(report=scan.report, plan=plan, output_dir="o", output_name="n", device="cpu")
    back = event_from_dict(json.loads(json.dumps(event_to_dict(ev))))
    assert back.report.problems == scan.report.problems and back.report.warnings == scan.report.warnings
    assert all(w.severity is Severity.WARNING for w in back.report.warnings)
    old = event_to_dict(ev)
    old["report"]["problems"] = ["dataset.train_data_dir: gone"]
    old["report"]["warnings"] = ["something to look at"]
    back = event_from_dict(json.loads(json.dumps(old)))
    assert [str(p) for p in back.report.problems] == ["dataset.train_data_dir: gone"]
    assert back.report.warnings[0].severity is Severity.WARNING and str(back.report.warnings[0]) == "something to look at"
    assert isinstance(back.plan, StepPlan)
