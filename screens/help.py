"""The help screen: every key binding, where it works, and its stable id (for keymap.toml)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from loratui.engine.userdirs import keymap_path


KEY_NAMES = {"question_mark": "?", "escape": "esc", "delete": "del", "backspace": "backspace", "tilde": "~"}


def binding_rows(app) -> list[tuple[str, str, str, str]]:
    """(where, keys, what, id) for every binding with an id, keymap applied."""
    from loratui.screens.dashboard import DashboardScreen
    from loratui.screens.models import ModelsScreen
    from loratui.screens.profiles import ProfilesScreen
    from loratui.screens.training import TrainingScreen
    from loratui.tui.widgets.dialogs import PathPicker

    keymap = getattr(app, "user_keymap", {})
    groups = [
        ("everywhere", type(app).BINDINGS),
        ("form", TrainingScreen.BINDINGS),
        ("dashboard", DashboardScreen.BINDINGS),
        ("profiles", ProfilesScreen.BINDINGS),
        ("path picker", PathPicker.BINDINGS),
        ("models", ModelsScreen.BINDINGS),
    ]
    rows = []
    for where, bindings in groups:
        for b in bindings:
            if not isinstance(b, Binding) or not b.id:
                continue
            keys = keymap.get(b.id, b.key)
            shown = " / ".join(KEY_NAMES.get(k.strip(), k.strip()) for k in keys.split(","))
            rows.append((where, shown, b.description or b.action, b.id))
    rows.append(("everywhere", "ctrl+p", "command palette: every action by name", "app.command_palette"))
    return rows


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 96; max-width: 100%; height: 90%; border: round $accent; background: $surface; padding: 0 1; }
    """
    BINDINGS = [Binding("escape,q,question_mark", "close", "close", id="help.close")]

    def compose(self) -> ComposeResult:
        table = Table(box=None, padding=(0, 1), expand=True, show_edge=False)
        table.add_column("where", style="dim", no_wrap=True)
        table.add_column("keys", style="bold cyan", no_wrap=True)
        table.add_column("does")
        table.add_column("id", style="dim", no_wrap=True)
        for row in binding_rows(self.app):
            table.add_row(*row)
        intro = Text()
        intro.append("Keys\n", style="bold")
        intro.append(
            "Letter keys act when no text field has focus: esc leaves a field. "
            "Ctrl keys work everywhere. Every action is also in the command palette (ctrl+p).\n"
        )
        outro = Text()
        outro.append(f"\nRemap a key in {keymap_path()}:\n", style="dim")
        outro.append('  [keys]\n  "run.start" = "ctrl+g"\n', style="dim")
        outro.append("\nesc closes this help", style="dim")
        with VerticalScroll():
            yield Static(intro)
            yield Static(table)
            yield Static(outro)

    def action_close(self) -> None:
        self.dismiss(None)
