"""Import a kohya_ss GUI ``.json`` or an sd-scripts ``.toml`` as a profile.

The one-to-one keys are read by one loop over the settings' declarations
(:func:`_map_declared`); the rest — the model family flags, resolution, network
type, learning rates, warm-up, epochs vs steps, state keeping, latent caching,
noise — are the hand-written cases in :mod:`.special` and below.

Cheap to import: no torch.
"""

from __future__ import annotations

import json
import os
import shlex
import tomllib
from pathlib import Path
from typing import Any

from loratui.engine.kohya.builder import Builder, ImportResult, KohyaImportError, report_other
from loratui.engine.kohya.dataset_config import map_dataset_config
from loratui.engine.kohya.kinds import refusal
from loratui.engine.kohya.keys import (
    DATASET_DIR_KEYS,
    GUI_JSON,
    LORATUI_COMMENT,
    LYCORIS_OPTIONS,
    NO_EFFECT,
    SD_SCRIPTS_CONFIG,
    SD_SCRIPTS_DATASET,
    flat_keys,
)
from loratui.engine.kohya.special import map_epochs, map_lrs, map_network, map_resolution, map_state_keeping, map_warmup
from loratui.engine.schema import SettingInfo, settings
from loratui.engine.schema.coerce import BadValue, NotAvailable, blank, convert, is_off, to_bool

# --------------------------------------------------------------------------- reading files


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise KohyaImportError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise KohyaImportError(f"{path}: is a folder, not a config file") from None
    except UnicodeDecodeError:
        raise KohyaImportError(f"{path}: is not a text file (expected a kohya_ss .json or sd-scripts .toml config)") from None
    except OSError as exc:
        raise KohyaImportError(f"{path}: cannot be read ({exc.strerror})") from None


def _load(path: Path) -> tuple[dict[str, Any], str]:
    text = _read_text(path)
    suffix = path.suffix.lower()
    looks_json = suffix == ".json" or (suffix != ".toml" and text.lstrip().startswith("{"))
    if looks_json:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KohyaImportError(f"{path}: is not valid JSON ({exc.msg}, line {exc.lineno}); expected a kohya_ss GUI config") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise KohyaImportError(f"{path}: is not valid TOML ({exc}); expected an sd-scripts config_file or dataset_config") from None
    if not isinstance(data, dict) or not data:
        raise KohyaImportError(f"{path}: holds no settings (expected a table of kohya_ss / sd-scripts keys)")
    return data, text if not looks_json else ""


