"""Base models: find out what a model path is, then load it for training.

``inspect_model(ms)`` looks at the base model (and the optional separate VAE)
without loading any weights: it reads safetensors headers, the opcodes of a
``.ckpt`` pickle (never executing it) or a diffusers folder's JSON configs, and
says what it found — kind, family, size — and what is wrong with it.  It is
what ``loratui check`` and the TUI plan panel call, so it stays cheap: no torch
import.

``load_components(ms, device=..., dtype=...)`` loads the U-Net, VAE, text
encoder(s), tokenizer(s) and a DDPM noise scheduler for training from

- a single ``.safetensors`` / ``.ckpt`` file in the original LDM/SGM layout
  (what users download), built with the diffusers configs bundled in
  ``engine/configs`` (or ``model.model_config_dir``), entirely offline;
  pickles are only ever opened with ``torch.load(weights_only=True)``;
- a diffusers folder;
- a Hugging Face Hub repo id (normal HF cache; tokens from the environment or
  ``hf auth login`` only — never passed or stored here).

Every failure is a ``ModelLoadError`` whose message names the path and says
what to do.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import re
import struct
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loratui.engine.configs import config_dir

FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
SAFETENSORS_EXT = (".safetensors", ".sft")
PICKLE_EXT = (".ckpt", ".pt", ".pth", ".bin")
_MAX_HEADER = 100 * 1024 * 1024

V_PRED_SETTING = "model.v_parameterization"


class ModelLoadError(Exception):
    """A base model or VAE could not be used. The message names the path and
    says what to do; it is meant to be shown to the user as is."""


# --------------------------------------------------------------------------- results


@dataclass
class ModelInfo:
    """What a model path is, found without loading weights."""

    spec: str  # the string from the profile
    kind: str  # "file" | "folder" | "hub" | "missing" | "empty"
    path: Path | None = None  # local file or folder (hub: the cached snapshot, if any)
    format: str | None = None  # "safetensors" | "ckpt" | "diffusers" | "hub"
    family: str | None = None  # "sd1" | "sd2" | "sdxl" (None: not known yet)
    family_source: str = ""  # "weights" | "config" | "profile"
    # Prediction type the file/config itself declares ("epsilon"/"v_prediction");
    # None when it cannot be told for certain.
    prediction_type: str | None = None
    prediction_source: str = ""
    # A heuristic guess when nothing declares it (SD 2.x single files).
    prediction_guess: str | None = None
    size_bytes: int | None = None
    dtype: str | None = None  # predominant weight dtype of a safetensors file
    fp16_fixed_vae: bool = False  # (VAE only) an fp16-safe SDXL VAE
    missing_parts: list[str] = field(default_factory=list)  # single file: absent U-Net/VAE/text encoders
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    vae: "ModelInfo | None" = None  # the separate VAE, when one is set

    # For the base model, ``problems``/``warnings`` include those of the
    # separate VAE (they name model.vae); ``vae`` keeps its own details.

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def family_label(self) -> str:
        return FAMILY_LABELS.get(self.family or "", "unknown family")

    def describe(self) -> str:
        return self.summary()

    def summary(self) -> str:
        """One line for the UI, e.g. ``SDXL · single file · fp16 · 6.9 GB``."""
        if self.kind in ("missing", "empty"):
            return self.problems[0] if self.problems else self.spec
        parts = [self.family_label if self.family else "family unknown until loaded"]
        parts.append(
            {"file": "single file", "folder": "diffusers folder", "hub": f"Hub: {self.spec}"}.get(
                self.kind, self.kind
            )
        )
        if self.dtype:
            parts.append(self.dtype)
        if self.size_bytes:
            parts.append(format_size(self.size_bytes))
        return " · ".join(parts)


@dataclass
class Components:
    """Everything the trainer needs from the base model."""

    family: str  # "sd1" | "sd2" | "sdxl"
    unet: Any
    vae: Any
    text_encoders: list
    tokenizers: list
    noise_scheduler: Any  # DDPMScheduler, prediction_type set
    prediction_type: str  # "epsilon" | "v_prediction" — authoritative for training
    vae_scale_factor: float  # latents = (vae.encode(x).sample() - shift) * scale
    vae_shift_factor: float | None
    vae_needs_fp32: bool  # SDXL's own VAE overflows in fp16: encode in fp32 or bf16
    source: str  # short description for the UI
    warnings: list[str] = field(default_factory=list)
    info: ModelInfo | None = None


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


# --------------------------------------------------------------------------- family detection

_TO_K = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
_IN_CONV = "model.diffusion_model.input_blocks.0.0.weight"
_SDXL_LABEL = "model.diffusion_model.label_emb.0.0.weight"
_SD2_VPRED_PROBE = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"


def _any_prefix(keys: Iterable[str], *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


def detect_family_from_keys(
    keys: Iterable[str], shapes: dict[str, tuple[int, ...]] | None = None
) -> tuple[str | None, str | None]:
    """(family, problem) of an LDM/SGM single-file checkpoint from its tensor
    names (and shapes when known). Family is "sd1", "sd2" or "sdxl"."""
    keys = list(keys)
    shapes = shapes or {}
    has_unet = _any_prefix(keys, "model.diffusion_model.")
    if not has_unet:
        if _any_prefix(keys, "lora_unet_", "lora_te_", "lora_te1_", "lora_te2_"):
            return None, "is a LoRA, not a base model. Choose the checkpoint the LoRA was trained on as the base model."
        if _any_prefix(keys, "first_stage_model.", "encoder.", "decoder.") and not _any_prefix(
            keys, "cond_stage_model.", "conditioner."
        ):
            return None, "is a VAE only, not a full model. Set it as model.vae and choose a full checkpoint as the base model."
        if _any_prefix(keys, "down_blocks.", "up_blocks.", "mid_block."):
            return None, (
                "holds diffusers-layout U-Net weights only. Use the whole diffusers folder "
                "(with model_index.json) or a full single-file checkpoint."
            )
        if _any_prefix(keys, "model.diffusion_model", "diffusion_model.", "double_blocks.", "joint_blocks.", "transformer_blocks."):
            return None, "is not an SD 1.x / SD 2.x / SDXL checkpoint (unsupported architecture)."
        return None, "holds no Stable Diffusion U-Net weights (model.diffusion_model.*): it is not an SD 1.x, SD 2.x or SDXL checkpoint."
    if _IN_CONV in shapes and len(shapes[_IN_CONV]) == 4 and shapes[_IN_CONV][1] != 4:
        return None, (
            f"is an inpainting/instruct model ({shapes[_IN_CONV][1]} input channels). "
            "Train the LoRA on the matching base (non-inpainting) model."
        )
    if _any_prefix(keys, "conditioner.embedders.1."):
        return "sdxl", None
    if _any_prefix(keys, "conditioner.embedders.0.model.") and (
        _SDXL_LABEL in keys or _any_prefix(keys, "model.diffusion_model.label_emb.")
    ):
        return None, "is an SDXL refiner. LoRAs are trained on the SDXL base model; choose that instead."
    if _any_prefix(keys, "cond_stage_model.model.", "conditioner.embedders.0.model."):
        return "sd2", None
    if _any_prefix(keys, "cond_stage_model.transformer."):
        return "sd1", None
    # No text encoder in the file: fall back on the U-Net's cross-attention width.
    if _TO_K in shapes and len(shapes[_TO_K]) == 2:
        width = shapes[_TO_K][1]
        if width == 768:
            return "sd1", None
        if width == 1024:
            return "sd2", None
    if _SDXL_LABEL in keys or _any_prefix(keys, "model.diffusion_model.label_emb."):
        return "sdxl", None
    return None, (
        "has U-Net weights but no text encoder, so it is not a complete checkpoint (and its family "
        "cannot be told). Use a full checkpoint with its text encoder and VAE."
    )


# Key prefixes of each part of a single-file checkpoint, per family.
_PART_PREFIXES = {
    "sd1": {"text encoder": ("cond_stage_model.transformer.",)},
    "sd2": {"text encoder": ("cond_stage_model.model.", "conditioner.embedders.0.model.")},
    "sdxl": {
        "text encoder": ("conditioner.embedders.0.transformer.",),
        "text encoder 2": ("conditioner.embedders.1.model.",),
    },
}


def missing_parts(keys: Iterable[str], family: str) -> list[str]:
    """Parts of a full checkpoint (U-Net, VAE, text encoders) absent from a
    single file's tensor names."""
    keys = list(keys)
    out = []
    if not _any_prefix(keys, "model.diffusion_model."):
        out.append("U-Net")
    if not _any_prefix(keys, "first_stage_model.", "vae."):
        out.append("VAE")
    for part, prefixes in _PART_PREFIXES.get(family, {}).items():
        if not _any_prefix(keys, *prefixes):
            out.append(part)
    return out


