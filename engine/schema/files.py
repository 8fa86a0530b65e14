"""Profiles as TOML files: load (with ``--set`` overrides), save keeping the
user's comments and layout (tomlkit), compare, expand paths."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

from loratui.engine.problems import Problem, error
import loratui.engine.schema.coerce as coerce
from loratui.engine.schema.sections import Profile, setting_info, settings
from loratui.engine.schema.validation import ProfileError, profile_from_dict


def _read(path: Path) -> dict[str, Any]:
    source = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ProfileError([error("", "no such file", source=source)]) from None
    except IsADirectoryError:
        raise ProfileError([error("", "is a folder, not a profile .toml file", source=source)]) from None
    except OSError as exc:
        raise ProfileError([error("", f"cannot be read ({exc.strerror})", source=source)]) from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProfileError([error("", "is not a text file (a profile is TOML text)", source=source)]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError([error("", f"is not valid TOML: {exc}", source=source)]) from None


def load_profile(path: str | Path, overrides: list[str] | None = None) -> Profile:
    """Read, apply ``--set`` overrides and validate a TOML profile. A problem with a
    value given by ``--set`` names that ``--set`` item, not the file."""
    path = Path(path)
    data = _read(path)
    by_key = _apply(data, overrides) if overrides else {}
    try:
        return profile_from_dict(data, str(path))
    except ProfileError as exc:
        raise ProfileError([_blame(p, by_key) for p in exc.problems]) from None


def _blame(problem: Problem, by_key: dict[str, str]) -> Problem:
    item = by_key.get(problem.key)
    return problem.with_source(f"--set {item}") if item is not None else problem


def parse_override(item: str) -> tuple[str, str, Any]:
    """``section.key=value`` → (section, key, value). The value is read as a
    TOML value when it parses as one (16, 1e-4, true, "x"), else as a string."""
    if "=" not in item:
        raise ProfileError([error("", "expected section.key=value", source=f"--set {item}")])
    dotted, raw = item.split("=", 1)
    dotted = dotted.strip()
    if dotted.count(".") != 1:
        raise ProfileError([error("", "the key must be section.key, e.g. network.network_dim=16", source=f"--set {item}")])
    section, key = dotted.split(".")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` items to ``data`` (in place, and returned)."""
    _apply(data, overrides)
    return data


def _apply(data: dict[str, Any], overrides: list[str]) -> dict[str, str]:
    """Apply ``--set`` items to ``data``; returns {dotted key: the item that set it}."""
    by_key: dict[str, str] = {}
    for item in overrides:
        section, key, value = parse_override(item)
        try:
            info = setting_info(f"{section}.{key}")
        except KeyError:
            info = None
        value = coerce.override_value(info, value, item.split("=", 1)[1])
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise ProfileError([error(section, "is not a table of settings", source=f"--set {item}")])
        table[key] = value
        by_key[f"{section}.{key}"] = item
    return by_key


# --------------------------------------------------------------------------- save


def _header_lines(header: str | None) -> list[str]:
    return [f"# {line}".rstrip() for line in header.splitlines()] if header else []


def profile_to_toml(p: Profile, header: str | None = None, existing: str | None = None) -> str:
    """The profile as TOML text. With ``existing`` (the file's current text), that
    document is updated in place: its comments, key order and layout stay; changed
    values are replaced, unset ones removed, and settings the file did not hold are
    appended to their section when they differ from the default. A new file holds
    every setting."""
    import tomlkit

    doc = None
    defaults: dict[str, dict[str, Any]] | None = None
    if existing is not None:
        try:
            doc = tomlkit.parse(existing)
            defaults = Profile().to_dict()
        except Exception:  # tomlkit raises its own ParseError subclasses; a broken file is rewritten
            doc = None
    if doc is None:
        doc = tomlkit.document()
        for line in _header_lines(header):
            doc.add(tomlkit.comment(line.removeprefix("# ").removeprefix("#")))
        if header:
            doc.add(tomlkit.nl())
    try:
        _update(doc, p.to_dict(), defaults)
        text = tomlkit.dumps(doc)
        if profile_from_dict(tomllib.loads(text)) == p:
            return text
    except Exception:  # a layout tomlkit cannot edit in place: fall through to a fresh file
        pass
    if existing is None:
        raise RuntimeError("the profile could not be written as TOML")
    return profile_to_toml(p, header)


def _same_value(old: Any, new: Any) -> bool:
    if isinstance(old, bool) or isinstance(new, bool):
        return old is new
    if isinstance(old, (int, float)) and isinstance(new, (int, float)):
        return old == new
    return type(old) is type(new) and old == new


def _update(doc: Any, values: dict[str, dict[str, Any]], defaults: dict[str, dict[str, Any]] | None) -> None:
    import tomlkit

    for name in list(doc.keys()):
        if name not in values:
            del doc[name]  # not a section (the profile validated, so the file changed meanwhile)
    for section, table_values in values.items():
        if section not in doc or not isinstance(doc[section], dict):
            if section in doc:
                del doc[section]
            new = {k: v for k, v in table_values.items() if defaults is None or not _same_value(defaults[section].get(k), v)}
            if new:
                doc.add(section, tomlkit.table())
            else:
                continue
        table = doc[section]
        for key in list(table.keys()):
            if key not in table_values:
                del table[key]
        for key, value in table_values.items():
            if key in table:
                old = table[key]
                if not _same_value(old.unwrap() if hasattr(old, "unwrap") else old, value):
                    table[key] = value
            elif defaults is None or not _same_value(defaults[section].get(key), value):
                table[key] = value  # appended (works for tables, inline tables and dotted keys)


def save_profile(p: Profile, path: str | Path, header: str | None = None) -> Path:
    """Write atomically (temp file in the same folder, fsync, rename). An existing
    file keeps its comments and layout; ``header`` heads a new file."""
    from loratui.engine.fsutil import atomic_write_text

    path = Path(path)
    try:
        existing: str | None = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        existing = None
    atomic_write_text(path, profile_to_toml(p, header, existing))
    return path


def diff_profiles(a: Profile, b: Profile) -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every setting that differs."""
    out = []
    for s in settings():
        va, vb = a.get(s.dotted), b.get(s.dotted)
        if va != vb and not (isinstance(va, float) and isinstance(vb, float) and math.isclose(va, vb)):
            out.append((s.dotted, va, vb))
    return out


def resolve_paths(p: Profile) -> Profile:
    """A copy with ``~`` expanded in every path setting (files, folders, models)."""
    data = p.to_dict()
    for s in settings():
        if s.kind in ("dir", "file", "path", "model"):
            value = data[s.section].get(s.key)
            if isinstance(value, str) and value.startswith("~"):
                data[s.section][s.key] = str(Path(value).expanduser())
    return Profile.model_validate(data)


