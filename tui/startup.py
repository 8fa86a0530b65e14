"""From launch to the app's first frame (the project's rule: ≤ 0.5 s).

The start-up makes a few hundred thousand long-lived objects (modules, classes,
the schema, the widgets); the cyclic garbage collector would walk them again and
again meanwhile (~0.1 s on a small machine) and find nothing to free.  The
console script pauses it until the first frame has been drawn.
"""

from __future__ import annotations

import gc

_paused = False


def pause_gc() -> None:
    """Stop automatic collection (if it is on) until :func:`resume_gc`."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume_gc() -> None:
    """Turn automatic collection back on, if :func:`pause_gc` turned it off."""
    global _paused
    if _paused:
        _paused = False
        gc.enable()
