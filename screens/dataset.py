"""The dataset screen: concepts, images, captions, tags, buckets and problems.

``DatasetScreen(train_data_dir, resolution=512, caption_extension=".txt")`` is a
self-contained Screen any app can push. Everything it shows comes from
:func:`engine.inspection.inspect_dataset`, run in a thread worker (the scan reads
headers, then every image is decoded once for the duplicate and corruption
checks). Edits go through the same engine functions as `loratui dataset`:
repeats are changed by renaming the concept folder, captions are written
atomically, captioning runs :func:`engine.captioners.run_captioner` in a thread
worker with a progress bar and can be stopped (every caption file stays whole).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import (
    Button,
    DataTable,
    Footer,
    Input,
    Label,
    ProgressBar,
    Select,
    Static,
    TabbedContent,
    TabPane,
    TextArea,
)

from loratui.engine.events import Control, Failed, LogEvent, PhaseChanged, WarningEvent
from loratui.engine.inspection import (
    MAX_REPEATS,
    DatasetInspection,
    ImageInfo,
    InspectError,
    apply_balance,
    load_caption,
    save_caption,
    set_repeats,
)

if TYPE_CHECKING:
    from loratui.engine.captioners import CaptionSettings
    from loratui.engine.schema import DatasetSettings

TABS = ("images", "tags", "buckets", "problems")
ISSUE_STYLES = {
    "error": "bold red",
    "unreadable": "red",
    "duplicate": "yellow",
    "near-duplicate": "yellow",
    "tiny": "yellow",
    "no-caption": "cyan",
    "warning": "yellow",
}


COLUMNS = {
    "concepts": ("concept", "repeats", "images", "captions", "samples", "suggested", "balanced"),
    "images": ("file", "size", "bucket", "caption"),
    "tags": ("count", "share", "tag"),
    "buckets": ("bucket", "images", "samples/epoch"),
    "problems": ("kind", "problem"),
}


def fill_table(table: DataTable, name: str, rows: list[tuple[str | None, list[Any]]]) -> None:
    """Replace the table's rows ([(key, cells)]), with column widths set from the
    content. (Widths left to the DataTable are measured when it is next idle; a
    table filled before its first layout could then keep header-wide columns.)"""
    labels = COLUMNS[name]
    widths = [len(label) for label in labels]
    for _key, cells in rows:
        for i, cell in enumerate(cells):
            widths[i] = max(widths[i], cell.cell_len if isinstance(cell, Text) else Text(str(cell)).cell_len)
    table.clear(columns=True)
    for label, width in zip(labels, widths):
        table.add_column(label, width=width, key=label)
    for key, cells in rows:
        table.add_row(*cells, key=key)


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


# --------------------------------------------------------------------------- messages


class DatasetInspected(Message):
    """A scan finished (``inspection``) or failed (``error``)."""

    def __init__(self, inspection: DatasetInspection | None, error: str, generation: int) -> None:
        super().__init__()
        self.inspection = inspection
        self.error = error
        self.generation = generation


class InspectProgress(Message):
    def __init__(self, phase: str, current: int, total: int) -> None:
        super().__init__()
        self.phase, self.current, self.total = phase, current, total

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, InspectProgress)


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
    def __init__(self, summary: Any, failed: Failed | None) -> None:
        super().__init__()
        self.summary = summary
        self.failed = failed


# --------------------------------------------------------------------------- dialogs


class RepeatsDialog(ModalScreen[int | None]):
    """Ask for a concept's repeats; answers the number, or None."""

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


class CaptionEditor(ModalScreen[str | None]):
    """Edit one caption; ctrl+s answers the text, esc None."""

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


class ConfirmDialog(ModalScreen[bool]):
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


