"""Typed events a training run (or a captioning job) reports, and the control
object that steers it.

Events are small frozen dataclasses; consumers match on their class.  The engine
never knows who listens: the headless CLI prints them, the TUI turns them into
Textual messages.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from loratui.engine.plan import DatasetReport, StepPlan
from loratui.engine.problems import Problem, Severity


@dataclass(frozen=True, slots=True)
class Event:
    """Base class. ``time`` is seconds since the epoch."""

    time: float = field(default_factory=time.time, kw_only=True)


@dataclass(frozen=True, slots=True)
class RunPlanned(Event):
    """Dataset scanned and steps planned; no model loaded yet."""

    report: DatasetReport
    plan: StepPlan
    output_dir: str
    output_name: str
    device: str  # "cpu", "cuda:0 (NVIDIA H100 80GB HBM3)", ...
    gpus: list[int] = field(default_factory=list)  # NVML indices of every GPU the run's processes on this machine use


class Phase(StrEnum):
    """What a job is doing. The values are the strings the metrics file holds
    (and that older files hold): ``Phase("training") is Phase.TRAINING``, and a
    member compares equal to its string."""

    PREPARING = "preparing"
    LOADING_MODEL = "loading_model"
    DOWNLOADING = "downloading"
    CACHING_LATENTS = "caching_latents"
    CAPTIONING = "captioning"
    COMPILING = "compiling"  # torch.compile of the denoiser, before the first step
    TRAINING = "training"
    SAVING = "saving"
    PAUSED = "paused"
    DONE = "done"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")


PHASES = tuple(Phase)


@dataclass(frozen=True, slots=True)
class PhaseChanged(Event):
    """What the run is doing now. ``current``/``total`` for countable phases
    (caching latents 120/400); both 0 otherwise. A plain string is taken as
    its ``Phase`` (ValueError for one that is not a phase)."""

    phase: Phase
    detail: str = ""
    current: int = 0
    total: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.phase, Phase):
            object.__setattr__(self, "phase", Phase(self.phase))


@dataclass(frozen=True, slots=True)
class StepEvent(Event):
    epoch: int  # 1-based
    epochs: int
    step: int  # optimizer steps done, 1-based
    total_steps: int
    loss: float
    smoothed_loss: float
    lr: float
    its: float  # optimizer steps per second (recent average)
    elapsed: float  # seconds of training so far
    eta: float  # seconds left
    # max-norm regularisation (network.scale_weight_norms) after this step; None when off
    keys_scaled: int | None = None  # modules scaled down
    mean_norm: float | None = None  # mean norm of the modules' updates
    max_norm: float | None = None  # the largest


@dataclass(frozen=True, slots=True)
class CheckpointSaved(Event):
    path: str
    kind: str  # "epoch" | "step" | "manual" | "final" | "state"
    size: int  # bytes
    epoch: int = 0
    step: int = 0


@dataclass(frozen=True, slots=True)
class SampleSaved(Event):
    """A sample image written to ``<output_dir>/sample/``."""

    path: str
    prompt: str
    index: int  # the prompt's position in the prompt list
    epoch: int = 0  # the epoch it was rendered after (0: by step, or before training)
    step: int = 0
    seed: int = 0
    width: int = 0
    height: int = 0


@dataclass(frozen=True, slots=True)
class WarningEvent(Event):
    message: str


@dataclass(frozen=True, slots=True)
class LogEvent(Event):
    message: str


@dataclass(frozen=True, slots=True)
class Finished(Event):
    path: str  # the final LoRA ("" when stopped before any save)
    steps: int
    elapsed: float
    stopped_early: bool = False
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Failed(Event):
    message: str  # what went wrong, in words a user can act on
    hint: str = ""  # what to change
    last_saved: str = ""  # the last good LoRA/state, if any


TERMINAL_EVENTS = (Finished, Failed)


class Request(StrEnum):
    """What the user can ask of a running job (``Control.request``)."""

    PAUSE = "pause"
    RESUME = "resume"
    SAVE = "save"  # an intermediate LoRA at the next step
    STOP = "stop"  # save at the next step, then end
    ABORT = "abort"  # end at once, no save


class Control:
    """Commands for a running job. Every method is safe to call from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resume = threading.Event()
        self._resume.set()
        self._save_now = False
        self._stop = False
        self._abort = threading.Event()

    def request(self, req: Request | str) -> None:
        """Do what ``req`` asks (one of ``Request``)."""
        {
            Request.PAUSE: self.pause,
            Request.RESUME: self.resume,
            Request.SAVE: self.save_now,
            Request.STOP: self.stop,
            Request.ABORT: self.abort,
        }[Request(req)]()

    # -- called by the UI ---------------------------------------------------
    def pause(self) -> None:
        self._resume.clear()

    def resume(self) -> None:
        self._resume.set()

    def save_now(self) -> None:
        with self._lock:
            self._save_now = True

    def stop(self) -> None:
        """Save at the next step boundary, then end."""
        with self._lock:
            self._stop = True
        self._resume.set()

    def abort(self) -> None:
        """End as soon as possible without saving."""
        self._abort.set()
        self._resume.set()

    # -- read by the engine ---------------------------------------------------
    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop

    @property
    def aborted(self) -> bool:
        return self._abort.is_set()

    def take_save_request(self) -> bool:
        with self._lock:
            wanted, self._save_now = self._save_now, False
            return wanted

    def wait_if_paused(self, poll: float = 0.2) -> None:
        while not self._resume.wait(poll):
            if self._abort.is_set():
                return


class Aborted(Exception):
    """Raised inside a job when the user aborts it."""


# --------------------------------------------------------------------------- (de)serialisation
# The metrics file (<output_dir>/<output_name>.metrics.jsonl) holds one event per
# line as {"type": "<class name>", ...fields}; `loratui watch` replays it.

_EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (RunPlanned, PhaseChanged, StepEvent, CheckpointSaved, SampleSaved, WarningEvent, LogEvent, Finished, Failed)
}


def event_to_dict(ev: Event) -> dict[str, Any]:
    from dataclasses import asdict

    return {"type": type(ev).__name__, **asdict(ev)}


def _problem_from(p: Any, kind: str):
    if isinstance(p, dict):
        fields = {k: p[k] for k in ("key", "message", "hint", "source") if isinstance(p.get(k), str)}
        sev = Severity.WARNING if p.get("severity") == "warning" else Severity.ERROR
        return Problem(fields.pop("key", ""), fields.pop("message", ""), severity=sev, **fields)
    return Problem("", str(p), severity=Severity.WARNING if kind == "warnings" else Severity.ERROR)


def event_from_dict(d: dict[str, Any]) -> Event | None:
    """Rebuild an event written by ``event_to_dict``; None for unknown types."""
    from loratui.engine.plan import ConceptReport

    d = dict(d)
    cls = _EVENT_TYPES.get(d.pop("type", ""))
    if cls is None:
        return None
    if cls is RunPlanned:
        rep = dict(d["report"])
        for k in ("problems", "warnings"):  # Problems as dicts; plain strings in files from before
            rep[k] = [_problem_from(p, k) for p in rep.get(k, [])]
        rep["concepts"] = [ConceptReport(**c) for c in rep.get("concepts", [])]
        rep["reg_concepts"] = [ConceptReport(**c) for c in rep.get("reg_concepts", [])]
        d["report"] = DatasetReport(**rep)
        d["plan"] = StepPlan(**d["plan"])
    return cls(**d)
