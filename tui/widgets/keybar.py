"""A one-line key bar: ``ctrl+s save  p profiles  …  ? help``.

Textual's Footer rebuilds one widget per key on every screen switch, which costs
tens of milliseconds on a small machine; this is one Static, drawn from the
screen's and the app's bindings (with the user's keymap applied) and redrawn only
when what may be done changes (a run starts, ends, is watched read-only)."""

from __future__ import annotations

from textual.binding import Binding
from textual.content import Content
from textual.widgets import Static

NAMES = {"question_mark": "?", "escape": "esc", "delete": "del", "space": "space"}


def key_label(keys: str) -> str:
    first = keys.split(",")[0].strip()
    return NAMES.get(first, first)


class KeyBar(Static):
    DEFAULT_CSS = """
    KeyBar { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
    """

    def on_mount(self) -> None:
        self.refresh_keys()

    def bindings(self) -> list[Binding]:
        """The screen's keys, then help, then the app's other keys."""
        screen = [b for b in type(self.screen).BINDINGS if isinstance(b, Binding) and b.show and b.description]
        app = [b for b in type(self.app).BINDINGS if isinstance(b, Binding) and b.show and b.description]
        helpish = [b for b in app if b.id == "app.help"]
        return screen + helpish + [b for b in app if b not in helpish]

    def refresh_keys(self) -> None:
        from textual.markup import escape

        app = self.app
        keymap = getattr(app, "user_keymap", {})
        for short in (False, True):  # "ctrl+s" when it fits, "^s" when it does not
            text = self._text(app, keymap, short, escape)
            if len(Content.from_markup(text).plain) <= max(20, app.size.width - 2):
                break
        if getattr(self, "_shown", None) != text:
            self._shown = text
            self.update(text)

    def on_resize(self) -> None:
        self.refresh_keys()

    def _text(self, app, keymap: dict[str, str], short: bool, escape) -> str:
        def name(keys: str) -> str:
            label = key_label(keys)
            return "^" + label[5:] if short and label.startswith("ctrl+") else label

        palette = name(getattr(app, "COMMAND_PALETTE_BINDING", "ctrl+p"))
        parts = []
        for b in self.bindings():
            action = b.action.split(".", 1)[-1]
            target = app if b.action.startswith("app.") or b in type(app).BINDINGS else self.screen
            if target.check_action(action, ()) is False:
                continue
            keys = name(keymap.get(b.id, b.key) if b.id else b.key)
            parts.append(f"[b $accent]{escape(keys)}[/] {escape(b.description)}")
            if b.id == "app.help":
                parts.append(f"[b $accent]{palette}[/] commands")
        return "  ".join(parts)
