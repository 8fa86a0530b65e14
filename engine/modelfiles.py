"""Model files read without loading them: no torch here.

What a file is from its first bytes (``sniff``), a ``.safetensors`` header and
small tensors read with plain ``struct``, the globals and strings of a torch
pickle listed with ``pickletools`` (never executed), diffusers folders' JSON
configs and weight files, and where the Hugging Face cache keeps a repo. The
model inspection (:mod:`loratui.engine.models`) and the loader
(:mod:`loratui.engine.loading`) build on these.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

SAFETENSORS_EXT = (".safetensors", ".sft")
PICKLE_EXT = (".ckpt", ".pt", ".pth", ".bin")
_MAX_HEADER = 100 * 1024 * 1024


def format_size(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.0f} MB"
    if n >= 1e3:
        return f"{n / 1e3:.0f} kB"
    return f"{n} bytes"



# --------------------------------------------------------------------------- sniffing


def _sniff(path: Path) -> str:
    """What a file looks like from its first bytes."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return "unreadable"
    if not head:
        return "empty"
    if len(head) >= 9:
        n = struct.unpack("<Q", head[:8])[0]
        if 0 < n < _MAX_HEADER and head[8:9] == b"{":
            return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "pickle"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image:PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "image:JPEG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image:GIF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image:WebP"
    if head.startswith(b"BM"):
        return "image:BMP"
    if head.startswith(b"version https://git-lfs"):
        return "lfs"
    low = head.lower().lstrip()
    if low.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "html"
    if len(head) >= 8 and struct.unpack("<Q", head[:8])[0] >= _MAX_HEADER and path.suffix.lower() in SAFETENSORS_EXT:
        return "bad-safetensors"
    return "unknown"


def _sniff_problem(path: Path, what: str, sniff: str, size: int) -> str | None:
    name = str(path)
    if sniff == "unreadable":
        return f"{name}: cannot be read (permissions?). Make it readable or choose another {what}."
    if sniff == "empty":
        return f"{name} is empty (0 bytes): the download or copy failed. Download it again."
    if sniff.startswith("image:"):
        return (
            f"{name} is a {sniff[6:]} image, not a {what}. Point this setting at a .safetensors "
            f"or .ckpt model file, a diffusers folder or a Hub repo id."
        )
    if sniff == "lfs":
        return (
            f"{name} is a Git LFS pointer (a few bytes), not the model: run `git lfs pull` in its "
            f"repository, or download the file itself."
        )
    if sniff == "html":
        return (
            f"{name} is a web page, not a {what}: the download probably hit a login or error page. "
            f"Download it again (logged in if the model requires it)."
        )
    if sniff in ("unknown", "bad-safetensors"):
        return (
            f"{name} ({format_size(size)}) is not a model file this tool can read: expected a "
            f".safetensors or .ckpt checkpoint. If it should be one, it is damaged: download it again."
        )
    return None


# --------------------------------------------------------------------------- safetensors headers


@dataclass
class _Header:
    keys: dict[str, tuple[str, tuple[int, ...], tuple[int, int]]]  # name -> (dtype, shape, offsets)
    metadata: dict[str, str]
    data_start: int


