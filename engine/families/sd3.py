"""SD3 / SD3.5 (large, medium): an MMDiT transformer, CLIP-L + CLIP-G + T5-XXL, a 16-channel
VAE, flow matching with sd-scripts' SD3 objective (preconditioned output, target = latents)."""

from __future__ import annotations

import math
import re
from typing import Any

from loratui.engine.families._flow import FlowFamily
from loratui.engine.families.base import TextEncoderSpec

# diffusers module inside transformer_blocks.i -> (sd-scripts/SAI module in joint_blocks.i, fused part)
BLOCK = {
    "attn.to_q": ("x_block.attn.qkv", 0),
    "attn.to_k": ("x_block.attn.qkv", 1),
    "attn.to_v": ("x_block.attn.qkv", 2),
    "attn.to_out.0": ("x_block.attn.proj", None),
    "attn.add_q_proj": ("context_block.attn.qkv", 0),
    "attn.add_k_proj": ("context_block.attn.qkv", 1),
    "attn.add_v_proj": ("context_block.attn.qkv", 2),
    "attn.to_add_out": ("context_block.attn.proj", None),
    "ff.net.0.proj": ("x_block.mlp.fc1", None),
    "ff.net.2": ("x_block.mlp.fc2", None),
    "ff_context.net.0.proj": ("context_block.mlp.fc1", None),
    "ff_context.net.2": ("context_block.mlp.fc2", None),
    "norm1.linear": ("x_block.adaLN_modulation.1", None),
    "norm1_context.linear": ("context_block.adaLN_modulation.1", None),
    "attn2.to_q": ("x_block.attn2.qkv", 0),
    "attn2.to_k": ("x_block.attn2.qkv", 1),
    "attn2.to_v": ("x_block.attn2.qkv", 2),
    "attn2.to_out.0": ("x_block.attn2.proj", None),
}


def _blocks(keys, part: str = "") -> list[int]:
    return sorted({int(k.split(".")[1]) for k in keys if k.startswith("joint_blocks.") and part in k})


