"""Where the user's own things live, and the catalogue of profiles.

* the config folder (XDG: ``~/.config/loratui``; ``LORATUI_CONFIG_DIR`` overrides it)
  holds ``profiles/*.toml`` (the user's profiles), ``state.json`` (the last used
  profile) and ``keymap.toml`` (key remaps by binding id);
* bundled profiles ship in the ``profiles`` package and are read-only.

A user profile remembers the profile it was made from in its header comment
(``# based on: sd15-character``) so the UI can show what differs from it.

No torch, no textual: the UI imports this before its first frame.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from loratui.engine.fsutil import atomic_write_text
from loratui.engine.problems import error
from loratui.engine.schema import Profile, ProfileError, load_profile, save_profile

APP_NAME = "loratui"
ORIGIN_RE = re.compile(r"^#\s*based on:\s*(.+?)\s*$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,63}$")


def config_dir() -> Path:
    override = os.environ.get("LORATUI_CONFIG_DIR")
    if override:
        return Path(override)
    from platformdirs import user_config_dir

    return Path(user_config_dir(APP_NAME, appauthor=False))


def user_profiles_dir() -> Path:
    return config_dir() / "profiles"


def bundled_profiles_dir() -> Path:
    from loratui import profiles

    return Path(profiles.__file__).parent


def keymap_path() -> Path:
    return config_dir() / "keymap.toml"


def state_path() -> Path:
    return config_dir() / "state.json"


# --------------------------------------------------------------------------- state


def _read_state() -> dict:
    try:
        data = json.loads(state_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def last_profile() -> Path | None:
    """The profile opened last, if it still exists."""
    value = _read_state().get("last_profile")
    if isinstance(value, str) and value and Path(value).is_file():
        return Path(value)
    return None


def remember_last_profile(path: str | Path) -> None:
    state = _read_state()
    state["last_profile"] = str(Path(path).resolve())
    try:
        atomic_write_text(state_path(), json.dumps(state, indent=2) + "\n")
    except OSError:
        pass  # a read-only home must not stop anyone from training


def load_keymap() -> tuple[dict[str, str], list[str]]:
    """``{binding id: keys}`` from keymap.toml and the problems found in it.

    The file is ``[keys]`` then ``run.pause = "p"`` lines (ids as listed by the help screen)."""
    path = keymap_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, []
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return {}, [f"{path}: ignored, it cannot be read as TOML ({exc})"]
    keys = data.get("keys", {})
    out: dict[str, str] = {}
    problems: list[str] = []

    def walk(prefix: str, table: dict) -> None:
        for k, v in table.items():
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                walk(name, v)
            elif isinstance(v, str) and v.strip():
                out[name] = v.strip()
            else:
                problems.append(f"{path}: keys.{name}: expected a key string such as \"ctrl+r\"")

    if isinstance(keys, dict):
        walk("", keys)
    else:
        problems.append(f"{path}: [keys] must be a table")
    return out, problems


# --------------------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class ProfileEntry:
    name: str
    path: Path
    bundled: bool
    origin: str | None = None  # the profile it was made from

    @property
    def label(self) -> str:
        return self.name + ("" if not self.bundled else "  (bundled)")


def read_origin(path: str | Path) -> str | None:
    """The ``# based on: NAME`` line of a profile's header comment."""
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if not line.startswith("#"):
                    break
                m = ORIGIN_RE.match(line)
                if m:
                    return m.group(1)
    except (OSError, UnicodeDecodeError):
        pass
    return None


def _entries(folder: Path, bundled: bool) -> list[ProfileEntry]:
    try:
        files = sorted(folder.glob("*.toml"), key=lambda p: p.stem.lower())
    except OSError:
        return []
    return [ProfileEntry(p.stem, p, bundled, None if bundled else read_origin(p)) for p in files]


def bundled_profiles() -> list[ProfileEntry]:
    return _entries(bundled_profiles_dir(), True)


def user_profiles() -> list[ProfileEntry]:
    return _entries(user_profiles_dir(), False)


def list_profiles() -> list[ProfileEntry]:
    """The user's profiles first, then the bundled ones."""
    return user_profiles() + bundled_profiles()


