"""The metadata written into a saved LoRA: sd-scripts' ``ss_*`` keys, the
``modelspec.*`` keys, and the hashes AUTOMATIC1111 shows and matches LoRAs by.

Names and value formats follow kohya-ss/sd-scripts ``train_network.py`` (every
value is ``str(value)`` of what sd-scripts holds: ``"True"``, ``"None"``,
``"0.0001"``, ``"(512, 512)"``; JSON strings for the dataset tables) and
``library/sai_model_spec.py`` (``modelspec.*``), so metadata readers written for
kohya LoRAs (AUTOMATIC1111, Forge, ComfyUI, civitai) read ours the same way.

Use::

    meta = build_metadata(profile, family="sdxl", report=..., plan=..., tag_frequency=...,
                          bucket_info=..., base_model_hashes=model_hashes(ckpt),
                          training_started_at=t0, training_finished_at=None, steps=s, epoch=e)
    meta = finalize_metadata(state_dict, meta)   # the state dict exactly as it is saved
    safetensors.torch.save_file(state_dict, path, metadata=meta)

Cheap to import: torch / safetensors are imported inside ``finalize_metadata``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import random
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from loratui.engine.families import family_names, get_family
from loratui.engine.plan import DatasetReport, StepPlan
from loratui.engine.registries import NETWORK_TYPES, OPTIMIZERS, parse_key_values
from loratui.engine.schema import Profile, settings

MODELSPEC_VERSION = "1.0.0"


# --------------------------------------------------------------------------- helpers


def tag_frequency(items: Iterable[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """``{concept folder name: {tag: count}}`` from (folder name, caption) pairs —
    the folder name as on disk, e.g. ``10_mychar``, as sd-scripts keys it —
    counted as sd-scripts does: comma-separated, stripped, lower-cased, empty
    tags skipped, each caption counted once (repeats do not multiply)."""
    out: dict[str, dict[str, int]] = {}
    for folder, caption in items:
        freq = out.setdefault(folder, {})
        for tag in (caption or "").split(","):
            tag = tag.strip()
            if tag:
                tag = tag.lower()
                freq[tag] = freq.get(tag, 0) + 1
    return out


def model_hashes(path: str | Path, *, full: bool = True) -> dict[str, str]:
    """AUTOMATIC1111's hashes of a checkpoint file:

    * ``"model_hash"``: the legacy hash, first 8 hex digits of the sha256 of the
      64 KiB at offset 1 MiB (what sd-scripts writes as ``ss_sd_model_hash``);
    * ``"sha256"``: the sha256 of the whole file (``ss_new_sd_model_hash``;
      AUTOMATIC1111 shows its first 10 digits).

    ``full=False`` skips the whole-file hash (it reads every byte: a few seconds
    per GB). A diffusers folder or a Hub repo id has no such hashes: ``{}``.
    """
    p = Path(path)
    if not p.is_file():
        return {}
    out: dict[str, str] = {}
    with open(p, "rb") as fh:
        fh.seek(0x100000)
        out["model_hash"] = hashlib.sha256(fh.read(0x10000)).hexdigest()[:8]
    if full:
        from loratui.engine.fsutil import file_sha256

        out["sha256"] = file_sha256(p)
    return out


def _s(value: Any) -> str:
    """str() as sd-scripts applies it to every metadata value."""
    return str(value)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _json(value: Any) -> str:
    return json.dumps(value, default=_json_default)


def optimizer_text(name: str, kwargs: dict[str, Any] | None = None) -> str:
    """``ss_optimizer``: class path plus ``(k=v,k=v)`` when arguments were given."""
    path = OPTIMIZERS[name].class_path if name in OPTIMIZERS else name
    args = ",".join(f"{k}={v}" for k, v in (kwargs or {}).items())
    return path + (f"({args})" if args else "")


def _dirs_info(concepts) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for c in concepts:
        name = os.path.basename(os.path.normpath(c.folder))
        key, i = name, 2
        while key in out:
            key = f"{name} ({i})"
            i += 1
        out[key] = {"n_repeats": c.repeats, "img_count": c.images}
    return out


# --------------------------------------------------------------------------- build


def declared_metadata(profile: Profile) -> dict[str, Any]:
    """The ``ss_*`` keys that hold a setting as is, from the settings' declarations
    (``setting(ss=...)``): unset, or at sd-scripts' "off" value (``sd_omit``), is None;
    float settings are floats, as sd-scripts holds them."""
    out: dict[str, Any] = {}
    for s in settings():
        if not s.ss:
            continue
        value = profile.get(s.dotted)
        if value is None or value == "" or (s.sd_omit is not None and value == s.sd_omit):
            value = None
        elif s.type == "float":
            value = float(value)
        out[s.ss] = value
    return out



def build_metadata(
    profile: Profile,
    *,
    family: str,
    report: DatasetReport,
    plan: StepPlan,
    tag_frequency: dict[str, dict[str, int]],
    bucket_info: dict | None,
    base_model_hashes: dict[str, str] | None,
    training_started_at: float,
    training_finished_at: float | None,
    steps: int,
    epoch: int,
    session_id: int | None = None,
    vae_hashes: dict[str, str] | None = None,
    mixed_precision: str | None = None,
    optimizer_kwargs_used: dict[str, Any] | None = None,
    output_name: str | None = None,
    num_processes: int = 1,
    v_pred: bool | None = None,
    denoiser_config: Any = None,
) -> dict[str, str]:
    """The ``ss_*`` and ``modelspec.*`` metadata for a LoRA saved after ``steps``
    optimizer steps in (1-based) ``epoch``. ``family`` is the resolved family
    (sd1, sd2 or sdxl). ``base_model_hashes`` / ``vae_hashes`` come from
    :func:`model_hashes` (empty for folders and repo ids). ``mixed_precision`` is
    the precision actually used (default: the profile's); ``optimizer_kwargs_used``
    the optimizer keyword arguments actually used (default: the profile's optimizer_args,
    parsed by registries.parse_key_values as sd-scripts parses them);
    ``v_pred`` whether the model was trained with v-prediction (default: the profile's
    v_parameterization)."""
    if family not in family_names():
        raise ValueError(f"family must be resolved to one of {', '.join(family_names())}, not {family!r}")
    m, d, n, o, out = profile.model, profile.dataset, profile.network, profile.optimization, profile.output
    name = output_name if output_name is not None else out.output_name
    v_param = m.v_parameterization if v_pred is None else bool(v_pred)
    width = d.resolution
    height = d.resolution_height or d.resolution
    fam = get_family(family)
    version = fam.base_model_version(v_param)
    warm = o.lr_warmup_steps
    kwargs = optimizer_kwargs_used if optimizer_kwargs_used is not None else parse_key_values(o.optimizer_args)
    reg_images = sum(c.images * c.repeats for c in report.reg_concepts)
    finished = training_finished_at if training_finished_at is not None else time.time()
    cache = d.cache_latents != "off"

    meta: dict[str, Any] = declared_metadata(profile)
    meta |= {
        "ss_session_id": session_id if session_id is not None else random.randint(0, 2**32),
        "ss_training_started_at": training_started_at,
        "ss_output_name": name or None,
        "ss_num_train_images": report.images_x_repeats,
        "ss_num_validation_images": 0,
        "ss_num_reg_images": reg_images,
        "ss_num_batches_per_epoch": plan.batches_per_epoch,
        "ss_num_epochs": plan.epochs,
        "ss_max_train_steps": plan.total_steps,
        "ss_lr_warmup_steps": int(warm) if float(warm).is_integer() else float(warm),
        "ss_network_module": fam.lora_network_module or NETWORK_TYPES[n.network_type].network_module,
        "ss_mixed_precision": mixed_precision or o.mixed_precision,
        "ss_full_fp16": o.full_fp16,
        "ss_v2": "v2" in fam.sd_scripts_flags,
        "ss_base_model_version": version,
        "ss_cache_latents": cache,
        "ss_lowram": False,
        "ss_multires_noise_discount": o.multires_noise_discount,
        "ss_zero_terminal_snr": False,
        "ss_optimizer": optimizer_text(o.optimizer, kwargs),
        "ss_caption_dropout_every_n_epochs": 0,
        "ss_caption_tag_dropout_rate": 0.0,
        "ss_face_crop_aug_range": None,
        "ss_debiased_estimation": o.debiased_estimation_loss,
        "ss_noise_offset_random_strength": o.noise_offset_random_strength,
        "ss_ip_noise_gamma_random_strength": o.ip_noise_gamma_random_strength,
        "ss_loss_type": o.loss_type,
        "ss_huber_schedule": o.huber_schedule,
        "ss_huber_c": o.huber_c,
        "ss_fp8_base": m.fp8_base,
        "ss_fp8_base_unet": m.fp8_base,  # loratui's fp8 base is the denoiser only, as sd-scripts' --fp8_base_unet
        "ss_masked_loss": o.masked_loss,
        # train_data_dir datasets (sd-scripts' non-dataset_config branch)
        "ss_total_batch_size": o.train_batch_size * num_processes * o.gradient_accumulation_steps,
        "ss_resolution": (width, height),
        "ss_color_aug": False,
        "ss_random_crop": False,
        "ss_bucket_no_upscale": d.bucket_no_upscale if d.enable_bucket else False,
        "ss_min_bucket_reso": d.min_bucket_reso if d.enable_bucket else None,
        "ss_max_bucket_reso": d.max_bucket_reso if d.enable_bucket else None,
        "ss_dataset_dirs": _json(_dirs_info(report.concepts)),
        "ss_reg_dataset_dirs": _json(_dirs_info(report.reg_concepts)),
        "ss_tag_frequency": _json(tag_frequency),
        "ss_bucket_info": _json(bucket_info),
        "ss_training_finished_at": finished,
        "ss_steps": steps,
        "ss_epoch": epoch,
    }
    from loratui.engine.registries import lora_network_args

    extra = fam.metadata_extra(profile)  # SD3/FLUX: their own ss_* keys, as sd-scripts writes them
    # network_args: the family's (train_blocks...) and networks.lora's (conv, dropouts), as one dict
    lora_args = json.loads(extra.pop("ss_network_args", "{}")) | lora_network_args(n)
    if lora_args:
        meta["ss_network_args"] = _json(lora_args)
    meta |= extra
    if NETWORK_TYPES[n.network_type].algo is not None:  # -- lycoris: as kohya_ss writes them
        from loratui.engine.registries import lycoris_args

        meta["ss_network_args"] = _json(lycoris_args(n))

    base = m.base_model
    if base:
        hashes = base_model_hashes or {}
        if "model_hash" in hashes:
            meta["ss_sd_model_hash"] = hashes["model_hash"]
        if "sha256" in hashes:
            meta["ss_new_sd_model_hash"] = hashes["sha256"]
        meta["ss_sd_model_name"] = os.path.basename(os.path.normpath(base)) if os.path.exists(base) else base
    if m.vae:
        hashes = vae_hashes or {}
        if "model_hash" in hashes:
            meta["ss_vae_hash"] = hashes["model_hash"]
        if "sha256" in hashes:
            meta["ss_new_vae_hash"] = hashes["sha256"]
        meta["ss_vae_name"] = os.path.basename(os.path.normpath(m.vae)) if os.path.exists(m.vae) else m.vae

    result = {k: _s(v) for k, v in meta.items()}
    result.update(modelspec(profile, family=family, timestamp=finished, output_name=name, v_pred=v_param,
                            denoiser_config=denoiser_config))
    return result


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def modelspec(
    profile: Profile, *, family: str, timestamp: float, output_name: str | None = None, v_pred: bool | None = None,
    denoiser_config: Any = None,
) -> dict[str, str]:
    """The ``modelspec.*`` keys (Stability AI's ModelSpec, as sd-scripts writes them;
    ``denoiser_config``: the trained model's, which tells SD3.5 medium / large, Flux dev / schnell)."""
    m, d, out = profile.model, profile.dataset, profile.output
    name = output_name if output_name is not None else out.output_name
    v = m.v_parameterization if v_pred is None else bool(v_pred)
    spec = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": get_family(family).architecture(v, denoiser_config),
        "modelspec.implementation": get_family(family).modelspec_implementation,
        "modelspec.title": out.metadata_title or name or f"LoRA@{timestamp}",
        "modelspec.resolution": f"{d.resolution}x{d.resolution_height or d.resolution}",
        "modelspec.prediction_type": "v" if v else "epsilon",
        "modelspec.date": datetime.datetime.fromtimestamp(int(timestamp)).isoformat(),
    }
    if not get_family(family).modelspec_prediction:
        del spec["modelspec.prediction_type"]
    if out.metadata_author:
        spec["modelspec.author"] = out.metadata_author
    if out.metadata_description:
        spec["modelspec.description"] = out.metadata_description
    if out.metadata_tags:
        spec["modelspec.tags"] = out.metadata_tags
    if out.trigger_words:
        spec["modelspec.trigger_phrase"] = out.trigger_words
    if m.clip_skip > 1:
        spec["modelspec.encoder_layer"] = str(m.clip_skip)
    return spec


def with_progress(metadata: dict[str, str], *, steps: int, epoch: int, finished_at: float | None = None) -> dict[str, str]:
    """A copy updated for another save (sd-scripts updates these three at each save).
    Call :func:`finalize_metadata` again afterwards: the hashes depend on them."""
    out = {k: v for k, v in metadata.items() if not k.startswith("sshs_")}
    ts = finished_at if finished_at is not None else time.time()
    out["ss_training_finished_at"] = str(ts)
    out["ss_steps"] = str(steps)
    out["ss_epoch"] = str(epoch)
    if "modelspec.date" in out:
        out["modelspec.date"] = datetime.datetime.fromtimestamp(int(ts)).isoformat()
    return out


# --------------------------------------------------------------------------- hashes of the LoRA itself


def _addnet_hash_safetensors(data: bytes) -> str:
    """sha256 of the tensor bytes (everything after the 8-byte length and the JSON header)."""
    n = int.from_bytes(data[:8], "little")
    return hashlib.sha256(memoryview(data)[8 + n:]).hexdigest()


def _addnet_hash_legacy(data: bytes) -> str:
    """First 8 hex digits of the sha256 of the 64 KiB at offset 1 MiB."""
    return hashlib.sha256(memoryview(data)[0x100000:0x110000]).hexdigest()[:8]


def finalize_metadata(state_dict: dict, metadata: dict[str, str]) -> dict[str, str]:
    """Add ``sshs_model_hash`` and ``sshs_legacy_hash`` as sd-scripts does
    (``precalculate_safetensors_hashes``): serialise the tensors with only the
    ``ss_*`` metadata, then hash the tensor bytes (the "addnet" hash that
    AUTOMATIC1111 shows for LoRAs) and the legacy 64 KiB window.

    ``state_dict`` must be exactly what is saved (same dtype, same keys)."""
    from safetensors.torch import save

    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    data = save(state_dict, metadata=ss_only)
    out = {k: v for k, v in metadata.items() if not k.startswith("sshs_")}
    out["sshs_model_hash"] = _addnet_hash_safetensors(data)
    out["sshs_legacy_hash"] = _addnet_hash_legacy(data)
    return out
