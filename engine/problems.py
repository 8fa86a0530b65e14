"""Problems with a profile or a run's inputs, as data.

Every check (the schema, the dataset scan, model headers, resume states,
preflight) reports a :class:`Problem`: the setting it concerns as
``section.key`` (or ``""`` for the file as a whole), what is wrong, how to fix
it, and whether it stops a run (``error``) or only deserves a look
(``warning``). The form marks ``key``'s field; the CLI prints ``str(problem)``.
Nobody parses these strings back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    key: str  # "section.key", "section" or "" (the profile as a whole)
    message: str  # what is wrong, without the key
    hint: str = ""  # what to do about it
    severity: Severity = Severity.ERROR
    source: str = ""  # the file (or "--set section.key=value") it came from, "" when not from a file
    # the value found, where there was one (e.g. an unknown optimizer name); not part of equality
    value: Any = field(default=None, compare=False, repr=False)

    @property
    def section(self) -> str:
        return self.key.partition(".")[0]

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def detail(self) -> str:
        """``message — hint``: what a field shows beside itself."""
        return self.message + (f" — {self.hint}" if self.hint else "")

    def text(self) -> str:
        """``section.key: message — hint`` (no source)."""
        head = f"{self.key}: " if self.key else ""
        return head + self.detail()

    def __str__(self) -> str:
        if not self.source:
            return self.text()
        if self.source.startswith("--set ") or not self.key:
            # "--set network.network_dim=0: ..." names the key itself
            return f"{self.source}: {self.detail()}"
        return f"{self.source}:{self.text()}"

    def with_source(self, source: str) -> "Problem":
        return Problem(self.key, self.message, self.hint, self.severity, source, self.value)


def error(key: str, message: str, hint: str = "", source: str = "", value: Any = None) -> Problem:
    return Problem(key, message, hint, Severity.ERROR, source, value)


def warning(key: str, message: str, hint: str = "", source: str = "", value: Any = None) -> Problem:
    return Problem(key, message, hint, Severity.WARNING, source, value)
