"""Loading SD3/3.5 and FLUX.1 models (the ``sd3``/``flux`` families' ``load_parts``).

Sources: a transformer-only single file (BFL / SAI key names, with or without
``model.diffusion_model.``) with the text encoders and the VAE/AE as separate files
(``model.clip_l``, ``model.clip_g``, ``model.t5xxl``, ``model.ae`` / ``model.vae``); a
ComfyUI "all in one" file (``text_encoders.clip_l.transformer.*``, ``vae.*`` /
``first_stage_model.*``); a diffusers folder; a Hub id. Single files are built on the
bundled configs with the transformer's shape read from its tensors, entirely offline;
bf16, fp16 and fp8 (e4m3fn) tensors are upcast to the compute dtype while filling (an fp8
transformer read for an fp8 base stays fp8); ComfyUI's scaled fp8 files are descaled.

The T5 tokenizer (a SentencePiece model) cannot ship: it is read from the model's
diffusers folder, ``model.model_config_dir``, or the Hugging Face cache
(``google/t5-v1_1-xxl``, the tokenizer sd-scripts uses).
"""

from __future__ import annotations

from pathlib import Path
from loratui.engine.families.base import UNET_PREFIX
from loratui.engine.fp8 import descale
from loratui.engine.loading import _empty, _fill_model, _match_text_keys, _progress, load_state_dict_file
from loratui.engine.modelfiles import _hub_cache_dir, _hub_offline, _read_json
from loratui.engine.models import ModelLoadError

T5_TOKENIZER_REPO = "google/t5-v1_1-xxl"
NOT_TRANSFORMER = ("text_encoders.", "vae.", "first_stage_model.", "cond_stage_model.", "conditioner.")


def convert_by_map(sd: dict, model, weight_map: list[tuple[str, list[str], bool]]) -> dict:
    """Original-layout tensors -> diffusers names: each (prefix, targets, swapped) entry's
    weight/bias rows are split in the targets' order and sizes (the model's own shapes)."""
    import torch

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    out: dict = {}
    for src, targets, swapped in weight_map:
        for suffix in ("weight", "bias", "scale"):
            key = f"{src}.{suffix}"
            if key not in sd:
                continue
            t = sd[key]
            if swapped:
                a, b = t.chunk(2, dim=0)
                t = torch.cat([b, a], dim=0)
            tsuffix = "weight" if suffix == "scale" else suffix
            if len(targets) == 1:
                out[f"{targets[0]}.{tsuffix}"] = t
                continue
            sizes = [expected.get(f"{tg}.{tsuffix}", (0,))[0] for tg in targets]
            if sum(sizes) != t.shape[0]:
                raise ModelLoadError(f"{key}: {tuple(t.shape)} does not split into {sizes}")
            out.update({f"{tg}.{tsuffix}": piece for tg, piece in zip(targets, torch.split(t, sizes, dim=0))})
    return out



def load_flow_parts(fam, info, ms, dtype, on_progress) -> dict:
    if info.kind == "file":
        parts = _load_single(fam, info, ms, dtype, on_progress)
    else:
        parts = _load_pretrained(fam, info, ms, dtype, on_progress)
    t5 = parts["text_encoders"][-1]
    t5.loratui_apply_attn_mask = bool(getattr(ms, "apply_t5_attn_mask", False))
    parts["tokenizers"][-1].model_max_length = fam.t5_tokens(ms, parts["unet"].config)
    return parts


class _Configs:
    """Config folders: ``model.model_config_dir``'s own subfolder where it has one, else the bundled one."""

    def __init__(self, fam, ms):
        self.own = Path(ms.model_config_dir).expanduser() if ms.model_config_dir else None
        self.bundled = fam.config_dir("epsilon")

    def has_own(self, sub: str) -> bool:
        return self.own is not None and (self.own / sub).is_dir()

    def __truediv__(self, sub: str) -> Path:
        return self.own / sub if self.has_own(sub) else self.bundled / sub

    def __str__(self) -> str:
        return str(self.own or self.bundled)