def origin_name(entry: ProfileEntry) -> str:
    """How a profile made from ``entry`` names its origin: ``bundled/NAME`` or ``NAME``."""
    return f"bundled/{entry.name}" if entry.bundled else entry.name


def find_profile(name: str) -> ProfileEntry | None:
    """``bundled/NAME``: that bundled profile; ``NAME``: the user's profile, else a bundled one."""
    if name.startswith("bundled/"):
        name = name.removeprefix("bundled/")
        return next((e for e in bundled_profiles() if e.name == name), None)
    for e in list_profiles():
        if e.name == name:
            return e
    return None


def is_bundled(path: str | Path) -> bool:
    try:
        return Path(path).resolve().parent == bundled_profiles_dir().resolve()
    except OSError:
        return False


def check_name(name: str) -> str | None:
    """Why ``name`` cannot be a profile name, or None when it can."""
    if not name.strip():
        return "a profile needs a name"
    if not NAME_RE.match(name):
        return "use letters, digits, space, dot, dash or underscore (64 at most), starting with a letter or digit"
    return None


def new_name_problem(name: str, keep: Path | None = None) -> str | None:
    """Why ``name`` cannot be a new user profile (bad name, or taken by another file)."""
    problem = check_name(name)
    if problem:
        return problem
    path = user_profiles_dir() / f"{name}.toml"
    if path.exists() and (keep is None or path.resolve() != Path(keep).resolve()):
        return f"{name} exists already — choose another name"
    return None


def unique_name(base: str) -> str:
    taken = {e.name for e in user_profiles()}
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def save_user_profile(p: Profile, name: str, origin: str | None = None, *, overwrite: bool = True) -> Path:
    """Write ``p`` as the user profile ``name`` (atomically). Rewriting an existing
    profile keeps its comments and layout (engine.schema.save_profile)."""
    problem = check_name(name)
    if problem:
        raise ProfileError([error("", problem, source=f"profile name {name!r}")])
    path = user_profiles_dir() / f"{name}.toml"
    if path.exists() and not overwrite:
        raise ProfileError([error("", "a profile of that name exists already", source=str(path))])
    save_profile(p, path, header=profile_header(origin))
    return path


def profile_header(origin: str | None) -> str:
    lines = ["loratui training profile (TOML). `loratui check FILE` validates it."]
    if origin:
        lines.append(f"based on: {origin}")
    return "\n".join(lines)


def delete_user_profile(path: str | Path) -> None:
    path = Path(path)
    if is_bundled(path):
        raise ProfileError([error("", "bundled profiles cannot be deleted", source=str(path))])
    path.unlink()


def load_origin(name: str | None) -> Profile | None:
    """The profile named as an origin, when it still exists and is valid."""
    if not name:
        return None
    entry = find_profile(name)
    if entry is None:
        return None
    try:
        return load_profile(entry.path)
    except ProfileError:
        return None


# --------------------------------------------------------------------------- models folder (models branch)

MODEL_SUBFOLDERS = ("checkpoints", "vae", "lora", "text_encoders")


def default_models_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP_NAME, appauthor=False)) / "models"


def models_dir() -> Path:
    """The models folder (an app setting, in state.json): ``LORATUI_MODELS_DIR``,
    else the one chosen last, else ``<data dir>/models``. It holds ``checkpoints/``,
    ``vae/``, ``lora/`` and ``text_encoders/`` as kohya_ss and the WebUIs lay them out."""
    override = os.environ.get("LORATUI_MODELS_DIR")
    if override:
        return Path(override).expanduser()
    value = _read_state().get("models_dir")
    if isinstance(value, str) and value.strip():
        return Path(value).expanduser()
    return default_models_dir()


def set_models_dir(path: str | Path) -> Path:
    """Remember ``path`` as the models folder (state.json, atomically)."""
    state = _read_state()
    state["models_dir"] = str(Path(path).expanduser().resolve())
    atomic_write_text(state_path(), json.dumps(state, indent=2) + "\n")
    return Path(state["models_dir"])
