"""The models screen (``M``): every checkpoint, VAE, LoRA and text encoder in the
models folder and the Hugging Face cache (engine.modelstore.scan: headers only),
in one table; enter puts the highlighted one in the form's field (base_model,
vae or network_weights); ``g`` downloads from the Hub (the usual files, or any
repo / repo + file), with a progress bar, bytes/s and ETA; ``x`` stops it (the
next download of that file resumes).
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Input, Label, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

from loratui.tui.widgets.keybar import KeyBar

DOWNLOAD_HOW = "press g (the usual SD 1.5 / SDXL / SD 3.5 / FLUX.1 files, or any Hub repo and file)"
COLUMNS = ("kind", "name", "family", "precision", "size", "where", "details")


def row_cells(e) -> tuple[Text, ...]:
    """The table row of one ``ModelEntry`` (a broken file in red, with what is wrong)."""
    style = "red" if e.problem else ""
    details = ("BROKEN: " + e.problem) if e.problem else e.details
    return (
        Text(e.kind.replace("_", " "), style=style),
        Text(e.name, style=style or "bold"),
        Text(e.family_text or "-"),
        Text(e.precision or "-"),
        Text(e.size_text or "-", justify="right"),
        Text(e.source, style="dim"),
        Text(details, style=style or "dim"),
    )


class ScanDone(Message):
    def __init__(self, entries: list, root: str, error: str = "") -> None:
        super().__init__()
        self.entries = entries
        self.root = root
        self.error = error


class DownloadUpdate(Message):
    def __init__(self, progress: Any) -> None:
        super().__init__()
        self.progress = progress

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, DownloadUpdate)


class DownloadDone(Message):
    def __init__(self, result: Any = None, error: str = "", stopped: bool = False) -> None:
        super().__init__()
        self.result = result
        self.error = error
        self.stopped = stopped


class DownloadDialog(ModalScreen[tuple[str, str | None] | None]):
    """Pick one of the usual files, or type ``REPO`` or ``REPO FILE``."""

    DEFAULT_CSS = """
    DownloadDialog { align: center middle; }
    DownloadDialog > Vertical { width: 100; max-width: 100%; height: 80%; border: round $accent; background: $surface; padding: 0 1; }
    DownloadDialog OptionList { height: 1fr; }
    DownloadDialog .hint { color: $text-muted; }
    """
    BINDINGS = [Binding("escape", "cancel", "cancel", id="download.cancel")]

    def compose(self) -> ComposeResult:
        from loratui.engine.modelfiles import format_size
        from loratui.engine.modelstore.catalog import KNOWN_FILES

        with Vertical():
            yield Label("Download from the Hugging Face Hub", classes="title")
            yield Input(placeholder="REPO or REPO FILE, e.g. stabilityai/stable-diffusion-xl-base-1.0", id="repo")
            yield Label("or one of the usual files (gated: accept the terms on the Hub, then `hf auth login`):",
                        classes="hint")
            options = [
                Option(f"{f.label:28} ≈{format_size(f.size):>8}  {f.repo} {f.filename}" + ("  (gated)" if f.gated else ""),
                       id=str(i))
                for i, f in enumerate(KNOWN_FILES)
            ]
            yield OptionList(*options, id="known")
            yield Label("enter downloads · esc cancels", classes="hint")

    @on(Input.Submitted, "#repo")
    def _typed(self, event: Input.Submitted) -> None:
        parts = event.value.split()
        if not parts:
            return
        if len(parts) > 2 or "/" not in parts[0]:
            self.notify("type a repo id (owner/name), optionally a file name after a space", severity="warning")
            return
        self.dismiss((parts[0], parts[1] if len(parts) > 1 else None))

    @on(OptionList.OptionSelected, "#known")
    def _known(self, event: OptionList.OptionSelected) -> None:
        from loratui.engine.modelstore.catalog import KNOWN_FILES

        f = KNOWN_FILES[int(event.option.id or 0)]
        self.dismiss((f.repo, f.filename))

    def action_cancel(self) -> None:
        self.dismiss(None)


class ModelsScreen(Screen):
    DEFAULT_CSS = """
    ModelsScreen #title { background: $panel; width: 100%; }
    ModelsScreen DataTable { height: 1fr; }
    ModelsScreen #details { height: auto; max-height: 4; padding: 0 1; color: $text-muted; }
    ModelsScreen #dl { height: auto; padding: 0 1; }
    ModelsScreen #dl.idle { display: none; }
    ModelsScreen #status { height: auto; max-height: 3; padding: 0 1; }
    """
    BINDINGS = [
        Binding("enter", "use", "use in the form", id="models.use"),
        Binding("g", "download", "download", id="models.download"),
        Binding("r", "rescan", "rescan", id="models.rescan"),
        Binding("x", "stop_download", "stop download", id="models.stop"),
        Binding("o", "choose_folder", "models folder", id="models.folder"),
        Binding("escape", "close", "back", id="models.close"),
    ]

    def __init__(self) -> None:
        super().__init__(id="models-screen")
        self.entries: list = []
        self.root = ""
        self.control: Any = None  # the download's Control while one runs
        self.select_spec = ""  # the row to highlight after a rescan
        self.last_progress: Any = None  # the download's latest DownloadProgress

    def compose(self) -> ComposeResult:
        yield Label(" loratui  models", id="title")
        table: DataTable = DataTable(id="models", cursor_type="row", zebra_stripes=True)
        table.add_columns(*COLUMNS)
        yield table
        yield Static("", id="details")
        with Vertical(id="dl", classes="idle"):
            yield Label("", id="dl-line")
            yield ProgressBar(id="dl-bar", show_eta=False)
        yield Static("scanning…", id="status")
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()
        self.action_rescan()

    # ------------------------------------------------------------------ listing
    def action_rescan(self) -> None:
        self._status("reading model headers…")
        self._scan()

    @work(thread=True, exclusive=True, group="models-scan", exit_on_error=False)
    def _scan(self) -> None:
        from loratui.engine.modelstore import scan
        from loratui.engine.userdirs import models_dir

        root = models_dir()
        try:
            entries = scan(root)
        except Exception as exc:  # noqa: BLE001 - no traceback reaches the screen
            self.post_message(ScanDone([], str(root), f"the models folder {root} cannot be read: {exc}"))
            return
        self.post_message(ScanDone(entries, str(root)))

    def on_scan_done(self, msg: ScanDone) -> None:
        self.entries, self.root = msg.entries, msg.root
        table = self.query_one(DataTable)
        table.clear()
        for i, e in enumerate(self.entries):
            table.add_row(*row_cells(e), key=str(i))
        broken = sum(1 for e in self.entries if e.problem)
        note = f", {broken} broken" if broken else ""
        if msg.error:
            self._status(msg.error)
        elif not any(e.source == "models" for e in self.entries):
            from loratui.engine.modelstore import empty_hint

            hub = f" ({len(self.entries)} in the Hub cache)" if self.entries else ""
            self._status(empty_hint(self.root, DOWNLOAD_HOW) + hub)
        else:
            self._status(f"{len(self.entries)} model files in {self.root} and the Hub cache{note} · "
                         "enter: use in the form · g: download")
        for i, e in enumerate(self.entries):
            if self.select_spec and e.spec == self.select_spec:
                table.move_cursor(row=i)
        self._show_details()

    def highlighted(self):
        table = self.query_one(DataTable)
        if not self.entries or table.cursor_row is None or not 0 <= table.cursor_row < len(self.entries):
            return None
        return self.entries[table.cursor_row]

    @on(DataTable.RowHighlighted)
    def _show_details(self, _event: Any = None) -> None:
        e = self.highlighted()
        text = ""
        if e is not None:
            target = f"→ {e.field}" if e.field and not e.problem else "(not a field of the form)"
            text = f"{e.path or e.spec}  {target}"
            if e.details:
                text += f"\n{e.details}"
        self.query_one("#details", Static).update(text)

    # ------------------------------------------------------------------ use
    @on(DataTable.RowSelected)
    def _selected(self, _event: DataTable.RowSelected) -> None:
        self.action_use()

    def action_use(self) -> None:
        e = self.highlighted()
        if e is None:
            return
        if e.problem:
            self.notify(e.problem, title="cannot use this file", severity="error", timeout=8)
            return
        if not e.field:
            self.notify(f"a {e.kind.replace('_', ' ')} is not a setting of the form", severity="warning")
            return
        app = self.app
        app.pop_screen()
        app.run_worker(fill_field(app, e.field, e.spec), group="models-fill")

    def action_close(self) -> None:
        self.app.pop_screen()

    def action_choose_folder(self) -> None:
        """Choose the models folder (an app setting, remembered in state.json)."""
        from loratui.engine.userdirs import set_models_dir
        from loratui.tui.widgets.dialogs import PathPicker

        def chosen(path: str | None) -> None:
            if not path:
                return
            try:
                set_models_dir(path)
            except OSError as exc:
                self.notify(f"cannot save the setting: {exc.strerror or exc}", severity="error")
                return
            self.action_rescan()

        self.app.push_screen(PathPicker("models folder (checkpoints/, vae/, lora/, text_encoders/)", self.root, "dir"),
                             chosen)

    # ------------------------------------------------------------------ download
    def action_download(self) -> None:
        if self.control is not None:
            self.notify("a download is running: x stops it", severity="warning")
            return

        def chosen(choice: tuple[str, str | None] | None) -> None:
            if choice:
                self.start_download(*choice)

        self.app.push_screen(DownloadDialog(), chosen)

    def start_download(self, repo: str, filename: str | None) -> None:
        from loratui.engine.events import Control

        self.control = Control()
        self.query_one("#dl").remove_class("idle")
        self.query_one("#dl-line", Label).update(f"asking the Hub about {repo} {filename or ''}…")
        self._status(f"downloading {repo} (x stops; the next download resumes)")
        self._download(repo, filename, self.control)

    @work(thread=True, exclusive=True, group="models-download", exit_on_error=False)
    def _download(self, repo: str, filename: str | None, control: Any) -> None:
        from loratui.engine.events import Aborted
        from loratui.engine.modelstore.download import DownloadError, download

        try:
            res = download(repo, filename, on_progress=lambda p: self.post_message(DownloadUpdate(p)), control=control)
        except Aborted:
            self.post_message(DownloadDone(stopped=True))
        except DownloadError as exc:
            self.post_message(DownloadDone(error=str(exc)))
        except Exception as exc:  # noqa: BLE001 - no traceback reaches the screen
            self.post_message(DownloadDone(error=f"download failed: {type(exc).__name__}: {exc}"))
        else:
            self.post_message(DownloadDone(result=res))

    def on_download_update(self, msg: DownloadUpdate) -> None:
        p = self.last_progress = msg.progress
        self.query_one("#dl-line", Label).update(p.line())
        self.query_one("#dl-bar", ProgressBar).update(total=max(1, p.total), progress=p.done)

    def on_download_done(self, msg: DownloadDone) -> None:
        self.control = None
        self.query_one("#dl").add_class("idle")
        if msg.stopped:
            self._status("download stopped: what was fetched is kept (in the models folder's .downloads/), "
                         "downloading it again resumes")
        elif msg.error:
            self._status(msg.error)
            self.notify(msg.error, title="download failed", severity="error", timeout=10)
        else:
            res = msg.result
            self.select_spec = res.spec
            self.notify(f"downloaded: {res.spec}" + (f" ({res.note})" if res.note else ""), timeout=6)
            self.action_rescan()

    def action_stop_download(self) -> None:
        if self.control is not None:
            self.control.abort()
            self._status("stopping the download…")

    def _status(self, text: str) -> None:
        self.query_one("#status", Static).update(text)


async def fill_field(app, dotted: str, value: str) -> bool:
    """Put ``value`` in the form's field ``dotted`` as typing it would (its section is shown,
    the field focused; the form validates and marks the profile changed)."""
    form = app._installed("form") if hasattr(app, "_installed") else None
    field = getattr(form, "fields", {}).get(dotted) if form is not None else None
    if field is None:
        app.notify(f"the form has no field {dotted}", severity="warning")
        return False
    waiting = form.focus_field(dotted)
    if waiting is not None:
        await waiting
    if field.editor is None:
        return False
    field.editor.value = value
    app.notify(f"{dotted} = {value}", timeout=4)
    return True
