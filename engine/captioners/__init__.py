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
    """The WD14 tagger or BLIP captioner the settings ask for (downloads when needed)."""
    if settings.tagger == "wd14":
        from loratui.engine.captioners.wd14 import WD14Tagger

        return WD14Tagger.load(settings, on_event=on_event, control=control)
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
    emit = on_event or (lambda e: None)
    control = control or Control()
    folder = Path(folder).expanduser()
    summary = CaptionSummary(folder=str(folder))
    t0 = time.monotonic()
    captioner = None
    done = 0

    def label(p: Path) -> str:
        try:
            return str(p.relative_to(folder))
        except ValueError:
            return p.name

    def finish(stopped: bool) -> CaptionSummary:
        summary.stopped_early = stopped
        summary.elapsed = time.monotonic() - t0
        emit(
            Finished(
                path=str(folder), steps=done, elapsed=summary.elapsed, stopped_early=stopped, summary=summary.to_dict()
            )
        )
        return summary

    def fail(message: str, hint: str = "") -> CaptionSummary:
        summary.error = message
        summary.elapsed = time.monotonic() - t0
        if summary.changed:
            hint = (hint + "; " if hint else "") + f"the {summary.changed} caption(s) written before are kept"
        emit(Failed(message=message, hint=hint))
        return summary

    from loratui.engine.captioners.images import ImageError, open_rgb
    from loratui.engine.captioners.writer import (
        APPENDED,
        OVERWRITTEN,
        SKIPPED,
        UNCHANGED,
        WRITTEN,
        CaptionFileError,
        has_caption,
        write_caption,
    )

    try:
        emit(PhaseChanged("preparing", detail=str(folder)))
        todo = _gather(settings, folder, images, emit)
        summary.images = len(todo)
        if settings.mode == "skip":
            fresh = [p for p in todo if not has_caption(p, settings.caption_extension)]
            summary.skipped_existing = len(todo) - len(fresh)
            if summary.skipped_existing:
                emit(LogEvent(f"{summary.skipped_existing} of {len(todo)} images already have captions; "
                              "leaving them as they are (mode skip)"))
            todo = fresh
        total = len(todo)
        if not total:
            emit(LogEvent("nothing to caption"))
            return finish(False)
        _check_stop(control)
        emit(PhaseChanged("loading_model", detail=settings.model_id()))
        captioner = load_captioner(settings, on_event=emit, control=control)
        batch_size = max(1, settings.batch_size)
        emit(PhaseChanged("captioning", current=0, total=total))
        for start in range(0, total, batch_size):
            _check_stop(control)
            loaded = []
            for p in todo[start : start + batch_size]:
                try:
                    loaded.append((p, open_rgb(p)))
                except ImageError as exc:
                    summary.failed.append((str(p), exc.reason))
                    emit(WarningEvent(f"skipped {p}: {exc.reason}"))
                    done += 1
                    emit(PhaseChanged("captioning", detail=label(p), current=done, total=total))
            if not loaded:
                continue
            try:
                results = captioner.caption([im for _, im in loaded])
            except CaptionError:
                raise
            except Exception as exc:  # noqa: BLE001 - inference errors (OOM, bad model) end the job
                text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                hint = "lower the batch size" if "memory" in text.lower() else ""
                raise CaptionError(f"captioning failed at {loaded[0][0].name}: {text}", hint=hint) from None
            for (p, _), tags in zip(loaded, results):
                _check_stop(control)
                tags = with_trigger(tags, settings.trigger) if tags else []
                done += 1
                if not tags:
                    summary.empty += 1
                    emit(WarningEvent(f"{label(p)}: the model gave no caption; nothing written"))
                    emit(PhaseChanged("captioning", detail=label(p), current=done, total=total))
                    continue
                try:
                    out = write_caption(p, tags, mode=settings.mode, caption_extension=settings.caption_extension)
                except CaptionFileError as exc:
                    summary.failed.append((str(p), f"{exc.path.name} {exc.reason}"))
                    emit(WarningEvent(f"{exc.path} {exc.reason}"))
                    emit(PhaseChanged("captioning", detail=label(p), current=done, total=total))
                    continue
                except OSError as exc:
                    if exc.errno in _FATAL_WRITE_ERRNOS:
                        raise CaptionError(
                            f"cannot write captions next to {p}: {exc.strerror}",
                            hint="check the folder's permissions and free disk space",
                        ) from None
                    summary.failed.append((str(p), f"cannot write caption: {exc.strerror or exc}"))
                    emit(WarningEvent(f"cannot write the caption of {p}: {exc.strerror or exc}"))
                    emit(PhaseChanged("captioning", detail=label(p), current=done, total=total))
                    continue
                key = {WRITTEN: "written", OVERWRITTEN: "overwritten", APPENDED: "appended",
                       UNCHANGED: "unchanged", SKIPPED: "skipped_existing"}[out.status]
                setattr(summary, key, getattr(summary, key) + 1)
                emit(PhaseChanged("captioning", detail=f"{label(p)}: {out.text}" if out.text else label(p),
                                  current=done, total=total))
        return finish(False)
    except Aborted:
        emit(LogEvent(f"stopped after {done} of {summary.images - summary.skipped_existing} images; "
                      "every caption file is complete"))
        return finish(True)
    except CaptionError as exc:
        return fail(exc.message, exc.hint)
    except Exception as exc:  # noqa: BLE001 - no traceback reaches the user
        return fail(f"captioning failed: {type(exc).__name__}: {exc}", hint="this looks like a bug; please report it")
    finally:
        if captioner is not None:
            try:
                captioner.close()
            except Exception:  # noqa: BLE001
                pass
