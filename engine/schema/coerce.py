"""Coercion of the values other tools write, in one place.

kohya_ss GUI configs hold numbers as strings (``"0.0001"``, ``"32.0"``), floats
for integers, ``""`` for unset and assorted spellings for choices; ``--set``
values arrive as TOML values or bare text. Every reader (kohya import, the
dataset config, ``--set``) coerces through the functions here; the settings
declare which converter reads their kohya value (``setting(convert=...)``).

No torch: the UI imports this before its first frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loratui.engine.schema.declare import SettingInfo


class BadValue(ValueError):
    """A value that cannot be read as the setting's type (the message says why)."""


class NotAvailable(Exception):
    """A well-formed value naming something loratui does not have (an optimizer, a
    scheduler...): imported as given, so validation refuses until the user changes it."""

    def __init__(self, value: Any, why: str):
        super().__init__(why)
        self.value, self.why = value, why


@dataclass(frozen=True)
class Converted:
    """A converter's value with a note for the import report (a near equivalent chosen...)."""

    value: Any
    note: str | None = None


def blank(v: Any) -> bool:
    """kohya_ss writes ``""`` (or null) for "unset"."""
    return v is None or (isinstance(v, str) and v.strip() == "")


def to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        t = v.strip().lower()
        if t in ("true", "yes", "on", "1"):
            return True
        if t in ("false", "no", "off", "0", "none"):
            return False
    raise BadValue(f"{v!r} is not true or false")


def to_float(v: Any) -> float:
    if isinstance(v, bool):
        raise BadValue(f"{v!r} is not a number")
    if isinstance(v, (int, float)):
        x = float(v)
    elif isinstance(v, str):
        try:
            x = float(v.strip())
        except ValueError:
            raise BadValue(f"{v!r} is not a number") from None
    else:
        raise BadValue(f"{v!r} is not a number")
    if not math.isfinite(x):
        raise BadValue(f"{v!r} is not a finite number")
    return x


def to_int(v: Any) -> int:
    x = to_float(v)
    if not x.is_integer():
        raise BadValue(f"{v!r} is not a whole number")
    return int(x)


def num_text(x: float) -> str:
    """``4.0`` → ``"4"``, ``0.5`` → ``"0.5"``."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def to_text(v: Any) -> str:
    if isinstance(v, (bool, dict, list)):
        raise BadValue(f"{v!r} is not text")
    return v if isinstance(v, str) else num_text(v)


def truthy(v: Any) -> bool:
    """A lenient on/off: blank or unreadable is off."""
    try:
        return False if blank(v) else to_bool(v)
    except BadValue:
        return False


def same(a: Any, b: Any) -> bool:
    """Equal as values, whatever their spelling (``"2"`` and ``2.0``)."""
    if a == b:
        return True
    try:
        return to_float(a) == to_float(b)
    except BadValue:
        return str(a).strip() == str(b).strip()


def is_off(value: Any, off: Any) -> bool:
    """Whether ``value`` means "off" for an option whose off value is ``off``."""
    if blank(value) or value is False:
        return True
    if off is None:
        return False
    try:
        if isinstance(off, bool):
            return to_bool(value) == off
        if isinstance(off, (int, float)):
            return to_float(value) == float(off)
    except BadValue:
        return False
    return str(value).strip().lower() == str(off).lower()


_SIGNS = {"ge": "≥", "le": "≤", "gt": ">", "lt": "<"}
_OK = {"ge": lambda a, b: a >= b, "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "lt": lambda a, b: a < b}


def check_bounds(info: SettingInfo, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    for name, ok in _OK.items():
        limit = getattr(info, name)
        if limit is not None and not ok(value, limit):
            raise BadValue(f"{num_text(value)} is out of range for {info.dotted} (must be {_SIGNS[name]} {num_text(limit)})")


def by_type(info: SettingInfo, v: Any) -> Any:
    """A kohya value as the setting's type, within its bounds. Raises BadValue."""
    if v is None and info.optional:
        return None
    if info.type == "bool":
        out: Any = to_bool(v)
    elif info.type == "int":
        out = to_int(v)
    elif info.type == "float":
        out = to_float(v)
    elif info.type == "str":
        out = to_text(v)
    else:
        if v not in info.choices:
            raise BadValue(f"{v!r} is not one of {', '.join(info.choices)}")
        out = v
    check_bounds(info, out)
    return out