class CaptionJobDialog(ModalScreen[dict | None]):
    """Choose the captioner and which images; answers a dict of choices."""

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
                yield Select([("WD14 tagger (tags)", "wd14"), ("BLIP (a sentence)", "blip")], value=d.tagger,
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


# --------------------------------------------------------------------------- the screen


class DatasetScreen(Screen):
    """Inspect and fix a dataset folder (the ``<repeats>_<name>`` layout)."""

    CSS_PATH = "dataset.tcss"
    BINDINGS = [
        Binding("escape,q", "close", "back", id="dataset.close"),
        Binding("r", "edit_repeats", "repeats", id="dataset.repeats"),
        Binding("e", "edit_caption", "edit", id="dataset.edit_caption"),
        Binding("c", "caption", "captioner", id="dataset.caption"),
        Binding("b", "balance", "balance", id="dataset.balance"),
        Binding("x", "stop_caption", "stop", id="dataset.stop_caption"),
        Binding("g", "rescan", "rescan", id="dataset.rescan"),
        Binding("1", "tab('images')", "images", id="dataset.tab_images", show=False),
        Binding("2", "tab('tags')", "tags", id="dataset.tab_tags", show=False),
        Binding("3", "tab('buckets')", "buckets", id="dataset.tab_buckets", show=False),
        Binding("4", "tab('problems')", "problems", id="dataset.tab_problems", show=False),
    ]

    def __init__(
        self,
        train_data_dir: str = "",
        resolution: int = 512,
        caption_extension: str = ".txt",
        *,
        dataset_settings: "DatasetSettings | None" = None,
        caption_settings: "CaptionSettings | None" = None,
        tab: str = "images",
        id: str | None = "dataset-screen",
    ) -> None:
        super().__init__(id=id)
        if dataset_settings is not None:
            train_data_dir = train_data_dir or dataset_settings.train_data_dir
            resolution = dataset_settings.resolution
            caption_extension = dataset_settings.caption_extension
        self.train_data_dir = str(train_data_dir or "")
        self.resolution = int(resolution)
        self.caption_extension = caption_extension
        self.dataset_settings = dataset_settings
        self.caption_settings = caption_settings
        self.open_captioner = tab == "captions"
        self.start_tab = tab if tab in TABS else "images"
        self.inspection: DatasetInspection | None = None
        self.error = ""
        self.scanning = False
        self.captioning = False
        self.control: Control | None = None
        self.last_caption_summary: Any = None
        self._generation = 0
        self._concept_key: str | None = None
        self._job_note: tuple[str, str] | None = None  # (what the last captioning job did, style)
        self._image_key: str | None = None

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        with Horizontal(id="ds-topbar"):
            yield Label("", id="ds-title", markup=False)
            yield Label("", id="ds-summary", markup=False)
        yield DataTable(id="concepts", cursor_type="row", zebra_stripes=False)
        with TabbedContent(id="ds-tabs", initial=f"tab-{self.start_tab}"):
            with TabPane("images", id="tab-images"):
                yield DataTable(id="images", cursor_type="row")
                with VerticalScroll(id="caption-box"):
                    yield Static("", id="caption-view")
            with TabPane("tags", id="tab-tags"):
                yield DataTable(id="tags", cursor_type="row")
            with TabPane("buckets", id="tab-buckets"):
                yield DataTable(id="buckets", cursor_type="row")
            with TabPane("problems", id="tab-problems"):
                yield DataTable(id="problems", cursor_type="row")
        with Horizontal(id="ds-status"):
            yield Label("", id="ds-status-text", markup=False)
            yield ProgressBar(total=100, show_eta=False, id="ds-progress")
        yield Footer()

    def on_mount(self) -> None:
        if not self.train_data_dir:
            self._from_app_profile()
        self.query_one("#ds-title", Label).update(self._title())
        concepts = self.query_one("#concepts", DataTable)
        concepts.border_title = "concepts"
        for table_id in COLUMNS:
            fill_table(self.query_one(f"#{table_id}", DataTable), table_id, [])
        self.query_one("#caption-box").border_title = "caption"
        self.query_one("#ds-progress").display = False
        concepts.focus()
        self.rescan()

    def _from_app_profile(self) -> None:
        """Pushed without a folder: take the dataset of the profile open in the app, if any."""
        getter = getattr(self.app, "form_profile", None)
        profile = None
        if callable(getter):
            try:
                profile = getter()
            except Exception:  # noqa: BLE001 - no form, no profile: say so below
                profile = None
        if profile is None:
            session = getattr(self.app, "session", None)
            profile = getattr(session, "profile", None)
        ds = getattr(profile, "dataset", None)
        if ds is not None and getattr(ds, "train_data_dir", ""):
            self.dataset_settings = ds
            self.train_data_dir = ds.train_data_dir
            self.resolution = ds.resolution
            self.caption_extension = ds.caption_extension

    def _title(self) -> str:
        folder = self.train_data_dir or "(no folder)"
        home = str(Path.home())
        if folder.startswith(home + "/"):
            folder = "~" + folder[len(home):]
        return f" dataset {self.resolution}px  {folder}"

    def on_unmount(self) -> None:
        if self.control is not None:
            self.control.abort()

    # ------------------------------------------------------------------ scanning
    def rescan(self) -> None:
        if not self.train_data_dir:
            self.error = "no image folder: set dataset.train_data_dir (Image folder) in the form, then press i again"
            self._status(self.error, "yellow")
            return
        self._generation += 1
        self.scanning = True
        self._status("scanning…")
        self._scan_worker(self._generation)

    @work(thread=True, exclusive=True, group="dataset-scan", exit_on_error=False)
    def _scan_worker(self, generation: int) -> None:
        from textual.worker import get_current_worker

        from loratui.engine.inspection import inspect_dataset

        worker = get_current_worker()
        try:
            insp = inspect_dataset(
                self.train_data_dir,
                resolution=self.resolution,
                caption_extension=self.caption_extension,
                settings=self.dataset_settings,
                on_progress=lambda phase, n, total: self.post_message(InspectProgress(phase, n, total)),
                cancelled=lambda: worker.is_cancelled,
            )
        except InspectError as exc:
            self.post_message(DatasetInspected(None, exc.message + (f" — {exc.hint}" if exc.hint else ""), generation))
            return
        except Exception as exc:  # noqa: BLE001 - no traceback reaches the user
            self.post_message(DatasetInspected(None, f"the dataset could not be inspected: {type(exc).__name__}: {exc}", generation))
            return
        if not worker.is_cancelled:
            self.post_message(DatasetInspected(insp, "", generation))

    @on(InspectProgress)
    def _on_progress(self, msg: InspectProgress) -> None:
        if not self.scanning or self.captioning:
            return
        if msg.phase == "hashing" and msg.total:
            self._status(f"checking images for duplicates and damage {msg.current}/{msg.total}…")
            self._progress(msg.current, msg.total)
        else:
            self._status(f"scanning… {msg.current} images")

    @on(DatasetInspected)
    def _on_inspected(self, msg: DatasetInspected) -> None:
        if msg.generation != self._generation:
            return
        self.scanning = False
        if not self.captioning:
            self._progress(None)
        if msg.inspection is None:
            self.error = msg.error
            self._status(msg.error, "red")
            return
        self.error = ""
        self.inspection = msg.inspection
        self._fill()
        if not self.captioning:
            self.query_one("#ds-status-text", Label).update(self._ready_text())
        if self.open_captioner:
            self.open_captioner = False
            self.action_caption()

    def _ready_text(self) -> Text:
        insp = self.inspection
        out = Text()
        if self._job_note:
            out.append(self._job_note[0] + " · ", style=self._job_note[1])
        if insp is None:
            return out
        issues = insp.issues()
        if insp.problems:
            out.append(f"cannot train yet: {insp.problems[0]}", style="red")
        elif issues:
            out.append(f"{len(issues)} problem(s) to look at: press 4")
        else:
            out.append("no problems found")
        return out

    # ------------------------------------------------------------------ drawing
    def _fill(self) -> None:
        insp = self.inspection
        if insp is None:
            return
        n_issue = len(insp.issues())
        summary = (
            f"{len(insp.concepts)} concepts · {insp.image_count} images · "
            f"{insp.captioned}/{insp.image_count} captioned · {insp.samples_per_epoch}/epoch "
        )
        self.query_one("#ds-summary", Label).update(summary)
        concepts = self.query_one("#concepts", DataTable)
        keep = self._concept_key
        rows: list[tuple[str | None, list[Any]]] = []
        for c in insp.concepts:
            caps = Text(f"{c.captioned}/{c.images}", style="yellow" if c.images and c.missing_captions else "")
            bal = Text(str(c.balanced_repeats), style="cyan" if c.balanced_repeats != c.repeats else "dim")
            images = str(c.images) + (f" +{c.unreadable}✗" if c.unreadable else "")
            cells = [c.folder_name, str(c.repeats), images, caps, str(c.samples), Text(str(c.suggested.repeats), style="dim"), bal]
            rows.append((c.folder_name, cells))
        fill_table(concepts, "concepts", rows)
        if insp.concepts:
            names = [c.folder_name for c in insp.concepts]
            idx = names.index(keep) if keep in names else 0
            concepts.move_cursor(row=idx)
            self._concept_key = names[idx]
        else:
            self._concept_key = None
        self._fill_images()
        n_caps = max(1, insp.image_count)
        fill_table(
            self.query_one("#tags", DataTable),
            "tags",
            [(None, [str(count), f"{100 * count / n_caps:.0f}%", tag]) for tag, count in insp.tag_table()],
        )
        fill_table(
            self.query_one("#buckets", DataTable),
            "buckets",
            [(None, [f"{bw}×{bh}", str(n), str(samples)]) for (bw, bh), n, samples in insp.bucket_table()],
        )
        rows = [
            (f"p{i}", [Text(issue.kind, style=ISSUE_STYLES.get(issue.kind, "")), issue.message])
            for i, issue in enumerate(insp.issues())
        ]
        rows += [(f"h{i}", [Text("hint", style="cyan"), hint]) for i, hint in enumerate(insp.hints)]
        fill_table(self.query_one("#problems", DataTable), "problems", rows)
        tabs = self.query_one("#ds-tabs", TabbedContent)
        tabs.get_tab("tab-problems").label = f"problems ({n_issue})" if n_issue else "problems"
        self.query_one("#concepts", DataTable).border_subtitle = (
            f"resolution {insp.resolution} · captions {insp.caption_extension}"
        )

    def _fill_images(self) -> None:
        insp = self.inspection
        table = self.query_one("#images", DataTable)
        keep = self._image_key
        if insp is None or self._concept_key is None:
            fill_table(table, "images", [])
            self._show_caption(None)
            return
        ims = insp.images_of(self._concept_key)
        rows: list[tuple[str | None, list[Any]]] = []
        for im in ims:
            if not im.ok:
                bad = [Text(im.name, style="red"), Text("unreadable", style="red"), "", Text(_clip(im.problem, 60), style="red")]
                rows.append((im.name, bad))
                continue
            size = f"{im.size[0]}×{im.size[1]}" if im.size else ""
            bucket = f"{im.bucket[0]}×{im.bucket[1]}" if im.bucket else ""
            cap = Text(_clip(im.caption, 60)) if im.caption is not None else Text("(none)", style="yellow")
            rows.append((im.name, [im.name, Text(size, style="yellow") if im.tiny else size, bucket, cap]))
        fill_table(table, "images", rows)
        names = [im.name for im in ims]
        if names:
            idx = names.index(keep) if keep in names else 0
            table.move_cursor(row=idx)
            self._image_key = names[idx]
            self._show_caption(ims[idx])
        else:
            self._image_key = None
            self._show_caption(None)
        table.border_title = f"{self._concept_key}: {len(ims)} files"

    def _current_image(self) -> ImageInfo | None:
        if self.inspection is None or self._concept_key is None or self._image_key is None:
            return None
        for im in self.inspection.images_of(self._concept_key):
            if im.name == self._image_key:
                return im
        return None

    def _current_concept(self):
        if self.inspection is None or self._concept_key is None:
            return None
        return next((c for c in self.inspection.concepts if c.folder_name == self._concept_key), None)

    def _show_caption(self, im: ImageInfo | None) -> None:
        box = self.query_one("#caption-box")
        view = self.query_one("#caption-view", Static)
        if im is None:
            box.border_title = "caption"
            view.update(Text("no image selected", style="dim"))
            return
        box.border_title = f"caption · {im.name}"
        t = Text()
        if not im.ok:
            t.append(f"unreadable: {im.problem}", style="red")
        elif im.caption is None:
            c = self._current_concept()
            t.append(f"no {self.caption_extension} caption: trains as {c.name if c else ''!r}", style="yellow")
            t.append("  · e writes one, c captions the missing ones", style="dim")
        else:
            t.append(im.caption)
        if im.ok and im.size and im.bucket:
            t.append(f"\n{im.size[0]}×{im.size[1]} → bucket {im.bucket[0]}×{im.bucket[1]}", style="dim")
            if im.tiny:
                t.append(f" (enlarged {im.upscale:.1f}×: blurry)", style="yellow")
        view.update(t)

    def _status(self, text: str, style: str = "") -> None:
        self.query_one("#ds-status-text", Label).update(Text(text, style=style))

    def _progress(self, current: int | None, total: int = 0) -> None:
        bar = self.query_one("#ds-progress", ProgressBar)
        if current is None or not total:
            bar.display = False
            return
        bar.display = True
        bar.update(total=total, progress=current)

    @on(DataTable.RowHighlighted, "#concepts")
    def _concept_highlighted(self, event: DataTable.RowHighlighted) -> None:
        key = event.row_key.value if event.row_key is not None else None
        if key != self._concept_key:
            self._concept_key = key
            self._image_key = None
            self._fill_images()

    @on(DataTable.RowHighlighted, "#images")
    def _image_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._image_key = event.row_key.value if event.row_key is not None else None
        self._show_caption(self._current_image())

    @on(DataTable.RowSelected, "#concepts")
    def _concept_selected(self, event: DataTable.RowSelected) -> None:
        self.action_tab("images")
        self.query_one("#images", DataTable).focus()

    @on(DataTable.RowSelected, "#images")
    def _image_selected(self, event: DataTable.RowSelected) -> None:
        self.action_edit_caption()

    # ------------------------------------------------------------------ actions
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop_caption":
            return self.captioning
        if action in ("caption", "balance", "edit_repeats") and self.captioning:
            return None  # shown, greyed out
        return True

    def action_close(self) -> None:
        if self.captioning and self.control is not None:
            self.control.abort()
        self.dismiss()

    def action_tab(self, name: str) -> None:
        tabs = self.query_one("#ds-tabs", TabbedContent)
        focused = self.focused
        tabs.active = f"tab-{name}"
        if focused is not None and any(isinstance(a, TabPane) for a in focused.ancestors):
            # the focused table is now hidden: focus the one shown (focus inside a hidden
            # pane would switch the tabs straight back)
            self.query_one(f"#{name}", DataTable).focus()

    def action_rescan(self) -> None:
        self.rescan()

    def action_edit_repeats(self) -> None:
        c = self._current_concept()
        if c is None:
            self.notify("no concept folder to change", severity="warning")
            return
        insp = self.inspection
        plan = f"; balanced: {c.balanced_repeats}" if insp and len(insp.concepts) > 1 else ""
        info = (
            f"{c.images} images × {c.repeats} repeats = {c.samples} samples per epoch.\n"
            f"suggested {c.suggested.repeats}: {c.suggested.reason}{plan}\n"
            f"The folder is renamed to <repeats>_{c.name}."
        )

        def done(n: int | None) -> None:
            if n is None or n == c.repeats:
                return
            try:
                new = set_repeats(c.folder, n)
            except InspectError as exc:
                self.notify(exc.message + (f" — {exc.hint}" if exc.hint else ""), severity="error", timeout=8)
                return
            self._concept_key = new.name
            self.notify(f"renamed {c.folder_name} → {new.name}")
            self.rescan()

        self.app.push_screen(RepeatsDialog(c.folder_name, c.repeats, info), done)

    def action_edit_caption(self) -> None:
        im = self._current_image()
        if im is None:
            self.notify("no image selected: pick one in the images tab", severity="warning")
            return
        text, warning = load_caption(im.path, self.caption_extension)
        note = warning or ("" if text else f"no caption yet: this writes {im.path.stem}{self.caption_extension}")

        def done(new_text: str | None) -> None:
            if new_text is None or new_text.strip() == text.strip() and not warning:
                return
            try:
                path = save_caption(im.path, new_text, self.caption_extension)
            except InspectError as exc:
                self.notify(exc.message + (f" — {exc.hint}" if exc.hint else ""), severity="error", timeout=8)
                return
            self.notify(f"saved {path.name}")
            self.rescan()

        self.app.push_screen(CaptionEditor(f"{im.folder}/{im.name}", text, note), done)

    def action_balance(self) -> None:
        insp = self.inspection
        if insp is None:
            return
        if len(insp.concepts) < 2:
            self.notify("balancing needs two or more concept folders", severity="warning")
            return
        plan = insp.balance_plan()
        if not plan:
            self.notify("balanced already: every concept gets about the same samples per epoch")
            return
        lines = []
        for c in insp.concepts:
            new = c.balanced_repeats
            arrow = f"→ {new}_{c.name}" if new != c.repeats else "(unchanged)"
            lines.append(f"{c.folder_name:<24} {c.images:>4} images × {new:>3} = {c.images * new:>5}  {arrow}")

        def done(yes: bool | None) -> None:
            if not yes:
                return
            try:
                moved = apply_balance(plan)
            except InspectError as exc:
                self.notify(exc.message + (f" — {exc.hint}" if exc.hint else ""), severity="error", timeout=8)
                return
            if self._concept_key:
                for src, dst in moved.items():
                    if src.name == self._concept_key:
                        self._concept_key = dst.name
            self.notify(f"renamed {len(moved)} folder(s)")
            self.rescan()

        self.app.push_screen(ConfirmDialog("Balance concepts: rename the folders?", "\n".join(lines)), done)

    # ------------------------------------------------------------------ captioning
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

        def on_event(ev: Any) -> None:
            if isinstance(ev, Failed):
                outcome["failed"] = ev
            elif isinstance(ev, (PhaseChanged, LogEvent, WarningEvent)):
                self.post_message(CaptionProgress(ev))

        try:
            summary = run_captioner(settings, folder, control=control, on_event=on_event, images=images)
        except Exception as exc:  # noqa: BLE001 - run_captioner reports its own failures; this is a last guard
            self.post_message(CaptionDone(None, Failed(message=f"captioning failed: {type(exc).__name__}: {exc}")))
            return
        self.post_message(CaptionDone(summary, outcome["failed"]))

    @on(CaptionProgress)
    def _on_caption_progress(self, msg: CaptionProgress) -> None:
        ev = msg.event
        if isinstance(ev, PhaseChanged):
            if ev.phase == "downloading" and ev.total:
                self._status(f"downloading {ev.detail}: {ev.current / 1e6:.0f}/{ev.total / 1e6:.0f} MB (x stops)")
                self._progress(ev.current, ev.total)
            elif ev.phase == "loading_model":
                self._status(f"loading {ev.detail}… (x stops)")
            elif ev.phase == "captioning" and ev.total:
                self._status(f"captioning {ev.current}/{ev.total}  {_clip(ev.detail, 60)}")
                self._progress(ev.current, ev.total)
        elif isinstance(ev, WarningEvent):
            self.notify(ev.message, severity="warning", timeout=6)

    @on(CaptionDone)
    def _on_caption_done(self, msg: CaptionDone) -> None:
        self.captioning = False
        self.control = None
        self.last_caption_summary = msg.summary
        self.refresh_bindings()
        self._progress(None)
        if msg.failed is not None:
            text = msg.failed.message + (f" — {msg.failed.hint}" if msg.failed.hint else "")
            self._job_note = (f"captioning failed: {text}", "red")
            self.notify(text, title="captioning failed", severity="error", timeout=10)
        else:
            s = msg.summary
            head = "captioning stopped" if s.stopped_early else "captioning done"
            parts = [f"{s.written} written"]
            for key, label in (("overwritten", "overwritten"), ("appended", "appended"), ("skipped_existing", "kept")):
                if getattr(s, key):
                    parts.append(f"{getattr(s, key)} {label}")
            if s.failed:
                parts.append(f"{len(s.failed)} unreadable")
            self._job_note = (f"{head}: {', '.join(parts)}", "green" if not s.stopped_early else "yellow")
            self.notify(self._job_note[0], timeout=6)
        self.rescan()

    def action_stop_caption(self) -> None:
        if self.control is not None:
            self.control.abort()
            self._status("stopping after the current image…")
