"""Test helpers: write the single files SD3/FLUX users have (transformer-only BFL file,
clip_l / t5xxl / ae files, ComfyUI all-in-one) from a tiny diffusers folder, and a
Hugging Face cache holding a tiny T5 tokenizer."""

from __future__ import annotations

import math
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
            _fuse(out, f"{src}.{suffix}", sd, [f"{t}.{tsuffix}" for t in targets], swapped)
    return out


def _fuse(out: dict, name: str, sd: dict, keys: list[str], swap: bool) -> None:
    """``out[name]``: the tensors ``keys`` of ``sd`` stacked along dim 0 (halves swapped: an
    adaLN's shift / scale), when ``sd`` has them all."""
    if not all(k in sd for k in keys):
        return
    t = torch.cat([sd[k] for k in keys], dim=0)
    if swap:
        a, b = t.chunk(2, dim=0)
        t = torch.cat([b, a], dim=0)
    out[name] = t.contiguous()


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


def sd3_to_sai(transformer) -> dict:
    """A diffusers SD3Transformer2DModel's tensors in Stability AI's MMDiT names (fused qkv,
    the last context block's and the final layer's modulation halves swapped)."""
    sd = transformer.state_dict()
    n = transformer.config.num_layers
    out: dict = {}

    def put(dst, *src, swap=False):
        for suffix in ("weight", "bias"):
            _fuse(out, f"{dst}.{suffix}", sd, [f"{s}.{suffix}" for s in src], swap)

    out["pos_embed"] = sd["pos_embed.pos_embed"].contiguous()
    put("x_embedder.proj", "pos_embed.proj")
    put("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1")
    put("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2")
    put("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1")
    put("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2")
    put("context_embedder", "context_embedder")
    for i in range(n):
        d, s = f"transformer_blocks.{i}", f"joint_blocks.{i}"
        last = i == n - 1
        put(f"{s}.x_block.attn.qkv", f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v")
        put(f"{s}.context_block.attn.qkv", f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj")
        for dst, src in (("x_block.attn.ln_q", "attn.norm_q"), ("x_block.attn.ln_k", "attn.norm_k"),
                         ("context_block.attn.ln_q", "attn.norm_added_q"), ("context_block.attn.ln_k", "attn.norm_added_k"),
                         ("x_block.attn2.ln_q", "attn2.norm_q"), ("x_block.attn2.ln_k", "attn2.norm_k"),
                         ("x_block.attn.proj", "attn.to_out.0"), ("x_block.attn2.proj", "attn2.to_out.0"),
                         ("context_block.attn.proj", "attn.to_add_out"), ("x_block.adaLN_modulation.1", "norm1.linear"),
                         ("x_block.mlp.fc1", "ff.net.0.proj"), ("x_block.mlp.fc2", "ff.net.2"),
                         ("context_block.mlp.fc1", "ff_context.net.0.proj"), ("context_block.mlp.fc2", "ff_context.net.2")):
            put(f"{s}.{dst}", f"{d}.{src}")
        put(f"{s}.x_block.attn2.qkv", f"{d}.attn2.to_q", f"{d}.attn2.to_k", f"{d}.attn2.to_v")
        put(f"{s}.context_block.adaLN_modulation.1", f"{d}.norm1_context.linear", swap=last)
    put("final_layer.linear", "proj_out")
    put("final_layer.adaLN_modulation.1", "norm_out.linear", swap=True)
    return out


def write_sd3_all_in_one(folder: Path, out: Path) -> Path:
    """A ComfyUI-style SD3.5 file with everything in it (sd3.5_medium_incl_clips_t5xxlfp8scaled):
    model.diffusion_model.*, text_encoders.{clip_l,clip_g,t5xxl}.transformer.*, first_stage_model.*."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    out.mkdir(parents=True, exist_ok=True)
    tr = SD3Transformer2DModel.from_pretrained(folder, subfolder="transformer")
    sd = {f"model.diffusion_model.{k}": v for k, v in sd3_to_sai(tr).items()}
    for sub, name in (("text_encoder", "clip_l"), ("text_encoder_2", "clip_g")):
        te = CLIPTextModelWithProjection.from_pretrained(folder, subfolder=sub)
        sd |= {f"text_encoders.{name}.transformer.{k}": v.contiguous() for k, v in te.state_dict().items()
               if not (name == "clip_l" and k == "text_projection.weight")}  # as the real clip_l files: none
    t5 = T5EncoderModel.from_pretrained(folder, subfolder="text_encoder_3")
    sd |= {f"text_encoders.t5xxl.transformer.{k}": v.contiguous() for k, v in t5.state_dict().items()
           if k != "encoder.embed_tokens.weight"}
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    sd |= {f"first_stage_model.{k}": v.contiguous() for k, v in vae_to_ldm(vae).items()}
    path = out / "sd3.5-tiny-incl-clips-t5.safetensors"
    save_file(sd, str(path))
    return path


def write_sd3_split_files(folder: Path, out: Path) -> dict:
    """SD3.5 as Stability AI ships it (sd3.5_medium.safetensors: the MMDiT and the VAE) with
    the text encoders as separate files (clip_l, clip_g, t5xxl): the profile's model settings."""
    from safetensors.torch import load_file

    whole = load_file(str(write_sd3_all_in_one(folder, out / "aio")))
    files = {"base_model": out / "sd3.5-tiny.safetensors", "clip_l": out / "clip_l.safetensors",
             "clip_g": out / "clip_g.safetensors", "t5xxl": out / "t5xxl_fp16.safetensors"}
    save_file({k: v for k, v in whole.items() if not k.startswith("text_encoders.")}, str(files["base_model"]))
    for key, name in (("clip_l", "clip_l"), ("clip_g", "clip_g"), ("t5xxl", "t5xxl")):
        prefix = f"text_encoders.{name}.transformer."
        save_file({k[len(prefix):]: v for k, v in whole.items() if k.startswith(prefix)}, str(files[key]))
    return {k: str(v) for k, v in files.items()}


def sparse_safetensors(path: Path, shapes: dict, dtype: str = "BF16") -> Path:
    """A .safetensors file of tensors of these shapes (``dtype``: safetensors' name): a real
    header, the data a hole (a sparse file: a full-size model's header in no disk space)."""
    import json
    import struct

    size = {"F32": 4, "F8_E4M3": 1}.get(dtype, 2)
    header, at = {}, 0
    for k, shape in shapes.items():
        n = size * math.prod(shape)
        header[k] = {"dtype": dtype, "shape": list(shape), "data_offsets": [at, at + n]}
        at += n
    blob = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + at)
    return path


def sd35_medium_header_file(path: Path) -> Path:
    """A SD3.5 medium single file: its transformer's header, no data (a sparse file)."""
    shapes = {"context_embedder.weight": (1536, 4096), "x_embedder.proj.weight": (1536, 16, 2, 2),
              "final_layer.linear.weight": (64, 1536), "y_embedder.mlp.0.weight": (1536, 2048),
              "pos_embed": (1, 384 * 384, 1536)}
    for i in range(24):
        shapes[f"joint_blocks.{i}.x_block.attn.ln_q.weight"] = (64,)
        shapes[f"joint_blocks.{i}.x_block.attn.qkv.weight"] = (3 * 1536, 1536)
        if i <= 12:
            shapes[f"joint_blocks.{i}.x_block.attn2.qkv.weight"] = (3 * 1536, 1536)
    return sparse_safetensors(path, shapes)


def t5xxl_shapes() -> dict:
    """T5-XXL's encoder as t5xxl_fp16.safetensors holds it (4.76 B weights)."""
    d, ff = 4096, 10240
    shapes = {"shared.weight": (32128, d), "encoder.final_layer_norm.weight": (d,),
              "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (32, 64)}
    for i in range(24):
        b = f"encoder.block.{i}.layer."
        for m in "qkvo":
            shapes[f"{b}0.SelfAttention.{m}.weight"] = (d, d)
        shapes[f"{b}0.layer_norm.weight"] = (d,)
        shapes[f"{b}1.DenseReluDense.wi_0.weight"] = (ff, d)
        shapes[f"{b}1.DenseReluDense.wi_1.weight"] = (ff, d)
        shapes[f"{b}1.DenseReluDense.wo.weight"] = (d, ff)
        shapes[f"{b}1.layer_norm.weight"] = (d,)
    return shapes
