"""Sample prompts as sd-scripts reads them (``--sample_prompts``).

* ``.txt``: one prompt a line; blank lines and lines starting with ``#`` are
  skipped; options after the prompt: ``--n`` negative prompt, ``--w`` / ``--h``
  size, ``--d`` seed, ``--l`` CFG scale, ``--s`` steps, ``--g`` guidance (Flux),
  ``--ss`` sampler.
* ``.toml``: a ``[prompt]`` table of defaults with ``[[prompt.subset]]`` entries.
* ``.json``: a list of prompt strings (parsed like a ``.txt`` line) or tables.

Tables use sd-scripts' keys: ``prompt``, ``negative_prompt``, ``width``,
``height``, ``seed``, ``scale`` (or ``cfg_scale``), ``sample_steps``,
``guidance_scale``, ``sample_sampler``.

Where sd-scripts logs and skips an option it cannot read, loratui refuses the
file with the file and line named: a typo would otherwise silently change every
sample of a long run. No torch here.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

PROMPT_SUFFIXES = (".txt", ".toml", ".json")
# sd-scripts' defaults (library/train_util.py sample_image_inference)
DEFAULT_STEPS = 30
DEFAULT_SCALE = 7.5
# first line of the prompt file an sd-scripts export writes for prompts typed in a profile: import reads them back in place
EXPORT_MARKER = "# sample prompts typed in a loratui profile (loratui reads them back in place on import)"


class PromptError(ValueError):
    """A prompt file or text that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class SamplePrompt:
    prompt: str
    negative_prompt: str = ""
    width: int | None = None  # None: the training resolution
    height: int | None = None
    seed: int | None = None  # None: a seed from the prompt's index (sd-scripts: random)
    scale: float = DEFAULT_SCALE  # CFG
    sample_steps: int = DEFAULT_STEPS
    guidance_scale: float | None = None  # distilled guidance (Flux)
    sampler: str | None = None  # None: output.sample_sampler
    index: int = 0  # position in the list: the _NN_ of the file name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(v: str) -> int:
    if not re.fullmatch(r"\d+", v):
        raise ValueError("a whole number")
    return int(v)


def _float(v: str) -> float:
    if not re.fullmatch(r"\d+(\.\d*)?|\.\d+", v):
        raise ValueError("a number")
    return float(v)


# option -> (field, reader); longest first so that "ss" is not read as "s"
_OPTIONS: dict[str, tuple[str, Any]] = {
    "ss": ("sampler", str),
    "n": ("negative_prompt", str),
    "w": ("width", _int),
    "h": ("height", _int),
    "d": ("seed", _int),
    "l": ("scale", _float),
    "s": ("sample_steps", _int),
    "g": ("guidance_scale", _float),
}
_TABLE_KEYS = {
    "prompt": ("prompt", str), "negative_prompt": ("negative_prompt", str), "width": ("width", int),
    "height": ("height", int), "seed": ("seed", int), "scale": ("scale", float), "cfg_scale": ("scale", float),
    "sample_steps": ("sample_steps", int), "guidance_scale": ("guidance_scale", float),
    "sample_sampler": ("sampler", str), "enum": None, "subset": None,
}


def _checked(p: SamplePrompt, where: str) -> SamplePrompt:
    from loratui.engine.samples.samplers import SAMPLERS, canonical_sampler

    if not p.prompt.strip():
        raise PromptError(f"{where}: the prompt is empty")
    for name in ("width", "height"):
        v = getattr(p, name)
        if v is not None and not 64 <= v <= 4096:
            raise PromptError(f"{where}: --{name[0]} {v} is out of range; use 64 to 4096 pixels")
    if not 1 <= p.sample_steps <= 1000:
        raise PromptError(f"{where}: --s {p.sample_steps} is out of range; use 1 to 1000 steps")
    if p.sampler is not None:
        name = canonical_sampler(p.sampler)
        if name is None:
            raise PromptError(f"{where}: --ss {p.sampler!r} is not a sampler; use one of {', '.join(SAMPLERS)}")
        p = replace(p, sampler=name)
    return p


