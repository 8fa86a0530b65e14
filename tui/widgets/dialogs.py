"""Small modal dialogs: a choice of keys, a name prompt, a path picker."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.events import Key
from textual.screen import ModalScreen
from textual.widgets import Button, DirectoryTree, Input, Label, Static


class ChoiceDialog(ModalScreen[str | None]):
    """A question answered with one key: ``choices`` is [(key, label), ...].

    Escape answers None (cancel)."""

    DEFAULT_CSS = """
    ChoiceDialog { align: center middle; }
    ChoiceDialog > Vertical {
        width: 90%; max-width: 100; height: auto; max-height: 90%;
        border: round $warning; background: $surface; padding: 0 1;
    }
    ChoiceDialog .title { text-style: bold; }
    ChoiceDialog VerticalScroll { height: auto; max-height: 16; }
    ChoiceDialog .body { width: 100%; }
    ChoiceDialog Horizontal { height: auto; margin-top: 1; width: auto; }
    ChoiceDialog Button { margin-right: 1; }
    """
    BINDINGS = [Binding("escape", "cancel", "cancel", id="dialog.cancel")]

    def __init__(self, title: str, body: str | Iterable[str], choices: list[tuple[str, str]], *, id: str | None = None):
        super().__init__(id=id)
        self.title_text = title
        self.body = body if isinstance(body, str) else "\n".join(body)
        self.choices = choices

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, classes="title", markup=False)
            if self.body:
                with VerticalScroll():
                    yield Static(self.body, classes="body", markup=False)
            with Horizontal():
                for i, (key, label) in enumerate(self.choices):
                    yield Button(f"{key} {label}", id=f"choice-{i}", compact=True, variant="primary" if i == 0 else "default")
                yield Button("esc cancel", id="choice-cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one(Button).focus()

    def on_key(self, event: Key) -> None:
        for key, _label in self.choices:
            if event.key == key or event.character == key:
                event.stop()
                self.dismiss(key)
                return

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        event.stop()
        bid = event.button.id or ""
        if bid == "choice-cancel":
            self.dismiss(None)
        else:
            self.dismiss(self.choices[int(bid.removeprefix("choice-"))][0])

    def action_cancel(self) -> None:
        self.dismiss(None)


class NameDialog(ModalScreen[str | None]):
    """Ask for a name; ``check(name)`` returns why it is not acceptable, or None."""

    DEFAULT_CSS = """
    NameDialog { align: center middle; }
    NameDialog > Vertical { width: 60; height: auto; border: round $accent; background: $surface; padding: 0 1; }
    NameDialog .error { color: $error; height: auto; }
    NameDialog Input { margin: 1 0 0 0; }
    """
    BINDINGS = [Binding("escape", "cancel", "cancel", id="dialog.cancel")]

    def __init__(self, title: str, initial: str = "", check: Callable[[str], str | None] | None = None):
        super().__init__()
        self.title_text = title
        self.initial = initial
        self.check = check

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, markup=False)
            yield Input(self.initial, id="name", compact=True)
            yield Static("", classes="error", markup=False)
            yield Label("enter ok · esc cancel", classes="hint")

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        self.query_one(".error", Static).update(self.check(event.value) or "" if self.check else "")

    @on(Input.Submitted)
    def _submit(self, event: Input.Submitted) -> None:
        event.stop()
        value = event.value.strip()
        problem = self.check(value) if self.check else None
        if problem:
            self.query_one(".error", Static).update(problem)
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class _PlainTree(DirectoryTree):
    # Emoji icons are two cells wide in some terminals and none in others (tmux, screen).
    ICON_NODE_EXPANDED = "▾ "
    ICON_NODE = "▸ "
    ICON_FILE = "  "

    def __init__(self, path: str | Path, dirs_only: bool, **kw):
        super().__init__(path, **kw)
        self.dirs_only = dirs_only

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        out = []
        for p in paths:
            if p.name.startswith("."):
                continue
            try:
                if self.dirs_only and not p.is_dir():
                    continue
            except OSError:
                continue
            out.append(p)
        return out


class PathPicker(ModalScreen[str | None]):
    """Choose a folder or file with the keyboard.

    arrows move, enter opens a folder / chooses a file, c chooses the highlighted
    entry, u goes one folder up, ~ goes home, the path line takes a typed path."""

    DEFAULT_CSS = """
    PathPicker { align: center middle; }
    PathPicker > Vertical { width: 90%; height: 90%; border: round $accent; background: $surface; padding: 0 1; }
    PathPicker Input { margin-bottom: 1; }
    PathPicker DirectoryTree { height: 1fr; }
    PathPicker .hint { color: $text-muted; }
    """
    BINDINGS = [
        Binding("escape", "cancel", "cancel", id="picker.cancel"),
        Binding("c", "choose", "choose highlighted", id="picker.choose"),
        Binding("u,backspace", "up", "parent folder", id="picker.up"),
        Binding("~", "home", "home folder", id="picker.home"),
    ]

    def __init__(self, title: str, start: str = "", kind: str = "dir"):
        super().__init__()
        self.title_text = title
        self.kind = kind  # dir | file | model | path
        self.root = self._start_dir(start)

    @staticmethod
    def _start_dir(start: str) -> Path:
        p = Path(os.path.expanduser(start)) if start else Path.cwd()
        while not p.is_dir() and p != p.parent:
            p = p.parent
        return p if p.is_dir() else Path.home()

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, markup=False)
            yield Input(str(self.root), id="picker-path", compact=True)
            yield _PlainTree(self.root, dirs_only=self.kind == "dir", id="picker-tree")
            what = "folder" if self.kind == "dir" else "file" if self.kind == "file" else "file or folder"
            yield Label(
                f"choose a {what}: enter opens/chooses · c choose highlighted · u up · ~ home · esc cancel",
                classes="hint",
            )

    def on_mount(self) -> None:
        self.query_one(DirectoryTree).focus()

    def _reroot(self, path: Path) -> None:
        self.root = path
        tree = self.query_one(DirectoryTree)
        tree.path = path
        self.query_one("#picker-path", Input).value = str(path)

    @on(DirectoryTree.NodeHighlighted)
    def _highlighted(self, event: DirectoryTree.NodeHighlighted) -> None:
        if event.node.data is not None:
            self.query_one("#picker-path", Input).value = str(event.node.data.path)

    @on(DirectoryTree.FileSelected)
    def _file(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        if self.kind != "dir":
            self.dismiss(str(event.path))

    @on(Input.Submitted, "#picker-path")
    def _typed(self, event: Input.Submitted) -> None:
        event.stop()
        value = os.path.expanduser(event.value.strip())
        if not value:
            return
        p = Path(value)
        if p.is_dir() and self.kind == "dir":
            self.dismiss(str(p))
        elif p.is_dir():
            self._reroot(p)
            self.query_one(DirectoryTree).focus()
        elif p.exists() or self.kind == "model":
            self.dismiss(value)
        else:
            self.notify(f"{value}: no such file or folder", severity="error")

    def action_choose(self) -> None:
        tree = self.query_one(DirectoryTree)
        node = tree.cursor_node
        path = node.data.path if node is not None and node.data is not None else self.root
        if self.kind == "dir" and not path.is_dir():
            path = path.parent
        if self.kind == "file" and path.is_dir():
            self.notify("choose a file, not a folder", severity="warning")
            return
        self.dismiss(str(path))

    def action_up(self) -> None:
        if self.root.parent != self.root:
            self._reroot(self.root.parent)

    def action_home(self) -> None:
        self._reroot(Path.home())

    def action_cancel(self) -> None:
        self.dismiss(None)
