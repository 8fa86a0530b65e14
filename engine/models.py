"""Base models: find out what a model path is, without loading it.

``inspect_model(ms)`` looks at the base model (and the optional separate VAE)
without loading any weights: it reads safetensors headers, the opcodes of a
``.ckpt`` pickle (never executing it) or a diffusers folder's JSON configs
(:mod:`loratui.engine.modelfiles`), and says what it found — kind, family,
size — and what is wrong with it. Which family a checkpoint is, each family
says (:mod:`loratui.engine.families`); what is not a base model at all is told
here. It is what ``loratui check`` and the TUI plan panel call, so it stays
cheap: no torch import. Loading is :mod:`loratui.engine.loading`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from loratui.engine.families import families, get_family
from loratui.engine.problems import Problem, error, warning
from loratui.engine.modelfiles import (
    PICKLE_EXT,
    _PATHLIKE_RE,
    SAFETENSORS_EXT,
    _ckpt_code_problem,
    _global_is_safe,
    _hub_cached_file,
    _hub_offline,
    _predominant_dtype,
    _read_json,
    _read_safetensors_header,
    _read_tensor,
    _scan_torch_pickle,
    _sniff,
    _sniff_problem,
    _tensor_names_from_strings,
    _vae_config_path,
    _weight_files,
    format_size,
    looks_like_repo_id,
)

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
    warnings: list[Problem] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    vae: "ModelInfo | None" = None  # the separate VAE, when one is set
    key: str = "model.base_model"  # the setting this path comes from

    # For the base model, ``problems``/``warnings`` include those of the
    # separate VAE (they name model.vae); ``vae`` keeps its own details.

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, message: str, hint: str = "", key: str = "") -> None:
        self.problems.append(error(key or self.key, message, hint))

    def warn(self, message: str, hint: str = "", key: str = "") -> None:
        self.warnings.append(warning(key or self.key, message, hint))

    @property
    def family_label(self) -> str:
        return _family_label(self.family)

    def describe(self) -> str:
        return self.summary()

    def summary(self) -> str:
        """One line for the UI, e.g. ``SDXL · single file · fp16 · 6.9 GB``."""
        if self.kind in ("missing", "empty"):
            return str(self.problems[0]) if self.problems else self.spec
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



# --------------------------------------------------------------------------- family detection

_IN_CONV = "model.diffusion_model.input_blocks.0.0.weight"


def _names_or() -> str:
    names = list(families())
    return ", ".join(names[:-1]) + " or " + names[-1]


def _labels() -> str:
    """``SD 1.x, SD 2.x, SDXL, SD3/3.5, FLUX.1``: the families, as users name them."""
    return ", ".join(f.label for f in families().values())


def _family_label(name: str | None) -> str:
    return get_family(name).label if name in families() else "unknown family"


def _any_prefix(keys: Iterable[str], *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


def detect_family_from_keys(
    keys: Iterable[str], shapes: dict[str, tuple[int, ...]] | None = None
) -> tuple[str | None, str | None]:
    """(family, problem) of an LDM/SGM single-file checkpoint from its tensor
    names (and shapes when known). What is not a base model at all is told
    here; which family it is, each family says (``Family.match_checkpoint``)."""
    keys = set(keys)
    shapes = shapes or {}
    for fam in families().values():  # transformer families (SD3, FLUX): their blocks, in any layout
        if fam.checkpoint_markers and fam.match_checkpoint(keys, shapes) is not None:
            reason = fam.reject_checkpoint(keys, shapes)  # a relative of the family's shape (Chroma, FLUX Fill)
            return (None, reason) if reason else (fam.name, None)
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
            return None, f"is not a checkpoint of a family loratui trains ({_labels()}): unsupported architecture."
        return None, (f"holds no U-Net or transformer weights loratui knows (model.diffusion_model.*, double_blocks.*, "
                      f"joint_blocks.*): it is not a checkpoint of a family loratui trains ({_labels()}).")
    if _IN_CONV in shapes and len(shapes[_IN_CONV]) == 4 and shapes[_IN_CONV][1] != 4:
        return None, (
            f"is an inpainting/instruct model ({shapes[_IN_CONV][1]} input channels). "
            "Train the LoRA on the matching base (non-inpainting) model."
        )
    for fam in families().values():
        reason = fam.reject_checkpoint(keys)
        if reason:
            return None, reason
    found = _surest((fam.match_checkpoint(keys, shapes), fam.name) for fam in families().values())
    if found:
        return found, None
    return None, (
        "has U-Net weights but no text encoder, so it is not a complete checkpoint (and its family "
        "cannot be told). Use a full checkpoint with its text encoder and VAE."
    )


def _surest(matches: Iterable[tuple[int | None, str]]) -> str | None:
    """The family with the surest match (lowest level; the first in order on a tie)."""
    hits = [(level, i, name) for i, (level, name) in enumerate(matches) if level is not None]
    return min(hits)[2] if hits else None


def missing_parts(keys: Iterable[str], family: str) -> list[str]:
    """Parts of a full checkpoint (U-Net, VAE, text encoders) absent from a
    single file's tensor names."""
    own = get_family(family).single_file_missing(set(keys))
    if own is not None:
        return own
    keys = list(keys)
    out = []
    if not _any_prefix(keys, "model.diffusion_model."):
        out.append("U-Net")
    if not _any_prefix(keys, "first_stage_model.", "vae."):
        out.append("VAE")
    for part, prefixes in get_family(family).single_file_parts().items():
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
        given = get_family(info.family).separate_parts(ms) if info.family in families() else {}
        info.problems += get_family(info.family).part_problems(ms) if info.family in families() else []
        parts = [p for p in info.missing_parts if not (p == "VAE" and has_vae_setting) and p not in given]
        if parts:
            vae_hint = " (a missing VAE can be given as model.vae)" if "VAE" in parts else ""
            info.problem(
                f"{info.spec} is not a complete {info.family_label} checkpoint: it has no "
                f"{', '.join(parts)} weights{vae_hint}",
                _parts_hint(info.family, parts),
            )
    if has_vae_setting:
        info.vae = _inspect_vae((ms.vae or "").strip(), info.family)
        info.problems += info.vae.problems
        info.warnings += info.vae.warnings
    return info


