"""Widgets of the loratui app: form fields, plan panel, charts, dashboard panels, dialogs."""

from __future__ import annotations

from typing import Any


def set_text(widget: Any, content: Any, *, layout: bool = False) -> bool:
    """``widget.update(content)`` only when it changed; no relayout unless asked.

    A relayout of a screen with a long form costs tens of milliseconds, so labels
    whose size does not depend on their text must not ask for one on every key."""
    key = content.markup if hasattr(content, "markup") and not isinstance(content, str) else content
    if getattr(widget, "_lt_text", object()) == key:
        return False
    widget._lt_text = key
    widget.update(content, layout=layout)
    return True
