"""How a setting is declared, and how the declarations are read back.

A setting is a pydantic field made by :func:`setting`: its type (the annotation),
default, bounds, label, help, unit, widget kind, whether it must be set before
training, its kohya_ss GUI name (the key in the GUI's ``.json``), its sd-scripts
argument name (``--config_file`` key / CLI flag), where it goes in an sd-scripts
``--dataset_config``, and the converter that reads kohya's messy values.
:func:`settings` turns the declarations into :class:`SettingInfo` records, which
the TOML loader, ``--set``, the form, kohya import/export and the metadata use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

SAME = "same as kohya"  # sd_scripts=SAME: the sd-scripts argument has the GUI's name


def setting(
    default: Any,
    help: str,
    *,
    kohya: str | None = None,
    sd_scripts: str | None = SAME,
    sd_dataset: tuple[str, str] | None = None,
    convert: Callable[[Any], Any] | None = None,
    kohya_blank: str | None = None,
    sd_omit: Any = None,
    special: bool | str = False,
    ss: bool | str = False,
    label: str | None = None,
    required: bool = False,
    unit: str | None = None,
    kind: str | None = None,
    advanced: bool = False,
    ge: float | None = None,
    le: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
) -> Any:
    """Declare one setting.

    * ``kohya``: its key in a kohya_ss GUI ``.json``; ``sd_scripts``: its sd-scripts
      argument (default: the same name; None: sd-scripts has none, so export keeps it
      as a ``# loratui:`` comment); ``sd_dataset``: (``"general"`` or ``"dataset"``, key)
      where an sd-scripts ``--dataset_config`` holds it.
    * ``convert``: reads a kohya value (see :mod:`loratui.engine.schema.coerce`); the
      result is then checked against the type and bounds. Default: by type.
    * ``kohya_blank``: why an empty kohya value is ignored (default: the default is kept;
      text settings take ``""`` as given). ``sd_omit``: the value export leaves out
      (sd-scripts' own default, e.g. ``clip_skip`` 1).
    * ``ss``: written into a saved LoRA's metadata as ``ss_<sd-scripts name>`` (or the key
      given), in sd-scripts' format: unset / ``sd_omit`` → None, float settings as floats.
    * ``special``: kohya import and export map it by hand (engine/kohya), not one to one;
      ``"import"`` or ``"export"``: only that direction is by hand.
    * ``kind`` refines the widget/validation for strings: ``dir``, ``file``, ``path``
      (file or dir) or ``model`` (file, dir or Hub repo id). ``advanced`` settings are
      shown folded in the form. ``required``: must be set before training.
    """
    extra = {
        "kohya": kohya, "sd_scripts": kohya if sd_scripts == SAME else sd_scripts, "sd_dataset": sd_dataset,
        "convert": convert, "kohya_blank": kohya_blank, "sd_omit": sd_omit, "special": special,
        "ss": (ss if isinstance(ss, str) else f"ss_{kohya if sd_scripts == SAME else sd_scripts}") if ss else None,
        "label": label, "required": required, "unit": unit, "kind": kind, "advanced": advanced,
    }
    return Field(default, description=help, ge=ge, le=le, gt=gt, lt=lt, json_schema_extra=extra)


class _Section(BaseModel):
    # defer_build: a section's own validator is built when first used on its own;
    # loading a profile needs only the Profile's (the UI loads one before its first frame)
    model_config = ConfigDict(strict=True, extra="forbid", validate_assignment=True, defer_build=True)

    def checks(self) -> list[tuple[str, str]]:
        """(key, message) for problems that involve more than one field."""
        return []

    @model_validator(mode="after")
    def _cross_checks(self) -> "_Section":
        problems = self.checks()
        if problems:
            # the (key, message) pairs travel in the error's context: nobody re-parses text
            text = "\n".join(f"{key}: {msg}" for key, msg in problems)
            raise PydanticCustomError("cross_field", "{text}", {"text": text, "problems": problems})
        return self


@dataclass(frozen=True)
class SettingInfo:
    section: str
    key: str
    type: str  # "bool" | "int" | "float" | "str" | "choice"
    default: Any
    help: str
    kohya: str | None  # the kohya_ss GUI .json key
    sd_scripts: str | None  # the sd-scripts argument
    sd_dataset: tuple[str, str] | None  # (dataset_config level, key)
    convert: Callable[[Any], Any] | None
    kohya_blank: str | None
    sd_omit: Any
    special: bool | str  # False, True (kohya import and export map it by hand), "import" or "export"
    ss: str | None  # its ss_* metadata key, when the metadata holds it as is
    label: str
    required: bool
    unit: str | None
    kind: str | None  # "dir" | "file" | "model" | "path" | None
    choices: tuple[str, ...]
    optional: bool
    advanced: bool
    ge: float | None
    le: float | None
    gt: float | None
    lt: float | None

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.key}"


def _type_info(annotation: Any) -> tuple[str, tuple[str, ...], bool]:
    optional = False
    args = get_args(annotation)
    if args and type(None) in args:
        optional = True
        annotation = next(a for a in args if a is not type(None))
    if get_origin(annotation) is Literal:
        return "choice", tuple(get_args(annotation)), optional
    return {bool: "bool", int: "int", float: "float", str: "str"}[annotation], (), optional


def _bound(field: Any, name: str) -> float | None:
    for m in field.metadata:
        if hasattr(m, name):
            return getattr(m, name)
    return None


def choice(names: Any) -> Any:
    """``Literal[...]`` of a registry's names (the annotation of a choice setting)."""
    return Literal[tuple(names)]  # type: ignore[valid-type]


def section_infos(section: str, cls: type[BaseModel]) -> list[SettingInfo]:
    out = []
    for key, field in cls.model_fields.items():
        typ, choices, optional = _type_info(field.annotation)
        extra = field.json_schema_extra or {}
        out.append(
            SettingInfo(
                section=section, key=key, type=typ, default=field.default, help=field.description or "",
                kohya=extra.get("kohya"), sd_scripts=extra.get("sd_scripts"), sd_dataset=extra.get("sd_dataset"),
                convert=extra.get("convert"), kohya_blank=extra.get("kohya_blank"), sd_omit=extra.get("sd_omit"),
                special=extra.get("special") or False, ss=extra.get("ss"), label=extra.get("label") or key.replace("_", " ").capitalize(),
                required=bool(extra.get("required")), unit=extra.get("unit"), kind=extra.get("kind"),
                choices=choices, optional=optional, advanced=bool(extra.get("advanced")),
                ge=_bound(field, "ge"), le=_bound(field, "le"), gt=_bound(field, "gt"), lt=_bound(field, "lt"),
            )
        )
    return out