def _pred_from_metadata(meta: dict[str, str], keys: Iterable[str]) -> tuple[str | None, str]:
    """A declared prediction type: v_pred marker key, ModelSpec or sd-scripts metadata."""
    keys = set(keys)
    if "v_pred" in keys:
        return "v_prediction", "a v_pred marker tensor in the file"
    pt = meta.get("modelspec.prediction_type", "").strip().lower()
    if pt in ("v", "v_prediction", "v-prediction", "velocity"):
        return "v_prediction", "its modelspec.prediction_type metadata"
    if pt in ("epsilon", "eps"):
        return "epsilon", "its modelspec.prediction_type metadata"
    arch = meta.get("modelspec.architecture", "").strip().lower()
    if arch.endswith("-v") or "768-v" in arch:
        return "v_prediction", f"its modelspec.architecture metadata ({arch})"
    vp = meta.get("ss_v_parameterization", "").strip().lower()
    if vp == "true":
        return "v_prediction", "its ss_v_parameterization metadata"
    pm = meta.get("parameterization", "").strip().lower()
    if pm in ("v", "v_prediction"):
        return "v_prediction", "its parameterization metadata"
    return None, ""


def _sd2_guess_from_name(path: Path) -> str | None:
    n = path.name.lower()
    if re.search(r"768[-_]?v\b|v[-_]?pred|vpred|[-_]v[-_]pred", n) or "768-v" in n:
        return "v_prediction"
    if "768" in n and "512" not in n:
        return "v_prediction"
    if "512" in n or "base" in n:
        return "epsilon"
    return None


def _std(vals: list[float]) -> float:
    m = sum(vals) / len(vals)
    return (sum((v - m) ** 2 for v in vals) / len(vals)) ** 0.5


# --------------------------------------------------------------------------- classification of a spec

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


# --------------------------------------------------------------------------- inspect


def inspect_model(ms) -> ModelInfo:
    """Describe ``ms.base_model`` (and ``ms.vae``) without loading weights.

    ``ms`` is an ``engine.schema.ModelSettings``. Problems (missing path, not
    a model, truncated file, pickled code, unsupported architecture) go to
    ``.problems``; things the user should know (SD 2.x v-prediction, Hub
    downloads) to ``.warnings``.
    """
    spec = (ms.base_model or "").strip()
    info = _inspect_spec(spec, what="base model", field_name="model.base_model")
    has_vae_setting = bool((ms.vae or "").strip())
    if info.kind in ("file", "folder", "hub") and not info.problems:
        _apply_family_setting(info, ms)
        _prediction_warnings(info, ms)
        if ms.model_config_dir and info.kind == "file":
            _check_config_dir(info, Path(ms.model_config_dir).expanduser())
        parts = [p for p in info.missing_parts if not (p == "VAE" and has_vae_setting)]
        if parts:
            vae_hint = " (a missing VAE can be given as model.vae)" if "VAE" in parts else ""
            info.problems.append(
                f"{info.spec} is not a complete {info.family_label} checkpoint: it has no "
                f"{', '.join(parts)} weights{vae_hint}. Use a full checkpoint."
            )
    if has_vae_setting:
        info.vae = _inspect_vae((ms.vae or "").strip(), info.family)
        info.problems += info.vae.problems
        info.warnings += info.vae.warnings
    return info


