"""The dataset screen's dialogs: a concept's repeats, one caption, a yes/no
confirmation, and the captioning job's choices.  Each answers through
``dismiss`` (push them with a callback) and carries its own styles."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static, TextArea

from loratui.engine.inspection import MAX_REPEATS

if TYPE_CHECKING:
    from loratui.engine.captioners import CaptionSettings


R = TypeVar("R")


class DatasetDialog(ModalScreen[R]):
    """What the dataset screen's dialogs share: a centred box with a title, a
    body, an error line and the keys (each subclass adds its own rules)."""

    DEFAULT_CSS = """
    DatasetDialog { align: center middle; }
    DatasetDialog .dialog { width: 64; max-width: 95%; height: auto; max-height: 90%;
                            border: round $accent; background: $surface; padding: 0 1; }
    DatasetDialog .dialog.wide { width: 90; }
    DatasetDialog .dialog-title { text-style: bold; width: 1fr; }
    DatasetDialog .dialog-body { height: auto; max-height: 12; margin-bottom: 1; }
    DatasetDialog .dialog-error { color: $error; height: auto; }
    DatasetDialog .dialog-keys { color: $text-muted; }
    """


class RepeatsDialog(DatasetDialog[int | None]):
    """Ask for a concept's repeats; answers the number, or None."""

    DEFAULT_CSS = """
    RepeatsDialog #repeats-input { width: 16; }
    """
    BINDINGS = [Binding("escape", "cancel", "cancel", id="dataset.dialog.cancel")]

    def __init__(self, folder_name: str, current: int, info: str) -> None:
        super().__init__(id="repeats-dialog")
        self.folder_name, self.current, self.info = folder_name, current, info

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Repeats of {self.folder_name}", classes="dialog-title", markup=False)
            yield Static(self.info, classes="dialog-body", markup=False)
            yield Input(str(self.current), type="integer", id="repeats-input", select_on_focus=True)
            yield Label("", id="repeats-error", classes="dialog-error", markup=False)
            yield Label("enter rename the folder · esc cancel", classes="dialog-keys")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Submitted)
    def _submit(self, event: Input.Submitted) -> None:
        event.stop()
        try:
            n = int(event.value.strip())
        except ValueError:
            n = 0
        if not 1 <= n <= MAX_REPEATS:
            self.query_one("#repeats-error", Label).update(f"repeats must be a whole number from 1 to {MAX_REPEATS}")
            return
        self.dismiss(n)

    def action_cancel(self) -> None:
        self.dismiss(None)