def _load_single(fam, info, ms, dtype, on_progress) -> dict:
    import diffusers
    from diffusers import AutoencoderKL

    path = info.path
    cfg = _Configs(fam, ms)
    hint = (f"Is it a {fam.label} model? For a model of another shape set model.model_config_dir to a diffusers "
            f"folder of the same architecture.")
    sd = descale(load_state_dict_file(path, on_progress), dtype)
    prefixed = any(k.startswith(UNET_PREFIX) for k in sd)
    n = len(UNET_PREFIX)
    tsd = {k[n:]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)} if prefixed else {
        k: v for k, v in sd.items() if not k.startswith(NOT_TRANSFORMER)}
    _progress(on_progress, "Building transformer")
    cls = getattr(diffusers, fam.denoiser_class)
    tcfg = dict(cls.load_config(str(cfg / "transformer")))
    if not cfg.has_own("transformer"):  # the shape read from the file's tensors
        tcfg.update(fam.transformer_config({k: tuple(v.shape) for k, v in tsd.items()}, set(tsd)))
    transformer = _empty(cls, tcfg)
    try:
        converted = fam.convert_transformer(dict(tsd), transformer)
    except (KeyError, IndexError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: the transformer weights do not have the {fam.label} layout ({exc}). {hint}") from None
    # an fp8 file read for an fp8 base stays fp8 (half the RAM of upcasting it first)
    _fill_model(transformer, converted, dtype, what="transformer", path=path, hint=hint,
                keep_fp8=bool(getattr(ms, "fp8_base", False)))
    del converted, tsd

    _progress(on_progress, "Building VAE")
    vae = _empty(AutoencoderKL, AutoencoderKL.load_config(str(cfg / "vae")))
    ae_file = str(getattr(ms, "ae", "") or "").strip()
    if ae_file:
        vae = _vae_from_file(Path(ae_file).expanduser(), vae, "model.ae", on_progress)
    elif any(k.startswith(("vae.", "first_stage_model.")) for k in sd):
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        _fill_model(vae, convert_ldm_vae_checkpoint(sd, vae.config), None, what="VAE", path=path, hint=hint)
    # else: model.vae replaces this empty VAE (engine.loading)

    tes, toks = [], []
    for spec in fam.text_encoders:
        _progress(on_progress, f"Building {spec.label}")
        key = fam.part_settings.get(spec.label, "")
        separate = str(getattr(ms, key, "") or "").strip() if key else ""
        if separate:
            src = Path(separate).expanduser()
            part_sd = _strip(descale(load_state_dict_file(src, on_progress), dtype), spec.ldm_prefixes[0])
        else:
            src, part_sd = path, _strip(sd, spec.ldm_prefixes[0], only=True)
        tes.append(_text_encoder(spec, cfg, part_sd, dtype, src, f"model.{key}" if separate else "model.base_model"))
        toks.append(_tokenizer(fam, spec, None, ms, {}))
    del sd
    sched = _read_json(cfg / "scheduler" / "scheduler_config.json") or {}
    return {"family": fam.name, "unet": transformer, "vae": vae, "text_encoders": tes, "tokenizers": toks,
            "scheduler_config": sched}


def _strip(sd: dict, prefix: str, only: bool = False) -> dict:
    """A text encoder's tensors without its single-file prefix (``only``: just those under it)."""
    if any(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return {} if only else sd


def _text_encoder(spec, cfg, sd: dict, dtype, src: Path, setting: str):
    import transformers

    cls = getattr(transformers, spec.model_class)
    config = cls.config_class.from_pretrained(str(cfg / spec.subfolder), local_files_only=True)
    if spec.ldm_format == "t5":
        if "shared.weight" in sd:
            config.vocab_size, config.d_model = sd["shared.weight"].shape
        blocks = {int(k.split(".")[2]) for k in sd if k.startswith("encoder.block.")}
        if blocks:
            config.num_layers = max(blocks) + 1
    model = _empty(cls, config)
    state = _match_text_keys(model, sd) if spec.ldm_format == "clip" else dict(sd)
    names = set(model.state_dict())
    if "encoder.embed_tokens.weight" in names and "encoder.embed_tokens.weight" not in state and "shared.weight" in state:
        state["encoder.embed_tokens.weight"] = state["shared.weight"]
    if "text_projection.weight" in names and "text_projection.weight" not in state and state:
        # the clip_l.safetensors everyone uses with SD3 (its repo's, comfyanonymous/flux_text_encoders')
        # has no projection: the identity, as sd-scripts' load_clip_l and ComfyUI take it
        import torch

        state["text_projection.weight"] = torch.eye(*model.text_projection.weight.shape)
    if not state:
        raise ModelLoadError(f"{src} has no {spec.label} weights: set {setting} to the {spec.label} file (or use an all-in-one file).")
    hint = f"Is {src.name} the {spec.label} text encoder? ({setting})"
    # an fp8 file's Linear weights stay fp8 (t5xxl_fp8_e4m3fn: 4.9 GB, not 9.5), computed in the run's dtype
    # (engine.loading applies engine.fp8): an exact upcast either way, so the same outputs
    _fill_model(model, state, dtype, what=spec.label, path=src, hint=hint, keep_fp8=True)
    return model


def _vae_from_file(path: Path, base_vae, setting: str, on_progress):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    if not path.is_file():
        raise ModelLoadError(f"{path} ({setting}) does not exist: set it to the VAE/AE file (ae.safetensors).")
    sd = load_state_dict_file(path, on_progress)
    vae = _empty(AutoencoderKL, dict(base_vae.config))
    names = set(vae.state_dict())
    converted = sd if sum(k in names for k in sd) >= len(names) // 2 else convert_ldm_vae_checkpoint(sd, vae.config)
    _fill_model(vae, converted, None, what="VAE", path=path, hint=f"Is it the 16-channel VAE of this model? ({setting})")
    return vae


def _tokenizer(fam, spec, src, ms, kw: dict):
    """A CLIP tokenizer (bundled with SDXL's, the same files) or the T5 tokenizer."""
    from transformers import AutoTokenizer, CLIPTokenizer

    if spec.ldm_format != "t5":
        if src is not None:
            return CLIPTokenizer.from_pretrained(src, subfolder=spec.tokenizer, **kw)
        from loratui.engine.configs import config_dir

        own = Path(ms.model_config_dir).expanduser() / spec.tokenizer if ms.model_config_dir else None
        if own is not None and own.is_dir():
            return CLIPTokenizer.from_pretrained(str(own), local_files_only=True)
        folder = "tokenizer_2" if spec.subfolder == "text_encoder_2" and fam.name != "flux" else "tokenizer"
        return CLIPTokenizer.from_pretrained(str(config_dir("sdxl") / folder), local_files_only=True)
    if src is not None:
        try:
            return AutoTokenizer.from_pretrained(src, subfolder=spec.tokenizer, **kw)
        except Exception:  # not in the folder: try the other places
            pass
    if ms.model_config_dir and (Path(ms.model_config_dir).expanduser() / spec.tokenizer).is_dir():
        return AutoTokenizer.from_pretrained(str(Path(ms.model_config_dir).expanduser() / spec.tokenizer), local_files_only=True)
    offline = _hub_offline()
    try:
        from transformers import T5TokenizerFast

        return T5TokenizerFast.from_pretrained(T5_TOKENIZER_REPO, cache_dir=_hub_cache_dir(), local_files_only=offline)
    except Exception as exc:
        where = "is not in the Hugging Face cache and HF_HUB_OFFLINE is set" if offline else f"could not be fetched ({type(exc).__name__})"
        raise ModelLoadError(
            f"the T5-XXL tokenizer ({T5_TOKENIZER_REPO}) {where}. It does not ship with loratui: run once with the "
            f"network on, or `hf download {T5_TOKENIZER_REPO} spiece.model tokenizer.json tokenizer_config.json "
            f"special_tokens_map.json`, or set model.model_config_dir to a diffusers {fam.label} folder with {spec.tokenizer}/."
        ) from None


def _load_pretrained(fam, info, ms, dtype, on_progress) -> dict:
    import diffusers
    import transformers
    from diffusers import AutoencoderKL

    if info.kind == "hub":
        src, kw = info.spec, {"cache_dir": _hub_cache_dir(), **({"local_files_only": True} if _hub_offline() else {})}
    else:
        src, kw = str(info.path), {"local_files_only": True}
    _progress(on_progress, "Loading transformer")
    transformer = getattr(diffusers, fam.denoiser_class).from_pretrained(src, subfolder="transformer", torch_dtype=dtype, **kw)
    _progress(on_progress, "Loading VAE")
    vae = AutoencoderKL.from_pretrained(src, subfolder="vae", **kw)
    tes, toks = [], []
    for spec in fam.text_encoders:
        _progress(on_progress, f"Loading {spec.label}")
        cls = getattr(transformers, spec.model_class)
        tes.append(cls.from_pretrained(src, subfolder=spec.subfolder, dtype=dtype, **kw))
        toks.append(_tokenizer(fam, spec, src, ms, kw))
    try:
        sched = dict(diffusers.FlowMatchEulerDiscreteScheduler.load_config(src, subfolder="scheduler", **kw))
    except Exception:
        sched = _read_json(fam.config_dir("epsilon") / "scheduler" / "scheduler_config.json") or {}
    return {"family": fam.name, "unet": transformer, "vae": vae, "text_encoders": tes, "tokenizers": toks,
            "scheduler_config": sched}