def _inspect_spec(spec: str, *, what: str, field_name: str) -> ModelInfo:
    if not spec:
        return ModelInfo(
            spec,
            "empty",
            problems=[
                f"{field_name} is empty: set it to a .safetensors/.ckpt file, a diffusers folder "
                f"or a Hugging Face repo id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5)."
            ],
        )
    path = Path(spec).expanduser()
    if path.is_file():
        return _inspect_file(spec, path, what)
    if path.is_dir():
        return _inspect_folder(spec, path, what)
    if path.exists():
        return ModelInfo(spec, "missing", path=path, problems=[f"{spec} ({field_name}) is not a regular file or folder."])
    if not _PATHLIKE_RE.match(spec) and looks_like_repo_id(spec):
        return _inspect_hub(spec)
    parent = path.parent
    hint = ""
    if parent.is_dir():
        near = sorted(
            p.name for p in parent.iterdir() if p.suffix.lower() in SAFETENSORS_EXT + PICKLE_EXT
        )[:5]
        if near:
            hint = f" Model files in {parent}: {', '.join(near)}."
    else:
        hint = f" (the folder {parent} does not exist either)."
    return ModelInfo(
        spec,
        "missing",
        path=path,
        problems=[f"{field_name}: {spec} does not exist. Check the path.{hint}"],
    )


def _inspect_file(spec: str, path: Path, what: str) -> ModelInfo:
    size = path.stat().st_size
    info = ModelInfo(spec, "file", path=path, size_bytes=size)
    sniff = _sniff(path)
    problem = _sniff_problem(path, what, sniff, size)
    if problem:
        info.problems.append(problem)
        return info
    if sniff == "safetensors":
        info.format = "safetensors"
        hdr, problem = _read_safetensors_header(path, size)
        if problem:
            info.problems.append(problem)
            return info
        assert hdr is not None
        shapes = {k: v[1] for k, v in hdr.keys.items()}
        info.dtype = _predominant_dtype(hdr)
        if what == "VAE":
            return info
        family, problem = detect_family_from_keys(hdr.keys, shapes)
        if problem:
            info.problems.append(f"{path} {problem}")
            return info
        info.family, info.family_source = family, "weights"
        info.missing_parts = missing_parts(hdr.keys, family)
        info.prediction_type, info.prediction_source = _pred_from_metadata(hdr.metadata, hdr.keys)
        if family == "sd2" and info.prediction_type is None:
            info.prediction_guess = _sd2_weight_guess(path, hdr) or _sd2_guess_from_name(path)
        if "ztsnr" in hdr.keys:
            info.warnings.append(
                f"{path.name} is marked zero-terminal-SNR (ztsnr); training uses the standard noise schedule."
            )
        return info
    # torch pickle (.ckpt / .pt / .bin): scan the opcodes, never execute them.
    info.format = "ckpt"
    globals_, strings, problem = _scan_torch_pickle(path, sniff)
    if problem:
        info.problems.append(problem)
        return info
    unsafe = [g for g in globals_ if not _global_is_safe(g)]
    if unsafe:
        info.problems.append(_ckpt_code_problem(path, unsafe))
        return info
    if what == "VAE":
        return info
    keys = _tensor_names_from_strings(strings)
    family, problem = detect_family_from_keys(keys)
    if problem:
        info.problems.append(f"{path} {problem}")
        return info
    info.family, info.family_source = family, "weights"
    info.missing_parts = missing_parts(keys, family)
    info.prediction_type, info.prediction_source = _pred_from_metadata({}, keys)
    if family == "sd2" and info.prediction_type is None:
        info.prediction_guess = _sd2_guess_from_name(path)
    return info


def _tensor_names_from_strings(strings: list[str]) -> set[str]:
    return {s for s in strings if ("." in s or s in ("v_pred", "ztsnr")) and " " not in s and len(s) < 300}


def _predominant_dtype(hdr: _Header) -> str | None:
    total: dict[str, int] = {}
    for dtype, _shape, (a, b) in hdr.keys.values():
        total[dtype] = total.get(dtype, 0) + (b - a)
    if not total:
        return None
    top = max(total, key=total.__getitem__)
    return {"F16": "fp16", "BF16": "bf16", "F32": "fp32", "F64": "fp64", "F8_E4M3": "fp8", "F8_E5M2": "fp8"}.get(top, top.lower())


def _sd2_weight_guess(path: Path, hdr: _Header) -> str | None:
    # ComfyUI's test: in 768-v models this LayerNorm bias has a clearly larger
    # spread (std > 0.09) than in epsilon models.
    if _SD2_VPRED_PROBE not in hdr.keys:
        return None
    try:
        vals = _read_tensor(path, hdr, _SD2_VPRED_PROBE)
    except OSError:
        return None
    if not vals:
        return None
    return "v_prediction" if _std(vals) > 0.09 else "epsilon"


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


def _family_from_folder(folder: Path) -> tuple[str | None, str]:
    """Family of a diffusers pipeline folder from its configs."""
    index = _read_json(folder / "model_index.json") or {}
    cls = str(index.get("_class_name", ""))
    if "XL" in cls or (folder / "text_encoder_2").is_dir() or "text_encoder_2" in index:
        return "sdxl", "config"
    unet = _read_json(folder / "unet" / "config.json") or {}
    if unet.get("addition_embed_type") == "text_time":
        return "sdxl", "config"
    width = unet.get("cross_attention_dim")
    if width == 768:
        return "sd1", "config"
    if width == 1024:
        return "sd2", "config"
    te = _read_json(folder / "text_encoder" / "config.json") or {}
    act = te.get("hidden_act")
    if act == "quick_gelu":
        return "sd1", "config"
    if act == "gelu":
        return "sd2", "config"
    return None, ""


