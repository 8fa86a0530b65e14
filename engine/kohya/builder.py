"""The import's bookkeeping: every key of the file is mapped, ignored or
unsupported (never dropped silently), and the result validated.

Cheap to import: no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loratui.engine.kohya.keys import NO_EFFECT, OFF_VALUES, network_type_refusal, show
from loratui.engine.problems import Problem
from loratui.engine.schema import Profile, ProfileError, profile_from_dict, setting_info, settings
from loratui.engine.schema.coerce import BadValue, blank, by_type, is_off

class KohyaImportError(Exception):
    """The file could not be read as a kohya_ss / sd-scripts config at all."""


Entry = tuple[str, Any, str]  # (key as written in the file, value as written, reason / target)


@dataclass
class ImportResult:
    profile_dict: dict[str, dict[str, Any]]
    ignored: list[Entry] = field(default_factory=list)  # no effect here
    unsupported: list[Entry] = field(default_factory=list)  # changes training, no equivalent
    notes: list[str] = field(default_factory=list)
    mapped: list[Entry] = field(default_factory=list)  # (key, value, "section.setting")
    source: str = ""
    kind: str = ""

    def problems(self) -> list[Problem]:
        """Validation problems of the imported profile (empty: it can train)."""
        try:
            profile_from_dict(self.profile_dict, self.source or "<import>")
        except ProfileError as exc:
            return [friendlier(p) for p in exc.problems]
        return []

    def profile(self) -> Profile:
        """The validated profile. Raises ProfileError (e.g. an unsupported network type)."""
        try:
            return profile_from_dict(self.profile_dict, self.source or "<import>")
        except ProfileError as exc:
            raise ProfileError([friendlier(p) for p in exc.problems]) from None

    def report(self) -> str:
        """The human-readable import report the CLI prints."""
        lines = [f"Imported {self.source} ({self.kind}): {len(self.mapped)} settings mapped."]
        if self.ignored:
            lines.append(f"\nIgnored, no effect here ({len(self.ignored)}):")
            lines += [f"  {k} = {show(v)}: {why}" for k, v, why in self.ignored]
        if self.unsupported:
            lines.append(f"\nNot supported, changes training ({len(self.unsupported)}):")
            lines += [f"  {k} = {show(v)}: {why}" for k, v, why in self.unsupported]
        if self.notes:
            lines.append("\nNotes:")
            lines += [f"  - {n}" for n in self.notes]
        problems = self.problems()
        if problems:
            lines.append("\nThis profile cannot be trained until you change:")
            lines += [f"  {p}" for p in problems]
        return "\n".join(lines)


def import_header(result: ImportResult) -> str:
    """The comment block written at the top of an imported profile."""
    lines = [f"Imported by `loratui import` from {result.source} ({result.kind})."]
    if result.unsupported:
        lines.append("Not supported (changes training):")
        lines += [f"  {k} = {show(v)}: {why}" for k, v, why in result.unsupported]
    if result.ignored:
        lines.append(f"{len(result.ignored)} keys with no effect here were ignored (see the import report).")
    return "\n".join(lines)


def save_import(result: ImportResult, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write the imported profile atomically as a new file (an existing one is replaced,
    not merged), with the import report's unsupported keys as a header. A profile the
    schema refuses (an unsupported network type kept as given) is written as well, so the
    user can open and change it. Raises FileExistsError when ``path`` exists and not ``overwrite``."""
    from loratui.engine.fsutil import atomic_write_text
    from loratui.engine.schema import profile_to_toml

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(str(path))
    header = import_header(result)
    try:
        profile = result.profile()
    except ProfileError:
        import tomli_w

        body = "".join(f"# {line}\n" for line in header.splitlines()) + "\n" + tomli_w.dumps(result.profile_dict)
        atomic_write_text(path, body)
        return path
    atomic_write_text(path, profile_to_toml(profile, header))
    return path


# the choice settings an import may write as given, and what to call them
_CHOICE_WORDS = {
    "optimization.optimizer": "optimizer",
    "optimization.lr_scheduler": "learning-rate scheduler",
    "optimization.mixed_precision": "mixed precision",
}


def friendlier(problem: Problem) -> Problem:
    """A clearer message for the values an import writes as given (an unknown network
    type, optimizer, scheduler...): what it is, and what to choose instead."""
    value = problem.value
    if not isinstance(value, str) or problem.message.find("is not one of") < 0:
        return problem
    if problem.key == "network.network_type":
        message = network_type_refusal(value)
    elif problem.key in _CHOICE_WORDS:
        choices = ", ".join(repr(c) for c in setting_info(problem.key).choices)
        message = (f"the {_CHOICE_WORDS[problem.key]} {value!r} from the imported config is not available in loratui; "
                   f"choose one of: {choices}")
    else:
        return problem
    return Problem(problem.key, message or problem.message, "", problem.severity, problem.source, value)


# --------------------------------------------------------------------------- the builder