def _parts_hint(family: str | None, parts: list[str]) -> str:
    """What to do about missing parts: the settings that give them (SD3/FLUX), or a full checkpoint."""
    settings = get_family(family).part_settings if family in families() else {}
    named = [f"model.{settings[p]}" for p in parts if p in settings]
    if named:
        return f"set {', '.join(named)} to the part's .safetensors file, or use an all-in-one checkpoint."
    return "use a full checkpoint."


def _inspect_spec(spec: str, *, what: str, field_name: str) -> ModelInfo:
    if not spec:
        info = ModelInfo(spec, "empty", key=field_name)
        info.problem(
            "is empty",
            "set it to a .safetensors/.ckpt file, a diffusers folder "
            "or a Hugging Face repo id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5).",
        )
        return info
    path = Path(spec).expanduser()
    if path.is_file():
        return _inspect_file(spec, path, what, field_name)
    if path.is_dir():
        return _inspect_folder(spec, path, what, field_name)
    if path.exists():
        info = ModelInfo(spec, "missing", path=path, key=field_name)
        info.problem(f"{spec} is not a regular file or folder", "choose a model file or folder.")
        return info
    if not _PATHLIKE_RE.match(spec) and looks_like_repo_id(spec):
        return _inspect_hub(spec)
    parent = path.parent
    hint = ""
    if parent.is_dir():
        near = sorted(
            p.name for p in parent.iterdir() if p.suffix.lower() in SAFETENSORS_EXT + PICKLE_EXT
        )[:5]
        if near:
            hint = f"; model files in {parent}: {', '.join(near)}"
    else:
        hint = f" (the folder {parent} does not exist either)"
    info = ModelInfo(spec, "missing", path=path, key=field_name)
    info.problem(f"{spec} does not exist", f"check the path{hint}")
    return info