def _inspect_folder(spec: str, path: Path, what: str) -> ModelInfo:
    info = ModelInfo(spec, "folder", path=path, format="diffusers")
    if what == "VAE":
        return info
    has_index = (path / "model_index.json").is_file()
    if not has_index and not (path / "unet" / "config.json").is_file():
        files = sorted(p.name for p in path.iterdir() if p.suffix.lower() in SAFETENSORS_EXT + PICKLE_EXT)
        if files:
            info.problems.append(
                f"{path} is a folder, not a diffusers model (no model_index.json). It holds "
                f"{', '.join(files[:3])}: set model.base_model to that file."
            )
        else:
            info.problems.append(
                f"{path} is not a diffusers model folder (no model_index.json, no unet/). Point "
                f"model.base_model at a model file, a diffusers folder or a Hub repo id."
            )
        return info
    family, src = _family_from_folder(path)
    info.family, info.family_source = family, src
    needed = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]
    if family == "sdxl":
        needed += ["text_encoder_2", "tokenizer_2"]
    missing = [c for c in needed if not (path / c).is_dir()]
    if missing:
        info.problems.append(
            f"{path} is an incomplete diffusers folder: missing {', '.join(c + '/' for c in missing)}. "
            f"Download the whole model again."
        )
        return info
    total = 0
    for comp in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if comp not in needed:
            continue
        files = _weight_files(path / comp)
        if not files:
            info.problems.append(
                f"{path / comp} has no weights (diffusion_pytorch_model.safetensors / model.safetensors). "
                f"Download the model again."
            )
            continue
        for f in files:
            size = f.stat().st_size
            total += size
            if f.suffix == ".safetensors":
                hdr, problem = _read_safetensors_header(f, size)
                if problem:
                    info.problems.append(problem)
                elif comp in ("unet", "vae") and info.dtype is None and hdr is not None:
                    info.dtype = _predominant_dtype(hdr) if comp == "unet" else None
    info.size_bytes = total or None
    tok = path / "tokenizer"
    if not ((tok / "vocab.json").is_file() and (tok / "merges.txt").is_file()) and not (tok / "tokenizer.json").is_file():
        info.problems.append(f"{tok} lacks vocab.json/merges.txt. Download the model again.")
    sched = _read_json(path / "scheduler" / "scheduler_config.json") or {}
    pt = sched.get("prediction_type")
    if pt in ("epsilon", "v_prediction"):
        info.prediction_type, info.prediction_source = pt, "its scheduler/scheduler_config.json"
    if family is None and not info.problems:
        info.problems.append(
            f"{path}: cannot tell the model family from its configs. Set model.family (sd1, sd2 or sdxl)."
        )
    return info


def _inspect_hub(repo_id: str) -> ModelInfo:
    info = ModelInfo(repo_id, "hub", format="hub")
    index = _hub_cached_file(repo_id, "model_index.json")
    if index is None:
        if _hub_offline():
            info.problems.append(
                f"{repo_id} is not a local path, and as a Hugging Face repo id it is not in the local "
                f"cache while HF_HUB_OFFLINE is set. Unset HF_HUB_OFFLINE to download it, or point "
                f"model.base_model at a local file or folder."
            )
        else:
            info.warnings.append(
                f"{repo_id} is not a local path: it will be downloaded from the Hugging Face Hub "
                f"on first use (several GB; gated models need `hf auth login` or HF_TOKEN)."
            )
        return info
    snap = index.parent
    info.path = snap
    family, src = _family_from_folder(snap)
    info.family, info.family_source = family, src
    sched = _read_json(snap / "scheduler" / "scheduler_config.json") or {}
    if sched.get("prediction_type") in ("epsilon", "v_prediction"):
        info.prediction_type = sched["prediction_type"]
        info.prediction_source = "its scheduler config"
    total = 0
    for comp in ("unet", "vae", "text_encoder", "text_encoder_2"):
        d = snap / comp
        if d.is_dir():
            for f in _weight_files(d):
                try:
                    total += f.stat().st_size
                except OSError:
                    pass
    info.size_bytes = total or None
    return info


def _inspect_vae(spec: str, family: str | None) -> ModelInfo:
    info = _inspect_spec(spec, what="VAE", field_name="model.vae")
    name = spec.lower()
    if info.kind == "file" and not info.problems and info.path is not None:
        keys: Iterable[str] = []
        if info.format == "safetensors":
            hdr, _ = _read_safetensors_header(info.path, info.size_bytes or 0)
            keys = list(hdr.keys) if hdr else []
        else:
            globals_, strings, _ = _scan_torch_pickle(info.path, _sniff(info.path))
            keys = _tensor_names_from_strings(strings)
        if not _any_prefix(keys, "encoder.", "decoder.", "first_stage_model.", "vae."):
            if _any_prefix(keys, "lora_"):
                info.problems.append(f"{info.path} (model.vae) is a LoRA, not a VAE.")
            else:
                info.problems.append(
                    f"{info.path} (model.vae) holds no VAE weights (encoder.*/decoder.*). Choose a VAE "
                    f"file such as sdxl_vae.safetensors or vae-ft-mse-840000-ema-pruned.safetensors."
                )
        info.fp16_fixed_vae = "fp16" in name and "fix" in name
    elif info.kind == "folder" and info.path is not None:
        cfg = _vae_config_path(info.path)
        if cfg is None:
            info.problems.append(
                f"{info.path} (model.vae) is not a diffusers VAE folder (no config.json of an AutoencoderKL)."
            )
        else:
            data = _read_json(cfg) or {}
            info.fp16_fixed_vae = data.get("force_upcast") is False
    elif info.kind == "hub":
        cfg = _hub_cached_file(spec, "config.json") or _hub_cached_file(spec, "vae/config.json")
        if cfg is not None:
            info.fp16_fixed_vae = (_read_json(cfg) or {}).get("force_upcast") is False
        elif "fp16-fix" in name or "fp16_fix" in name:
            info.fp16_fixed_vae = True
    info.family = None
    return info


def _vae_config_path(folder: Path) -> Path | None:
    for cand in (folder / "config.json", folder / "vae" / "config.json"):
        data = _read_json(cand)
        if data and data.get("_class_name") == "AutoencoderKL":
            return cand
    return None


