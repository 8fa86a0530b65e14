"""Validation: schema problems as :class:`~loratui.engine.problems.Problem` records.

``ProfileError.problems`` is a list of problems; ``str(problem)`` is the line the
CLI prints (``file:section.key: message``). The form marks ``problem.key``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from loratui.engine.problems import Problem, error, warning
from loratui.engine.schema.sections import SECTION_TITLES, Profile


class ProfileError(Exception):
    """A profile could not be used. ``problems`` holds one :class:`Problem` per problem."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


_SIGNS = {"greater_than_equal": "≥", "less_than_equal": "≤", "greater_than": ">", "less_than": "<"}
_WANTS = {"int": "a whole number", "float": "a number", "bool": "true or false", "string": "a string (in quotes)", "model": "a table"}


def describe_error(err: dict[str, Any]) -> str:
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown setting (check the spelling; `loratui check` lists valid keys)"
    if kind == "literal_error":
        return f"{value!r} is not one of: {ctx.get('expected', '')}"
    if kind in _SIGNS:
        limit = next(iter(ctx.values()))
        return f"{value!r} is out of range: must be {_SIGNS[kind]} {limit}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        want = kind.split("_")[0]
        return f"{value!r} is not {_WANTS.get(want, want)}"
    if kind == "missing":
        return "is required"
    return err["msg"]


def problems_from(exc: ValidationError, source: str) -> list[Problem]:
    out: list[Problem] = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "cross_field":
            out += [error(f"{loc}.{key}", msg, source=source) for key, msg in err["ctx"]["problems"]]
            continue
        if len(err["loc"]) == 1 and err["type"] == "extra_forbidden":
            out.append(error(loc, f"unknown section (sections: {', '.join(SECTION_TITLES)})", source=source))
            continue
        hint = ""
        if loc == "network.network_type" and err["type"] == "literal_error":
            hint = (
                f"loratui trains LoRA, LoCon and the LyCORIS types; {err.get('input')!r} cannot be trained here yet."
                " Set network.network_type to \"lora\" or \"locon\" (or a LyCORIS type) to train"
            )
        out.append(error(loc, describe_error(err), hint, source=source, value=err.get("input")))
    return out


def profile_from_dict(data: dict[str, Any], source: str = "<profile>") -> Profile:
    """Validate a nested dict. Raises ProfileError with every problem at once."""
    if not isinstance(data, dict):
        raise ProfileError([error("", "a profile must be a table of sections", source=source)])
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(problems_from(exc, source)) from None


def profile_warnings(p: Profile) -> list[Problem]:
    """Things that are allowed but probably not what the user wants (severity warning)."""
    out: list[Problem] = []
    n = p.network
    if n.network_alpha > n.network_dim:
        out.append(warning(
            "network.network_alpha",
            f"{n.network_alpha:g} is larger than the rank {n.network_dim}; "
            "the LoRA is scaled up by alpha/rank and may overcook (alpha ≤ rank is usual)",
        ))
    if n.network_type == "locon" and n.conv_alpha > n.conv_dim:
        out.append(warning("network.conv_alpha", f"{n.conv_alpha:g} is larger than conv_dim {n.conv_dim}"))
    from loratui.engine.schema.lycoris_checks import lycoris_warnings  # -- lycoris

    out += [warning(f"network.{key}", msg) for key, msg in lycoris_warnings(n)]
    for dotted in ("model.base_model", "model.vae", "dataset.train_data_dir", "dataset.reg_data_dir", "output.output_dir", "output.output_name"):
        value = p.get(dotted)
        if value and (" " in value or not value.isascii()):
            out.append(warning(dotted, f"{value!r} contains spaces or non-ASCII characters; some other tools trip on such paths"))
    o = p.optimization
    from loratui.engine.registries import OPTIMIZERS

    if OPTIMIZERS[o.optimizer].adaptive_lr and o.learning_rate < 0.1:
        out.append(warning("optimization.learning_rate", f"{o.optimizer} expects a learning rate around 1.0, not {o.learning_rate:g}"))
    return out
