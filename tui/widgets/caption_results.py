"""What a captioning job wrote: each image (its thumbnail) beside its new caption,
so a bad one is fixed in place (``e`` edits it, ctrl+s in the editor saves).

``thumbnail(path)`` draws an image's picture with the samples' half-block renderer
(12 × 3 cells), its file name under it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label


THUMB_COLS, THUMB_ROWS = 12, 3  # cells of a row's picture (half blocks: 12 × 6 pixels)


def thumbnail(path: Path) -> Any:
    """The picture of ``path`` in a table cell, drawn in half blocks (the samples'
    renderer, which works in every terminal), above its file name; the name alone
    when the image cannot be read."""
    name = Text(path.name, style="bold")
    try:
        from loratui.tui.widgets.sample_view import _load_rgb, halfblock_rows

        rows = halfblock_rows(_load_rgb(str(path), path.stat().st_mtime), THUMB_COLS, THUMB_ROWS)
    except Exception:  # unreadable or gone: the name says which file
        return name
    pic = Text()
    for segs in rows:
        for seg in segs:
            pic.append(seg.text, seg.style)
        pic.append("\n")
    return pic + name


class CaptionResults(ModalScreen[bool]):
    """The captions a job wrote; answers True when one was edited."""

    DEFAULT_CSS = """
    CaptionResults { align: center middle; }
    CaptionResults > Vertical { width: 95%; height: 85%; border: round $accent; background: $surface; padding: 0 1; }
    CaptionResults DataTable { height: 1fr; }
    CaptionResults .hint { color: $text-muted; }
    """
    BINDINGS = [
        Binding("e,enter", "edit", "edit caption", id="captions.written.edit"),
        Binding("escape,q", "close", "close", id="captions.written.close"),
    ]

    def __init__(self, written: list[tuple[Path, str]], caption_extension: str = ".txt") -> None:
        super().__init__(id="caption-results")
        self.written = list(written)
        self.caption_extension = caption_extension
        self.edited = False

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"{len(self.written)} captions written", classes="title")
            table: DataTable = DataTable(id="written", cursor_type="row")
            table.add_columns("image", "caption")
            for i, (path, text) in enumerate(self.written):
                table.add_row(thumbnail(path), Text(text), key=str(i), height=THUMB_ROWS + 1)
            yield table
            yield Label("e edits the highlighted caption · esc closes", classes="hint")

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()

    @on(DataTable.RowSelected)
    def _selected(self, _event: DataTable.RowSelected) -> None:
        self.action_edit()

    def action_edit(self) -> None:
        from loratui.engine.inspection.captions import load_caption, save_caption
        from loratui.engine.inspection import InspectError
        from loratui.tui.widgets.dataset_dialogs import CaptionEditor

        table = self.query_one(DataTable)
        row = table.cursor_row
        if row is None or not 0 <= row < len(self.written):
            return
        path, _old = self.written[row]
        text, warning = load_caption(path, self.caption_extension)

        def done(new_text: str | None) -> None:
            if new_text is None or new_text.strip() == text.strip():
                return
            try:
                save_caption(path, new_text, self.caption_extension)
            except InspectError as exc:
                self.notify(exc.message, severity="error", timeout=8)
                return
            shown = " ".join(new_text.split())
            self.written[row] = (path, shown)
            table.update_cell_at((row, 1), Text(shown))
            self.edited = True

        self.app.push_screen(CaptionEditor(path.name, text, warning or ""), done)

    def action_close(self) -> None:
        self.dismiss(self.edited)