def _apply_family_setting(info: ModelInfo, ms) -> None:
    want = getattr(ms, "family", "auto") or "auto"
    if want == "auto":
        return
    if info.family and info.family != want:
        info.problems.append(
            f"model.family = {want} but {info.spec} is {FAMILY_LABELS[info.family]} "
            f"(detected from its {'weights' if info.family_source == 'weights' else 'configs'}). "
            f"Set model.family = \"auto\" or choose a {FAMILY_LABELS[want]} model."
        )
        return
    if info.family is None:
        info.family, info.family_source = want, "profile"


def resolve_prediction(info: ModelInfo, ms) -> tuple[str, list[str]]:
    """The prediction type to train with, and warnings about the choice.

    ``model.v_parameterization = true`` always wins. Otherwise a prediction
    type that the model itself declares (diffusers scheduler config, ModelSpec
    metadata, a ``v_pred`` marker) is used. A guess from the weights is only
    ever a warning."""
    warnings: list[str] = []
    declared, source = info.prediction_type, info.prediction_source
    if ms.v_parameterization:
        if declared == "epsilon":
            warnings.append(
                f"{V_PRED_SETTING} = true, but {info.spec} declares epsilon prediction in {source}. "
                f"Training with v-prediction as set; set it to false if that is a mistake."
            )
        elif info.family == "sd1" and declared is None:
            warnings.append(
                f"{V_PRED_SETTING} = true on an SD 1.x model: almost all SD 1.x models are "
                f"epsilon-prediction. Training with v-prediction as set."
            )
        elif info.family == "sdxl" and declared is None:
            warnings.append(
                f"{V_PRED_SETTING} = true on an SDXL model: only a few SDXL models (v-pred "
                f"fine-tunes) use it. Training with v-prediction as set."
            )
        return "v_prediction", warnings
    if declared == "v_prediction":
        warnings.append(
            f"{info.spec} is a v-prediction model ({source}): training with v-prediction. "
            f"Set {V_PRED_SETTING} = true to make this explicit."
        )
        return "v_prediction", warnings
    if declared == "epsilon":
        return "epsilon", warnings
    if info.family == "sd2" and info.kind == "file":
        if info.prediction_guess == "v_prediction":
            warnings.append(
                f"{info.spec} looks like an SD 2.x 768-v model (v-prediction), but "
                f"{V_PRED_SETTING} is false. A 768-v model trained with epsilon gives a broken "
                f"LoRA: set {V_PRED_SETTING} = true (and resolution 768) unless this is a 512 "
                f"epsilon model."
            )
        else:
            guess = (
                " It looks like an epsilon (512-base) model." if info.prediction_guess == "epsilon" else ""
            )
            warnings.append(
                f"SD 2.x single files do not say whether they are v-prediction (768-v, e.g. "
                f"v2-1_768-ema-pruned) or epsilon (512-base).{guess} Training with epsilon because "
                f"{V_PRED_SETTING} is false; set it to true for a 768-v model."
            )
    return "epsilon", warnings


def _prediction_warnings(info: ModelInfo, ms) -> None:
    _pt, warnings = resolve_prediction(info, ms)
    info.warnings.extend(warnings)


def _check_config_dir(info: ModelInfo, cfg: Path) -> None:
    if not cfg.is_dir():
        info.problems.append(f"model.model_config_dir: {cfg} does not exist. Clear it to use the bundled configs.")
        return
    missing = [c for c in ("unet", "vae", "text_encoder", "tokenizer") if not (cfg / c / ("config.json" if c != "tokenizer" else "")).exists()]
    if info.family == "sdxl":
        missing += [c for c in ("text_encoder_2", "tokenizer_2") if not (cfg / c).is_dir()]
    if missing:
        info.problems.append(
            f"model.model_config_dir: {cfg} is not a diffusers config folder for "
            f"{info.family_label} (missing {', '.join(m + '/' for m in missing)})."
        )


# --------------------------------------------------------------------------- loading


def _progress(cb: Callable[[str], None] | None, msg: str) -> None:
    if cb is not None:
        try:
            cb(msg)
        except Exception:  # a UI callback must never break loading
            pass


def load_components(ms, *, device="cpu", dtype=None, on_progress: Callable[[str], None] | None = None) -> Components:
    """Load everything the trainer needs. Raises ``ModelLoadError``.

    ``dtype`` is the weight dtype of the frozen U-Net and text encoders
    (default float32). The VAE gets the same dtype, except an SDXL VAE that
    overflows in fp16: with ``dtype=float16`` it stays float32
    (``vae_needs_fp32`` tells the latent encoder). Models are returned in eval
    mode with ``requires_grad`` off.
    """
    import torch

    dtype = dtype or torch.float32
    info = inspect_model(ms)
    problems = info.problems
    if problems:
        raise ModelLoadError("\n".join(problems))
    prediction_type, _ = resolve_prediction(info, ms)

    try:
        with _quiet_libraries():
            if info.kind == "file":
                parts = _load_single_file(info, ms, prediction_type, dtype, on_progress)
            else:
                parts = _load_pretrained(info, ms, dtype, on_progress)
            vae = parts["vae"]
            if info.vae is not None:
                _progress(on_progress, f"Loading VAE {info.vae.spec}")
                vae = _load_separate_vae(info.vae, vae, on_progress)
    except (ModelLoadError, torch.OutOfMemoryError):
        raise
    except MemoryError:
        raise ModelLoadError(
            f"Out of memory while loading {info.spec}. Close other programs or use a machine with more RAM."
        ) from None
    except Exception as exc:  # anything unforeseen still reaches the user as a message
        raise ModelLoadError(
            f"{info.spec}: could not load the model ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})."
        ) from exc

    family = parts["family"]
    info.family = family
    # A Hub repo's family and scheduler config may only be known now.
    prediction_type, warnings = resolve_prediction(info, ms)
    warnings += [w for w in info.warnings if w not in warnings]
    if info.vae is None:
        vae_needs_fp32 = family == "sdxl" and bool(getattr(vae.config, "force_upcast", True))
    else:
        vae_needs_fp32 = family == "sdxl" and not (
            info.vae.fp16_fixed_vae or getattr(vae.config, "force_upcast", True) is False
        )
    vae_dtype = torch.float32 if (vae_needs_fp32 and dtype == torch.float16) else dtype

    from diffusers import DDPMScheduler

    sched_cfg = dict(parts["scheduler_config"])
    sched_cfg.pop("_class_name", None)
    noise_scheduler = DDPMScheduler.from_config(sched_cfg, prediction_type=prediction_type)

    _progress(on_progress, f"Moving model to {device}")
    unet = _cast(parts["unet"], device, dtype)
    vae = _cast(vae, device, vae_dtype)
    tes = [_cast(te, device, dtype) for te in parts["text_encoders"]]
    for m in (unet, vae, *tes):
        m.eval()
        m.requires_grad_(False)

    label = FAMILY_LABELS[family] + (" v-pred" if prediction_type == "v_prediction" else "")
    where = {"file": "single file", "folder": "diffusers folder", "hub": f"Hub {info.spec}"}[info.kind]
    source = " · ".join(x for x in (label, where, format_size(info.size_bytes) if info.size_bytes else "") if x)
    return Components(
        family=family,
        unet=unet,
        vae=vae,
        text_encoders=tes,
        tokenizers=parts["tokenizers"],
        noise_scheduler=noise_scheduler,
        prediction_type=prediction_type,
        vae_scale_factor=float(vae.config.scaling_factor),
        vae_shift_factor=getattr(vae.config, "shift_factor", None),
        vae_needs_fp32=vae_needs_fp32,
        source=source,
        warnings=warnings,
        info=info,
    )