def _loratui_comments(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for line in text.splitlines():
        m = LORATUI_COMMENT.match(line)
        if m:
            try:
                out.update(tomllib.loads(m.group("assign")))
            except tomllib.TOMLDecodeError:
                pass
    return out


def _resolve(ref: str, base_dir: Path) -> Path | None:
    p = Path(os.path.expanduser(ref))
    for cand in (p, base_dir / p) if not p.is_absolute() else (p,):
        if cand.is_file():
            return cand
    return None


# --------------------------------------------------------------------------- import


def import_kohya(path: str | Path, dataset_config: str | Path | None = None) -> ImportResult:
    """Import a kohya_ss GUI ``.json`` or an sd-scripts ``.toml`` (config_file or
    dataset_config). ``dataset_config`` overrides the one the config names.
    Raises KohyaImportError when the file cannot be read at all."""
    path = Path(path)
    data, text = _load(path)
    base_dir = path.parent
    if text and ("datasets" in data or ("general" in data and isinstance(data["general"], dict))) and "pretrained_model_name_or_path" not in data:
        b = Builder(str(path), SD_SCRIPTS_DATASET)
        map_dataset_config(data, b, path, prefix="")
        _apply_comments(_loratui_comments(text), b)
        return b.result()

    gui = not text
    b = Builder(str(path), GUI_JSON if gui else SD_SCRIPTS_CONFIG)
    flat: dict[str, Any] = {}
    if gui:
        flat = dict(data)
    else:
        # sd-scripts flattens every section into one namespace
        for k, v in data.items():
            if isinstance(v, dict):
                flat.update(v)
            else:
                flat[k] = v
    refused = refusal(str(path), flat, gui)
    if refused:
        raise KohyaImportError(refused)

    ds_ref = str(dataset_config) if dataset_config is not None else flat.get("dataset_config")
    ds_path: Path | None = None
    if dataset_config is not None:
        ds_path = Path(dataset_config)
        if not ds_path.is_file():
            raise KohyaImportError(f"{dataset_config}: no such dataset config file")
    elif not blank(ds_ref):
        ds_path = _resolve(str(ds_ref), base_dir)
        if ds_path is None:
            b.unsupported_(
                "dataset_config", ds_ref,
                f"the dataset config file was not found (looked beside the working folder and {base_dir}); "
                "import it with --dataset-config PATH, or set dataset.train_data_dir yourself",
            )
    if "dataset_config" in flat and (ds_path is not None or blank(ds_ref)):
        if blank(flat["dataset_config"]):
            b.ignore("dataset_config", flat["dataset_config"], "empty: the dataset comes from train_data_dir")
        else:
            b.mapped.append(("dataset_config", flat["dataset_config"], f"read {ds_path}"))
    flat.pop("dataset_config", None)

    # GUI free-form "additional_parameters": parse --key=value items like sd-scripts' CLI
    extra = flat.pop("additional_parameters", None)
    _map_flat(flat, b, gui=gui, uses_dataset_config=ds_path is not None)
    if extra is not None:
        _map_additional(extra, b, uses_dataset_config=ds_path is not None)
    if ds_path is not None:
        try:
            ds_data, _ = _load(ds_path)
        except KohyaImportError as exc:
            raise KohyaImportError(f"{path}: its dataset config {exc}") from None
        map_dataset_config(ds_data, b, ds_path, prefix=f"{ds_path.name}:")
    if text:
        _apply_comments(_loratui_comments(text), b)
    return b.result()


def _apply_comments(values: dict[str, Any], b: Builder) -> None:
    """``# loratui: key = value`` lines written by our export."""
    for key, value in values.items():
        hits = [d for d in b.info if d.split(".")[1] == key]
        if len(hits) == 1:
            b.put(hits[0], value, f"# loratui: {key}")


def _map_additional(extra: Any, b: Builder, uses_dataset_config: bool) -> None:
    if blank(extra):
        b.ignore("additional_parameters", extra, "empty")
        return
    try:
        tokens = shlex.split(str(extra))
    except ValueError as exc:
        b.unsupported_("additional_parameters", extra, f"could not be parsed ({exc}); apply these options by hand")
        return
    parsed: dict[str, Any] = {}
    key = None
    for tok in tokens:
        if tok.startswith("--"):
            name, eq, val = tok[2:].partition("=")
            key = name.replace("-", "_")
            parsed[key] = val if eq else True
            if eq:
                key = None
        elif key is not None:
            cur = parsed[key]
            parsed[key] = tok if cur is True else (cur if isinstance(cur, list) else [cur]) + [tok]
        else:
            b.unsupported_("additional_parameters", tok, "a value without an --option before it; apply it by hand")
    if parsed:
        _map_flat(parsed, b, gui=False, uses_dataset_config=uses_dataset_config, prefix="additional_parameters --")


def _map_flat(cfg: dict[str, Any], b: Builder, *, gui: bool, uses_dataset_config: bool, prefix: str = "") -> None:
    cfg = dict(cfg)
    K = lambda k: prefix + k  # noqa: E731  (the key as reported)
    _map_family(cfg, b, K, gui=gui, top=not prefix)
    for rk in ("max_resolution", "resolution"):
        if rk in cfg:
            map_resolution(b, K(rk), cfg.pop(rk))
    map_network(cfg, b, K, gui)
    map_lrs(cfg, b, K)
    _map_optimizer_flags(cfg, b, K)
    map_warmup(cfg, b, K, gui)
    map_epochs(cfg, b, K, gui)
    _map_caching(cfg, b, K)
    _map_text_caching(cfg, b, K)
    _map_noise(cfg, b, K, gui)
    map_state_keeping(cfg, b, K)
    if "save_model_as" in cfg:
        raw = cfg.pop("save_model_as")
        if blank(raw) or str(raw).lower() == "safetensors":
            b.ignore(K("save_model_as"), raw, "loratui always writes .safetensors")
        else:
            b.unsupported_(K("save_model_as"), raw, "loratui writes .safetensors only (what AUTOMATIC1111, Forge and ComfyUI load)")
    # everything else: one to one by the settings' kohya_ss / sd-scripts names, or reported
    declared = flat_keys()
    lycoris = b.values.get("network.network_type") not in (None, "lora", "locon")
    for key in list(cfg):
        raw = cfg.pop(key)
        if uses_dataset_config and key in DATASET_DIR_KEYS:
            b.ignore(K(key), raw, "sd-scripts ignores it when a dataset_config is given")
        elif key in declared:
            _map_declared(b, declared[key], K(key), raw)
        else:
            _report_unmapped(b, K(key), key, raw, lycoris)


def _map_declared(b: Builder, info: SettingInfo, key: str, raw: Any) -> None:
    """One key that maps to one setting: through the setting's declared converter."""
    if info.kohya_blank and (blank(raw) or raw == []):
        b.ignore(key, raw, info.kohya_blank)
        return
    if blank(raw) and info.convert is None and info.type != "str":
        b.ignore(key, raw, f"empty: the default {info.default!r}")
        return
    try:
        out = convert(info, raw)
    except NotAvailable as exc:
        b.given(info.dotted, exc.value, key, raw, exc.why)
        return
    except BadValue as exc:
        b.unsupported_(key, raw, f"{exc}; kept the default {info.default!r}")
        return
    b.store(info.dotted, out.value, key, raw)
    if out.note:
        b.note(f"{key} {out.note}")


def _report_unmapped(b: Builder, key: str, name: str, raw: Any, lycoris: bool) -> None:
    if name in LYCORIS_OPTIONS and name not in NO_EFFECT:
        if name == "dora_wd" and not is_off(raw, False):
            b.unsupported_(key, raw, "DoRA (weight-decomposed LoRA) is not supported yet")
        else:
            b.ignore(key, raw, "LyCORIS option" + ("" if lycoris else "; not used by LoRA / LoCon"))
    else:
        report_other(b, key, raw, name)


def _map_family(cfg: dict[str, Any], b: Builder, K, *, gui: bool, top: bool) -> None:
    """The sdxl / v2 flags → model.family (sd-scripts configs do not say SDXL: that is the script)."""
    if _map_flow_family(cfg, b, K):
        return
    has_sdxl, has_v2 = "sdxl" in cfg, "v2" in cfg
    sdxl, v2 = cfg.pop("sdxl", None), cfg.pop("v2", None)
    try:
        sdxl_on = False if blank(sdxl) else to_bool(sdxl)
        v2_on = False if blank(v2) else to_bool(v2)
    except BadValue:
        sdxl_on = v2_on = False
        b.unsupported_(K("sdxl/v2"), [sdxl, v2], "not true/false; the model family will be detected from the weights")
    if sdxl_on and v2_on:
        b.unsupported_(K("v2"), v2, "both sdxl and v2 are set; imported as SDXL")
    if sdxl_on:
        b.put("model.family", sdxl, K("sdxl"), "sdxl")
        if has_v2:
            b.ignore(K("v2"), v2, "SDXL model")
    elif v2_on:
        b.put("model.family", v2, K("v2"), "sd2")
        if has_sdxl:
            b.ignore(K("sdxl"), sdxl, "SD 2.x model")
    elif gui and (has_sdxl or has_v2):
        key = "v2" if has_v2 else "sdxl"
        b.put("model.family", v2 if has_v2 else sdxl, K(key), "sd1")
        if has_v2 and has_sdxl:
            b.ignore(K("sdxl"), sdxl, "false: SD 1.x model")
    else:
        if has_sdxl:
            b.ignore(K("sdxl"), sdxl, "false; the model family is detected from the weights")
        if has_v2:
            b.ignore(K("v2"), v2, "false; the model family is detected from the weights")
        if not gui and top:
            b.note(
                "sd-scripts configs do not say whether the model is SDXL (that is the script you ran); "
                "model.family is 'auto': detected from the weights"
            )


def _map_flow_family(cfg: dict[str, Any], b: Builder, K) -> bool:
    """The GUI's flux1_checkbox / sd3_checkbox → model.family flux / sd3 (then sdxl/v2 say nothing)."""
    found = False
    for flag, family in (("flux1_checkbox", "flux"), ("sd3_checkbox", "sd3")):
        if flag not in cfg:
            continue
        value = cfg.pop(flag)
        try:
            on = not blank(value) and to_bool(value)
        except BadValue:
            on = False
        if on and not found:
            b.put("model.family", value, K(flag), family)
            found = True
        else:
            b.ignore(K(flag), value, "off" if not on else "another family flag decides")
    if found:
        for key in ("sdxl", "v2"):
            if key in cfg:
                b.ignore(K(key), cfg.pop(key), "a FLUX.1 / SD3 model")
    return found


def _map_optimizer_flags(cfg: dict[str, Any], b: Builder, K) -> None:
    """sd-scripts' old use_8bit_adam / use_lion_optimizer flags (an optimizer key beats them)."""
    opt_key = "optimizer" if "optimizer" in cfg else ("optimizer_type" if "optimizer_type" in cfg else None)
    for k, name in (("use_8bit_adam", "AdamW8bit"), ("use_lion_optimizer", "Lion")):
        if k not in cfg:
            continue
        v = cfg.pop(k)
        try:
            on = to_bool(v)
        except BadValue:
            on = False
        if on and not opt_key:
            b.put("optimization.optimizer", v, K(k), name)
        else:
            b.ignore(K(k), v, "off" if not on else f"overridden by {opt_key}")


def _map_caching(cfg: dict[str, Any], b: Builder, K) -> None:
    """cache_latents + cache_latents_to_disk → dataset.cache_latents (memory / disk / off)."""
    cl, cld = cfg.pop("cache_latents", None), cfg.pop("cache_latents_to_disk", None)
    if cl is None and cld is None:
        return
    try:
        on = False if blank(cl) else to_bool(cl)
        disk = False if blank(cld) else to_bool(cld)
    except BadValue as exc:
        b.unsupported_(K("cache_latents"), [cl, cld], f"{exc}; kept 'memory'")
        return
    mode = "disk" if disk else ("memory" if on else "off")
    key = "cache_latents_to_disk" if disk else "cache_latents"
    b.put("dataset.cache_latents", cld if disk else cl, K(key), mode)
    other = "cache_latents" if disk else "cache_latents_to_disk"
    if (cl if disk else cld) is not None:
        b.mapped.append((K(other), cl if disk else cld, "dataset.cache_latents"))


def _map_text_caching(cfg: dict[str, Any], b: Builder, K) -> None:
    """cache_text_encoder_outputs (+ _to_disk) → dataset.cache_text_encoder_outputs (memory / disk / off).
    The kohya_ss GUI's family tabs write them as sdxl_… / flux1_… / sd3_…: either one turns caching on."""
    ct, ctd = cfg.pop("cache_text_encoder_outputs", None), cfg.pop("cache_text_encoder_outputs_to_disk", None)
    for prefix in ("sdxl_", "flux1_", "sd3_"):
        for name in ("cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk"):
            if prefix + name not in cfg:
                continue
            raw = cfg.pop(prefix + name)
            b.mapped.append((K(prefix + name), raw, "dataset.cache_text_encoder_outputs"))
            try:
                on = not blank(raw) and to_bool(raw)
            except BadValue:
                on = False
            if on and name.endswith("_to_disk"):
                ctd = raw
            elif on and (blank(ct) or not to_bool(ct)):
                ct = raw
    if ct is None and ctd is None:
        return
    try:
        on = False if blank(ct) else to_bool(ct)
        disk = False if blank(ctd) else to_bool(ctd)
    except BadValue as exc:
        b.unsupported_(K("cache_text_encoder_outputs"), [ct, ctd], f"{exc}; kept 'auto'")
        return
    key = "cache_text_encoder_outputs_to_disk" if disk else "cache_text_encoder_outputs"
    b.put("dataset.cache_text_encoder_outputs", ctd if disk else ct, K(key), "disk" if disk else ("memory" if on else "off"))
    other, raw = ("cache_text_encoder_outputs", ct) if disk else ("cache_text_encoder_outputs_to_disk", ctd)
    if raw is not None:
        b.mapped.append((K(other), raw, "dataset.cache_text_encoder_outputs"))


def _map_noise(cfg: dict[str, Any], b: Builder, K, gui: bool) -> None:
    """noise_offset (unless noise_offset_type is Multires), and the multires / Huber keys."""
    noise_type = cfg.pop("noise_offset_type", None)
    multires = str(noise_type or "").strip().lower() == "multires"
    if noise_type is not None:
        b.ignore(K("noise_offset_type"), noise_type, "see multires_noise_iterations" if multires else "Original: the plain noise offset")
    if "noise_offset" in cfg:
        raw = cfg.pop("noise_offset")
        if multires:
            b.ignore(K("noise_offset"), raw, "not used with noise_offset_type Multires")
        elif blank(raw):
            b.ignore(K("noise_offset"), raw, "empty: off")
        else:
            b.put("optimization.noise_offset", raw, K("noise_offset"))
    iters = cfg.get("multires_noise_iterations")
    multires_on = not is_off(iters, 0) and (multires or not gui)
    # kohya_ss GUI: Original passes noise_offset (+ adaptive / random strength), Multires the multires keys
    for k in ("multires_noise_iterations", "multires_noise_discount"):
        if k in cfg and not multires_on:
            why = ("off" if is_off(iters, 0) else "not used with noise_offset_type Original") if k.endswith("iterations") else "multires noise is off"
            b.ignore(K(k), cfg.pop(k), why)
    for k in ("adaptive_noise_scale", "noise_offset_random_strength"):
        if k in cfg and multires:
            b.ignore(K(k), cfg.pop(k), "not used with noise_offset_type Multires")
    loss = cfg.get("loss_type")
    huber_on = not blank(loss) and str(loss).strip().lower() in ("huber", "smooth_l1")
    for k in ("huber_c", "huber_schedule", "huber_scale"):
        if k in cfg and not huber_on:
            b.ignore(K(k), cfg.pop(k), "only used by the Huber losses (loss_type huber / smooth_l1)")
    by_name = {s.kohya: s for s in settings() if s.special == "import" and s.section == "optimization"}
    for k in ("multires_noise_iterations", "multires_noise_discount", "adaptive_noise_scale",
              "noise_offset_random_strength", "loss_type", "huber_c", "huber_schedule", "huber_scale"):
        if k in cfg:
            _map_declared(b, by_name[k], K(k), cfg.pop(k))
