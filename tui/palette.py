"""The command palette (ctrl+p): every action of the app, every profile and
every field, by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from textual.command import DiscoveryHit, Hit, Hits, Provider

from loratui.engine.schema import SECTION_TITLES, settings
from loratui.engine.userdirs import list_profiles

if TYPE_CHECKING:
    from loratui.tui.app import LoraTuiApp

ACTIONS = [
    ("Start training", "validate the form and start a run (ctrl+r)", "start_run"),
    ("Save profile", "save the form to its profile file (ctrl+s)", "save_profile"),
    ("Save profile as…", "save the form as a new profile of yours", "save_profile_as"),
    ("Profiles", "open, duplicate, delete profiles (p)", "profiles"),
    ("Dashboard", "the running or last run (d)", "dashboard"),
    ("Training form", "back to the form (f)", "form"),
    ("Dataset", "the dataset & captions screen (i)", "dataset"),
    ("Captions", "caption images with WD14 / BLIP (c)", "captions"),
    ("Models", "checkpoints, VAEs, LoRAs found on disk; download from the Hub (M)", "models"),
    ("Pause / resume training", "(space)", "pause_resume"),
    ("Save now", "save an intermediate LoRA at the next step (s)", "save_now"),
    ("Stop training", "save at the next step, then end (x)", "stop_run"),
    ("Abort training", "end without saving, asks first (ctrl+c)", "interrupt"),
]


class LoraCommands(Provider):
    """Every action of the app, every profile and every field, by name."""

    def _commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        app: LoraTuiApp = self.app  # type: ignore[assignment]
        out: list[tuple[str, str, Callable[[], Any]]] = [
            (name, help_text, lambda a=action: app.run_action(a)) for name, help_text, action in ACTIONS
        ]
        out += [
            ("Toggle advanced settings", "show or hide the advanced fields (ctrl+t)", lambda: app.form_action("toggle_advanced")),
            ("Keys", "every key binding and its id (?)", lambda: app.run_action("help")),
        ]
        for entry in list_profiles():
            out.append((f"Open profile: {entry.name}", str(entry.path), lambda e=entry: app.request_open_profile(e.path)))
        for title_key, title in SECTION_TITLES.items():
            out.append((f"Go to section: {title}", "jump to the section in the form", lambda s=title_key: app.goto_section(s)))
        for info in settings():
            out.append((f"Go to field: {info.dotted}", info.help[:80], lambda d=info.dotted: app.goto_field(d)))
        return out

    async def discover(self) -> Hits:
        for name, help_text, fn in self._commands():
            if name.startswith("Go to field"):
                continue
            yield DiscoveryHit(name, fn, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, fn in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), fn, help=help_text)
