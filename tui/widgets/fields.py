"""One form field per profile setting, generated from ``engine.schema.SettingInfo``.

bool → Switch, choice → Select, number/str → Input, dir/file/model → Input with
path completion and a [pick] button.  Each field shows its help text while it has
focus and its error (red) or warning (yellow) in place.
"""

from __future__ import annotations

import os
import re
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.suggester import Suggester
from textual.widgets import Button, Input, Label, Select, Static, Switch

from loratui.engine.schema import SettingInfo
from loratui.tui.widgets import set_text

# --------------------------------------------------------------------------- values


def format_value(info: SettingInfo, value: Any) -> Any:
    """A profile value as the editor holds it: bool for switches, str otherwise."""
    if info.type == "bool":
        return bool(value)
    if value is None:
        return ""
    if info.type == "float":
        text = repr(float(value))
        text = re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), text)
        return text.removesuffix(".0") if "e" not in text else text
    return str(value)


def parse_value(info: SettingInfo, raw: Any) -> Any:
    """The editor's value as the profile wants it. Raises ValueError(message)."""
    if info.type == "bool":
        return bool(raw)
    if info.type in ("choice",):
        return raw
    text = str(raw).strip() if info.type != "str" or info.kind else str(raw)
    if info.type == "int":
        if not text:
            raise ValueError("needs a whole number")
        try:
            return int(text.replace("_", "").replace(",", ""))
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
    if info.type == "float":
        if not text:
            if info.optional:
                return None
            raise ValueError("needs a number")
        try:
            return float(text.replace("_", "").replace(",", "."))
        except ValueError:
            raise ValueError(f"{text!r} is not a number (e.g. 1e-4 or 0.0001)") from None
    return text


WORDS = {"vae": "VAE", "unet": "U-Net", "lr": "LR", "snr": "SNR", "reso": "res.", "dim": "rank", "aug": "augment",
         "num": "", "n": "N", "te": "TE", "v": "V"}


LABELS = {
    "train_data_dir": "Image folder",
    "reg_data_dir": "Reg. folder",
    "max_train_epochs": "Epochs",
    "train_batch_size": "Batch size",
    "gradient_accumulation_steps": "Grad. accumulation",
    "lr_scheduler_num_cycles": "LR restarts",
    "caption_dropout_rate": "Caption dropout",
    "v_parameterization": "V-prediction",
    "bucket_reso_steps": "Bucket step",
    "bucket_no_upscale": "No bucket upscale",
}


def field_label(info: SettingInfo) -> str:
    """'network_dim' → 'Network rank', 'vae' → 'VAE', 'min_snr_gamma' → 'Min SNR gamma'."""
    if info.key in LABELS:
        return LABELS[info.key]
    if info.label and info.label != info.key.replace("_", " ").capitalize():
        return info.label  # the schema's own (setting(label=...)): 'CLIP-L', 'T5-XXL'
    words = [WORDS.get(w, w) for w in info.key.split("_")]
    words = [w for w in words if w]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def field_id(info: SettingInfo) -> str:
    return f"{info.section}-{info.key}"


# --------------------------------------------------------------------------- path completion


class PathSuggester(Suggester):
    """Completes the last path component from the folder's entries (dirs get a '/')."""

    def __init__(self, dirs_only: bool = False):
        super().__init__(use_cache=False, case_sensitive=True)
        self.dirs_only = dirs_only

    async def get_suggestion(self, value: str) -> str | None:
        return complete_path(value, self.dirs_only)


def complete_path(value: str, dirs_only: bool = False) -> str | None:
    if not value:
        return None
    expanded = os.path.expanduser(value)
    folder, prefix = os.path.split(expanded)
    try:
        entries = sorted(os.scandir(folder or "."), key=lambda e: e.name)
    except OSError:
        return None
    for e in entries:
        if not e.name.startswith(prefix) or e.name == prefix:
            continue
        if prefix == "" and e.name.startswith("."):
            continue
        try:
            is_dir = e.is_dir()
        except OSError:
            continue
        if dirs_only and not is_dir:
            continue
        rest = e.name[len(prefix):] + ("/" if is_dir else "")
        return value + rest
    return None


# --------------------------------------------------------------------------- the field