def convert(info: SettingInfo, raw: Any) -> Converted:
    """A kohya value through the setting's declared converter (default: by type).
    Raises BadValue or NotAvailable."""
    value = info.convert(raw) if info.convert is not None else raw
    note = None
    if isinstance(value, Converted):
        value, note = value.value, value.note
    return Converted(by_type(info, value), note)


def override_value(info: SettingInfo | None, value: Any, raw: str) -> Any:
    """A ``--set`` value (parsed as TOML where it parses) for the setting it names:
    text settings take the text as typed, float settings take whole numbers."""
    if info is None:
        return value
    if info.type == "str" and not isinstance(value, str):
        return raw
    if info.type == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


# --------------------------------------------------------------------------- converters of kohya values


def optimizer(v: Any) -> Converted:
    from loratui.engine.registries import OPTIMIZERS, optimizer_from_text

    opt, why = optimizer_from_text(v)
    if opt is None:
        name = str(v).strip()
        raise NotAvailable(name, f"loratui has no {name} optimizer; written as given so training refuses until you choose one of: "
                           + ", ".join(OPTIMIZERS))
    return Converted(opt.name, f"{v!r} imported as {opt.name}: {why}" if why else None)


def scheduler(v: Any) -> str:
    from loratui.engine.registries import SCHEDULERS, scheduler_from_text

    s = scheduler_from_text(v)
    if s is None:
        raise NotAvailable(str(v).strip(), "loratui has no such scheduler; written as given so training refuses until you choose one of: "
                           + ", ".join(SCHEDULERS))
    return s.name


_PRECISION_SPELLINGS = {"fp32": "float", "float32": "float", "float16": "fp16", "bfloat16": "bf16"}


def mixed_precision(v: Any) -> str:
    from loratui.engine.registries import MIXED_PRECISIONS

    t = str(v).strip().lower()
    t = {"fp32": "no", "float": "no", "float32": "no", "none": "no", "": "no"}.get(t, _PRECISION_SPELLINGS.get(t, t))
    if t not in MIXED_PRECISIONS:
        raise NotAvailable(str(v).strip(), "loratui trains in no, fp16 or bf16 mixed precision; written as given so training refuses until changed")
    return t


def save_precision(v: Any) -> str:
    from loratui.engine.registries import SAVE_PRECISIONS

    t = str(v).strip().lower()
    t = _PRECISION_SPELLINGS.get(t, t)
    if t not in SAVE_PRECISIONS:
        raise BadValue(f"{v!r} is not fp16, bf16 or float")
    return t


def caption_extension(v: Any) -> Converted:
    ext = str(v).strip()
    ext = ext if ext.startswith(".") else "." + ext
    note = None
    if "none" in ext.lower() or "foldername" in ext.lower():
        note = f"{v!r}: no captions will be found, so each concept folder's name is the caption (as in kohya_ss)"
    return Converted(ext, note)


def args_text(v: Any) -> str:
    """``["a=1", "b=2"]`` or ``"a=1  b=2"`` → ``"a=1 b=2"``."""
    text = " ".join(str(x) for x in v) if isinstance(v, list) else str(v)
    return " ".join(text.split())


def trigger_words(v: Any) -> Converted:
    text = to_text(v)
    note = None
    if not blank(text):
        note = ("imported as output.trigger_words (written as modelspec.trigger_phrase in the LoRA); "
                "clear it there if it is a comment rather than trigger words")
    return Converted(text, note)


def token_length(v: Any) -> int:
    """sd-scripts' --max_token_length: 75 (unset), 150 or 225."""
    if blank(v):
        return 75
    n = to_int(v)
    if n not in (75, 150, 225):
        raise BadValue(f"{v!r} is not 75, 150 or 225")
    return n


# -- samples: sampler and log_with names as sd-scripts writes them (any case)
def lower_text(v: Any) -> str:
    return to_text(v).strip().lower()


def sample_prompts(v: Any) -> str:
    from loratui.engine.samples.prompts import imported_prompts

    return imported_prompts(to_text(v))


def dynamo_backend(v: Any) -> str:
    """kohya_ss / accelerate write ``"no"`` for "no torch.compile": the default backend
    (unused while optimization.torch_compile is off)."""
    text = to_text(v).strip().lower()
    return "inductor" if text in ("", "no", "none") else text
