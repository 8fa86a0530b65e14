"""Try a LoRA: the same prompt at several weights side by side, in the terminal
(what the guides send users to a WebUI for), and, ticked, for each epoch's file
of the run (one row each: pick the epoch and the strength at once). The prompt
starts as the LoRA's trigger words; ``ctrl+r`` renders the contact sheet
(``engine.samples.sheet``) in a worker thread and shows it."""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Checkbox, Input, Label

from loratui.tui.widgets.keybar import KeyBar
from loratui.tui.widgets.sample_view import SampleView


class SheetDone(Message):
    def __init__(self, path: str, error: str) -> None:
        super().__init__()
        self.path, self.error = path, error


class TryItScreen(Screen):
    DEFAULT_CSS = """
    TryItScreen .row { height: 1; }
    TryItScreen .row Label { width: 10; color: $text-muted; }
    TryItScreen .row Input { width: 1fr; height: 1; border: none; padding: 0; }
    TryItScreen .row Checkbox { width: 1fr; height: 1; border: none; padding: 0; background: transparent; }
    TryItScreen #tryit-status { height: 1; padding: 0 1; }
    TryItScreen #tryit-box { height: 1fr; border: round $primary 50%; }
    """
    BINDINGS = [
        Binding("ctrl+r", "render", "render", id="tryit.render", priority=True),
        Binding("escape", "app.pop_screen", "back", id="tryit.back"),
    ]

    def __init__(self, lora: str, base_model) -> None:
        """``base_model``: a path or repo id, or the run's ``ModelSettings`` (SD3 / FLUX split files)."""
        super().__init__(id="tryit-screen")
        from loratui.engine.schema import ModelSettings

        self.lora = lora
        self.model = base_model if isinstance(base_model, ModelSettings) else ModelSettings(base_model=str(base_model))
        self.base_model = self.model.base_model
        self.sheet = ""
        self.busy = False

    def compose(self) -> ComposeResult:
        from loratui.engine.samples.sheet import lora_metadata, trigger_words

        try:
            words = trigger_words(lora_metadata(self.lora))
        except Exception:  # noqa: BLE001 - the file is checked again when rendering
            words = ""
        with Horizontal(classes="row"):
            yield Label("prompt")
            yield Input(words, id="tryit-prompt", placeholder="trigger words, then sd-scripts options: --n … --d 1 --s 20")
        with Horizontal(classes="row"):
            yield Label("weights")
            yield Input("0.4,0.6,0.8,1.0", id="tryit-weights")
        files = self.epoch_files()
        with Horizontal(classes="row"):
            yield Label("epochs")
            yield Checkbox(f"each epoch's file, one row each ({len(files)} in {Path(self.lora).parent.name or '.'})"
                           if len(files) > 1 else "this file only (no other epoch's file of its name beside it)",
                           False, id="tryit-epochs", disabled=len(files) < 2)
        yield Label(f" {Path(self.lora).name} on {self.base_model} ── ctrl+r renders", id="tryit-status", markup=False)
        with Vertical(id="tryit-box"):
            yield SampleView(id="tryit-sheet")
        yield KeyBar()

    def epoch_files(self) -> list[Path]:
        """This LoRA's file and those of the other epochs of its name beside it (``-000002``...)."""
        from loratui.engine.samples.sheet import epoch_files

        lora = Path(self.lora)
        try:
            return epoch_files(lora, lora.parent)
        except OSError:
            return [lora]

    def on_mount(self) -> None:
        self.query_one("#tryit-box").border_title = "try it ── the same prompt at each weight"

    def _status(self, text: str) -> None:
        self.query_one("#tryit-status", Label).update(" " + text)

    def action_render(self) -> None:
        if self.busy:
            return
        from loratui.engine.commands.sample import _weights
        from loratui.engine.samples.prompts import PromptError, parse_line

        try:
            weights = _weights(self.query_one("#tryit-weights", Input).value)
            prompt = parse_line(self.query_one("#tryit-prompt", Input).value, "prompt")
        except (ValueError, PromptError) as exc:
            self._status(str(exc))
            return
        loras = self.epoch_files() if self.query_one("#tryit-epochs", Checkbox).value else [Path(self.lora)]
        self.busy = True
        self._status(f"rendering {len(loras)} × {len(weights)}… (the base model loads once per sheet)")
        self._render_sheet(prompt, weights, loras)

    @work(thread=True, exclusive=True, group="tryit", exit_on_error=False)
    def _render_sheet(self, prompt, weights, loras) -> None:
        from dataclasses import replace

        from loratui.engine.families import get_family
        from loratui.engine.models import inspect_model
        from loratui.engine.samples.sheet import make_sheet, sheet_path

        try:
            info = inspect_model(self.model)
            if info.problems:
                raise ValueError("; ".join(map(str, info.problems)))
            size = get_family(info.family).default_resolution if info.family else 512
            prompt = replace(prompt, width=prompt.width or size, height=prompt.height or size,
                             seed=prompt.seed if prompt.seed is not None else 0, sampler=prompt.sampler or "euler_a")
            lora = Path(self.lora)
            out = sheet_path(lora)
            res = make_sheet(self.model, loras, prompt, weights, out)
            self.post_message(SheetDone(str(res.path), ""))
        except Exception as exc:  # noqa: BLE001 - shown on the screen, never a traceback
            self.post_message(SheetDone("", str(exc).splitlines()[0] if str(exc) else type(exc).__name__))

    def on_sheet_done(self, msg: SheetDone) -> None:
        self.busy = False
        if msg.error:
            self._status(f"failed: {msg.error}")
            return
        self.sheet = msg.path
        self.query_one("#tryit-sheet", SampleView).show(msg.path)
        self._status(f"wrote {msg.path}")
