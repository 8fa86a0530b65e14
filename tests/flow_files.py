"""Test helpers: write the single files SD3/FLUX users have (transformer-only BFL file,
clip_l / t5xxl / ae files, ComfyUI all-in-one) from a tiny diffusers folder, and a
Hugging Face cache holding a tiny T5 tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ldm_convert import vae_to_ldm


def flux_to_bfl(transformer) -> dict:
    """A diffusers FluxTransformer2DModel's tensors in BFL names (fused qkv / linear1)."""
    from loratui.engine.families import get_family

    sd = transformer.state_dict()
    out = {}
    for src, targets, swapped in get_family("flux").weight_map(transformer.config):
        pairs = (("scale", "weight"),) if src.endswith("_norm") else (("weight", "weight"), ("bias", "bias"))
        for suffix, tsuffix in pairs:
            keys = [f"{t}.{tsuffix}" for t in targets]
            if not all(k in sd for k in keys):
                continue
            t = torch.cat([sd[k] for k in keys], dim=0)
            if swapped:
                a, b = t.chunk(2, dim=0)
                t = torch.cat([b, a], dim=0)
            out[f"{src}.{suffix}"] = t.contiguous()
    return out


def write_flux_split_files(folder: Path, out: Path, *, t5_dtype=torch.float8_e4m3fn, dtype=torch.bfloat16) -> dict:
    """flux1-dev.safetensors (transformer only, bf16), clip_l, t5xxl (fp8 e4m3fn), ae (LDM names)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    out.mkdir(parents=True, exist_ok=True)
    tr = FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer")
    paths = {"base_model": out / "flux1-tiny.safetensors", "clip_l": out / "clip_l.safetensors",
             "t5xxl": out / "t5xxl_fp8_e4m3fn.safetensors", "ae": out / "ae.safetensors"}
    save_file({k: v.to(dtype) for k, v in flux_to_bfl(tr).items()}, str(paths["base_model"]))
    clip = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    save_file({("text_model." + k if not k.startswith("text_model.") else k): v.contiguous() for k, v in clip.state_dict().items()},
              str(paths["clip_l"]))
    t5 = T5EncoderModel.from_pretrained(folder, subfolder="text_encoder_2")
    t5sd = {k: v.to(t5_dtype).contiguous() for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file(t5sd, str(paths["t5xxl"]))
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    save_file({k: v.contiguous() for k, v in vae_to_ldm(vae).items()}, str(paths["ae"]))
    # the tiny VAE / text encoders are not the bundled full-size shapes: their configs, as a user
    # with an odd model would give them (model.model_config_dir); the transformer's shape is read from its file
    import shutil

    for sub in ("vae", "text_encoder", "text_encoder_2"):
        (out / "configs" / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / sub / "config.json", out / "configs" / sub / "config.json")
    shutil.copytree(folder / "tokenizer", out / "configs" / "tokenizer")  # the tiny CLIP vocabulary; T5's comes from the Hub cache
    return {**{k: str(v) for k, v in paths.items()}, "model_config_dir": str(out / "configs")}


def write_hub_t5_tokenizer(cache: Path) -> Path:
    """The Hub cache layout holding google/t5-v1_1-xxl's tokenizer (a tiny one)."""
    from loratui.engine.tiny_flow import tiny_t5_tokenizer

    repo = cache / "models--google--t5-v1_1-xxl"
    snap = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    tiny_t5_tokenizer().save_pretrained(snap)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(snap.name)
    return cache


def write_flux_all_in_one(folder: Path, out: Path) -> Path:
    """A ComfyUI-style "all in one" FLUX file: model.diffusion_model.*, text_encoders.*.transformer.*, vae.*."""
    from safetensors.torch import load_file

    parts = write_flux_split_files(folder, out / "parts", t5_dtype=torch.float16, dtype=torch.float16)
    sd = {f"model.diffusion_model.{k}": v for k, v in load_file(parts["base_model"]).items()}
    sd |= {f"text_encoders.clip_l.transformer.{k}": v for k, v in load_file(parts["clip_l"]).items()}
    sd |= {f"text_encoders.t5xxl.transformer.{k}": v for k, v in load_file(parts["t5xxl"]).items()}
    sd |= {f"vae.{k}": v for k, v in load_file(parts["ae"]).items()}
    path = out / "flux1-tiny-aio.safetensors"
    save_file(sd, str(path))
    return path