class CaptionEditor(DatasetDialog[str | None]):
    """Edit one caption; ctrl+s answers the text, esc None."""

    DEFAULT_CSS = """
    CaptionEditor #caption-text { height: 8; }
    """
    BINDINGS = [
        Binding("ctrl+s", "save", "save", id="dataset.editor.save", priority=True),
        Binding("escape", "cancel", "cancel", id="dataset.editor.cancel", priority=True),
    ]

    def __init__(self, title: str, text: str, note: str = "") -> None:
        super().__init__(id="caption-editor")
        self.title_text, self.text, self.note = title, text, note

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label(self.title_text, classes="dialog-title", markup=False)
            if self.note:
                yield Label(self.note, classes="dialog-error", markup=False)
            yield TextArea(self.text, soft_wrap=True, id="caption-text", placeholder="tags or a sentence, e.g. mychar, 1girl, smile")
            yield Label("ctrl+s save · esc cancel (nothing is written)", classes="dialog-keys")

    def on_mount(self) -> None:
        area = self.query_one(TextArea)
        area.focus()
        area.move_cursor(area.document.end)

    def action_save(self) -> None:
        self.dismiss(self.query_one(TextArea).text)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmDialog(DatasetDialog[bool]):
    BINDINGS = [
        Binding("y,enter", "answer(True)", "yes", id="dataset.confirm.yes"),
        Binding("n,escape", "answer(False)", "no", id="dataset.confirm.no"),
    ]

    def __init__(self, title: str, body: str) -> None:
        super().__init__(id="confirm-dialog")
        self.title_text, self.body = title, body

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title", markup=False)
            yield Static(self.body, classes="dialog-body", markup=False)
            yield Label("y apply · n / esc cancel", classes="dialog-keys")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class CaptionJobDialog(DatasetDialog[dict | None]):
    """Choose the captioner and which images; answers a dict of choices."""

    DEFAULT_CSS = """
    CaptionJobDialog .row { height: auto; margin-top: 0; }
    CaptionJobDialog .field-label { width: 11; padding-top: 0; }
    CaptionJobDialog Select, CaptionJobDialog Input { width: 1fr; }
    CaptionJobDialog .buttons { margin-top: 1; }
    CaptionJobDialog Button { margin-right: 1; }
    """
    BINDINGS = [
        Binding("escape", "cancel", "cancel", id="dataset.captioner.cancel"),
        Binding("ctrl+s", "start", "start", id="dataset.captioner.start", priority=True),
    ]

    def __init__(self, defaults: "CaptionSettings", concept: str, missing_all: int, missing_here: int) -> None:
        super().__init__(id="caption-job-dialog")
        self.defaults = defaults
        self.concept = concept
        self.missing_all, self.missing_here = missing_all, missing_here

    def compose(self) -> ComposeResult:
        d = self.defaults
        scopes = [(f"images without a caption, all concepts ({self.missing_all})", "missing")]
        if self.concept:
            scopes.append((f"images without a caption in {self.concept} ({self.missing_here})", "missing-here"))
            scopes.append((f"every image in {self.concept}", "concept"))
        with Vertical(classes="dialog wide"):
            yield Label("Caption images", classes="dialog-title")
            with Horizontal(classes="row"):
                yield Label("captioner", classes="field-label")
                yield Select([("WD14 tagger (tags)", "wd14"), ("BLIP (a sentence)", "blip"), ("BLIP-2 (a sentence, larger)", "blip2"),
                             ("GIT (a sentence)", "git")], value=d.tagger,
                             allow_blank=False, id="cap-tagger", compact=True)
            with Horizontal(classes="row"):
                yield Label("model", classes="field-label")
                yield Input(d.model, placeholder=d.model_id(), id="cap-model", compact=True)
            with Horizontal(classes="row"):
                yield Label("trigger", classes="field-label")
                yield Input(d.trigger, placeholder="put first in every caption (optional)", id="cap-trigger", compact=True)
            with Horizontal(classes="row"):
                yield Label("images", classes="field-label")
                yield Select(scopes, value="missing", allow_blank=False, id="cap-scope", compact=True)
            with Horizontal(classes="row"):
                yield Label("existing", classes="field-label")
                yield Select([("keep them (skip)", "skip"), ("append new tags", "append"), ("overwrite", "overwrite")],
                             value=d.mode, allow_blank=False, id="cap-mode", compact=True)
            yield Label("", id="cap-error", classes="dialog-error", markup=False)
            with Horizontal(classes="row buttons"):
                yield Button("start  ctrl+s", id="cap-start", variant="primary", compact=True)
                yield Button("cancel  esc", id="cap-cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#cap-start", Button).focus()

    @on(Select.Changed, "#cap-tagger")
    def _tagger_changed(self, event: Select.Changed) -> None:
        from loratui.engine.captioners import DEFAULT_MODELS

        self.query_one("#cap-model", Input).placeholder = DEFAULT_MODELS.get(str(event.value), "")

    @on(Button.Pressed, "#cap-start")
    @on(Input.Submitted)
    def action_start(self) -> None:
        choice = {
            "tagger": self.query_one("#cap-tagger", Select).value,
            "model": self.query_one("#cap-model", Input).value.strip(),
            "trigger": self.query_one("#cap-trigger", Input).value.strip(),
            "scope": self.query_one("#cap-scope", Select).value,
            "mode": self.query_one("#cap-mode", Select).value,
        }
        if choice["scope"] == "missing" and not self.missing_all or choice["scope"] == "missing-here" and not self.missing_here:
            self.query_one("#cap-error", Label).update("every image there has a caption: pick another choice of images")
            return
        self.dismiss(choice)

    @on(Button.Pressed, "#cap-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
