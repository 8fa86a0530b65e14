"""The profile open in the form: which file it came from, opening another one,
saving (in place, or as a profile of the user's), unsaved-changes prompts.

``ProfileActions`` is a part of ``LoraTuiApp`` (a mixin): its methods run on
the app and use the app's ``session`` and ``form``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratui.engine.schema import Profile, ProfileError, load_profile, save_profile
from loratui.engine.userdirs import (
    ProfileEntry,
    bundled_profiles_dir,
    is_bundled,
    last_profile,
    new_name_problem,
    origin_name,
    profile_header,
    read_origin,
    remember_last_profile,
    save_user_profile,
    unique_name,
)


@dataclass
class ProfileSession:
    """The profile open in the form, as last loaded or saved."""

    profile: Profile
    path: Path | None
    name: str
    bundled: bool
    origin: str | None = None

    @classmethod
    def from_path(cls, path: str | Path) -> "ProfileSession":
        path = Path(path).expanduser()
        profile = load_profile(path)
        bundled = is_bundled(path)
        return cls(profile, path, path.stem, bundled, None if bundled else read_origin(path))


class ProfileActions:
    """Opening and saving profiles (part of ``LoraTuiApp``)."""

    def _open_initial(self) -> ProfileSession:
        """The profile named on the command line, else the last used one, else the demo."""
        if self.watch_path is not None and self.profile_path is None:
            return ProfileSession(Profile(), None, "(watch)", False)
        if self.profile_path is not None:
            return ProfileSession.from_path(self.profile_path)  # run_app reports a ProfileError
        last = last_profile()
        if last is not None:
            try:
                return ProfileSession.from_path(last)
            except ProfileError:
                pass
        self.first_run = last is None
        return ProfileSession.from_path(bundled_profiles_dir() / "demo.toml")

    def open_profile(self, path: str | Path) -> bool:
        try:
            session = ProfileSession.from_path(path)
        except ProfileError as exc:
            from loratui.tui.widgets.dialogs import ChoiceDialog

            self.push_screen(ChoiceDialog(f"Cannot open {Path(path).name}", [str(p) for p in exc.problems], []))
            return False
        self.session = session
        self.form.load_profile(session.profile)
        self.form.set_hint("")
        if session.path is not None and not session.bundled:
            remember_last_profile(session.path)
        self._check_live_run()
        return True

    def request_open_profile(self, path: str | Path, on_done: Callable[[bool], Any] | None = None) -> None:
        """Open ``path``; with unsaved changes ask save / discard / cancel first."""
        done = on_done or (lambda ok: None)

        def go() -> None:
            done(self.open_profile(path))

        self.confirm_unsaved(go, lambda: done(False))

    def confirm_unsaved(self, proceed: Callable[[], Any], cancel: Callable[[], Any] | None = None) -> None:
        form = self.form
        if not form.dirty:
            proceed()
            return
        from loratui.tui.widgets.dialogs import ChoiceDialog

        def answer(key: str | None) -> None:
            if key == "s":
                self.save_profile(then=proceed)
            elif key == "d":
                proceed()
            elif cancel:
                cancel()

        body = "The form has changes that are not saved."
        if form.problems:
            body += "\nSome fields are invalid, so it cannot be saved as is:\n  " + "\n  ".join(form.problems[:8])
        self.push_screen(
            ChoiceDialog(f"Unsaved changes in {self.session.name}", body, [("s", "save"), ("d", "discard")]),
            answer,
        )

    def save_profile(self, then: Callable[[], Any] | None = None, save_as: bool = False) -> None:
        profile = self.form.validate()
        if profile is None:
            self._show_problems("Cannot save: the form has problems", self.form.problems)
            return
        s = self.session
        if save_as or s.bundled or s.path is None:
            self._save_as(profile, then, save_as)
            return
        save_profile(profile, s.path, header=profile_header(s.origin))
        self.session = ProfileSession(profile, s.path, s.name, False, s.origin)
        remember_last_profile(s.path)
        self.form.refresh_title()
        self.notify(f"saved {s.path}", title="profile saved", timeout=3)
        if then:
            then()

    def _save_as(self, profile: Profile, then: Callable[[], Any] | None, save_as: bool) -> None:
        """Ask for a name, then save ``profile`` as the user's profile of that name."""
        from loratui.tui.widgets.dialogs import NameDialog

        s = self.session
        if s.bundled:
            origin = origin_name(ProfileEntry(s.name, s.path, True))  # type: ignore[arg-type]
        else:
            origin = s.name if save_as else s.origin

        def named(name: str | None) -> None:
            if not name:
                return
            path = save_user_profile(profile, name, origin=origin)
            self.session = ProfileSession(profile, path, name, False, origin)
            remember_last_profile(path)
            self.form.refresh_title()
            self.notify(f"saved {path}", title="profile saved")
            if then:
                then()

        self.push_screen(NameDialog("Save the form as your profile named:", unique_name(s.name), check=new_name_problem), named)

    def action_save_profile(self) -> None:
        if self._installed("form") is None:
            return
        self.save_profile()

    def action_save_profile_as(self) -> None:
        if self._installed("form") is None:
            return
        self.save_profile(save_as=True, then=self._refresh_profiles_screen)

    def _refresh_profiles_screen(self) -> None:
        from loratui.screens.profiles import ProfilesScreen

        if isinstance(self.screen, ProfilesScreen):
            self.screen.reload(highlight=self.session.path)

    def action_profiles(self) -> None:
        from loratui.screens.profiles import ProfilesScreen

        if self._installed("form") is None or isinstance(self.screen, ProfilesScreen):
            return
        self.push_screen(ProfilesScreen())

    def goto_section(self, section: str) -> None:
        self.action_form()
        self.form.focus_section(section)

    def goto_field(self, dotted: str) -> None:
        self.action_form()
        self.form.focus_field(dotted)

    def _show_problems(self, title: str, problems: list[str]) -> None:
        from loratui.tui.widgets.dialogs import ChoiceDialog

        def answer(key: str | None) -> None:
            if key == "g" and problems:
                dotted = problems[0].split(":", 1)[0].strip()
                self.goto_field(dotted)

        self.push_screen(ChoiceDialog(title, problems, [("g", "go to the first")]), answer)
