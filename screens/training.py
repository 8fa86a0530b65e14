"""The training screen: the profile as a form (generated from the schema) and the plan panel.

Validation runs on every change: problems show at their field, in red, with the
reason; warnings in yellow.  The plan panel scans the dataset in a worker thread
(it reads image headers) whenever a dataset folder changes — typed, or changed on
disk — and recomputes the steps on every keystroke.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import on
from textual.app import ComposeResult
from textual.await_complete import AwaitComplete
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Label, Static

from loratui.engine.schema import (
    SECTION_TITLES,
    DatasetSettings,
    Profile,
    ProfileError,
    SettingInfo,
    profile_from_dict,
    profile_warnings,
    settings,
)
from loratui.tui.startup import resume_gc
from loratui.tui.widgets import set_text
from loratui.tui.widgets.fields import SettingField
from loratui.tui.widgets.keybar import KeyBar
from loratui.tui.widgets.plan import PlanPanel
from loratui.screens.form_plan import PlanChecks

if TYPE_CHECKING:
    from loratui.tui.app import LoraTuiApp

SCAN_KEYS = {"dataset.train_data_dir", "dataset.reg_data_dir", "dataset.caption_extension"}
FORM_SOURCE = "form"
NOT_FOUND = "not found on this machine"
REPO_ID_RE = re.compile(r"^[\w.-]+/[\w.-]+$")


class TrainingScreen(PlanChecks, Screen):
    """Form + plan.  ``app.session`` says which profile is open."""

    CSS_PATH = "training.tcss"
    AUTO_FOCUS = ""  # no field has focus at first, so single-letter keys work
    WATCH_EVERY = 2.0  # seconds between checks of the dataset folders
    BINDINGS = [
        Binding("ctrl+r", "app.start_run", "start", id="run.start"),
        Binding("ctrl+s", "app.save_profile", "save", id="profile.save"),
        Binding("p,ctrl+o", "app.profiles", "profiles", id="screen.profiles"),
        Binding("i", "app.dataset", "dataset", id="screen.dataset"),
        Binding("c", "app.captions", "captions", id="screen.captions", show=False),
        Binding("M", "app.models", "models", id="screen.models", show=False),
        Binding("d", "app.dashboard", "dashboard", id="screen.dashboard", show=False),
        Binding("ctrl+t", "toggle_advanced", "advanced", id="form.advanced", show=False),
        Binding("escape", "leave_field", "leave field", show=False, id="form.leave_field"),
        Binding("ctrl+n", "next_section", "next section", id="form.next_section"),
        Binding("ctrl+b", "previous_section", "previous section", show=False, id="form.previous_section"),
        Binding("ctrl+f", "apply_fit", "fit: apply the plan's first change", show=False, id="form.fit"),
    ]

    def __init__(self) -> None:
        super().__init__(id="form-screen")
        self.fields: dict[str, SettingField] = {}
        self.infos: list[SettingInfo] = [s for s in settings() if s.section in SECTION_TITLES]
        self.valid: Profile | None = None  # the form's profile when it validates
        self.problems: list[str] = []
        self._field_errors: dict[str, str] = {}  # the schema's, by setting
        self._field_warnings: dict[str, str] = {}
        self.warnings: list[str] = []
        self._last_good: Profile = self.lt_app.session.profile  # (no Profile(): it builds every section's validator)
        self._scan_key: tuple | None = None
        self._scan_result: Any = None
        self._scan_used: DatasetSettings | None = None  # the settings _scan_result was made with
        self._scan_error = ""
        self._scan_signature: tuple | None = None
        self._scan_timer = None
        self._checks_timer = None
        self._dataset_api: Any = None
        self.show_advanced = False
        self._hint = ""
        self._ready = False
        self._resumed = False
        self.section = next(iter(SECTION_TITLES))
        self._section_errors: dict[str, int] = {}

    @property
    def lt_app(self) -> "LoraTuiApp":
        return self.app  # type: ignore[return-value]

    @property
    def ready(self) -> bool:
        """Mounted: its widgets exist and the methods below draw."""
        return self._ready

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        with Horizontal(id="topbar"):
            yield Label("", id="title", markup=False)
            yield Label("", id="run-badge", markup=False)
            yield Label("", id="gpu", markup=False)
        yield Static("", id="hint", markup=False)
        from loratui.engine.families import settings_unused_by

        initial = self.lt_app.session.profile
        unused = settings_unused_by(initial.model.family)  # (auto: none)
        for info in self.infos:
            f = self.fields[info.dotted] = SettingField(info, initial.get(info.dotted))
            # folded from the start (as _show_family_fields will have it): no restyle once mounted
            f.set_class(self._folds_for_family(f, unused), "-unused", update=False)
        with Horizontal(id="body"):
            with Vertical(id="form"):
                # One section at a time (ctrl+n / ctrl+b): a short form lays out fast on
                # every key press, and a section's widgets are built when it is first shown.
                # The first frame has the first section's shown fields only: its folded
                # (advanced) ones are mounted right after it (_mount_folded).
                for section in SECTION_TITLES:
                    with VerticalScroll(id=f"sec-{section}", classes="section-pane", can_focus=False):
                        if section == self.section:
                            yield from (f for f in self._section_fields(section) if not f.info.advanced)
                with Horizontal(id="actions"):
                    yield Button("Start training  ctrl+r", id="start", variant="success", compact=True)
                    yield Label("", id="problem-count")
            with Vertical(id="plan-box"):
                yield PlanPanel(id="plan")
        yield KeyBar()

    def _section_fields(self, section: str) -> list[SettingField]:
        return [self.fields[i.dotted] for i in self.infos if i.section == section]

    def _mount_section(self, section: str):
        """Mount the fields of ``section`` that are not mounted yet, each in its
        place; an awaitable, or None when there were none."""
        pane = self.query_one(f"#sec-{section}", VerticalScroll)
        fields = self._section_fields(section)
        if all(f.is_attached for f in fields):
            return None
        if not any(f.is_attached for f in fields):
            return pane.mount_all(fields)
        waits, run, before = [], [], None
        for f in [*fields, None]:
            if f is not None and not f.is_attached:
                run.append(f)
                continue
            if run:
                waits.append(pane.mount_all(run, after=before) if before is not None else pane.mount_all(run, before=f))
                run = []
            before = f
        return AwaitComplete(*waits)

    def _after_first_frame(self) -> None:
        """What the first frame need not wait for: the first section's folded
        fields, the dataset scan (a worker thread: it holds the interpreter lock too);
        and the garbage collector, paused by the console script until this first frame."""
        resume_gc()
        self._mount_section(next(iter(SECTION_TITLES)))
        self._request_scan(immediate=True)

    def on_mount(self) -> None:
        self._ready = True
        for section in SECTION_TITLES:
            self.query_one(f"#sec-{section}").display = section == self.section
        self._draw_sections_title()
        self.query_one("#plan-box").border_title = "Plan"
        self._layout_for(self.app.size.width, self.app.size.height)
        session = self.lt_app.session
        self.load_profile(session.profile, scan=False)
        # the app's after-refresh, not the screen's: a screen not yet shown runs its
        # own at once, before its first frame
        self.app.call_after_refresh(self._after_first_frame)
        self.set_hint(self._hint)
        self.show_gpu_summary(self.lt_app.gpu_summary())
        self.set_interval(self.WATCH_EVERY, self._watch_dataset)

    def on_resize(self, event) -> None:
        self._layout_for(event.size.width, event.size.height)

    def _layout_for(self, width: int, height: int) -> None:
        narrow = width < 100
        self.set_class(narrow, "-narrow")
        self.query_one(PlanPanel).show(compact=narrow or height < 30)

    def on_screen_resume(self, event) -> None:
        if not self._resumed:
            # Its widgets were styled as they were mounted, a moment ago: Textual's
            # restyle of the whole screen on its first resume would redo that (~120 of
            # the ~370 style applications before the first frame).  Later resumes
            # restyle (focus, hover...).
            self._resumed = True
            event.refresh_styles = False
        self.refresh_title()
        self.lt_app.refresh_run_badge()
        self.query_one(KeyBar).refresh_keys()

    # ------------------------------------------------------------------ profile in / out
    def load_profile(self, profile: Profile, scan: bool = True) -> None:
        """Show ``profile`` in the form (programmatic: no change messages)."""
        for info in self.infos:
            self.fields[info.dotted].set_value(profile.get(info.dotted))
        self._last_good = profile
        self.validate()
        self.refresh_title()
        if scan:
            self._request_scan(immediate=True)

    def raw_values(self) -> dict[str, Any]:
        return {d: f.raw for d, f in self.fields.items()}

    def collect(self) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """(nested dict of parsed values, {dotted: parse error})."""
        data: dict[str, dict[str, Any]] = {s: {} for s in SECTION_TITLES}
        errors: dict[str, str] = {}
        for info in self.infos:
            try:
                data[info.section][info.key] = self.fields[info.dotted].parsed()
            except ValueError as exc:
                errors[info.dotted] = str(exc)
        return data, errors

    def validate(self) -> Profile | None:
        """Check every field; mark problems in place; returns the profile or None."""
        data, parse_errors = self.collect()
        errors: dict[str, str] = dict(parse_errors)
        general: list[str] = []
        for dotted in parse_errors:
            section, key = dotted.split(".")
            data[section].pop(key, None)
        profile = None
        try:
            profile = profile_from_dict(data, FORM_SOURCE)
        except ProfileError as exc:
            for problem in exc.problems:
                if problem.key in self.fields:
                    errors.setdefault(problem.key, problem.detail())
                else:
                    general.append(problem.text())
        if parse_errors:
            profile = None
        warnings: dict[str, str] = {}
        warn_list = profile_warnings(profile) if profile is not None else []
        for problem in warn_list:
            if problem.key in self.fields:
                warnings.setdefault(problem.key, problem.detail())
        self._field_errors, self._field_warnings = errors, warnings
        self._mark_fields()
        for dotted, f in self.fields.items():
            f.set_class(f.info.advanced and dotted in errors, "-forced", update=f.is_attached)
        self.problems = [f"{d}: {m}" for d, m in errors.items()] + general
        counts: dict[str, int] = {}
        for dotted in errors:
            counts[dotted.split(".")[0]] = counts.get(dotted.split(".")[0], 0) + 1
        if counts != self._section_errors:
            self._section_errors = counts
            if self._ready:
                self._draw_sections_title()
        self.warnings = [str(w) for w in warn_list]
        self.valid = profile
        if profile is not None:
            self._last_good = profile
        self._update_status_line()
        self._show_family_fields()
        return profile

    def form_family(self) -> str | None:
        """The family the form is for: model.family, or (auto) what the last check detected."""
        try:
            family = str(self.fields["model.family"].parsed() or "auto")
        except ValueError:
            family = "auto"
        if family == "auto":
            family = self.query_one(PlanPanel).detected_family or "auto"
        return None if family == "auto" else family

    def _show_family_fields(self) -> None:
        """Fold the settings the form's family does not train with (the families declare
        which they use: ``engine.families.settings_unused_by``). One that holds a value
        other than its default, or has a problem, stays shown: nothing set is out of sight."""
        from loratui.engine.families import family_label, settings_unused_by

        family = self.form_family()
        unused = settings_unused_by(family)
        hidden = 0
        for dotted, f in self.fields.items():
            hide = self._folds_for_family(f, unused)
            f.set_class(hide, "-unused", update=f.is_attached)  # (a field not mounted is styled when it is)
            hidden += hide
        note = ""
        if family and hidden:
            try:
                label = family_label(family)
            except KeyError:
                label = family
            note = f"{label}: {hidden} setting{'s' if hidden > 1 else ''} of other families hidden"
        fam_field = self.fields.get("model.family")
        if fam_field is not None and not fam_field.error:
            fam_field.set_note(note)

    @staticmethod
    def _folds_for_family(f: SettingField, unused: frozenset[str]) -> bool:
        """Whether ``f`` is out of sight for a family that does not use the settings ``unused``."""
        if f.info.dotted not in unused or f.error or f.warning or (f.is_attached and f.has_focus_within):
            return False
        try:
            return f.parsed() == f.info.default
        except ValueError:
            return False

    @property
    def hidden_for_family(self) -> set[str]:
        """The fields folded because the form's family does not use them."""
        return {d for d, f in self.fields.items() if f.has_class("-unused")}

    def _mark_fields(self) -> None:
        """Each field shows its own problem: the schema's first, else what the
        dataset scan and the run's checks found about that setting."""
        found: dict[str, tuple[str, str]] = {}
        report = getattr(self._scan_result, "report", None)
        panel = self.query_one(PlanPanel)
        for p in [*(report.problems if report else []), *panel.found, *(report.warnings if report else []),
                  *panel.found_warnings]:
            if p.key in self.fields and p.key not in found:
                found[p.key] = (p.detail(), "") if p.is_error else ("", p.detail())
        for dotted, f in self.fields.items():
            err, warn = self._field_errors.get(dotted, ""), self._field_warnings.get(dotted, "")
            if not err and dotted in found:
                run_err, run_warn = found[dotted]
                err, warn = run_err, warn or run_warn
            f.set_problem(err, warn)
        self._update_notes()  # a note that says what the field's problem says goes

    def dataset_problems(self) -> list[str]:
        """What the last scan of the dataset folder found that stops training."""
        report = getattr(self._scan_result, "report", None)
        return [str(p) for p in report.problems] if report is not None else []

    def plan_problems(self) -> list[str]:
        """What stops a run, as the plan panel shows it: the dataset's, then the
        other checks of ``prepare_run`` (model, output folder, LoRA weights...)."""
        return self.dataset_problems() + list(self.query_one(PlanPanel).problems)

    def _update_status_line(self) -> None:
        count = self.query_one("#problem-count", Label)
        n, ds = len(self.problems), self.plan_problems()
        if n:
            text = f"✗ {n} problem{'s' if n > 1 else ''} — see the fields in red"
        elif ds:
            text = f"✗ {len(ds)} problem{'s' if len(ds) > 1 else ''} stop{'' if len(ds) > 1 else 's'} a run — see the plan"
        elif self.warnings:
            text = f"! {len(self.warnings)} warning{'s' if len(self.warnings) > 1 else ''}"
        else:
            text = "✓ ready"
        set_text(count, text)
        count.set_class(bool(n or ds), "-error")

    def best_effort(self) -> Profile:
        """The last valid profile with every value that parses applied (not validated):
        enough for the step calculator while a field is being typed."""
        data, _errors = self.collect()
        base = self._last_good
        updates = {}
        for section in SECTION_TITLES:
            current = getattr(base, section)
            upd = {k: v for k, v in data[section].items() if k in type(current).model_fields}
            updates[section] = current.model_copy(update=upd)
        return base.model_copy(update=updates)

    @property
    def dirty(self) -> bool:
        from loratui.engine.schema import diff_profiles

        saved = self.lt_app.session.profile
        if self.valid is None:
            return True
        return bool(diff_profiles(saved, self.valid))

    def refresh_title(self) -> None:
        s = self.lt_app.session
        title = self.query_one("#title", Label)
        text = f" loratui  profile: {s.name}" + (" *" if self.dirty else "")
        if s.bundled:
            text += "  (bundled: ctrl+s saves a copy)"
        set_text(title, text)

    def show_gpu_summary(self, text: str) -> None:
        label = self._label("#gpu")
        if label is not None:
            set_text(label, text, layout=True)

    def show_run_badge(self, text: str) -> None:
        """The top bar's note on the run ("▶ training 42% · d dashboard")."""
        label = self._label("#run-badge")
        if label is not None:
            set_text(label, text)  # a fixed-width label: no relayout

    def _label(self, selector: str) -> Label | None:
        """A top-bar label, or None before the screen is composed and once the app tears it down
        (a GPU sample or run note may arrive then)."""
        if not self._ready:
            return None
        found = self.query(selector)
        return found.first(Label) if found else None

    def set_hint(self, text: str) -> None:
        self._hint = text
        if not self._ready:
            return
        hint = self.query_one("#hint", Static)
        set_text(hint, text, layout=True)
        hint.set_class(bool(text), "-shown")

    # ------------------------------------------------------------------ changes
    @on(SettingField.Changed)
    def _field_changed(self, event: SettingField.Changed) -> None:
        dotted = event.field.info.dotted
        self.validate()
        self.refresh_title()
        if dotted in SCAN_KEYS:
            self._request_scan()
        else:
            self._update_plan()

    def on_descendant_blur(self) -> None:
        self._show_family_fields()  # a field left at its default that the family does not use folds now

    @on(SettingField.PickRequested)
    def _pick(self, event: SettingField.PickRequested) -> None:
        from loratui.tui.widgets.dialogs import PathPicker

        f = event.field
        info = f.info

        def chosen(path: str | None) -> None:
            if path:
                f.editor.value = path
                f.focus_editor()

        self.app.push_screen(PathPicker(f"{info.label}: {info.help}", str(f.raw), info.kind or "path"), chosen)

    @on(Button.Pressed, "#start")
    def _start(self, event: Button.Pressed) -> None:
        event.stop()
        self.app.run_action("start_run")

    def _draw_sections_title(self) -> None:
        parts = []
        for section, title in SECTION_TITLES.items():
            errors = self._section_errors.get(section, 0)
            text = title + (f" [red]✗{errors}[/red]" if errors else "")
            parts.append(f"[reverse] {text} [/reverse]" if section == self.section else f" {text} ")
        self.query_one("#form").border_title = "─".join(parts)

    def _update_notes(self) -> None:
        f = self.fields.get("model.base_model")
        if f is not None:
            note = model_note(str(f.raw))
            f.set_note("" if f.error and note == NOT_FOUND else note)  # the error says so already
        for key in ("network.network_weights", "output.resume", "model.vae"):
            g = self.fields.get(key)
            if g is not None:
                value = os.path.expanduser(str(g.raw).strip())
                missing = value and (os.sep in value or value.startswith(".")) and not os.path.exists(value)
                g.set_note("not found" if missing and not g.error else "")

    # ------------------------------------------------------------------ navigation
    def action_toggle_advanced(self) -> None:
        self.show_advanced = not self.show_advanced
        self.set_class(self.show_advanced, "-show-advanced")
        self.notify("advanced settings " + ("shown" if self.show_advanced else "hidden"), timeout=2)

    def action_leave_field(self) -> None:
        # Leave a text field so single-letter keys (p, i, c, ?) work.
        self.set_focus(None)

    def show_section(self, section: str):
        """Show ``section`` (building its fields the first time); awaitable."""
        pane = self.query_one(f"#sec-{section}", VerticalScroll)
        mounting = self._mount_section(section)
        if section != self.section:
            self.query_one(f"#sec-{self.section}").display = False
            self.section = section
            pane.display = True
            self._draw_sections_title()
        return mounting if mounting is not None else AwaitComplete.nothing()

    def focus_section(self, section: str) -> None:
        first = next(i for i in self.infos if i.section == section and (self.show_advanced or not i.advanced)
                     and not self.fields[i.dotted].has_class("-unused"))
        self.focus_field(first.dotted)

    def focus_field(self, dotted: str):
        """Show a field's section, then focus the field; awaitable."""
        f = self.fields.get(dotted)
        if f is None:
            return None
        if f.info.advanced and not self.show_advanced:
            self.action_toggle_advanced()
        waiting = self.show_section(f.info.section)
        pane = self.query_one(f"#sec-{f.info.section}", VerticalScroll)

        async def focus_when_built() -> None:
            await waiting
            f.focus_editor()
            # after the next layout: a section built just now has no sizes yet
            pane.call_after_refresh(pane.scroll_to_widget, f, animate=False, top=False)

        return AwaitComplete(focus_when_built())

    def action_apply_fit(self) -> None:
        """The first change the plan panel suggests to make the run fit the GPU, into the form."""
        from loratui.tui.widgets.plan_estimate import first_change

        changes = [c for c in first_change(self.query_one(PlanPanel).estimate) if c.key in self.fields]
        if not changes:
            self.notify("nothing to change: no estimate yet, or the run fits", timeout=3)
            return
        for c in changes:
            self.fields[c.key].set_value(c.value)
        self.validate()
        self.refresh_title()
        self._update_plan()
        self.notify("; ".join(f"{c.key} = {c.value}" for c in changes), timeout=4)

    def action_next_section(self) -> None:
        names = list(SECTION_TITLES)
        self.focus_section(names[(names.index(self.section) + 1) % len(names)])

    def action_previous_section(self) -> None:
        names = list(SECTION_TITLES)
        self.focus_section(names[(names.index(self.section) - 1) % len(names)])


def model_note(value: str) -> str:
    value = value.strip()
    if not value:
        return ""
    path = Path(os.path.expanduser(value))
    looks_like_path = value.startswith(("/", "~", ".")) or value.endswith((".safetensors", ".ckpt")) or os.sep in value and path.exists()
    if path.is_file():
        return f"file · {path.stat().st_size / 1024**3:.1f} GB" if path.stat().st_size > 2**28 else f"file · {path.stat().st_size / 2**20:.0f} MB"
    if path.is_dir():
        kind = "diffusers folder" if (path / "model_index.json").exists() else "folder (no model_index.json: not a diffusers folder?)"
        return kind
    if looks_like_path:
        return NOT_FOUND
    if REPO_ID_RE.match(value):
        return "Hugging Face repo id (downloaded on first use)"
    return ""