class Builder:
    """Collects what an import maps, ignores and cannot support, then validates."""

    def __init__(self, source: str, kind: str):
        self.source, self.kind = source, kind
        self.info = {s.dotted: s for s in settings()}
        self.values: dict[str, Any] = {}
        self.setter: dict[str, int] = {}  # dotted → index in mapped
        self.mapped: list[Entry] = []
        self.ignored: list[Entry] = []
        self.unsupported: list[Entry] = []
        self.notes: list[str] = []
        self.as_given: set[str] = set()

    # records
    def ignore(self, key: str, value: Any, why: str) -> None:
        self.ignored.append((key, value, why))

    def unsupported_(self, key: str, value: Any, why: str) -> None:
        self.unsupported.append((key, value, why))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def store(self, dotted: str, value: Any, key: str, raw: Any) -> None:
        """Record ``value`` (already coerced) for ``dotted``, read from ``key`` = ``raw``."""
        if dotted in self.setter:
            i = self.setter[dotted]
            old = self.mapped[i]
            if old is not None and old[0] != key:
                self.ignored.append((old[0], old[1], f"overridden by {key} = {show(raw)}"))
                self.mapped[i] = None  # type: ignore[call-overload]
        self.values[dotted] = value
        self.mapped.append((key, raw, dotted))
        self.setter[dotted] = len(self.mapped) - 1

    def given(self, dotted: str, value: Any, key: str, raw: Any, why: str) -> None:
        """Write a value loratui cannot use as given, so validation refuses until changed."""
        self.store(dotted, value, key, raw)
        self.as_given.add(dotted)
        self.unsupported_(key, raw, why)

    def put(self, dotted: str, raw: Any, key: str, value: Any = ...) -> bool:
        """Coerce ``value`` (default: ``raw``) to the setting's type and bounds and store it."""
        info = self.info[dotted]
        try:
            out = by_type(info, raw if value is ... else value)
        except BadValue as exc:
            self.unsupported_(key, raw, f"{exc}; kept the default {info.default!r}")
            return False
        self.store(dotted, out, key, raw)
        return True

    def result(self) -> ImportResult:
        self._repair()
        return ImportResult(
            profile_dict=self.result_dict(),
            ignored=self.ignored,
            unsupported=self.unsupported,
            notes=self.notes,
            mapped=[m for m in self.mapped if m is not None],
            source=self.source,
            kind=self.kind,
        )

    def _repair(self) -> None:
        """Fix what the schema's cross-field rules refuse (bucket sizes against their step), then
        fall back to defaults for anything else that still fails, except the values written
        as given on purpose (unsupported network type, optimizer, ...)."""
        d = self.values
        ds = self.info
        step = d.get("dataset.bucket_reso_steps", ds["dataset.bucket_reso_steps"].default)
        for dotted in ("dataset.min_bucket_reso", "dataset.max_bucket_reso"):
            v = d.get(dotted)
            if v is not None and v % step:
                new = math.ceil(v / step) * step if dotted.endswith("min_bucket_reso") else max(step, v // step * step)
                self._adjust(dotted, new, f"{v} is not a multiple of bucket_reso_steps {step}; imported as {new}")
        for _ in range(4):
            try:
                p = self.result_dict()
                profile_from_dict(p, "import")
                return
            except ProfileError as exc:
                fixed = False
                for problem in exc.problems:
                    dotted = problem.key
                    if dotted in self.as_given or dotted not in d:
                        continue
                    default = self.info[dotted].default
                    self._adjust(dotted, default, f"{problem.message}; kept the default {default!r}")
                    fixed = True
                if not fixed:
                    return

    def result_dict(self) -> dict[str, dict[str, Any]]:
        base = Profile().to_dict()
        for dotted, v in self.values.items():
            section, key = dotted.split(".")
            if v is None:
                base[section].pop(key, None)
            else:
                base[section][key] = v
        return base

    def _adjust(self, dotted: str, new: Any, why: str) -> None:
        i = self.setter.get(dotted)
        key, raw = (self.mapped[i][0], self.mapped[i][1]) if i is not None and self.mapped[i] else (dotted, self.values.get(dotted))
        if i is not None:
            self.mapped[i] = None  # type: ignore[call-overload]
            del self.setter[dotted]
        self.values[dotted] = new
        if new == self.info[dotted].default:
            self.values.pop(dotted)
        self.unsupported_(key, raw, why)


def report_other(b: Builder, key: str, v: Any, name: str | None = None) -> None:
    """Report a key loratui does not map: no effect, an option that is off (or
    not: unsupported), empty, or unknown. ``name``: the kohya name (default:
    the last part of ``key``)."""
    name = name or key.rsplit(".", 1)[-1]
    if name in NO_EFFECT:
        b.ignore(key, v, NO_EFFECT[name])
    elif name in OFF_VALUES:
        off, what = OFF_VALUES[name]
        if is_off(v, off):
            b.ignore(key, v, f"off: loratui has no {what}")
        else:
            b.unsupported_(key, v, f"loratui has no {what}; trained without it")
    elif blank(v) or v is False or v == 0 or v == []:
        b.ignore(key, v, "unknown to loratui; off or empty")
    else:
        b.unsupported_(key, v, "unknown to loratui; may change training")
