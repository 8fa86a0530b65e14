"""The error an inspection edit refuses with."""

from __future__ import annotations

class InspectError(Exception):
    """A request we refuse; ``message`` names the file and what is wrong, ``hint`` what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message + (f" — {hint}" if hint else ""))
        self.message = message
        self.hint = hint