def _inspect_file(spec: str, path: Path, what: str, key: str) -> ModelInfo:
    size = path.stat().st_size
    info = ModelInfo(spec, "file", path=path, size_bytes=size, key=key)
    sniff = _sniff(path)
    problem = _sniff_problem(path, what, sniff, size)
    if problem:
        info.problem(problem)
        return info
    if sniff == "safetensors":
        info.format = "safetensors"
        hdr, problem = _read_safetensors_header(path, size)
        if problem:
            info.problem(problem)
            return info
        assert hdr is not None
        shapes = {k: v[1] for k, v in hdr.keys.items()}
        info.dtype = _predominant_dtype(hdr)
        if what == "VAE":
            return info
        family, problem = detect_family_from_keys(hdr.keys, shapes)
        if problem:
            info.problem(f"{path} {problem}")
            return info
        info.family, info.family_source = family, "weights"
        info.missing_parts = missing_parts(hdr.keys, family)
        info.prediction_type, info.prediction_source = _pred_from_metadata(hdr.metadata, hdr.keys)
        if get_family(family).prediction_ambiguous and info.prediction_type is None:
            info.prediction_guess = get_family(family).guess_prediction(path, lambda key: _read_tensor(path, hdr, key))
        if "ztsnr" in hdr.keys:
            info.warn(f"{path.name} is marked zero-terminal-SNR (ztsnr); training uses the standard noise schedule.")
        return info
    # torch pickle (.ckpt / .pt / .bin): scan the opcodes, never execute them.
    info.format = "ckpt"
    globals_, strings, problem = _scan_torch_pickle(path, sniff)
    if problem:
        info.problem(problem)
        return info
    unsafe = [g for g in globals_ if not _global_is_safe(g)]
    if unsafe:
        info.problem(_ckpt_code_problem(path, unsafe))
        return info
    if what == "VAE":
        return info
    keys = _tensor_names_from_strings(strings)
    family, problem = detect_family_from_keys(keys)
    if problem:
        info.problem(f"{path} {problem}")
        return info
    info.family, info.family_source = family, "weights"
    info.missing_parts = missing_parts(keys, family)
    info.prediction_type, info.prediction_source = _pred_from_metadata({}, keys)
    if get_family(family).prediction_ambiguous and info.prediction_type is None:
        info.prediction_guess = get_family(family).guess_prediction(path, None)
    return info




def _family_from_folder(folder: Path) -> tuple[str | None, str]:
    """Family of a diffusers pipeline folder from its configs."""
    index = _read_json(folder / "model_index.json") or {}
    unet = _read_json(folder / "unet" / "config.json") or {}
    te = _read_json(folder / "text_encoder" / "config.json") or {}
    found = _surest((fam.match_diffusers(folder, index, unet, te), fam.name) for fam in families().values())
    return (found, "config") if found else (None, "")


def _inspect_folder(spec: str, path: Path, what: str, key: str) -> ModelInfo:
    info = ModelInfo(spec, "folder", path=path, format="diffusers", key=key)
    if what == "VAE":
        return info
    has_index = (path / "model_index.json").is_file()
    if not has_index and not (path / "unet" / "config.json").is_file():
        files = sorted(p.name for p in path.iterdir() if p.suffix.lower() in SAFETENSORS_EXT + PICKLE_EXT)
        if files:
            info.problem(
                f"{path} is a folder, not a diffusers model (no model_index.json). It holds {', '.join(files[:3])}",
                "set model.base_model to that file.",
            )
        else:
            info.problem(
                f"{path} is not a diffusers model folder (no model_index.json, no unet/)",
                "point model.base_model at a model file, a diffusers folder or a Hub repo id.",
            )
        return info
    family, src = _family_from_folder(path)
    info.family, info.family_source = family, src
    needed = (get_family(family) if family else next(iter(families().values()))).diffusers_components()
    missing = [c for c in needed if not (path / c).is_dir()]
    if missing:
        info.problem(
            f"{path} is an incomplete diffusers folder: missing {', '.join(c + '/' for c in missing)}",
            "download the whole model again.",
        )
        return info
    total = 0
    for comp in needed:
        if comp in ("tokenizer", "scheduler") or comp.startswith("tokenizer_"):
            continue
        files = _weight_files(path / comp)
        if not files:
            info.problem(
                f"{path / comp} has no weights (diffusion_pytorch_model.safetensors / model.safetensors)",
                "download the model again.",
            )
            continue
        for f in files:
            size = f.stat().st_size
            total += size
            if f.suffix == ".safetensors":
                hdr, problem = _read_safetensors_header(f, size)
                if problem:
                    info.problem(problem)
                elif comp in ("unet", "vae") and info.dtype is None and hdr is not None:
                    info.dtype = _predominant_dtype(hdr) if comp == "unet" else None
    info.size_bytes = total or None
    tok = path / "tokenizer"
    if not ((tok / "vocab.json").is_file() and (tok / "merges.txt").is_file()) and not (tok / "tokenizer.json").is_file():
        info.problem(f"{tok} lacks vocab.json/merges.txt", "download the model again.")
    sched = _read_json(path / "scheduler" / "scheduler_config.json") or {}
    pt = sched.get("prediction_type")
    if pt in ("epsilon", "v_prediction"):
        info.prediction_type, info.prediction_source = pt, "its scheduler/scheduler_config.json"
    if family is None and not info.problems:
        info.problem(f"{path}: cannot tell the model family from its configs", f"set model.family ({_names_or()}).")
    return info


