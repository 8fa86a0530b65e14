"""The dataset screen's captioning job: choose a captioner and the images
(``CaptionJobDialog``), run ``engine.captioners.run_captioner`` in a thread
worker with a progress bar, stop it (every caption file stays whole), and say
what it did.

``CaptionJob`` is a part of ``DatasetScreen`` (a mixin): it uses the screen's
``inspection``, ``control``, ``captioning`` and its status line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import work
from textual.message import Message

from loratui.engine.events import Control, Failed, LogEvent, Phase, PhaseChanged, WarningEvent
from loratui.tui.widgets.dataset_dialogs import CaptionJobDialog
from loratui.tui.widgets.dataset_tables import caption_job_note, clip

if TYPE_CHECKING:
    from loratui.engine.captioners import CaptionSettings


class CaptionProgress(Message):
    """One event of the captioning job (progress events replace stale ones)."""

    def __init__(self, event: Any) -> None:
        super().__init__()
        self.event = event

    def can_replace(self, message: Message) -> bool:
        return (
            isinstance(message, CaptionProgress)
            and isinstance(self.event, PhaseChanged)
            and isinstance(message.event, PhaseChanged)
            and message.event.phase == self.event.phase
        )


class CaptionDone(Message):
    def __init__(self, summary: Any, failed: Failed | None, written: list | None = None) -> None:
        super().__init__()
        self.summary = summary
        self.failed = failed
        self.written = written or []  # (image path, caption) of each caption the job wrote


class CaptionJob:
    """Captioning from the dataset screen (part of ``DatasetScreen``)."""

    def _caption_defaults(self) -> "CaptionSettings":
        from loratui.engine.captioners import CaptionSettings

        base = self.caption_settings or CaptionSettings()
        if base.caption_extension != self.caption_extension:
            try:
                base = base.model_copy(update={"caption_extension": self.caption_extension})
            except Exception:  # noqa: BLE001
                pass
        return base

    def action_caption(self) -> None:
        insp = self.inspection
        if self.captioning:
            self.notify("captioning is running: x stops it", severity="warning")
            return
        if insp is None or not insp.concepts:
            self.notify("no concept folders to caption", severity="warning")
            return
        c = self._current_concept()
        missing_all = len(insp.missing_caption_images())
        missing_here = len(insp.missing_caption_images(c)) if c else 0

        def done(choice: dict | None) -> None:
            if choice:
                self.start_captioning(choice)

        self.app.push_screen(
            CaptionJobDialog(self._caption_defaults(), c.folder_name if c else "", missing_all, missing_here), done
        )

    def start_captioning(self, choice: dict) -> None:
        """Start a captioning job: ``choice`` has tagger, model, trigger, scope
        ("missing" | "missing-here" | "concept") and mode."""
        from pydantic import ValidationError

        insp = self.inspection
        c = self._current_concept()
        if insp is None:
            return
        try:
            settings = self._caption_defaults().model_copy(
                update={k: choice[k] for k in ("tagger", "model", "trigger", "mode") if k in choice}
            )
            settings = type(settings).model_validate(settings.model_dump())
        except ValidationError as exc:
            self.notify(f"captioner settings: {exc.errors()[0]['msg']}", severity="error")
            return
        scope = choice.get("scope", "missing")
        if scope == "concept" and c is not None:
            folder, images = c.folder, None
        elif scope == "missing-here" and c is not None:
            folder, images = c.folder, insp.missing_caption_images(c)
        else:
            folder, images = insp.root, insp.missing_caption_images()
        if images is not None and not images:
            self.notify("every image has a caption already")
            return
        self.control = Control()
        self.captioning = True
        self.refresh_bindings()
        self._status(f"captioning with {settings.model_id()}… (x stops)")
        self._progress(0, max(1, len(images) if images is not None else c.images if c else 1))
        self._caption_worker(settings, folder, images, self.control)

    @work(thread=True, exclusive=True, group="dataset-caption", exit_on_error=False)
    def _caption_worker(self, settings, folder: Path, images, control: Control) -> None:
        from loratui.engine.captioners import run_captioner

        outcome: dict[str, Any] = {"failed": None}
        written: list[tuple[Path, str]] = []

        def on_event(ev: Any) -> None:
            if isinstance(ev, Failed):
                outcome["failed"] = ev
            elif isinstance(ev, (PhaseChanged, LogEvent, WarningEvent)):
                if isinstance(ev, PhaseChanged) and ev.phase == Phase.CAPTIONING and ": " in ev.detail:
                    label, text = ev.detail.split(": ", 1)
                    written.append((Path(folder) / label, text))
                self.post_message(CaptionProgress(ev))

        try:
            summary = run_captioner(settings, folder, control=control, on_event=on_event, images=images)
        except Exception as exc:  # noqa: BLE001 - run_captioner reports its own failures; this is a last guard
            self.post_message(CaptionDone(None, Failed(message=f"captioning failed: {type(exc).__name__}: {exc}")))
            return
        self.post_message(CaptionDone(summary, outcome["failed"], written))

    def on_caption_progress(self, msg: CaptionProgress) -> None:
        ev = msg.event
        if isinstance(ev, PhaseChanged):
            if ev.phase == Phase.DOWNLOADING and ev.total:
                from loratui.engine.modelstore.rate import Rate

                rate = getattr(self, "_download_rate", None) or Rate()
                self._download_rate = rate
                rate.update(ev.current)
                self._status(f"downloading {ev.detail}: {rate.text(ev.current, ev.total)} (x stops)")
                self._progress(ev.current, ev.total)
            elif ev.phase == Phase.LOADING_MODEL:
                self._status(f"loading {ev.detail}… (x stops)")
            elif ev.phase == Phase.CAPTIONING and ev.total:
                self._status(f"captioning {ev.current}/{ev.total}  {clip(ev.detail, 60)}")
                self._progress(ev.current, ev.total)
        elif isinstance(ev, WarningEvent):
            self.notify(ev.message, severity="warning", timeout=6)

    def on_caption_done(self, msg: CaptionDone) -> None:
        self.captioning = False
        self.control = None
        self.last_caption_summary = msg.summary
        self.written_captions = msg.written
        self.refresh_bindings()
        self._progress(None)
        if msg.failed is not None:
            text = msg.failed.message + (f" — {msg.failed.hint}" if msg.failed.hint else "")
            self._job_note = (f"captioning failed: {text}", "red")
            self.notify(text, title="captioning failed", severity="error", timeout=10)
        else:
            self._job_note = caption_job_note(msg.summary)
            more = " · w shows each image with its new caption" if msg.written else ""
            self.notify(self._job_note[0] + more, timeout=6)
        self.rescan()

    def action_written_captions(self) -> None:
        """Each image the last job captioned beside its caption, to fix a bad one in place."""
        from loratui.tui.widgets.caption_results import CaptionResults

        written = getattr(self, "written_captions", [])
        if not written:
            self.notify("no captions written yet: c starts the captioner", severity="warning")
            return

        def done(edited: bool | None) -> None:
            if edited:
                self.rescan()

        self.app.push_screen(CaptionResults(written, self.caption_extension), done)

    def action_stop_caption(self) -> None:
        if self.control is not None:
            self.control.abort()
            self._status("stopping after the current image…")