def _read_safetensors_header(path: Path, size: int) -> tuple[_Header | None, str | None]:
    """(header, problem). Checks the header and that the file holds all the
    data it declares (a cut-off download fails here)."""
    name = str(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                return None, f"{name} is truncated ({size} bytes): download it again."
            n = struct.unpack("<Q", raw)[0]
            if n >= _MAX_HEADER:
                return None, f"{name} is not a valid .safetensors file (bad header). Download it again."
            if 8 + n > size:
                return None, (
                    f"{name} is truncated: the file is {format_size(size)} but its header alone "
                    f"needs {format_size(8 + n)}. The download was cut short; download it again."
                )
            blob = fh.read(n)
    except OSError as exc:
        return None, f"{name}: cannot be read ({exc.strerror or exc}). Check the path and permissions."
    try:
        hdr = json.loads(blob.decode("utf-8"))
        if not isinstance(hdr, dict):
            raise ValueError
    except (UnicodeDecodeError, ValueError):
        return None, f"{name} has a damaged .safetensors header. Download it again."
    meta = hdr.pop("__metadata__", None) or {}
    keys: dict[str, tuple[str, tuple[int, ...], tuple[int, int]]] = {}
    end = 0
    try:
        for k, v in hdr.items():
            offs = (int(v["data_offsets"][0]), int(v["data_offsets"][1]))
            keys[k] = (str(v["dtype"]), tuple(int(s) for s in v["shape"]), offs)
            end = max(end, offs[1])
    except (KeyError, TypeError, ValueError, IndexError):
        return None, f"{name} has a damaged .safetensors header. Download it again."
    expected = 8 + n + end
    if expected > size:
        return None, (
            f"{name} is truncated: it is {format_size(size)} but should be {format_size(expected)} "
            f"({expected - size:,} bytes missing). The download was cut short; download it again."
        )
    if not isinstance(meta, dict):
        meta = {}
    return _Header(keys, {str(k): str(v) for k, v in meta.items()}, 8 + n), None


def _read_tensor(path: Path, hdr: _Header, key: str) -> list[float] | None:
    """Read one small float tensor from a safetensors file (no torch)."""
    dtype, shape, (a, b) = hdr.keys[key]
    fmt = {"F32": "f", "F16": "e", "F64": "d"}.get(dtype)
    with open(path, "rb") as fh:
        fh.seek(hdr.data_start + a)
        raw = fh.read(b - a)
    if dtype == "BF16":
        vals = [struct.unpack("<f", b"\x00\x00" + raw[i : i + 2])[0] for i in range(0, len(raw), 2)]
        return vals
    if fmt is None:
        return None
    count = (b - a) // struct.calcsize(fmt)
    return list(struct.unpack(f"<{count}{fmt}", raw))


# --------------------------------------------------------------------------- pickle scanning

# Globals a plain tensor checkpoint may reference. Anything else means the file
# needs code to unpickle, and we refuse it.
_SAFE_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "collections.defaultdict")
_SAFE_GLOBALS = {
    "builtins.set",
    "builtins.frozenset",
    "builtins.bytearray",
    "builtins.complex",
    "builtins.slice",
    "_codecs.encode",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
}
_NUMPY_DTYPE_RE = re.compile(r"^numpy\.dtypes\.\w+DType$")
_UNSAFE_TORCH = ("torch.load", "torch.hub", "torch.ops", "torch._C._", "torch.jit", "torch.package")


def _global_is_safe(name: str) -> bool:
    if name in _SAFE_GLOBALS or _NUMPY_DTYPE_RE.match(name):
        return True
    if name.startswith(_UNSAFE_TORCH):
        return False
    return name.startswith(_SAFE_GLOBAL_PREFIXES)


def _py3_name(name: str) -> str:
    # Protocol-2 pickles use Python 2 module names for builtins.
    for old, new in (("__builtin__.", "builtins."), ("copy_reg.", "copyreg.")):
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _scan_pickle_stream(fh) -> tuple[list[str], list[str]]:
    """Globals referenced and strings pushed by one pickle, read with
    pickletools (nothing is executed)."""
    globals_: list[str] = []
    strings: list[str] = []
    memo: dict[int, str] = {}
    recent: list[str | None] = []
    next_memo = 0
    for op, arg, _pos in pickletools.genops(fh):
        name = op.name
        if name == "GLOBAL":
            globals_.append(_py3_name(str(arg).replace(" ", ".")))
            recent.append(None)
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"):
            s = arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)
            strings.append(s)
            recent.append(s)
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            if recent and recent[-1] is not None:
                memo[int(arg)] = recent[-1]
        elif name == "MEMOIZE":
            if recent and recent[-1] is not None:
                memo[next_memo] = recent[-1]
            next_memo += 1
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            recent.append(memo.get(int(arg)))
        elif name == "STACK_GLOBAL":
            mod, qual = (recent[-2], recent[-1]) if len(recent) >= 2 else (None, None)
            globals_.append(_py3_name(f"{mod}.{qual}") if mod and qual else "<unresolved STACK_GLOBAL>")
            recent.append(None)
        else:
            recent.append(None)
        if len(recent) > 64:
            del recent[:-8]
    return globals_, strings