class SettingField(Vertical):
    """Label + editor (+ pick button) with a note, an error and the help line."""

    class Changed(Message):
        def __init__(self, field: "SettingField", value: Any) -> None:
            super().__init__()
            self.field = field
            self.value = value

        @property
        def control(self) -> "SettingField":
            return self.field

    class PickRequested(Message):
        def __init__(self, field: "SettingField") -> None:
            super().__init__()
            self.field = field

    BINDINGS = [Binding("ctrl+g", "pick", "pick a path", id="form.pick", show=False)]

    def __init__(self, info: SettingInfo, value: Any) -> None:
        classes = "setting" + (" advanced" if info.advanced else "")
        super().__init__(id=f"field-{field_id(info)}", classes=classes)
        self.info = info
        # The value lives here too: a field of a section not shown yet has no editor
        # (sections are mounted when first shown) but still takes part in validation.
        self._value = format_value(info, value)
        self._error = ""
        self._warning = ""
        self._note = ""
        self._focused = False
        self._editor: Any = None
        self._suffix: Label | None = None
        self._below: Static | None = None
        self._below_lines = 0
        self._below_plain = ""
        help_text = info.help + (f"  [kohya: {info.kohya}]" if info.kohya else "")
        self._help = help_text

    # -- building --------------------------------------------------------------
    def compose(self) -> ComposeResult:
        # Few widgets per field: a long form is laid out again on every key press.
        info = self.info
        with Horizontal(classes="row"):
            yield Label(field_label(info), classes="label", markup=False)
            self._editor = self._make_editor()
            yield self._editor
            if info.type == "bool" or info.unit:
                self._suffix = Label(self._suffix_text(self._value), classes="suffix", markup=False)
                yield self._suffix
            if info.kind in ("dir", "file", "model", "path"):
                pick = Button("pick", id=f"pick-{field_id(info)}", classes="pick", compact=True)
                pick.can_focus = False  # ctrl+g picks from the keyboard; tab stays on the fields
                yield pick
        # error / warning, note and (while focused) help, in one widget
        self._below = Static("", classes="below", markup=False)
        yield self._below

    def on_mount(self) -> None:
        self._below_lines = -1
        self._draw_below()
        self.set_class(bool(self._error), "-invalid")

    def _suffix_text(self, value: Any) -> str:
        if self.info.type == "bool":
            return "on" if value else "off"
        return self.info.unit or ""

    def _make_editor(self):
        info = self.info
        eid = f"input-{field_id(info)}"
        if info.type == "bool":
            return Switch(value=bool(self._value), id=eid, classes="editor")
        if info.type == "choice":
            return Select(
                [(c, c) for c in info.choices],
                value=self._value if self._value in info.choices else info.choices[0],
                allow_blank=False,
                compact=True,
                id=eid,
                classes="editor",
            )
        kw: dict[str, Any] = {}
        if info.type == "int":
            kw["type"] = "integer"
        elif info.type == "float":
            kw["type"] = "number"
        if info.kind in ("dir", "file", "model", "path"):
            kw["suggester"] = PathSuggester(dirs_only=info.kind == "dir")
        placeholder = ""
        if info.optional:
            placeholder = "(unset)"
        elif info.kind == "model":
            placeholder = "file, folder or repo id"
        elif info.kind:
            placeholder = "(none)"
        return Input(value=str(self._value), placeholder=placeholder, compact=True, id=eid, classes="editor", **kw)

    # -- value -------------------------------------------------------------------
    @property
    def editor(self):
        return self._editor

    @property
    def mounted(self) -> bool:
        return self._editor is not None

    @property
    def raw(self) -> Any:
        return self._value

    def parsed(self) -> Any:
        return parse_value(self.info, self.raw)

    def set_value(self, value: Any) -> None:
        """Show a profile value (no Changed message is posted for it)."""
        formatted = format_value(self.info, value)
        self._value = formatted
        ed = self.editor
        if ed is None or ed.value == formatted:
            return
        with ed.prevent(Input.Changed, Switch.Changed, Select.Changed):
            ed.value = formatted
        if isinstance(ed, Switch):
            self._show_state()

    def _show_state(self) -> None:
        value = bool(self.editor.value)
        if self._suffix is not None:
            set_text(self._suffix, self._suffix_text(value))
            self._suffix.set_class(value, "-on")

    # -- messages ----------------------------------------------------------------
    @on(Input.Changed)
    @on(Switch.Changed)
    @on(Select.Changed)
    def _editor_changed(self, event: Message) -> None:
        event.stop()
        if self._editor.value == self._value:
            # the editor reporting the value it was built with (an Input or a Select
            # does once it is mounted): nothing changed, nothing to validate again
            return
        self._value = self._editor.value
        if isinstance(event, Switch.Changed):
            self._show_state()
        self.post_message(self.Changed(self, self.raw))

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        # Enter in a field moves on to the next one, like a form on paper.
        event.stop()
        self.screen.focus_next()

    @on(Button.Pressed, ".pick")
    def _pick(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.PickRequested(self))

    def action_pick(self) -> None:
        if self.info.kind in ("dir", "file", "model", "path"):
            self.post_message(self.PickRequested(self))

    # -- error / warning / note ------------------------------------------------------
    @property
    def error(self) -> str:
        return self._error

    @property
    def warning(self) -> str:
        return self._warning

    def set_problem(self, error: str = "", warning: str = "") -> None:
        if (error, warning) == (self._error, self._warning):
            return
        self._error, self._warning = error, warning
        self.set_class(bool(error), "-invalid", update=self.is_attached)
        self._draw_below()

    def set_note(self, text: str) -> None:
        if text != self._note:
            self._note = text
            self._draw_below()

    @property
    def below_text(self) -> str:
        """What the line(s) under the field say now (error, note, help)."""
        return self._below_plain

    def _draw_below(self) -> None:
        from rich.text import Text

        t = Text(overflow="fold")
        if self._error:
            t.append(f"✗ {self._error}\n", style="bold red")
        elif self._warning:
            t.append(f"! {self._warning}\n", style="yellow")
        if self._note:
            t.append(self._note + "\n", style="dim")
        if self._focused:
            t.append(self._help + "\n", style="italic dim")
        t.rstrip()
        self._below_plain = t.plain
        if self._below is None:
            return
        width = max(20, self._below.size.width or 60)
        lines = sum(1 + len(line) // width for line in t.plain.split("\n")) if t.plain else 0
        # a relayout (costly on a long form) only when the height may change
        set_text(self._below, t, layout=lines != self._below_lines)
        self._below_lines = lines
        self._below.set_class(bool(t.plain), "-shown")

    def on_descendant_focus(self) -> None:
        if not self._focused:
            self._focused = True
            self._draw_below()

    def on_descendant_blur(self) -> None:
        if self._focused and not self.has_focus_within:
            self._focused = False
            self._draw_below()

    def focus_editor(self) -> None:
        if self._editor is not None:
            self._editor.focus()
