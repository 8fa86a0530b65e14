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
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, ProgressBar, Static, TabbedContent, TabPane

from loratui.engine.events import Control
from loratui.engine.inspection import (
    DatasetInspection,
    ImageInfo,
    InspectError,
    apply_balance,
    load_caption,
    save_caption,
    set_repeats,
)
from loratui.screens.captioning import CaptionJob
from loratui.tui.widgets.dataset_dialogs import CaptionEditor, ConfirmDialog, RepeatsDialog
from loratui.tui.widgets.dataset_tables import (
    COLUMNS,
    balance_lines,
    bucket_rows,
    caption_text,
    concept_rows,
    fill_table,
    image_rows,
    problem_rows,
    summary_line,
    tag_rows,
)

if TYPE_CHECKING:
    from loratui.engine.captioners import CaptionSettings
    from loratui.engine.schema import DatasetSettings

TABS = ("images", "tags", "buckets", "problems")
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


# --------------------------------------------------------------------------- the screen


class DatasetScreen(CaptionJob, Screen):
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
        Binding("w", "written_captions", "captions written", id="dataset.written_captions", show=False),
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
        self.query_one("#ds-summary", Label).update(summary_line(insp))
        concepts = self.query_one("#concepts", DataTable)
        keep = self._concept_key
        fill_table(concepts, "concepts", concept_rows(insp))
        if insp.concepts:
            names = [c.folder_name for c in insp.concepts]
            idx = names.index(keep) if keep in names else 0
            concepts.move_cursor(row=idx)
            self._concept_key = names[idx]
        else:
            self._concept_key = None
        self._fill_images()
        fill_table(self.query_one("#tags", DataTable), "tags", tag_rows(insp))
        fill_table(self.query_one("#buckets", DataTable), "buckets", bucket_rows(insp))
        fill_table(self.query_one("#problems", DataTable), "problems", problem_rows(insp))
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
        fill_table(table, "images", image_rows(ims))
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
        c = self._current_concept()
        view.update(caption_text(im, c.name if c else "", self.caption_extension))

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
        lines = balance_lines(insp)

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
