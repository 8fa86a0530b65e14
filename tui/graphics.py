"""Which way the terminal shows sample images: kitty graphics, sixel, or half blocks.

Terminal graphics need a question to the terminal and its answer on stdin, which
only works before Textual starts reading stdin, and which costs a round trip
(plus a 0.1 s wait on a terminal that never answers). So the terminal is asked
only where it may say yes: the environment names a terminal with graphics
(kitty, Ghostty, WezTerm, foot, iTerm2, Konsole, mlterm, contour), or the user
asked for them. Under tmux or screen, and on every other terminal, the answer is
half blocks, at no start-up cost.

``LORATUI_GRAPHICS`` sets it: ``auto`` (the default), ``kitty``, ``sixel`` or
``halfblock``. The question and the rendering are textual-image's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping

MODES = ("auto", "kitty", "sixel", "halfblock")
ENV = "LORATUI_GRAPHICS"

# what a terminal with graphics puts in the environment (TERM survives ssh; the rest does
# where the user forwards it, e.g. `SendEnv TERM_PROGRAM`)
_GRAPHIC_TERMS = ("xterm-kitty", "xterm-ghostty", "foot", "foot-extra", "mlterm", "contour", "wezterm")
_GRAPHIC_PROGRAMS = ("WezTerm", "iTerm.app", "ghostty", "mlterm", "contour")
_GRAPHIC_MARKERS = ("KITTY_WINDOW_ID", "WEZTERM_EXECUTABLE", "KONSOLE_VERSION", "GHOSTTY_RESOURCES_DIR")

_mode = "halfblock"
problem: str | None = None  # why the setting could not be followed (the app shows it)


class GraphicsSettingError(ValueError):
    pass


def requested(env: Mapping[str, str]) -> str:
    value = env.get(ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise GraphicsSettingError(f"{ENV}={env.get(ENV)!r} is not one of {', '.join(MODES)}; unset it or pick one")
    return value


def may_have_graphics(env: Mapping[str, str]) -> bool:
    """Whether the environment names a terminal that can show images (and no
    multiplexer sits in between: tmux and screen drop or mangle them)."""
    term = env.get("TERM", "")
    if env.get("TMUX") or env.get("STY") or term.startswith(("screen", "tmux")):
        return False
    if term in _GRAPHIC_TERMS or term.startswith(("foot", "xterm-kitty")):
        return True
    if env.get("TERM_PROGRAM", "") in _GRAPHIC_PROGRAMS:
        return True
    return any(env.get(k) for k in _GRAPHIC_MARKERS)


def _ask_terminal() -> str:
    """What textual-image finds (sixel, then the kitty protocol, by asking)."""
    from textual_image import renderable
    from textual_image.renderable.sixel import Image as Sixel
    from textual_image.renderable.tgp import Image as Tgp

    # the cell size in pixels (ioctl, else asked), kept for the widgets
    from textual_image._terminal import get_cell_size

    get_cell_size()
    if renderable.Image is Tgp:
        return "kitty"
    if renderable.Image is Sixel:
        return "sixel"
    return "halfblock"


def choose(env: Mapping[str, str], isatty: bool, ask: Callable[[], str] = _ask_terminal) -> str:
    """The mode for this terminal: ``kitty``, ``sixel`` or ``halfblock``."""
    want = requested(env)
    if want == "halfblock" or not isatty:
        return "halfblock"
    if want in ("kitty", "sixel"):
        ask()  # the cell size, and the terminal's answer read before Textual starts
        return want
    return ask() if may_have_graphics(env) else "halfblock"


def setup() -> str:
    """Decide once, before the app starts. A setting that cannot be followed
    leaves half blocks and a line in ``problem`` for the app to show."""
    global _mode, problem
    problem = None
    try:
        _mode = choose(os.environ, bool(sys.__stdout__ and sys.__stdout__.isatty()))
    except GraphicsSettingError as exc:
        _mode, problem = "halfblock", f"{exc}; showing samples as half blocks"
    except Exception as exc:  # noqa: BLE001 - a terminal that answers oddly shows half blocks
        _mode = "halfblock"
        problem = f"could not ask the terminal about graphics ({exc}); showing samples as half blocks"
    return _mode


def mode() -> str:
    return _mode


def set_mode(value: str) -> None:
    """For tests and for apps built without ``setup()``."""
    global _mode
    if value not in MODES[1:]:
        raise GraphicsSettingError(f"unknown graphics mode {value!r}")
    _mode = value
