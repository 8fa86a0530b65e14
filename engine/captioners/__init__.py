"""Captioning jobs: WD14 tags or BLIP sentences for a folder of images.

``run_captioner(settings, folder, control=..., on_event=...)`` is the one entry
point (the CLI, the TUI worker and tests call it).  It reports what it does as
engine.events — PhaseChanged("preparing" | "downloading" | "loading_model" |
"captioning", current=n, total=N), LogEvent, WarningEvent, and finally exactly one
Finished or Failed — and never raises for a problem a user can cause.

Cancel with ``control.abort()`` (or ``control.stop()``): the job stops between
images; every caption file is either as it was or completely written.
``control.pause()`` pauses between batches.

Importing this package is cheap; onnxruntime / torch / transformers load when a
job starts.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loratui.engine.captioners.common import (
    DEFAULT_BLIP_MODEL,
    DEFAULT_MODELS,
    DEFAULT_WD14_MODEL,
    KNOWN_WD14_MODELS,
    CaptionError,
    CaptionSettings,
    with_trigger,
)
from loratui.engine.events import Aborted, Control, Failed, Finished, LogEvent, PhaseChanged, WarningEvent

__all__ = [
    "DEFAULT_BLIP_MODEL",
    "DEFAULT_MODELS",
    "DEFAULT_WD14_MODEL",
    "KNOWN_WD14_MODELS",
    "CaptionError",
    "CaptionSettings",
    "CaptionSummary",
    "load_captioner",
    "run_captioner",
]

_FATAL_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


@dataclass
class CaptionSummary:
    """What a job did. Also sent as ``Finished.summary`` (as a dict)."""

    folder: str
    images: int = 0  # images found (after dropping ones that share a caption file)
    written: int = 0  # new caption files (or empty ones filled)
    overwritten: int = 0
    appended: int = 0
    unchanged: int = 0  # overwrite/append with nothing new
    skipped_existing: int = 0  # mode skip, caption already there
    empty: int = 0  # the model gave nothing to write
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)
    stopped_early: bool = False
    elapsed: float = 0.0
    error: str = ""  # set when the job Failed

    @property
    def changed(self) -> int:
        return self.written + self.overwritten + self.appended

    def to_dict(self) -> dict:
        d = asdict(self)
        d["failed"] = [list(x) for x in self.failed]
        d["changed"] = self.changed
        return d


def load_captioner(settings: CaptionSettings, *, on_event: Callable[[object], None], control: Control):
    """The WD14 tagger or BLIP / BLIP-2 / GIT captioner the settings ask for (downloads when needed)."""
    if settings.tagger == "wd14":
        from loratui.engine.captioners.wd14 import WD14Tagger

        return WD14Tagger.load(settings, on_event=on_event, control=control)
    if settings.tagger in ("blip2", "git"):
        from loratui.engine.captioners.vlm import VlmCaptioner

        return VlmCaptioner.load(settings, on_event=on_event, control=control)
    from loratui.engine.captioners.blip import BlipCaptioner

    return BlipCaptioner.load(settings, on_event=on_event, control=control)


def _check_stop(control: Control) -> None:
    control.wait_if_paused()
    if control.aborted or control.stop_requested:
        raise Aborted()


def _gather(
    settings: CaptionSettings, folder: Path, images: Iterable[str | Path] | None, emit: Callable[[object], None]
) -> list[Path]:
    from loratui.engine.captioners.images import image_extensions, list_images
    from loratui.engine.captioners.writer import caption_path

    if images is None:
        if not folder.exists():
            raise CaptionError(f"image folder {folder} does not exist", hint="check the path")
        if not folder.is_dir():
            raise CaptionError(f"{folder} is not a folder", hint="pass the folder that holds the images")
        found = list_images(folder, settings.recursive)
        if not found:
            hint = "put .png/.jpg/.webp images in it"
            if not settings.recursive and any(p.is_dir() and list_images(p) for p in folder.iterdir()):
                hint = "its images are in sub-folders: caption recursively (--recursive)"
            exts = ", ".join(image_extensions())
            raise CaptionError(f"no images in {folder} (looked for {exts})", hint=hint)
    else:
        found = [Path(p) for p in images]
        missing = [p for p in found if not p.is_file()]
        for p in missing:
            emit(WarningEvent(f"{p}: no such image; skipped"))
        found = [p for p in found if p.is_file()]
    # Two images with one stem (a.png, a.jpg) would share a.txt: caption the first only.
    owner: dict[Path, Path] = {}
    kept: list[Path] = []
    for p in found:
        cap = caption_path(p, settings.caption_extension)
        if cap in owner:
            first = owner[cap].name
            emit(WarningEvent(f"{p.name} and {first} share the caption file {cap.name}; captioning only {first}"))
            continue
        owner[cap] = p
        kept.append(p)
    return kept


def run_captioner(
    settings: CaptionSettings,
    folder: str | Path,
    *,
    control: Control | None = None,
    on_event: Callable[[object], None] | None = None,
    images: Iterable[str | Path] | None = None,
) -> CaptionSummary:
    """Caption the images in ``folder`` (or just ``images``, e.g. the ones
    without a caption) as ``settings`` say. Returns the summary; the events tell
    the same story as it happens."""
    folder = Path(folder).expanduser()
    job = _CaptionJob(
        settings=settings,
        folder=folder,
        emit=on_event or (lambda e: None),
        control=control or Control(),
        summary=CaptionSummary(folder=str(folder)),
    )
    captioner = None
    try:
        todo = _todo(job, images)
        if not todo:
            job.emit(LogEvent("nothing to caption"))
            return job.finish(False)
        _check_stop(job.control)
        job.emit(PhaseChanged("loading_model", detail=settings.model_id()))
        captioner = load_captioner(settings, on_event=job.emit, control=job.control)
        batch_size = max(1, settings.batch_size)
        job.emit(PhaseChanged("captioning", current=0, total=job.total))
        for start in range(0, job.total, batch_size):
            _check_stop(job.control)
            _caption_batch(job, captioner, todo[start : start + batch_size])
        return job.finish(False)
    except Aborted:
        job.emit(LogEvent(f"stopped after {job.done} of {job.summary.images - job.summary.skipped_existing} images; "
                          "every caption file is complete"))
        return job.finish(True)
    except CaptionError as exc:
        return job.fail(exc.message, exc.hint)
    except Exception as exc:  # noqa: BLE001 - no traceback reaches the user
        return job.fail(f"captioning failed: {type(exc).__name__}: {exc}", hint="this looks like a bug; please report it")
    finally:
        if captioner is not None:
            try:
                captioner.close()
            except Exception:  # noqa: BLE001
                pass


@dataclass
class _CaptionJob:
    """One ``run_captioner`` call: its settings, where its events go, how far it got."""

    settings: CaptionSettings
    folder: Path
    emit: Callable[[object], None]
    control: Control
    summary: CaptionSummary
    t0: float = field(default_factory=time.monotonic)
    done: int = 0  # images handled (captioned, skipped as unreadable or empty)
    total: int = 0  # images to caption

    def label(self, p: Path) -> str:
        try:
            return str(p.relative_to(self.folder))
        except ValueError:
            return p.name

    def advance(self, p: Path, detail: str | None = None) -> None:
        """One more image handled (``p``; ``detail`` instead of its name)."""
        self.emit(PhaseChanged("captioning", detail=self.label(p) if detail is None else detail,
                               current=self.done, total=self.total))

    def finish(self, stopped: bool) -> CaptionSummary:
        summary = self.summary
        summary.stopped_early = stopped
        summary.elapsed = time.monotonic() - self.t0
        self.emit(
            Finished(
                path=str(self.folder), steps=self.done, elapsed=summary.elapsed, stopped_early=stopped,
                summary=summary.to_dict(),
            )
        )
        return summary

    def fail(self, message: str, hint: str = "") -> CaptionSummary:
        summary = self.summary
        summary.error = message
        summary.elapsed = time.monotonic() - self.t0
        if summary.changed:
            hint = (hint + "; " if hint else "") + f"the {summary.changed} caption(s) written before are kept"
        self.emit(Failed(message=message, hint=hint))
        return summary


def _todo(job: _CaptionJob, images: Iterable[str | Path] | None) -> list[Path]:
    """The images to caption: those found, less (mode skip) those with a caption."""
    from loratui.engine.captioners.writer import has_caption

    settings, summary = job.settings, job.summary
    job.emit(PhaseChanged("preparing", detail=str(job.folder)))
    todo = _gather(settings, job.folder, images, job.emit)
    summary.images = len(todo)
    if settings.mode == "skip":
        fresh = [p for p in todo if not has_caption(p, settings.caption_extension)]
        summary.skipped_existing = len(todo) - len(fresh)
        if summary.skipped_existing:
            job.emit(LogEvent(f"{summary.skipped_existing} of {len(todo)} images already have captions; "
                              "leaving them as they are (mode skip)"))
        todo = fresh
    job.total = len(todo)
    return todo


def _caption_batch(job: _CaptionJob, captioner, paths: list[Path]) -> None:
    """Open, caption and write one batch; an unreadable image is skipped (said)."""
    from loratui.engine.captioners.images import ImageError, open_rgb

    loaded = []
    for p in paths:
        try:
            loaded.append((p, open_rgb(p)))
        except ImageError as exc:
            job.summary.failed.append((str(p), exc.reason))
            job.emit(WarningEvent(f"skipped {p}: {exc.reason}"))
            job.done += 1
            job.advance(p)
    if not loaded:
        return
    try:
        results = captioner.caption([im for _, im in loaded])
    except CaptionError:
        raise
    except Exception as exc:  # noqa: BLE001 - inference errors (OOM, bad model) end the job
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = "lower the batch size" if "memory" in text.lower() else ""
        raise CaptionError(f"captioning failed at {loaded[0][0].name}: {text}", hint=hint) from None
    for (p, _), tags in zip(loaded, results):
        _check_stop(job.control)
        job.done += 1
        _write_one(job, p, with_trigger(tags, job.settings.trigger) if tags else [])


def _write_one(job: _CaptionJob, p: Path, tags: list[str]) -> None:
    """Write one image's caption as the mode says; count and report what happened.
    Raises CaptionError when no caption can be written in that folder at all."""
    from loratui.engine.captioners.writer import (
        APPENDED,
        OVERWRITTEN,
        SKIPPED,
        UNCHANGED,
        WRITTEN,
        CaptionFileError,
        write_caption,
    )

    summary = job.summary
    if not tags:
        summary.empty += 1
        job.emit(WarningEvent(f"{job.label(p)}: the model gave no caption; nothing written"))
        job.advance(p)
        return
    try:
        out = write_caption(p, tags, mode=job.settings.mode, caption_extension=job.settings.caption_extension)
    except CaptionFileError as exc:
        summary.failed.append((str(p), f"{exc.path.name} {exc.reason}"))
        job.emit(WarningEvent(f"{exc.path} {exc.reason}"))
        job.advance(p)
        return
    except OSError as exc:
        if exc.errno in _FATAL_WRITE_ERRNOS:
            raise CaptionError(
                f"cannot write captions next to {p}: {exc.strerror}",
                hint="check the folder's permissions and free disk space",
            ) from None
        summary.failed.append((str(p), f"cannot write caption: {exc.strerror or exc}"))
        job.emit(WarningEvent(f"cannot write the caption of {p}: {exc.strerror or exc}"))
        job.advance(p)
        return
    key = {WRITTEN: "written", OVERWRITTEN: "overwritten", APPENDED: "appended",
           UNCHANGED: "unchanged", SKIPPED: "skipped_existing"}[out.status]
    setattr(summary, key, getattr(summary, key) + 1)
    job.advance(p, f"{job.label(p)}: {out.text}" if out.text else None)
