"""Test helper: turn a diffusers pipeline into a single-file checkpoint in the
original LDM (SD 1.x/2.x) / SGM (SDXL) layout — the ``.safetensors`` users
download — so the single-file loader can be tested on tiny models offline.

Layout facts (from the original CompVis/Stability repositories and
diffusers' conversion scripts):

- U-Net under ``model.diffusion_model.``: ``input_blocks.N.{0 resnet | 1 attention}``,
  ``input_blocks.N.0.op`` downsamplers, ``middle_block.{0,1,2}``,
  ``output_blocks.N.{0 resnet | 1 attention | 1 or 2 upsampler}``, ``time_embed.{0,2}``,
  ``label_emb.0.{0,2}`` (SDXL), ``out.{0,2}``; resnets use
  ``in_layers.{0,2}``, ``emb_layers.1``, ``out_layers.{0,3}``, ``skip_connection``.
- VAE under ``first_stage_model.``: ``encoder.down.I.block.J``,
  ``decoder.up.(n-1-I).block.J``, ``mid.block_1/attn_1/block_2``, attention as 1×1
  convs ``q/k/v/proj_out`` with ``norm``; ``nin_shortcut``; ``norm_out``.
- OpenAI CLIP text models as transformers keys under
  ``cond_stage_model.transformer.text_model.`` (SD 1.x) or
  ``conditioner.embedders.0.transformer.text_model.`` (SDXL).
- OpenCLIP text models (SD 2.x ``cond_stage_model.model.``, SDXL
  ``conditioner.embedders.1.model.``): ``token_embedding.weight``,
  ``positional_embedding``, ``transformer.resblocks.I.{ln_1, ln_2, attn.in_proj_weight/bias
  (q,k,v stacked), attn.out_proj, mlp.c_fc, mlp.c_proj}``, ``ln_final``,
  ``text_projection`` (transposed).
"""

from __future__ import annotations

