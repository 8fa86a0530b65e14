"""What model files a models folder and the Hugging Face cache hold, from their headers.

``scan(models_dir)`` lists every checkpoint, VAE, LoRA and text encoder in the
models folder (any depth; the sub-folder a file is in is only a hint) and in the
Hub cache: kind, family (as ``loratui check`` detects it), precision, size, and
for LoRAs their ``ss_*`` summary. Only headers are read (a safetensors JSON
header, the opcodes of a torch pickle, a diffusers folder's configs), so a folder
of many GB files is listed in a moment. A file that cannot be read says why in
``problem``. No torch, no UI.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loratui.engine.families import family_label, get_family, guess_family
from loratui.engine.modelfiles import (
    SAFETENSORS_EXT,
    _hub_cache_dir,
    _predominant_dtype,
    _read_safetensors_header,
    _scan_torch_pickle,
    _sniff,
    _sniff_problem,
    _tensor_names_from_strings,
    format_size,
)

KINDS = ("checkpoint", "vae", "lora", "text_encoder")
# The profile setting an entry of each kind fills.
FIELD_FOR_KIND = {"checkpoint": "model.base_model", "vae": "model.vae", "lora": "network.network_weights"}
FOLDER_KIND = {"checkpoints": "checkpoint", "stable-diffusion": "checkpoint", "vae": "vae", "lora": "lora",
               "loras": "lora", "text_encoders": "text_encoder", "clip": "text_encoder"}
WEIGHT_EXT = SAFETENSORS_EXT + (".ckpt", ".pt", ".pth")
_LORA_MARKS = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".hada_w1_a", ".lokr_w1", ".oft_", "lora_unet_", "lora_te")


@dataclass
class LoraSummary:
    base_model: str = ""  # ss_sd_model_name
    network: str = ""  # ss_network_module / the key layout
    rank: int | None = None
    alpha: float | None = None
    triggers: list[str] = field(default_factory=list)  # most frequent tags of ss_tag_frequency
    epochs: str = ""  # "8" or "4/8" (ss_epoch / ss_num_epochs)
    output_name: str = ""

    def line(self) -> str:
        parts = []
        if self.rank is not None:
            a = "" if self.alpha is None else f"/{self.alpha:g}"
            parts.append(f"r{self.rank}{a}")
        if self.epochs:
            parts.append(f"ep {self.epochs}")
        if self.triggers:
            parts.append("tags: " + ", ".join(self.triggers))
        if self.base_model:
            parts.append(f"on {Path(self.base_model).name}")
        return " · ".join(parts)


@dataclass
class ModelEntry:
    """One model file (or diffusers folder / Hub repo) found."""

    kind: str  # checkpoint | vae | lora | text_encoder | unknown
    name: str
    spec: str  # what goes in the profile field (a path, or a Hub repo id)
    source: str  # "models" (the models folder) | "hub" (the Hugging Face cache)
    path: str = ""
    format: str = ""  # safetensors | ckpt | diffusers
    family: str = ""  # family name (sd1, sdxl, ...) or ""
    family_text: str = ""  # what the Family column shows
    precision: str = ""  # fp32 | fp16 | bf16 | fp8 | ""
    size: int = 0
    repo: str = ""
    lora: LoraSummary | None = None
    note: str = ""  # something to know (unsupported architecture, a VAE in checkpoints/...)
    problem: str = ""  # why the file cannot be used (truncated, damaged, ...)

    @property
    def ok(self) -> bool:
        return not self.problem

    @property
    def field(self) -> str | None:
        return FIELD_FOR_KIND.get(self.kind)

    @property
    def size_text(self) -> str:
        return format_size(self.size) if self.size else ""

    @property
    def details(self) -> str:
        if self.problem:
            return self.problem
        bits = [self.lora.line()] if self.lora else []
        if self.note:
            bits.append(self.note)
        return " · ".join(b for b in bits if b)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["field"] = self.field
        return d


# --------------------------------------------------------------------------- one file


def _any(keys: Iterable[str], *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


def _is_lora(keys: Iterable[str]) -> bool:
    return any(m in k or k.startswith(m) for k in keys for m in _LORA_MARKS)


def _text_encoder_kind(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    for k, s in shapes.items():
        if k.endswith("token_embedding.weight") and len(s) == 2:
            return {768: "CLIP-L", 1024: "CLIP-H", 1280: "CLIP-G"}.get(s[1], f"CLIP ({s[1]})")
        if k in ("shared.weight", "encoder.embed_tokens.weight") and len(s) == 2:
            return {4096: "T5-XXL", 1024: "T5-large", 768: "T5-base"}.get(s[1], f"T5 ({s[1]})")
    return None


def _vae_text(shapes: Mapping[str, tuple[int, ...]]) -> str:
    for k in ("decoder.conv_in.weight", "first_stage_model.decoder.conv_in.weight"):
        s = shapes.get(k)
        if s and len(s) == 4:
            return {4: "SD 1.x/2.x/SDXL (4 ch)", 16: "SD3/FLUX (16 ch)"}.get(s[1], f"{s[1]}-channel")
    return ""


def _classify(entry: ModelEntry, keys: set[str], shapes: dict[str, tuple[int, ...]], meta: dict[str, str]) -> None:
    """Kind and family of a single file from its tensor names (and shapes)."""
    from loratui.engine.models import detect_family_from_keys

    if _is_lora(keys):
        entry.kind = "lora"
        fam = guess_family(shapes, meta) if shapes or meta else None
        if fam:
            entry.family = fam
            entry.family_text = family_label(fam)
        entry.lora = lora_summary(meta, shapes)
        return
    family, why = detect_family_from_keys(keys, shapes)
    if family:
        entry.kind, entry.family, entry.family_text = "checkpoint", family, get_family(family).label
        return
    if _any(keys, "encoder.", "decoder.", "first_stage_model.") and not _any(
        keys, "model.diffusion_model.", "cond_stage_model.", "conditioner.", "encoder.block."
    ):
        entry.kind, entry.family_text = "vae", _vae_text(shapes)
        return
    te = _text_encoder_kind(shapes) if shapes else None
    if te or _any(keys, "text_model.", "encoder.block.", "text_projection"):
        entry.kind, entry.family_text = "text_encoder", te or "text encoder"
        return
    if _any(keys, "model.diffusion_model.", "double_blocks.", "joint_blocks.", "transformer_blocks.", "down_blocks."):
        entry.kind = "checkpoint"
        entry.note = (why or "").removeprefix("is ").removeprefix("has ")
        return
    entry.kind = entry.kind or "unknown"
    entry.note = "no weights loratui recognises (not a checkpoint, VAE, LoRA or text encoder)"


def inspect_file(path: Path, *, source: str = "models", hint_kind: str | None = None, repo: str = "") -> ModelEntry:
    """One model file, from its header."""
    entry = ModelEntry(kind=hint_kind or "", name=path.name, spec=str(path), source=source, path=str(path), repo=repo)
    try:
        entry.size = path.stat().st_size
    except OSError as exc:
        entry.kind = entry.kind or "unknown"
        entry.problem = f"{path}: cannot be read ({exc.strerror or exc})"
        return entry
    sniff = _sniff(path)
    problem = _sniff_problem(path, "model file", sniff, entry.size)
    if problem:
        entry.kind, entry.problem = entry.kind or "unknown", problem
        return entry
    meta: dict[str, str] = {}
    if sniff == "safetensors":
        entry.format = "safetensors"
        hdr, problem = _read_safetensors_header(path, entry.size)
        if problem or hdr is None:
            entry.kind, entry.problem = entry.kind or "unknown", problem or f"{path}: unreadable header"
            return entry
        shapes = {k: v[1] for k, v in hdr.keys.items()}
        keys = set(hdr.keys)
        meta = hdr.metadata
        entry.precision = _predominant_dtype(hdr) or ""
    else:
        entry.format = "ckpt"
        _globals, strings, problem = _scan_torch_pickle(path, sniff)
        if problem:
            entry.kind, entry.problem = entry.kind or "unknown", problem
            return entry
        keys, shapes = _tensor_names_from_strings(strings), {}
    found = ModelEntry(kind="", name=entry.name, spec=entry.spec, source=source)
    _classify(found, keys, shapes, meta)
    entry.family, entry.family_text, entry.lora, entry.note = found.family, found.family_text, found.lora, found.note
    if hint_kind and found.kind not in (hint_kind, "unknown"):
        entry.note = "; ".join(x for x in (entry.note, f"a {found.kind.replace('_', ' ')} in the {hint_kind} folder") if x)
    entry.kind = found.kind if found.kind != "unknown" or not hint_kind else hint_kind
    return entry


def lora_summary(meta: Mapping[str, str], shapes: Mapping[str, tuple[int, ...]] | None = None) -> LoraSummary:
    """The ``ss_*`` summary of a LoRA (rank from the shapes when the metadata lacks it)."""
    s = LoraSummary(base_model=meta.get("ss_sd_model_name", ""), output_name=meta.get("ss_output_name", ""))
    s.network = meta.get("ss_network_module", "")
    try:
        s.rank = int(float(meta["ss_network_dim"]))
    except (KeyError, ValueError):
        ranks = [v[0] for k, v in (shapes or {}).items() if k.endswith("lora_down.weight") and v]
        s.rank = max(set(ranks), key=ranks.count) if ranks else None
    try:
        s.alpha = float(meta["ss_network_alpha"])
    except (KeyError, ValueError):
        s.alpha = None
    epoch, total = meta.get("ss_epoch", ""), meta.get("ss_num_epochs", "")
    s.epochs = f"{epoch}/{total}" if epoch and total and epoch != total else (epoch or total)
    s.triggers = trigger_words(meta.get("ss_tag_frequency", ""))
    return s


def trigger_words(tag_frequency: str, n: int = 3) -> list[str]:
    """The most frequent tags of ``ss_tag_frequency`` (``{folder: {tag: count}}``): what a LoRA was
    trained on, its trigger words first (they are in every caption)."""
    try:
        data = json.loads(tag_frequency) if tag_frequency else {}
    except ValueError:
        return []
    counts: dict[str, int] = {}
    if isinstance(data, dict):
        for tags in data.values():
            if isinstance(tags, dict):
                for tag, c in tags.items():
                    if isinstance(c, (int, float)):
                        t = str(tag).strip()
                        counts[t] = counts.get(t, 0) + int(c)
    return [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n] if t]


# --------------------------------------------------------------------------- folders


def inspect_diffusers(folder: Path, *, source: str, spec: str, repo: str = "") -> ModelEntry:
    """A diffusers pipeline folder (model_index.json): family from its configs."""
    from loratui.engine.models import _family_from_folder

    entry = ModelEntry(kind="checkpoint", name=repo or folder.name, spec=spec, source=source, path=str(folder),
                       format="diffusers", repo=repo)
    family, _src = _family_from_folder(folder)
    if family:
        entry.family, entry.family_text = family, get_family(family).label
    else:
        entry.note = "family unknown from its configs"
    total = 0
    for f in folder.rglob("*"):
        if f.suffix.lower() in WEIGHT_EXT + (".bin",) and f.is_file():
            total += f.stat().st_size
            if not entry.precision and f.parent.name in ("unet", "transformer") and f.suffix == ".safetensors":
                hdr, problem = _read_safetensors_header(f, f.stat().st_size)
                if problem:
                    entry.problem = problem
                elif hdr is not None:
                    entry.precision = _predominant_dtype(hdr) or ""
    entry.size = total
    return entry


def scan_folder(root: Path) -> list[ModelEntry]:
    """Every model file and diffusers folder under ``root``."""
    out: list[ModelEntry] = []
    if not root.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        if "model_index.json" in filenames and here != root:
            out.append(inspect_diffusers(here, source="models", spec=str(here)))
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = here.relative_to(root).parts
        hint = FOLDER_KIND.get(rel[0].lower()) if rel else None
        for name in sorted(filenames):
            p = here / name
            if p.suffix.lower() in WEIGHT_EXT and not name.startswith("."):
                out.append(inspect_file(p, source="models", hint_kind=hint))
    return out


def scan_hub_cache(cache_dir: str | Path | None = None) -> list[ModelEntry]:
    """Model files in the Hugging Face cache: a diffusers repo as one entry (its repo id),
    other repos file by file. Files that are no model (captioners' weights...) are left out."""
    try:
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.errors import CacheNotFound
    except ImportError:  # pragma: no cover - a dependency
        return []
    try:
        info = scan_cache_dir(cache_dir or _hub_cache_dir())
    except (CacheNotFound, OSError, ValueError):
        return []
    out: list[ModelEntry] = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        rev = next((r for r in repo.revisions if "main" in r.refs), None) or max(repo.revisions, key=lambda r: r.last_modified)
        if any(str(f.file_path.relative_to(rev.snapshot_path)) == "model_index.json" for f in rev.files):
            out.append(inspect_diffusers(rev.snapshot_path, source="hub", spec=repo.repo_id, repo=repo.repo_id))
            continue
        for f in sorted(rev.files, key=lambda f: str(f.file_path)):
            if f.file_path.suffix.lower() not in WEIGHT_EXT:
                continue
            rel = f.file_path.relative_to(rev.snapshot_path)
            hint = FOLDER_KIND.get(rel.parts[0].lower()) if len(rel.parts) > 1 else None
            e = inspect_file(f.file_path, source="hub", hint_kind=hint, repo=repo.repo_id)
            e.name = f"{repo.repo_id}/{rel}"
            if e.kind != "unknown":
                out.append(e)
    return out


def empty_hint(root: str | Path, how_to_download: str) -> str:
    """One line for a models folder with no model file in it (or none yet): where it is,
    the layout expected and how to get a model (``how_to_download``: the key or the command)."""
    root = Path(root)
    state = "is empty" if root.is_dir() else "does not exist yet"
    return (f"no model files: the models folder {root} {state}; put checkpoints in checkpoints/, VAEs in vae/, "
            f"LoRAs in lora/, text encoders in text_encoders/ (or a diffusers folder in checkpoints/), "
            f"or download one: {how_to_download}")


def scan(models_dir: str | Path | None = None, *, hub: bool = True, hub_cache: str | Path | None = None) -> list[ModelEntry]:
    """The models folder (default: the setting) and the Hub cache, in kind order."""
    from loratui.engine.userdirs import models_dir as setting

    root = Path(models_dir).expanduser() if models_dir else setting()
    found = scan_folder(root) + (scan_hub_cache(hub_cache) if hub else [])
    order = {k: i for i, k in enumerate(KINDS)}
    return sorted(found, key=lambda e: (order.get(e.kind, len(KINDS)), e.source != "models", e.name.lower()))