def _cast(module, device, dtype):
    """Move/cast with torch.nn.Module.to (diffusers' override only adds a log
    line about fp32 modules, which these models do not have)."""
    import torch

    needs_dtype = any(p.dtype != dtype for p in module.parameters() if p.is_floating_point())
    if needs_dtype:
        torch.nn.Module.to(module, dtype=dtype)
    if torch.device(device) != next(module.parameters()).device:
        torch.nn.Module.to(module, device=device)
    return module


class _quiet_libraries:
    """Silence diffusers/transformers progress bars and info logs while
    loading (the engine reports progress through on_progress)."""

    def __enter__(self):
        self._restore = []
        for mod in ("diffusers.utils.logging", "transformers.utils.logging"):
            try:
                lib = __import__(mod, fromlist=["x"])
            except ImportError:  # pragma: no cover
                continue
            was_enabled = lib.is_progress_bar_enabled()
            level = lib.get_verbosity()
            lib.disable_progress_bar()
            lib.set_verbosity_error()
            self._restore.append((lib, was_enabled, level))
        return self

    def __exit__(self, *exc):
        for lib, was_enabled, level in self._restore:
            if was_enabled:
                lib.enable_progress_bar()
            lib.set_verbosity(level)
        return False


# ----------------------------------------------------------------- state dicts


