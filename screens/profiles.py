"""Profiles: the bundled ones and the user's own (XDG config folder).

Open (asks about unsaved changes first), duplicate, save the form as a new
profile, delete, and see what a profile changes from the one it was made from.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from loratui.engine.schema import ProfileError, diff_profiles, load_profile
from loratui.engine.userdirs import (
    ProfileEntry,
    bundled_profiles,
    delete_user_profile,
    load_origin,
    new_name_problem,
    origin_name,
    save_user_profile,
    unique_name,
    user_profiles,
    user_profiles_dir,
)
from loratui.tui.widgets.keybar import KeyBar

if TYPE_CHECKING:
    from loratui.tui.app import LoraTuiApp


def _description(path: Path) -> str:
    """The first line of the comment a profile starts with (the bundled ones say what they are
    for: ``FLUX.1-dev LoRA on a 12 GB GPU (RTX 3060 12 GB, 4070).``); "" when there is none."""
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return first.lstrip("#").strip() if first.startswith("#") else ""


def _memory_line(profile) -> str:
    """What decides the run's memory, beside rank and batch: ``1024×1024, bf16, checkpointing,
    latents cached (disk), fp8 base, 16 blocks swapped``."""
    d, o = profile.dataset, profile.optimization
    parts = [f"{d.resolution}×{d.resolution_height or d.resolution}", o.mixed_precision if o.mixed_precision != "no" else "fp32"]
    if o.gradient_checkpointing:
        parts.append("checkpointing")
    if d.cache_latents != "off":
        parts.append(f"latents cached ({d.cache_latents})")
    if d.cache_text_encoder_outputs in ("memory", "disk"):
        parts.append(f"text-encoder outputs cached ({d.cache_text_encoder_outputs})")
    if profile.model.fp8_base:
        parts.append("fp8 base")
    if o.blocks_to_swap:
        parts.append(f"{o.blocks_to_swap} blocks swapped")
    return ", ".join(parts)


def fmt(v) -> str:
    if v is None:
        return "(unset)"
    if isinstance(v, str):
        return repr(v) if v else "(empty)"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v).lower() if isinstance(v, bool) else str(v)


def diff_text(title: str, diffs: list[tuple[str, object, object]], limit: int = 40) -> Text:
    t = Text()
    t.append(title + "\n", style="bold")
    if not diffs:
        t.append("  no differences\n", style="dim")
        return t
    for dotted, a, b in diffs[:limit]:
        t.append(f"  {dotted:<36}", style="")
        t.append(fmt(a), style="red")
        t.append(" → ")
        t.append(fmt(b) + "\n", style="green")
    if len(diffs) > limit:
        t.append(f"  … {len(diffs) - limit} more\n", style="dim")
    return t


class ProfilesScreen(Screen):
    CSS_PATH = "profiles.tcss"
    BINDINGS = [
        Binding("escape,q", "close", "back", id="profiles.close"),
        Binding("n", "duplicate", "duplicate", id="profiles.duplicate"),
        Binding("a", "app.save_profile_as", "save form as", id="profiles.save_as"),
        Binding("delete,d", "delete", "delete", id="profiles.delete"),
        Binding("m", "import_config", "import kohya", id="profiles.import"),
    ]

    def __init__(self) -> None:
        super().__init__(id="profiles-screen")
        self.entries: dict[str, ProfileEntry] = {}

    @property
    def lt_app(self) -> "LoraTuiApp":
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        with Horizontal(id="topbar"):
            yield Label(" loratui  profiles", id="title")
        with Horizontal(id="body"):
            yield OptionList(id="list")
            with VerticalScroll(id="details-box"):
                yield Static("", id="details")
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one("#list").border_title = "profiles"
        self.query_one("#list").border_subtitle = f"yours: {_home(user_profiles_dir())}"
        self.set_class(self.app.size.width < 100, "-narrow")
        self.query_one("#details-box").border_title = "details"
        self.reload()
        self.query_one(OptionList).focus()

    def on_resize(self, event) -> None:
        self.set_class(event.size.width < 100, "-narrow")

    def reload(self, highlight: Path | None = None) -> None:
        ol = self.query_one(OptionList)
        ol.clear_options()
        self.entries = {}
        current = self.lt_app.session.path
        target = highlight or current
        options: list[Option | None] = []
        index = None
        mine = user_profiles()
        groups = [("yours", mine), ("bundled (read-only)", bundled_profiles())]
        for title, entries in groups:
            options.append(Option(Text(title, style="bold dim"), disabled=True))
            if not entries:
                options.append(Option(Text("  none yet: n copies the highlighted one", style="dim"), disabled=True))
            for e in entries:
                oid = str(e.path)
                self.entries[oid] = e
                label = Text("  " + e.name)
                if current is not None and e.path.resolve() == current.resolve():
                    label.append("  (open)", style="green")
                if e.origin:
                    label.append(f"  ← {e.origin}", style="dim")
                if target is not None and e.path.resolve() == target.resolve():
                    index = len(options)
                options.append(Option(label, id=oid))
        ol.add_options(options)
        if index is None:
            index = next((i for i, o in enumerate(options) if o is not None and not o.disabled), 0)
        ol.highlighted = index
        self._show_details()

    def _entry(self) -> ProfileEntry | None:
        ol = self.query_one(OptionList)
        if ol.highlighted is None:
            return None
        opt = ol.get_option_at_index(ol.highlighted)
        return self.entries.get(opt.id or "")

    @on(OptionList.OptionHighlighted)
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        self._show_details()

    def _show_details(self) -> None:
        e = self._entry()
        box = self.query_one("#details", Static)
        if e is None:
            box.update("")
            return
        t = Text()
        t.append(e.name + "\n", style="bold")
        t.append((f"bundled with loratui ({e.path.name})" if e.bundled else _home(e.path)) + "\n", style="dim")
        try:
            profile = load_profile(e.path)
        except ProfileError as exc:
            t.append("cannot be opened:\n", style="red")
            for line in exc.problems:
                t.append(f"  {line}\n", style="red")
            box.update(t)
            return
        desc = _description(e.path)
        if desc:
            t.append(desc + "\n", style="italic")
        m, o = profile.model, profile.output
        t.append(f"model    {m.base_model or '(not set)'}  [{m.family}]\n")
        t.append(f"dataset  {profile.dataset.train_data_dir or '(not set)'}\n")
        t.append(
            f"network  rank {profile.network.network_dim}, alpha {profile.network.network_alpha:g}   "
            f"{profile.optimization.optimizer} lr {profile.optimization.learning_rate:g}   "
            f"{profile.optimization.max_train_epochs} epochs × batch {profile.optimization.train_batch_size}\n"
        )
        t.append(f"memory   {_memory_line(profile)}\n")
        t.append(f"output   {o.output_dir or '(not set)'}/{o.output_name or '?'}.safetensors\n\n")
        session = self.lt_app.session
        if session.path is not None and e.path.resolve() == session.path.resolve():
            form = self.lt_app.form_profile()
            if form is None:
                t.append("unsaved changes in the form (some fields are invalid)\n\n", style="yellow")
            else:
                changes = diff_profiles(profile, form)
                if changes:
                    t.append_text(diff_text("unsaved changes in the form", changes))
                    t.append("\n")
        if e.origin:
            origin = load_origin(e.origin)
            if origin is None:
                t.append(f"based on {e.origin} (no longer available)\n", style="dim")
            else:
                t.append_text(diff_text(f"differs from {e.origin}", diff_profiles(origin, profile)))
        elif not e.bundled:
            t.append("not based on another profile\n", style="dim")
        box.update(t)

    @on(OptionList.OptionSelected)
    def _open(self, event: OptionList.OptionSelected) -> None:
        e = self.entries.get(event.option.id or "")
        if e is not None:
            self.lt_app.request_open_profile(e.path, on_done=lambda ok: ok and self.dismiss_if_top())

    def dismiss_if_top(self) -> None:
        if self.app.screen is self:
            self.app.pop_screen()

    def action_close(self) -> None:
        self.app.pop_screen()

    def action_duplicate(self) -> None:
        from loratui.tui.widgets.dialogs import NameDialog

        e = self._entry()
        if e is None:
            return
        try:
            profile = load_profile(e.path)
        except ProfileError as exc:
            self.notify(str(exc), title="cannot duplicate", severity="error")
            return

        def named(name: str | None) -> None:
            if not name:
                return
            path = save_user_profile(profile, name, origin=origin_name(e), overwrite=False)
            self.notify(f"saved {path}", title="profile duplicated")
            self.reload(highlight=path)

        self.app.push_screen(NameDialog(f"Duplicate {e.name} as:", unique_name(f"{e.name}-copy"), check=new_name_problem), named)

    def action_delete(self) -> None:
        from loratui.tui.widgets.dialogs import ChoiceDialog

        e = self._entry()
        if e is None:
            return
        if e.bundled:
            self.notify("bundled profiles cannot be deleted (duplicate one to change it)", severity="warning")
            return
        session = self.lt_app.session
        if session.path is not None and e.path.resolve() == session.path.resolve():
            self.notify("this profile is open in the form: open another one first", severity="warning")
            return

        def answer(key: str | None) -> None:
            if key == "y":
                delete_user_profile(e.path)
                self.notify(f"deleted {e.path}")
                self.reload()

        self.app.push_screen(ChoiceDialog(f"Delete {e.name}?", str(e.path), [("y", "delete it")]), answer)


    def action_import_config(self) -> None:
        """Import a kohya_ss GUI .json or sd-scripts .toml config as a user profile."""
        from loratui.tui.widgets.dialogs import ChoiceDialog, NameDialog

        def config_problem(text: str) -> str | None:
            if not text:
                return "the path of a kohya_ss .json or sd-scripts .toml config"
            path = Path(text).expanduser()
            if not path.is_file():
                return f"{path}: no such file"
            if path.suffix.lower() not in (".json", ".toml"):
                return "a kohya_ss GUI .json or an sd-scripts .toml"
            return None

        def got_config(text: str | None) -> None:
            if not text:
                return
            from loratui.engine.kohya import KohyaImportError, import_kohya, save_import

            src = Path(text).expanduser()
            try:
                result = import_kohya(src)
            except KohyaImportError as exc:
                self.notify(str(exc), title="cannot import", severity="error")
                return

            def named(name: str | None) -> None:
                if not name:
                    return
                target = user_profiles_dir() / f"{name}.toml"
                try:
                    save_import(result, target)
                except (FileExistsError, OSError) as exc:
                    self.notify(f"{target}: {exc}", title="cannot save", severity="error")
                    return
                self.reload(highlight=target)
                self.app.push_screen(ChoiceDialog(f"Imported {src.name} as {name}", result.report().splitlines(), []))

            self.app.push_screen(
                NameDialog("Save the imported profile as:", unique_name(src.stem), check=new_name_problem), named
            )

        self.app.push_screen(NameDialog("Import a kohya_ss .json or sd-scripts .toml config (path):", "", check=config_problem), got_config)


def _home(path: Path) -> str:
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home):] if text.startswith(home + "/") else text