def _scan_torch_pickle(path: Path, sniff: str) -> tuple[list[str], list[str], str | None]:
    """(globals, strings, problem) of a torch checkpoint without unpickling it."""
    name = str(path)
    try:
        if sniff == "zip":
            if not zipfile.is_zipfile(path):
                return [], [], f"{name} is truncated or damaged (incomplete zip archive). Download it again."
            with zipfile.ZipFile(path) as zf:
                pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
                if not pkl:
                    return [], [], f"{name} is a zip archive but not a PyTorch checkpoint."
                data = zf.read(pkl[0])
            return (*_scan_pickle_stream(io.BytesIO(data)), None)
        globals_: list[str] = []
        strings: list[str] = []
        with open(path, "rb") as fh:
            # Legacy format: magic number, protocol, sys info, then the object.
            for _ in range(4):
                g, s = _scan_pickle_stream(fh)
                globals_ += g
                strings += s
        return globals_, strings, None
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
        return [], [], f"{name} is truncated or damaged ({exc}). Download it again."


def _ckpt_code_problem(path: Path, unsafe: list[str]) -> str:
    shown = ", ".join(sorted(set(unsafe))[:3])
    return (
        f"{path} refused: it needs code to unpickle ({shown}), and a pickled checkpoint can run any "
        f"code on your machine when it is opened. loratui opens .ckpt files with "
        f"torch.load(weights_only=True), which only rebuilds plain tensors. Use the .safetensors "
        f"version of this model, or convert it with a tool you trust in a sandbox."
    )



_PATHLIKE_RE = re.compile(r"^(/|~|\.{1,2}[/\\]|[A-Za-z]:[/\\])")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9_.\-]+$")
_FILE_EXT = SAFETENSORS_EXT + PICKLE_EXT + (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".yaml", ".json", ".gguf")


def looks_like_repo_id(spec: str) -> bool:
    return bool(_REPO_ID_RE.match(spec)) and ".." not in spec and not spec.lower().endswith(_FILE_EXT)


def _hub_cache_dir() -> str | None:
    # Read at call time (huggingface_hub reads it once at import).
    return os.environ.get("HF_HUB_CACHE") or None


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_cached_file(repo_id: str, filename: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return None
    try:
        got = try_to_load_from_cache(repo_id, filename, cache_dir=_hub_cache_dir())
    except Exception:
        return None
    return Path(got) if isinstance(got, str) else None



def _tensor_names_from_strings(strings: list[str]) -> set[str]:
    return {s for s in strings if ("." in s or s in ("v_pred", "ztsnr")) and " " not in s and len(s) < 300}


# a safetensors header's dtype -> loratui's name for it
SAFETENSORS_DTYPE_NAMES = {"F16": "fp16", "BF16": "bf16", "F32": "fp32", "F64": "fp64", "F8_E4M3": "fp8", "F8_E5M2": "fp8"}


def _predominant_dtype(hdr: _Header) -> str | None:
    total: dict[str, int] = {}
    for dtype, _shape, (a, b) in hdr.keys.values():
        total[dtype] = total.get(dtype, 0) + (b - a)
    if not total:
        return None
    top = max(total, key=total.__getitem__)
    return SAFETENSORS_DTYPE_NAMES.get(top, top.lower())



def _weight_files(folder: Path) -> list[Path]:
    pats = (
        "diffusion_pytorch_model*.safetensors",
        "diffusion_pytorch_model*.bin",
        "model*.safetensors",
        "pytorch_model*.bin",
    )
    out: list[Path] = []
    for pat in pats:
        out += sorted(folder.glob(pat))
    return out


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None



def _vae_config_path(folder: Path) -> Path | None:
    for cand in (folder / "config.json", folder / "vae" / "config.json"):
        data = _read_json(cand)
        if data and data.get("_class_name") == "AutoencoderKL":
            return cand
    return None