class _InertPickled:
    """Stand-in for harmless non-tensor objects some old checkpoints carry
    (PyTorch Lightning's ModelCheckpoint callback state). Holds its state as
    data; has no behaviour."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


def _weights_only_extras() -> list:
    extras: list = [(_InertPickled, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint")]
    try:
        import codecs

        import numpy as np

        extras.append((codecs.encode, "_codecs.encode"))
        extras.append(np.dtype)
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            extras.append((_np_scalar(), f"{mod}.scalar"))
        for name in dir(np.dtypes):
            if name.endswith("DType"):
                extras.append((getattr(np.dtypes, name), f"numpy.dtypes.{name}"))
    except Exception:  # numpy missing or changed: plain tensors still load
        pass
    return extras


def _np_scalar():
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover
        from numpy.core.multiarray import scalar  # type: ignore
    return scalar


def load_state_dict_file(path: Path, on_progress: Callable[[str], None] | None = None) -> dict:
    """Tensors of a .safetensors or torch pickle file (``weights_only=True``),
    with a nested ``state_dict`` unwrapped. Raises ModelLoadError."""
    import torch

    size = path.stat().st_size
    _progress(on_progress, f"Reading {path.name} ({format_size(size)})")
    sniff = _sniff(path)
    if sniff == "safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception as exc:  # SafetensorError, OSError
            raise ModelLoadError(
                f"{path} cannot be read as .safetensors ({exc}). It is probably truncated or damaged: download it again."
            ) from None
        return sd
    if sniff not in ("zip", "pickle"):
        raise ModelLoadError(_sniff_problem(path, "model", sniff, size) or f"{path} is not a model file.")
    try:
        with torch.serialization.safe_globals(_weights_only_extras()):
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=sniff == "zip")
    except Exception as exc:
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "UnpicklingError" in type(exc).__name__:
            found = re.findall(r"GLOBAL ([\w.<>]+)", text) or re.findall(r"function '?<?([\w. ]+)", text)
            raise ModelLoadError(_ckpt_code_problem(path, found or ["a non-tensor object"])) from None
        raise ModelLoadError(
            f"{path} cannot be read as a PyTorch checkpoint ({text.splitlines()[0] if text else type(exc).__name__}). "
            f"It is probably truncated or damaged: download it again."
        ) from None
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path} does not hold a state dict of tensors.")
    sd = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not sd:
        raise ModelLoadError(f"{path} holds no tensors.")
    return sd


def _normalize_ldm(sd: dict, family: str) -> dict:
    """SD 2.x saved in the SGM layout keeps its OpenCLIP under
    conditioner.embedders.0.model.*: map it to cond_stage_model.model.*."""
    if family == "sd2" and not any(k.startswith("cond_stage_model.") for k in sd):
        p = "conditioner.embedders.0.model."
        return {("cond_stage_model.model." + k[len(p):]) if k.startswith(p) else k: v for k, v in sd.items()}
    return sd


def _fill_model(model, state: dict, dtype, *, what: str, path: Path, hint: str):
    """Put ``state`` into a model built on the meta device. Missing weights and
    shape mismatches are errors; extra tensors are ignored."""
    from accelerate.utils import set_module_tensor_to_device

    expected = model.state_dict()
    missing = [k for k, t in expected.items() if t.device.type == "meta" and k not in state]
    if missing:
        raise ModelLoadError(
            f"{path}: the {what} weights are incomplete ({len(missing)} tensors missing, e.g. {missing[0]}). "
            f"{hint}"
        )
    for k, t in expected.items():
        if k not in state:
            continue
        v = state[k]
        if tuple(v.shape) != tuple(t.shape):
            raise ModelLoadError(
                f"{path}: the {what} weights do not match the model configs ({k}: file {tuple(v.shape)}, "
                f"config {tuple(t.shape)}). {hint}"
            )
        if v.is_floating_point() and dtype is not None:
            v = v.to(dtype)
        set_module_tensor_to_device(model, k, "cpu", value=v)
    return model


def _empty(cls, config):
    from accelerate import init_empty_weights

    from diffusers import ModelMixin

    with init_empty_weights():
        return cls.from_config(config) if issubclass(cls, ModelMixin) else cls(config)


def _single_file_config_dir(info: ModelInfo, ms, prediction_type: str) -> Path:
    if ms.model_config_dir:
        return Path(ms.model_config_dir).expanduser()
    fam = info.family or "sd1"
    if fam == "sd2" and prediction_type == "v_prediction":
        return config_dir("sd2-v")
    return config_dir({"sd1": "sd15"}.get(fam, fam))


def _load_single_file(info: ModelInfo, ms, prediction_type: str, dtype, on_progress) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    assert info.path is not None and info.family is not None
    path, family = info.path, info.family
    cfg = _single_file_config_dir(info, ms, prediction_type)
    hint = (
        f"The file does not match the {FAMILY_LABELS[family]} configs in {cfg}; if it is a model of "
        f"another shape, set model.model_config_dir to a diffusers folder of the same architecture."
    )
    sd = _normalize_ldm(load_state_dict_file(path, on_progress), family)

    try:
        _progress(on_progress, "Building U-Net")
        unet_cfg = UNet2DConditionModel.load_config(str(cfg / "unet"))
        unet = _empty(UNet2DConditionModel, unet_cfg)
        unet_sd = convert_ldm_unet_checkpoint(sd, unet.config)
        _fill_model(unet, unet_sd, dtype, what="U-Net", path=path, hint=hint)
        del unet_sd

        _progress(on_progress, "Building VAE")
        vae_cfg = AutoencoderKL.load_config(str(cfg / "vae"))
        vae = _empty(AutoencoderKL, vae_cfg)
        if "VAE" not in info.missing_parts:
            vae_sd = convert_ldm_vae_checkpoint(sd, vae.config)
            _fill_model(vae, vae_sd, None, what="VAE", path=path, hint=hint)
            del vae_sd
        # else: an empty VAE that only carries the config; model.vae replaces it.

        _progress(on_progress, "Building text encoder")
        tes = []
        te_cfg = CLIPTextConfig.from_pretrained(str(cfg / "text_encoder"), local_files_only=True)
        te = _empty(CLIPTextModel, te_cfg)
        if family == "sd2":
            te_sd = convert_open_clip_checkpoint(te, sd, prefix="cond_stage_model.model.")
        else:
            pfx = "cond_stage_model.transformer." if family == "sd1" else "conditioner.embedders.0.transformer."
            te_sd = convert_ldm_clip_checkpoint({k: v for k, v in sd.items() if k.startswith(pfx)})
        _fill_model(te, _match_text_keys(te, te_sd), dtype, what="text encoder", path=path, hint=hint)
        tes.append(te)
        tokenizers = [CLIPTokenizer.from_pretrained(str(cfg / "tokenizer"), local_files_only=True)]
        if family == "sdxl":
            _progress(on_progress, "Building text encoder 2")
            te2_cfg = CLIPTextConfig.from_pretrained(str(cfg / "text_encoder_2"), local_files_only=True)
            te2 = _empty(CLIPTextModelWithProjection, te2_cfg)
            te2_sd = convert_open_clip_checkpoint(te2, sd, prefix="conditioner.embedders.1.model.")
            _fill_model(te2, _match_text_keys(te2, te2_sd), dtype, what="text encoder 2", path=path, hint=hint)
            tes.append(te2)
            tokenizers.append(CLIPTokenizer.from_pretrained(str(cfg / "tokenizer_2"), local_files_only=True))
        sched_path = cfg / "scheduler" / "scheduler_config.json"
        scheduler_config = _read_json(sched_path) or _default_scheduler_config()
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: could not build the model from it with the configs in {cfg} ({exc}). {hint}") from None
    del sd
    return {
        "family": family,
        "unet": unet,
        "vae": vae,
        "text_encoders": tes,
        "tokenizers": tokenizers,
        "scheduler_config": scheduler_config,
    }


def _match_text_keys(model, sd: dict) -> dict:
    """Converted CLIP keys carry ``text_model.``; transformers >= 5.6's
    CLIPTextModel has no such level. Map each key to the model's own name."""
    names = set(model.state_dict().keys())
    out = {}
    for k, v in sd.items():
        if k in names:
            out[k] = v
        elif k.startswith("text_model.") and k[len("text_model.") :] in names:
            out[k[len("text_model.") :]] = v
        elif "text_model." + k in names:
            out["text_model." + k] = v
    return out


def _default_scheduler_config() -> dict:
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
    }


def _hub_error(spec: str, exc: Exception) -> ModelLoadError:
    name = type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else name
    if "GatedRepo" in name or "gated" in text.lower():
        return ModelLoadError(
            f"{spec} is a gated repository: accept its license on huggingface.co, then log in with "
            f"`hf auth login` or set HF_TOKEN."
        )
    if "RepositoryNotFound" in name or "404" in text:
        return ModelLoadError(
            f"{spec}: no such Hugging Face repository (or it is private: log in with `hf auth login`). Check the name."
        )
    if "LocalEntryNotFound" in name or "offline" in text.lower() or "local_files_only" in text:
        return ModelLoadError(
            f"{spec} is not fully in the local Hugging Face cache and downloading is off "
            f"(HF_HUB_OFFLINE) or the network is unreachable. Connect and retry, or use a local file."
        )
    return ModelLoadError(f"{spec}: could not load ({name}: {text}).")