from pathlib import Path

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _unet_prefixes(cfg) -> tuple[dict[str, str], set[str]]:
    """diffusers prefix -> LDM prefix, and which prefixes are resnets."""
    lpb = cfg.layers_per_block
    n = len(cfg.block_out_channels)
    m = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "add_embedding.linear_1.": "label_emb.0.0.",
        "add_embedding.linear_2.": "label_emb.0.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "mid_block.resnets.0.": "middle_block.0.",
        "mid_block.attentions.0.": "middle_block.1.",
        "mid_block.resnets.1.": "middle_block.2.",
    }
    resnets = {"mid_block.resnets.0.", "mid_block.resnets.1."}
    for i in range(n):
        for j in range(lpb):
            idx = 1 + i * (lpb + 1) + j
            m[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{idx}.0."
            resnets.add(f"down_blocks.{i}.resnets.{j}.")
            m[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{idx}.1."
        if i < n - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * (lpb + 1)}.0.op."
    for i in range(n):
        has_attn = "CrossAttn" in cfg.up_block_types[i]
        for j in range(lpb + 1):
            idx = i * (lpb + 1) + j
            m[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{idx}.0."
            resnets.add(f"up_blocks.{i}.resnets.{j}.")
            m[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{idx}.1."
        if i < n - 1:
            m[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{i * (lpb + 1) + lpb}.{2 if has_attn else 1}."
    return m, resnets


def _remap(state: dict, prefixes: dict[str, str], resnets: set[str], inner: dict[str, str]) -> dict:
    order = sorted(prefixes, key=len, reverse=True)
    out = {}
    for k, v in state.items():
        for p in order:
            if k.startswith(p):
                rest = k[len(p):]
                if p in resnets:
                    head, _, tail = rest.partition(".")
                    rest = inner.get(head, head) + "." + tail
                out[prefixes[p] + rest] = v
                break
        else:
            raise KeyError(f"no LDM name for {k}")
    return out


def unet_to_ldm(unet) -> dict:
    prefixes, resnets = _unet_prefixes(unet.config)
    return _remap(unet.state_dict(), prefixes, resnets, _RESNET)


def vae_to_ldm(vae) -> dict:
    cfg = vae.config
    n = len(cfg.block_out_channels)
    lpb = cfg.layers_per_block
    m = {
        "encoder.conv_in.": "encoder.conv_in.",
        "encoder.conv_out.": "encoder.conv_out.",
        "encoder.conv_norm_out.": "encoder.norm_out.",
        "decoder.conv_in.": "decoder.conv_in.",
        "decoder.conv_out.": "decoder.conv_out.",
        "decoder.conv_norm_out.": "decoder.norm_out.",
        "quant_conv.": "quant_conv.",
        "post_quant_conv.": "post_quant_conv.",
    }
    resnets = set()
    for side in ("encoder", "decoder"):
        m[f"{side}.mid_block.resnets.0."] = f"{side}.mid.block_1."
        m[f"{side}.mid_block.resnets.1."] = f"{side}.mid.block_2."
        m[f"{side}.mid_block.attentions.0."] = f"{side}.mid.attn_1."
        resnets |= {f"{side}.mid_block.resnets.0.", f"{side}.mid_block.resnets.1."}
    for i in range(n):
        for j in range(lpb):
            m[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
            resnets.add(f"encoder.down_blocks.{i}.resnets.{j}.")
        if i < n - 1:
            m[f"encoder.down_blocks.{i}.downsamplers.0.conv."] = f"encoder.down.{i}.downsample.conv."
        for j in range(lpb + 1):
            m[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{n - 1 - i}.block.{j}."
            resnets.add(f"decoder.up_blocks.{i}.resnets.{j}.")
        if i < n - 1:
            m[f"decoder.up_blocks.{i}.upsamplers.0.conv."] = f"decoder.up.{n - 1 - i}.upsample.conv."
    inner = {"conv_shortcut": "nin_shortcut"}
    out = _remap(vae.state_dict(), m, resnets, inner)
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    fixed = {}
    for k, v in out.items():
        if ".mid.attn_1." in k:
            head, _, rest = k.partition(".mid.attn_1.")
            name, _, leaf = rest.rpartition(".")
            name = attn[name]
            if leaf == "weight" and v.ndim == 2:
                v = v[:, :, None, None]  # LDM keeps these as 1x1 convs
            k = f"{head}.mid.attn_1.{name}.{leaf}"
        fixed[k] = v
    return fixed


def clip_to_ldm(text_encoder) -> dict:
    """transformers CLIP keys, always with the ``text_model.`` level."""
    out = {}
    for k, v in text_encoder.state_dict().items():
        if k.startswith("text_projection"):
            continue
        key = k if k.startswith("text_model.") else "text_model." + k
        out[key] = v
    return out


def openclip_to_ldm(text_encoder) -> dict:
    """transformers CLIP(-with-projection) weights in the OpenCLIP layout."""
    import torch

    sd = {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
          for k, v in text_encoder.state_dict().items()}
    out = {
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
    }
    if "text_projection.weight" in sd:
        out["text_projection"] = sd["text_projection.weight"].T.contiguous()
    n_layers = text_encoder.config.num_hidden_layers
    for i in range(n_layers):
        src = f"text_model.encoder.layers.{i}."
        dst = f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat(
                [sd[src + f"self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")], dim=0
            )
            out[dst + f"attn.out_proj.{kind}"] = sd[src + f"self_attn.out_proj.{kind}"]
            out[dst + f"ln_1.{kind}"] = sd[src + f"layer_norm1.{kind}"]
            out[dst + f"ln_2.{kind}"] = sd[src + f"layer_norm2.{kind}"]
            out[dst + f"mlp.c_fc.{kind}"] = sd[src + f"mlp.fc1.{kind}"]
            out[dst + f"mlp.c_proj.{kind}"] = sd[src + f"mlp.fc2.{kind}"]
    return out


def _prefixed(prefix: str, sd: dict) -> dict:
    return {prefix + k: v for k, v in sd.items()}


def pipeline_to_ldm(pipe, family: str) -> dict:
    """State dict of a diffusers pipeline in the single-file layout."""
    out = {}
    out.update(_prefixed("model.diffusion_model.", unet_to_ldm(pipe.unet)))
    out.update(_prefixed("first_stage_model.", vae_to_ldm(pipe.vae)))
    if family == "sd1":
        out.update(_prefixed("cond_stage_model.transformer.", clip_to_ldm(pipe.text_encoder)))
    elif family == "sd2":
        out.update(_prefixed("cond_stage_model.model.", openclip_to_ldm(pipe.text_encoder)))
    elif family == "sdxl":
        out.update(_prefixed("conditioner.embedders.0.transformer.", clip_to_ldm(pipe.text_encoder)))
        out.update(_prefixed("conditioner.embedders.1.model.", openclip_to_ldm(pipe.text_encoder_2)))
    else:
        raise ValueError(family)
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def load_pipeline(folder: Path, family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    return cls.from_pretrained(str(folder), local_files_only=True)


def save_single_file(folder: Path, family: str, out: Path, *, metadata: dict | None = None) -> Path:
    """Convert the diffusers folder to ``out`` (.safetensors, or a torch pickle
    for any other suffix, wrapped in ``{"state_dict": ...}`` like old .ckpt files)."""
    import torch
    from safetensors.torch import save_file

    sd = pipeline_to_ldm(load_pipeline(folder, family), family)
    out = Path(out)
    if out.suffix == ".safetensors":
        save_file(sd, str(out), metadata=metadata)
    else:
        torch.save({"state_dict": sd, "global_step": 1}, str(out))
    return out