def _inspect_hub(repo_id: str) -> ModelInfo:
    info = ModelInfo(repo_id, "hub", format="hub")
    index = _hub_cached_file(repo_id, "model_index.json")
    if index is None:
        if _hub_offline():
            info.problem(
                f"{repo_id} is not a local path, and as a Hugging Face repo id it is not in the local "
                f"cache while HF_HUB_OFFLINE is set",
                "unset HF_HUB_OFFLINE to download it, or point model.base_model at a local file or folder.",
            )
        else:
            info.warn(
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
                info.problem(f"{info.path} is a LoRA, not a VAE", "choose a VAE file.")
            else:
                info.problem(
                    f"{info.path} holds no VAE weights (encoder.*/decoder.*)",
                    "choose a VAE file such as sdxl_vae.safetensors or vae-ft-mse-840000-ema-pruned.safetensors.",
                )
        info.fp16_fixed_vae = "fp16" in name and "fix" in name
    elif info.kind == "folder" and info.path is not None:
        cfg = _vae_config_path(info.path)
        if cfg is None:
            info.problem(
                f"{info.path} is not a diffusers VAE folder (no config.json of an AutoencoderKL)",
                "choose a VAE file or a diffusers vae/ folder.",
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



def _apply_family_setting(info: ModelInfo, ms) -> None:
    want = getattr(ms, "family", "auto") or "auto"
    if want == "auto":
        return
    if info.family and info.family != want:
        info.problem(
            f"model.family = {want} but {info.spec} is {get_family(info.family).label} "
            f"(detected from its {'weights' if info.family_source == 'weights' else 'configs'})",
            f"set model.family = \"auto\" or choose a {get_family(want).label} model.",
            key="model.family",
        )
        return
    if info.family is None:
        info.family, info.family_source = want, "profile"


def resolve_prediction(info: ModelInfo, ms) -> tuple[str, list[Problem]]:
    """The prediction type to train with, and warnings about the choice.

    ``model.v_parameterization = true`` always wins. Otherwise a prediction
    type that the model itself declares (diffusers scheduler config, ModelSpec
    metadata, a ``v_pred`` marker) is used. A guess from the weights is only
    ever a warning."""
    warnings: list[Problem] = []

    def warn(text: str) -> None:
        warnings.append(warning(V_PRED_SETTING, text))

    declared, source = info.prediction_type, info.prediction_source
    if ms.v_parameterization:
        if declared == "epsilon":
            warn(
                f"{V_PRED_SETTING} = true, but {info.spec} declares epsilon prediction in {source}. "
                f"Training with v-prediction as set; set it to false if that is a mistake."
            )
        elif declared is None and info.family in families() and get_family(info.family).v_pred_unusual:
            fam = get_family(info.family)
            warn(f"{V_PRED_SETTING} = true on an {fam.label} model: {fam.v_pred_unusual}. Training with v-prediction as set.")
        return "v_prediction", warnings
    if declared == "v_prediction":
        warn(
            f"{info.spec} is a v-prediction model ({source}): training with v-prediction. "
            f"Set {V_PRED_SETTING} = true to make this explicit."
        )
        return "v_prediction", warnings
    if declared == "epsilon":
        return "epsilon", warnings
    if info.family in families() and get_family(info.family).prediction_ambiguous and info.kind == "file":
        warn(get_family(info.family).prediction_warning(info.spec, info.prediction_guess, V_PRED_SETTING))
    return "epsilon", warnings


def _prediction_warnings(info: ModelInfo, ms) -> None:
    _pt, warnings = resolve_prediction(info, ms)
    info.warnings.extend(warnings)


def _check_config_dir(info: ModelInfo, cfg: Path) -> None:
    if not cfg.is_dir():
        info.problem(f"{cfg} does not exist", "clear it to use the bundled configs.", key="model.model_config_dir")
        return
    if info.family in families() and get_family(info.family).checkpoint_markers:
        return  # SD3/FLUX: each subfolder it has replaces the bundled one, the rest stay (engine.flow_loading)
    base = ["unet", "vae", "text_encoder", "tokenizer"]
    missing = [c for c in base if not (cfg / c / ("config.json" if c != "tokenizer" else "")).exists()]
    extra = get_family(info.family).diffusers_components() if info.family in families() else []
    missing += [c for c in extra if c not in base and c != "scheduler" and not (cfg / c).is_dir()]
    if missing:
        info.problem(
            f"{cfg} is not a diffusers config folder for {info.family_label} (missing {', '.join(m + '/' for m in missing)})",
            "point it at a diffusers model folder, or clear it to use the bundled configs.",
            key="model.model_config_dir",
        )