def _variant(folder: Path) -> str | None:
    """``fp16`` when a component folder only holds variant weights
    (``diffusion_pytorch_model.fp16.safetensors``), else None."""
    names = [re.sub(r"-\d+-of-\d+", "", p.name) for p in _weight_files(folder)]
    if not names or any(n.count(".") == 1 for n in names):
        return None
    m = re.match(r"^[a-z_]+\.([A-Za-z0-9_]+)\.", names[0])
    return m.group(1) if m else None


def _load_pretrained(info: ModelInfo, ms, dtype, on_progress) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if info.kind == "hub":
        src = info.spec
        kw: dict[str, Any] = {"cache_dir": _hub_cache_dir()}
        if _hub_offline():
            kw["local_files_only"] = True
        _progress(on_progress, f"Fetching {src} from the Hugging Face Hub (or its cache)")
    else:
        assert info.path is not None
        src = str(info.path)
        kw = {"local_files_only": True}
    try:
        family = info.family
        if family is None:  # Hub repo not cached yet: read its configs first
            from huggingface_hub import hf_hub_download

            idx = hf_hub_download(src, "model_index.json", **kw)
            root = Path(idx).parent
            for sub in ("unet/config.json", "text_encoder/config.json"):
                try:
                    hf_hub_download(src, sub, **kw)
                except Exception:
                    pass
            family, _ = _family_from_folder(root)
            if ms.family != "auto":
                if family and family != ms.family:
                    raise ModelLoadError(
                        f"model.family = {ms.family} but {src} is {FAMILY_LABELS[family]}. Set model.family = \"auto\"."
                    )
                family = family or ms.family
            if family is None:
                raise ModelLoadError(f"{src}: cannot tell the model family from its configs. Set model.family.")
        root = info.path if info.path is not None else None
        var = lambda comp: _variant(root / comp) if root is not None else None  # noqa: E731
        _progress(on_progress, "Loading U-Net")
        unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", torch_dtype=dtype, variant=var("unet"), **kw)
        _progress(on_progress, "Loading VAE")
        vae = AutoencoderKL.from_pretrained(src, subfolder="vae", variant=var("vae"), **kw)
        _progress(on_progress, "Loading text encoder")
        tes = [CLIPTextModel.from_pretrained(src, subfolder="text_encoder", dtype=dtype, variant=var("text_encoder"), **kw)]
        toks = [CLIPTokenizer.from_pretrained(src, subfolder="tokenizer", **kw)]
        if family == "sdxl":
            _progress(on_progress, "Loading text encoder 2")
            tes.append(
                CLIPTextModelWithProjection.from_pretrained(
                    src, subfolder="text_encoder_2", dtype=dtype, variant=var("text_encoder_2"), **kw
                )
            )
            toks.append(CLIPTokenizer.from_pretrained(src, subfolder="tokenizer_2", **kw))
        from diffusers import DDPMScheduler

        try:
            scheduler_config = dict(DDPMScheduler.load_config(src, subfolder="scheduler", **kw))
        except Exception:
            scheduler_config = _default_scheduler_config()
        if info.prediction_type is None and scheduler_config.get("prediction_type") in ("epsilon", "v_prediction"):
            # A Hub repo's scheduler config was only seen now.
            info.prediction_type = scheduler_config["prediction_type"]
            info.prediction_source = "its scheduler config"
    except ModelLoadError:
        raise
    except Exception as exc:
        if info.kind == "hub":
            raise _hub_error(info.spec, exc) from None
        raise ModelLoadError(
            f"{info.path}: could not load this diffusers folder ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Is it complete? Download it again if not."
        ) from None
    return {
        "family": family,
        "unet": unet,
        "vae": vae,
        "text_encoders": tes,
        "tokenizers": toks,
        "scheduler_config": scheduler_config,
    }


def _load_separate_vae(vinfo: ModelInfo, base_vae, on_progress):
    from diffusers import AutoencoderKL

    if vinfo.kind == "file":
        assert vinfo.path is not None
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        sd = load_state_dict_file(vinfo.path, on_progress)
        vae = _empty(AutoencoderKL, dict(base_vae.config))
        names = set(vae.state_dict().keys())
        if sum(k in names for k in sd) >= len(names) // 2:  # already diffusers layout
            converted = sd
        else:
            converted = convert_ldm_vae_checkpoint(sd, vae.config)
        _fill_model(
            vae,
            converted,
            None,
            what="VAE",
            path=vinfo.path,
            hint="Is it a VAE for this model family (SD 1.x/2.x and SDXL VAEs share a shape)?",
        )
        return vae
    try:
        if vinfo.kind == "folder":
            assert vinfo.path is not None
            cfg = _vae_config_path(vinfo.path)
            sub = "vae" if cfg is not None and cfg.parent.name == "vae" and cfg.parent != vinfo.path else None
            return AutoencoderKL.from_pretrained(str(vinfo.path), subfolder=sub, local_files_only=True)
        kw: dict[str, Any] = {"cache_dir": _hub_cache_dir()}
        if _hub_offline():
            kw["local_files_only"] = True
        try:
            return AutoencoderKL.from_pretrained(vinfo.spec, **kw)
        except Exception as first:
            try:
                return AutoencoderKL.from_pretrained(vinfo.spec, subfolder="vae", **kw)
            except Exception:
                raise first from None
    except ModelLoadError:
        raise
    except Exception as exc:
        if vinfo.kind == "hub":
            raise _hub_error(vinfo.spec, exc) from None
        raise ModelLoadError(
            f"{vinfo.spec} (model.vae): could not load the VAE ({type(exc).__name__}: {exc}). "
            f"Check it is a complete diffusers AutoencoderKL folder."
        ) from None