class SD3(FlowFamily):
    name = "sd3"
    label = "SD3/3.5"
    order = 40
    aliases = ("sd35", "sd3.5")
    ss_base_model_version = "sd3"
    modelspec_architecture = "stable-diffusion-3"
    modelspec_implementation = "https://github.com/Stability-AI/generative-models"
    sd_scripts_script = "sd3_train_network.py"
    default_resolution = 1024
    text_encoders = (
        TextEncoderSpec("CLIP-L", "text_encoder", "tokenizer", "CLIPTextModelWithProjection", "clip",
                        ("text_encoders.clip_l.transformer.",)),
        TextEncoderSpec("CLIP-G", "text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection", "clip",
                        ("text_encoders.clip_g.transformer.",)),
        TextEncoderSpec("T5-XXL", "text_encoder_3", "tokenizer_3", "T5EncoderModel", "t5", ("text_encoders.t5xxl.transformer.",)),
    )
    denoiser_class = "SD3Transformer2DModel"
    swap_block_count = 24  # SD3/3.5 medium (large: 38)
    config_folder = "sd35-large"
    checkpoint_markers = ("joint_blocks.",)
    lora_unet_blocks = ("JointTransformerBlock",)
    pipeline_class = "StableDiffusion3Pipeline"
    part_settings = {"CLIP-L": "clip_l", "CLIP-G": "clip_g", "T5-XXL": "t5xxl"}
    default_t5_tokens = 256
    lora_network_module = "networks.lora_sd3"
    sd_scripts_keys = ("clip_l", "clip_g", "t5xxl", "t5xxl_max_token_length", "apply_t5_attn_mask", "weighting_scheme",
                       "logit_mean", "logit_std", "mode_scale", "training_shift")

    def architecture(self, v_pred: bool, denoiser_config: Any = None) -> str:
        """sd-scripts' model types: stable-diffusion-3-medium (no q/k norm), -3-5-medium (MMDiT-X
        self-attention blocks), -3-5-large; stable-diffusion-3 when the model is not known."""
        if denoiser_config is None:
            return "stable-diffusion-3/lora"
        if not getattr(denoiser_config, "qk_norm", None):
            kind = "medium"
        else:
            kind = "5-medium" if getattr(denoiser_config, "dual_attention_layers", None) else "5-large"
        return f"stable-diffusion-3-{kind}/lora"

    def config_folder_named(self, spec: str) -> str | None:
        """``sd3.5_medium.safetensors`` / ``stabilityai/stable-diffusion-3.5-medium`` → SD3.5
        medium, ``sd3_medium…`` → SD3 medium; anything else counts as large."""
        base = str(spec).lower().replace("\\", "/").rsplit("/", 1)[-1]
        if "medium" not in base:
            return None
        return "sd35-medium" if re.search(r"3[._-]?5", base) else "sd3-medium"

    def metadata_extra(self, profile: Any) -> dict[str, Any]:
        """What sd-scripts' sd3_train_network.py adds (update_metadata), and its network_args."""
        m, n = profile.model, profile.network
        out: dict[str, Any] = {
            "ss_apply_lg_attn_mask": False, "ss_apply_t5_attn_mask": m.apply_t5_attn_mask,
            "ss_weighting_scheme": m.weighting_scheme, "ss_logit_mean": m.logit_mean, "ss_logit_std": m.logit_std,
            "ss_mode_scale": m.mode_scale,
        }
        if n.train_t5xxl:
            out["ss_network_args"] = '{"train_t5xxl": "True"}'
        return out

    # ---- single files

    def transformer_config(self, shapes, keys) -> dict:
        hidden, joint = shapes["context_embedder.weight"]
        ln_q = shapes.get("joint_blocks.0.x_block.attn.ln_q.weight")
        head = ln_q[0] if ln_q else 64
        proj = shapes["x_embedder.proj.weight"]
        patch = proj[2]
        return {
            "num_layers": len(_blocks(keys)),
            "caption_projection_dim": hidden,
            "attention_head_dim": head,
            "num_attention_heads": hidden // head,
            "in_channels": proj[1],
            "patch_size": patch,
            "out_channels": shapes["final_layer.linear.weight"][0] // (patch * patch),
            "joint_attention_dim": joint,
            "pooled_projection_dim": shapes["y_embedder.mlp.0.weight"][1],
            "pos_embed_max_size": int(math.isqrt(shapes["pos_embed"][1])),
            "qk_norm": "rms_norm" if ln_q else None,
            "dual_attention_layers": _blocks(keys, ".x_block.attn2."),
        }

    def convert_transformer(self, sd: dict, model) -> dict:
        from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

        return convert_sd3_transformer_checkpoint_to_diffusers(sd)

    # ---- LoRA names as sd-scripts' networks/lora_sd3.py writes them

    def lora_name_table(self, config: Any) -> dict[str, str]:
        table = {}
        last = config.num_layers - 1
        for i in range(config.num_layers):
            for dif, (orig, part) in BLOCK.items():
                name = f"lora_unet_joint_blocks_{i}_{orig}".replace(".", "_")
                if dif == "norm1_context.linear" and i == last:
                    name += "#s"  # diffusers swaps this layer's shift/scale halves
                elif part is not None:
                    name += f"#{part}"
                table[f"transformer_blocks.{i}.{dif}"] = name
        return table

    # ---- text: CLIP-L and CLIP-G penultimate layers (padded to T5's width) then T5-XXL; pooled L+G

    def tokenize(self, tokenizers: list, captions: list[str]) -> list:
        out = []
        for tok in tokenizers[:2]:
            out.append(tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                           return_tensors="pt").input_ids)
        t5 = tokenizers[2](captions, padding="max_length", max_length=tokenizers[2].model_max_length, truncation=True,
                           return_tensors="pt")
        return out + [t5.input_ids, t5.attention_mask]

    def encode_text(self, text_encoders: list, ids: list, clip_skip: int, device) -> tuple[Any, Any]:
        import torch

        clip_l, clip_g, t5 = text_encoders
        lo = clip_l(ids[0].to(device), output_hidden_states=True)
        go = clip_g(ids[1].to(device), output_hidden_states=True)
        t5h = t5(ids[2].to(device)).last_hidden_state
        if getattr(t5, "loratui_apply_attn_mask", False):
            t5h = t5h * ids[3].to(device).unsqueeze(-1).to(t5h.dtype)
        lg = torch.cat([lo.hidden_states[-2], go.hidden_states[-2]], dim=-1)
        lg = torch.nn.functional.pad(lg, (0, t5h.shape[-1] - lg.shape[-1]))
        return torch.cat([lg, t5h.to(lg.dtype)], dim=-2), torch.cat([lo.text_embeds, go.text_embeds], dim=-1)

    def sigmas(self, settings, latents, generator):
        from loratui.engine.flow_matching import sd3_sigmas

        return sd3_sigmas(settings, latents.shape[0], generator, latents.device)

    def predict(self, denoiser, noisy, timesteps, hidden, pooled, crops, device, dtype):
        out = denoiser(hidden_states=noisy.to(dtype), encoder_hidden_states=hidden.to(dtype),
                       pooled_projections=pooled.to(dtype), timestep=(timesteps.sigmas * 1000).to(dtype),
                       return_dict=False)[0]
        sig = timesteps.view(out.ndim).to(out.dtype)
        return out * (-sig) + noisy  # sd-scripts: the output preconditioned to a latents estimate

    def target(self, noise_scheduler, latents, noise, timesteps, prediction_type: str):
        return latents

    def loss_weights(self, noise_scheduler, timesteps):
        from loratui.engine.flow_matching import loss_weighting

        return loss_weighting(timesteps.settings.weighting_scheme, timesteps.sigmas)

    # ---- images

    def pipeline(self, components, scheduler=None):
        import diffusers

        if scheduler is None:
            scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
        tes, toks = components.text_encoders, components.tokenizers
        return diffusers.StableDiffusion3Pipeline(
            scheduler=scheduler, vae=components.vae, transformer=components.unet,
            text_encoder=tes[0], tokenizer=toks[0], text_encoder_2=tes[1], tokenizer_2=toks[1],
            text_encoder_3=tes[2], tokenizer_3=toks[2],
        )


FAMILY = SD3()
