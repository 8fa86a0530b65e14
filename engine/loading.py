"""Load a base model for training: U-Net, VAE, text encoder(s), tokenizer(s)
and a DDPM noise scheduler, from

- a single ``.safetensors`` / ``.ckpt`` file in the original LDM/SGM layout
  (what users download), built with the diffusers configs bundled in
  ``engine/configs`` (or ``model.model_config_dir``), entirely offline;
  pickles are only ever opened with ``torch.load(weights_only=True)``;
- a diffusers folder;
- a Hugging Face Hub repo id (normal HF cache; tokens from the environment or
  ``hf auth login`` only — never passed or stored here).

What differs between families (which text encoders, their classes and key
prefixes, the bundled config folder, the VAE's fp16 rule) is asked from the
family (:mod:`loratui.engine.families`). Every failure is a ``ModelLoadError``
whose message names the path and says what to do.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loratui.engine.families import get_family
from loratui.engine.modelfiles import _hub_cache_dir, _hub_offline, _read_json, _sniff, _sniff_problem, _vae_config_path, _weight_files, format_size
from loratui.engine.models import ModelInfo, ModelLoadError, _ckpt_code_problem, _family_from_folder, inspect_model, resolve_prediction


@dataclass
class Components:
    """Everything the trainer needs from the base model."""

    family: str  # a family name (engine.families), e.g. "sd1"
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
    text_memo: Any = None  # the sample prompts' encoder outputs (engine.samples.text_memo), once cached



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
        raise ModelLoadError("\n".join(map(str, problems)))
    prediction_type, _ = resolve_prediction(info, ms)

    try:
        with _quiet_libraries():
            own = get_family(info.family).load_parts(info, ms, dtype, on_progress) if info.family else None
            if own is not None:  # a family with its own loaders (SD3, FLUX)
                parts = own
            elif info.kind == "file":
                parts = _load_single_file(info, ms, prediction_type, dtype, on_progress)
            else:
                parts = _load_pretrained(info, ms, dtype, on_progress)
            vae = parts["vae"]
            if info.vae is not None:
                _progress(on_progress, f"Loading VAE {info.vae.spec}")
                vae = _load_separate_vae(info.vae, vae, on_progress)
    except (ModelLoadError, torch.cuda.OutOfMemoryError):  # (torch.OutOfMemoryError: torch >= 2.5)
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
    prediction_type, found = resolve_prediction(info, ms)
    warnings = [str(w) for w in found]
    warnings += [str(w) for w in info.warnings if str(w) not in warnings]
    vae_needs_fp32 = get_family(family).vae_needs_fp32(vae.config, None if info.vae is None else info.vae.fp16_fixed_vae)
    vae_dtype = torch.float32 if (vae_needs_fp32 and dtype == torch.float16) else dtype

    sched_cfg = dict(parts["scheduler_config"])
    sched_cfg.pop("_class_name", None)
    noise_scheduler = get_family(family).make_noise_scheduler(sched_cfg, prediction_type, ms)

    _progress(on_progress, f"Moving model to {device}")
    unet = _cast(parts["unet"], device, dtype, keep_fp8=bool(getattr(ms, "fp8_base", False)))
    vae = _cast(vae, device, vae_dtype)
    tes = [_cast(te, device, dtype, keep_fp8=True) for te in parts["text_encoders"]]
    for m in (unet, vae, *tes):
        m.eval()
        m.requires_grad_(False)
    for te in tes:  # fp8 weights read as such (a SD3/FLUX fp8 text-encoder file): computed in the run's dtype
        _compute_fp8(te, dtype)

    label = get_family(family).label + (" v-pred" if prediction_type == "v_prediction" else "")
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


def _compute_fp8(module, dtype) -> None:
    import torch

    from loratui.engine.fp8 import apply_fp8, is_fp8

    if any(is_fp8(p) for p in module.parameters()):
        apply_fp8(module, dtype or torch.float32, convert=False)


def _cast(module, device, dtype, keep_fp8: bool = False):
    """Move/cast with torch.nn.Module.to (diffusers' override only adds a log
    line about fp32 modules, which these models do not have). ``keep_fp8``:
    float8 weights (an fp8 file read for an fp8 base) stay float8."""
    import torch

    if keep_fp8:
        from loratui.engine.fp8 import is_fp8

        module._apply(lambda t: t if is_fp8(t) or not t.is_floating_point() else t.to(dtype))
        if torch.device(device) != next(module.parameters()).device:
            torch.nn.Module.to(module, device=device)
        return module
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


def _fill_model(model, state: dict, dtype, *, what: str, path: Path, hint: str, keep_fp8: bool = False):
    """Put ``state`` into a model built on the meta device. Missing weights and
    shape mismatches are errors; extra tensors are ignored. ``keep_fp8``: float8
    Linear/Conv2d weights are kept as read (an fp8 base), never upcast first."""
    from accelerate.utils import set_module_tensor_to_device

    from loratui.engine.fp8 import is_fp8, keeps_fp8

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
        kept = keep_fp8 and is_fp8(v) and keeps_fp8(model, k)
        if v.is_floating_point() and dtype is not None and not kept:
            v = v.to(dtype)
        # the dtype said: accelerate otherwise casts to the meta model's (float32) -- a copy of twice the
        # file in RAM; as is, a tensor already in the run's dtype stays a view of the mapped file
        as_is = kept or (dtype is not None and v.is_floating_point())
        set_module_tensor_to_device(model, k, "cpu", value=v, **({"dtype": v.dtype} if as_is else {}))
    return model


def _empty(cls, config):
    from accelerate import init_empty_weights

    from diffusers import ModelMixin

    with init_empty_weights():
        return cls.from_config(config) if issubclass(cls, ModelMixin) else cls(config)


def _load_single_file(info: ModelInfo, ms, prediction_type: str, dtype, on_progress) -> dict:
    import diffusers
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )
    import transformers
    from transformers import CLIPTextConfig, CLIPTokenizer

    assert info.path is not None and info.family is not None
    path, family = info.path, info.family
    fam = get_family(family)
    cfg = Path(ms.model_config_dir).expanduser() if ms.model_config_dir else fam.config_dir(prediction_type)
    hint = (
        f"The file does not match the {fam.label} configs in {cfg}; if it is a model of "
        f"another shape, set model.model_config_dir to a diffusers folder of the same architecture."
    )
    from loratui.engine.fp8 import descale

    # ComfyUI's scaled fp8 layout (scaled_fp8 + *.scale_weight) exists for U-Nets too: the real weights
    sd = fam.normalize_checkpoint(descale(load_state_dict_file(path, on_progress), dtype))

    try:
        _progress(on_progress, "Building U-Net")
        unet_cls = getattr(diffusers, fam.denoiser_class)
        unet_cfg = unet_cls.load_config(str(cfg / "unet"))
        unet = _empty(unet_cls, unet_cfg)
        unet_sd = convert_ldm_unet_checkpoint(sd, unet.config)
        _fill_model(unet, unet_sd, dtype, what="U-Net", path=path, hint=hint, keep_fp8=bool(getattr(ms, "fp8_base", False)))
        del unet_sd

        _progress(on_progress, "Building VAE")
        vae_cfg = AutoencoderKL.load_config(str(cfg / "vae"))
        vae = _empty(AutoencoderKL, vae_cfg)
        if "VAE" not in info.missing_parts:
            vae_sd = convert_ldm_vae_checkpoint(sd, vae.config)
            _fill_model(vae, vae_sd, None, what="VAE", path=path, hint=hint)
            del vae_sd
        # else: an empty VAE that only carries the config; model.vae replaces it.

        tes, tokenizers = [], []
        for spec in fam.text_encoders:
            _progress(on_progress, f"Building {spec.label}")
            te_cfg = CLIPTextConfig.from_pretrained(str(cfg / spec.subfolder), local_files_only=True)
            te = _empty(getattr(transformers, spec.model_class), te_cfg)
            prefix = spec.ldm_prefixes[0]
            if spec.ldm_format == "open_clip":
                te_sd = convert_open_clip_checkpoint(te, sd, prefix=prefix)
            else:
                te_sd = convert_ldm_clip_checkpoint({k: v for k, v in sd.items() if k.startswith(prefix)})
            _fill_model(te, _match_text_keys(te, te_sd), dtype, what=spec.label, path=path, hint=hint)
            tes.append(te)
            tokenizers.append(CLIPTokenizer.from_pretrained(str(cfg / spec.tokenizer), local_files_only=True))
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
    import diffusers
    from diffusers import AutoencoderKL
    import transformers
    from transformers import CLIPTokenizer

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
                        f"model.family = {ms.family} but {src} is {get_family(family).label}. Set model.family = \"auto\"."
                    )
                family = family or ms.family
            if family is None:
                raise ModelLoadError(f"{src}: cannot tell the model family from its configs. Set model.family.")
        info.family = family
        own = get_family(family).load_parts(info, ms, dtype, on_progress)
        if own is not None:  # a Hub repo of a family with its own loaders (SD3, FLUX)
            return own
        root = info.path if info.path is not None else None
        var = lambda comp: _variant(root / comp) if root is not None else None  # noqa: E731
        _progress(on_progress, "Loading U-Net")
        unet_cls = getattr(diffusers, get_family(family).denoiser_class)
        unet = unet_cls.from_pretrained(src, subfolder="unet", torch_dtype=dtype, variant=var("unet"), **kw)
        _progress(on_progress, "Loading VAE")
        vae = AutoencoderKL.from_pretrained(src, subfolder="vae", variant=var("vae"), **kw)
        tes, toks = [], []
        for spec in get_family(family).text_encoders:
            _progress(on_progress, f"Loading {spec.label}")
            cls = getattr(transformers, spec.model_class)
            tes.append(cls.from_pretrained(src, subfolder=spec.subfolder, dtype=dtype, variant=var(spec.subfolder), **kw))
            toks.append(CLIPTokenizer.from_pretrained(src, subfolder=spec.tokenizer, **kw))
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