def parse_line(line: str, where: str = "prompt", index: int = 0) -> SamplePrompt:
    """One ``.txt`` line: the prompt, then `` --x value`` options."""
    head, *opts = (" " + line.strip()).split(" --")
    values: dict[str, Any] = {"prompt": head.strip(), "index": index}
    for opt in opts:
        if not opt.strip():
            continue
        key, _, value = opt.strip().partition(" ")
        spec = _OPTIONS.get(key.lower())
        if spec is None:
            known = " ".join(f"--{k}" for k in _OPTIONS)
            raise PromptError(f"{where}: unknown option --{key}; the options are {known}")
        field, read = spec
        value = value.strip()
        if not value:
            raise PromptError(f"{where}: --{key} needs a value")
        try:
            values[field] = read(value)
        except ValueError as exc:
            raise PromptError(f"{where}: --{key} {value!r} is not {exc}") from None
    return _checked(SamplePrompt(**values), where)


def _from_table(d: Any, where: str, index: int) -> SamplePrompt:
    if isinstance(d, str):
        return parse_line(d, where, index)
    if not isinstance(d, dict):
        raise PromptError(f"{where}: expected a prompt string or a table, found {type(d).__name__}")
    values: dict[str, Any] = {"index": index}
    for k, v in d.items():
        if k not in _TABLE_KEYS:
            raise PromptError(f"{where}: unknown key {k!r}; the keys are {', '.join(k for k, s in _TABLE_KEYS.items() if s)}")
        spec = _TABLE_KEYS[k]
        if spec is None:
            continue
        field, typ = spec
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, typ) or isinstance(v, bool):
            raise PromptError(f"{where}: {k} = {v!r} is not {'text' if typ is str else 'a ' + typ.__name__}")
        values[field] = v
    if "prompt" not in values:
        raise PromptError(f"{where}: no prompt")
    return _checked(SamplePrompt(**values), where)


def parse_text(text: str, source: str = "prompts") -> list[SamplePrompt]:
    """``.txt`` lines (also prompts typed in the form, one a line)."""
    out: list[SamplePrompt] = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        out.append(parse_line(s, f"{source}, line {n}", len(out)))
    return out


def load_prompt_file(path: str | Path) -> list[SamplePrompt]:
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in PROMPT_SUFFIXES:
        raise PromptError(f"{path}: a prompt file is a .txt, .toml or .json file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PromptError(f"{path}: no such prompt file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    if suffix == ".txt":
        return parse_text(text, str(path))
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PromptError(f"{path}: is not valid TOML ({exc})") from None
        base = data.get("prompt")
        if not isinstance(base, dict) or not isinstance(base.get("subset"), list):
            raise PromptError(f"{path}: expected a [prompt] table with [[prompt.subset]] entries, as sd-scripts reads")
        defaults = {k: v for k, v in base.items() if k != "subset"}
        return [_from_table({**defaults, **s} if isinstance(s, dict) else s, f"{path}, [[prompt.subset]] {i + 1}", i)
                for i, s in enumerate(base["subset"])]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptError(f"{path}: is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, list):
        raise PromptError(f"{path}: expected a JSON list of prompts")
    return [_from_table(d, f"{path}, item {i + 1}", i) for i, d in enumerate(data)]


def looks_like_file(value: str) -> bool:
    v = value.strip()
    return "\n" not in v and v.lower().endswith(PROMPT_SUFFIXES)


def load_prompts(value: str, base_dir: str | Path | None = None) -> list[SamplePrompt]:
    """``output.sample_prompts``: a prompt file (.txt/.toml/.json), or prompts typed
    in place, one a line. A relative file is looked up next to ``base_dir``."""
    if not value.strip():
        return []
    if looks_like_file(value):
        path = Path(value.strip()).expanduser()
        if not path.is_absolute() and base_dir is not None and not path.exists():
            path = Path(base_dir) / path
        return load_prompt_file(path)
    return parse_text(value, "output.sample_prompts")


def imported_prompts(value: str) -> str:
    """A kohya/sd-scripts ``sample_prompts`` value: the prompts themselves where it
    names a prompt file loratui's export wrote, else the value as given."""
    if looks_like_file(value):
        try:
            text = Path(value.strip()).expanduser().read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError):
            return value
        first, _, rest = text.partition("\n")
        if first.strip() == EXPORT_MARKER:
            return rest.strip()
    return value
