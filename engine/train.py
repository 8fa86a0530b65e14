"""The training loop: profile in, LoRA file out, events all the way.

The run itself is in :mod:`loratui.engine.training` (checks → setup → loop);
this module runs it and turns whatever ends it into the terminal event.
Every failure a user can cause becomes a ``Failed`` event with a message and a
hint; the traceback of an unexpected error goes to the run's log file only.

Reliability (tests/test_resume.py, test_kill9.py, test_faults.py, test_bad_inputs.py):

* resume (``resume=`` a state folder or ``"latest"``) restores LoRA, optimizer,
  scheduler, scaler and every RNG and skips the batches already seen: on the
  CPU the resumed run ends bitwise equal to an uninterrupted one; a profile or
  dataset change that matters is refused with the differences listed;
* a run alone in its output folder first removes the leftovers of interrupted
  saves (engine.state.OutputDirLock); every file is written atomically;
* a NaN/inf loss or gradient is caught before the optimizer sees it: the run
  stops (or skips up to ``optimization.max_bad_steps`` steps), and weights
  that are not finite are never saved;
* out of memory and a full disk end in a ``Failed`` event with what to change,
  and the memory the run held is released before ``run_training`` returns.
"""

from __future__ import annotations

import contextlib
import time
import traceback

from loratui.engine.events import Aborted, Control, Event, Failed, Phase, PhaseChanged, StepEvent
from loratui.engine.schema import Profile
from loratui.engine.training.loop import Emit, RunContext, train
from loratui.engine.training.paths import TrainingError, log_path


def run_training(
    profile: Profile,
    emit: Emit,
    control: Control | None = None,
    *,
    overwrite: bool = False,
    resume: str | None = None,
) -> Event:
    """Run to the end and return the terminal event (also emitted).

    Never raises for a problem of the run: a ``Failed`` event says what went
    wrong (out of memory, disk full, NaN loss, bad input ...) and the memory the
    run held is released before it is returned. ``resume``: a state folder, or
    ``"latest"`` for the newest state of this output name."""
    from loratui.engine.control_file import ControlFileFollower, control_path
    from loratui.engine.distributed import SharedControl, world, write_rank_failure
    from loratui.engine.errors import release_memory
    from loratui.engine.metrics import MetricsWriter, NullWriter, metrics_path_for

    from loratui.engine.samples.tracking import Trackers

    w = world()  # rank 0 of 1, or one of a multi-process run's processes (engine/distributed.py)
    control = control or Control()
    follower = None
    if w.is_main:
        emit = Trackers(profile, emit)  # TensorBoard / wandb, where output.log_with asks
        metrics = MetricsWriter(metrics_path_for(profile), fresh=not (resume or profile.output.resume))
        # requests from elsewhere (`loratui watch`, the launcher): the run's control file
        with contextlib.suppress(OSError):
            follower = ControlFileFollower(control_path(profile.output.output_dir, profile.output.output_name), control,
                                           from_start=w.enabled).start()  # a launched run: its launcher made the file
    else:
        metrics = NullWriter()
    recorder = _Recorder(metrics, emit)
    shared = SharedControl(control, w) if w.enabled else control
    ctx = recorder.ctx = RunContext(profile, recorder, shared, time.time(), metrics.release, world=w)
    emit = recorder
    try:
        result: Event = train(ctx, overwrite=overwrite, resume=resume)
    except Aborted:
        result = Failed(message="aborted by the user; nothing was saved since the last checkpoint", last_saved=ctx.last_saved)
    except TrainingError as exc:
        result = Failed(message=exc.message, hint=exc.hint, last_saved=ctx.last_saved)
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        result = _unexpected(ctx, exc)
    finally:
        if ctx.lock is not None:
            ctx.lock.release()
        if follower is not None:
            follower.close()
    if isinstance(result, Failed) and w.enabled:
        write_rank_failure(w.failures_dir, w.rank, result.message, result.hint)
    if ctx.heavy:
        # The model, optimizer and activations died with train()'s frames (a failure's
        # exception and traceback are gone by now), but an fp8 layer's forward, bound to it,
        # block swap's and compile's wrappers are cycles only the collector frees: give the
        # memory back so the app can sample or start another run.
        release_memory()
    emit(result)
    metrics.close()
    return result


class _Recorder:
    """The run's emit: every event also goes to the metrics file, and the
    context follows the phase and step (for error messages)."""

    ctx: RunContext

    def __init__(self, metrics, emit: Emit):
        self.metrics = metrics
        self.outer = emit

    def __call__(self, ev: Event) -> None:
        if isinstance(ev, PhaseChanged):
            self.ctx.phase = ev.phase
            if ev.phase == Phase.TRAINING and ev.total:
                self.ctx.total_steps = ev.total
        elif isinstance(ev, StepEvent):
            self.ctx.step, self.ctx.total_steps = ev.step, ev.total_steps
        self.metrics.write(ev)
        self.outer(ev)


def _unexpected(ctx: RunContext, exc: BaseException) -> Failed:
    from dataclasses import replace

    from loratui.engine.errors import explain_exception

    known = explain_exception(exc, ctx.profile, where=ctx.where())
    if known is not None:
        return replace(known, last_saved=ctx.last_saved)
    where = ""
    with contextlib.suppress(OSError):
        lp = log_path(ctx.profile)
        lp.parent.mkdir(parents=True, exist_ok=True)
        with open(lp, "a", encoding="utf-8") as fh:
            fh.write(f"\n--- {time.ctime()} internal error ---\n")
            traceback.print_exception(exc, file=fh)
        where = f" (details in {lp})"
    return Failed(
        message=f"internal error: {type(exc).__name__}: {exc}{where}",
        hint="please report this with the log file",
        last_saved=ctx.last_saved,
    )
