"""FLUX.1 dev / schnell: a double/single-stream transformer, CLIP-L (pooled) + T5-XXL,
a 16-channel AE, flow matching; dev is guidance-distilled (``guidance_scale``)."""

from __future__ import annotations

from typing import Any

from loratui.engine.families._flow import FlowFamily
from loratui.engine.families.base import TextEncoderSpec, any_prefix

# diffusers module (inside a block) -> (sd-scripts/BFL module, part of its fused layer or None)
DOUBLE = {
    "norm1.linear": ("img_mod.lin", None),
    "norm1_context.linear": ("txt_mod.lin", None),
    "attn.to_q": ("img_attn.qkv", 0),
    "attn.to_k": ("img_attn.qkv", 1),
    "attn.to_v": ("img_attn.qkv", 2),
    "attn.to_out.0": ("img_attn.proj", None),
    "attn.add_q_proj": ("txt_attn.qkv", 0),
    "attn.add_k_proj": ("txt_attn.qkv", 1),
    "attn.add_v_proj": ("txt_attn.qkv", 2),
    "attn.to_add_out": ("txt_attn.proj", None),
    "ff.net.0.proj": ("img_mlp.0", None),
    "ff.net.2": ("img_mlp.2", None),
    "ff_context.net.0.proj": ("txt_mlp.0", None),
    "ff_context.net.2": ("txt_mlp.2", None),
}
SINGLE = {
    "attn.to_q": ("linear1", 0),
    "attn.to_k": ("linear1", 1),
    "attn.to_v": ("linear1", 2),
    "proj_mlp": ("linear1", 3),
    "proj_out": ("linear2", None),
    "norm.linear": ("modulation.lin", None),
}
# weights that are not LoRA targets: BFL tensor -> diffusers tensor
DOUBLE_NORMS = {
    "img_attn.norm.query_norm": "attn.norm_q",
    "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q",
    "txt_attn.norm.key_norm": "attn.norm_added_k",
}
SINGLE_NORMS = {"norm.query_norm": "attn.norm_q", "norm.key_norm": "attn.norm_k"}  # their .scale -> .weight
TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
FINAL_MOD = ("final_layer.adaLN_modulation.1", "norm_out.linear")  # scale/shift halves swapped


def _count(keys, prefix: str) -> int:
    found = {int(k.split(".")[1]) for k in keys if k.startswith(prefix) and k.split(".")[1].isdigit()}
    return max(found) + 1 if found else 0


class Flux(FlowFamily):
    name = "flux"
    label = "FLUX.1"
    order = 50
    aliases = ("flux1", "flux.1")
    ss_base_model_version = "flux1"
    modelspec_architecture = "flux-1-dev"
    modelspec_implementation = "https://github.com/black-forest-labs/flux"
    sd_scripts_script = "flux_train_network.py"
    default_resolution = 1024
    text_encoders = (
        TextEncoderSpec("CLIP-L", "text_encoder", "tokenizer", "CLIPTextModel", "clip", ("text_encoders.clip_l.transformer.",)),
        TextEncoderSpec("T5-XXL", "text_encoder_2", "tokenizer_2", "T5EncoderModel", "t5", ("text_encoders.t5xxl.transformer.",)),
    )
    denoiser_class = "FluxTransformer2DModel"
    swap_block_count = 57  # 19 double-stream + 38 single-stream blocks
    config_folder = "flux"
    checkpoint_markers = ("double_blocks.", "single_blocks.")
    lora_unet_blocks = ("FluxTransformerBlock", "FluxSingleTransformerBlock")
    pipeline_class = "FluxPipeline"
    part_settings = {"CLIP-L": "clip_l", "T5-XXL": "t5xxl", "VAE": "ae"}
    default_t5_tokens = 512
    lora_network_module = "networks.lora_flux"
    sd_scripts_keys = ("clip_l", "t5xxl", "ae", "t5xxl_max_token_length", "apply_t5_attn_mask", "timestep_sampling",
                       "sigmoid_scale", "discrete_flow_shift", "model_prediction_type", "guidance_scale",
                       "weighting_scheme", "logit_mean", "logit_std", "mode_scale")
    network_keys = ("train_blocks", "train_t5xxl")

    modelspec_prediction = False

    def reject_checkpoint(self, keys, shapes=None) -> str | None:
        """FLUX-shaped models that are not FLUX.1 dev / schnell (their keys as diffusers' single-file
        loader tells them apart): they would fail to load, or train a LoRA no FLUX.1 loads."""
        bare = self.transformer_keys(keys)
        why = ("; loratui trains FLUX.1 dev and schnell LoRAs: choose one of those as the base model")
        if any_prefix(bare, "distilled_guidance_layer."):
            return "is a Chroma model (FLUX-shaped, with its own guidance layers)" + why
        if any_prefix(bare, "single_stream_modulation.", "double_stream_modulation_img."):
            return "is a FLUX.2 model" + why
        img_in = next((tuple(shapes[k]) for k in ("img_in.weight", "model.diffusion_model.img_in.weight")
                       if shapes and k in shapes), None)
        if img_in is not None and len(img_in) == 2 and img_in[1] != 64:
            return f"is a FLUX.1 Fill / Depth / Canny model ({img_in[1]} input features, FLUX.1 has 64)" + why
        return None

    def architecture(self, v_pred: bool, denoiser_config: Any = None) -> str:
        """sd-scripts: flux-1-schnell for a transformer without the guidance embedding, else flux-1-dev."""
        schnell = denoiser_config is not None and not getattr(denoiser_config, "guidance_embeds", True)
        return ("flux-1-schnell" if schnell else "flux-1-dev") + "/lora"

    def metadata_extra(self, profile: Any) -> dict[str, Any]:
        """What sd-scripts' flux_train_network.py adds (update_metadata), and its network_args."""
        m, n = profile.model, profile.network
        out: dict[str, Any] = {
            "ss_apply_t5_attn_mask": m.apply_t5_attn_mask, "ss_weighting_scheme": m.weighting_scheme,
            "ss_logit_mean": m.logit_mean, "ss_logit_std": m.logit_std, "ss_mode_scale": m.mode_scale,
            "ss_guidance_scale": m.guidance_scale, "ss_timestep_sampling": m.timestep_sampling,
            "ss_sigmoid_scale": m.sigmoid_scale, "ss_model_prediction_type": m.model_prediction_type,
            "ss_discrete_flow_shift": m.discrete_flow_shift,
        }
        args = {k: str(v) for k, v in (("train_blocks", n.train_blocks), ("train_t5xxl", n.train_t5xxl))
                if v not in ("all", False)}
        if args:
            import json

            out["ss_network_args"] = json.dumps(args)
        return out

    def t5_tokens(self, ms: Any, transformer_config: Any) -> int:
        """sd-scripts: 512 for dev, 256 for schnell (no guidance embedding)."""
        n = int(getattr(ms, "t5xxl_max_token_length", 0) or 0)
        return n or (512 if getattr(transformer_config, "guidance_embeds", True) else 256)

    # ---- single files

    def transformer_config(self, shapes, keys) -> dict:
        head = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
        inner, in_ch = shapes["img_in.weight"]
        third = (head * 7 // 16) // 2 * 2
        return {
            "attention_head_dim": head,
            "num_attention_heads": inner // head,
            "in_channels": in_ch,
            "joint_attention_dim": shapes["txt_in.weight"][1],
            "pooled_projection_dim": shapes["vector_in.in_layer.weight"][1],
            "num_layers": _count(keys, "double_blocks."),
            "num_single_layers": _count(keys, "single_blocks."),
            "guidance_embeds": any(k.startswith("guidance_in.") for k in keys),
            "axes_dims_rope": [16, 56, 56] if head == 128 else [head - 2 * third, third, third],
            "patch_size": 1,
        }

    def weight_map(self, config: Any) -> list[tuple[str, list[str], bool]]:
        """(BFL tensor prefix, diffusers prefixes its rows split into, halves swapped) for every module."""
        out = [(bfl, [dif], False) for bfl, dif in TOP.items()]
        out.append((FINAL_MOD[0], [FINAL_MOD[1]], True))
        for kind, n, table, norms in (("double_blocks", config.num_layers, DOUBLE, DOUBLE_NORMS),
                                      ("single_blocks", config.num_single_layers, SINGLE, SINGLE_NORMS)):
            dif_block = "transformer_blocks" if kind == "double_blocks" else "single_transformer_blocks"
            for i in range(n):
                fused: dict[str, list[str]] = {}
                for dif, (bfl, _part) in table.items():
                    fused.setdefault(bfl, []).append(f"{dif_block}.{i}.{dif}")
                out += [(f"{kind}.{i}.{bfl}", difs, False) for bfl, difs in fused.items()]
                out += [(f"{kind}.{i}.{bfl}", [f"{dif_block}.{i}.{dif}"], False) for bfl, dif in norms.items()]
        return out

    def convert_transformer(self, sd: dict, model) -> dict:
        from loratui.engine.flow_loading import convert_by_map

        return convert_by_map(sd, model, self.weight_map(model.config))

    # ---- block swap as sd-scripts' FLUX counts it

    def swap_groups(self, denoiser) -> list[list]:
        return [list(getattr(denoiser, "transformer_blocks", [])), list(getattr(denoiser, "single_transformer_blocks", []))]

    def swap_group_sizes(self, config) -> list[int]:
        return [int(config.get("num_layers", 0)), int(config.get("num_single_layers", 0))]

    def swap_split(self, n: int, sizes: list[int]) -> list[int] | None:
        """sd-scripts' ``blocks_to_swap = n``: the last n // 2 double-stream blocks and the last
        (n - n // 2) × 2 single-stream ones (a single block is about half a double one), each
        kind keeping two on the GPU: at most 35 on FLUX.1."""
        double, single = n // 2, (n - n // 2) * 2
        return [double, single] if double <= sizes[0] - 2 and single <= sizes[1] - 2 else None

    # ---- LoRA names as sd-scripts' networks/lora_flux.py writes them

    def lora_name_table(self, config: Any) -> dict[str, str]:
        table = {}
        for kind, n, blocks in (("double_blocks", config.num_layers, DOUBLE), ("single_blocks", config.num_single_layers, SINGLE)):
            dif_block = "transformer_blocks" if kind == "double_blocks" else "single_transformer_blocks"
            for i in range(n):
                for dif, (bfl, part) in blocks.items():
                    name = f"lora_unet_{kind}_{i}_{bfl}".replace(".", "_")
                    table[f"{dif_block}.{i}.{dif}"] = name if part is None else f"{name}#{part}"
        return table

    def lora_target_filter(self, network_settings: Any):
        base = super().lora_target_filter(network_settings)
        blocks = getattr(network_settings, "train_blocks", "all")
        skip = {"single": "lora_unet_double_blocks_", "double": "lora_unet_single_blocks_"}.get(blocks)
        return lambda name: base(name) and not (skip and name.startswith(skip))

    # ---- text: CLIP-L pooled output, T5-XXL hidden states

    def tokenize(self, tokenizers: list, captions: list[str]) -> list:
        clip, t5 = tokenizers
        ids = clip(captions, padding="max_length", max_length=clip.model_max_length, truncation=True, return_tensors="pt")
        t5_out = t5(captions, padding="max_length", max_length=t5.model_max_length, truncation=True, return_tensors="pt")
        return [ids.input_ids, t5_out.input_ids, t5_out.attention_mask]

    def encode_text(self, text_encoders: list, ids: list, clip_skip: int, device) -> tuple[Any, Any]:
        clip, t5 = text_encoders
        pooled = clip(ids[0].to(device)).pooler_output
        mask = ids[2].to(device) if getattr(t5, "loratui_apply_attn_mask", False) else None
        hidden = t5(ids[1].to(device), attention_mask=mask).last_hidden_state
        return (hidden, mask), pooled

    def sigmas(self, settings, latents, generator):
        from loratui.engine.flow_matching import flux_sigmas

        return flux_sigmas(settings, latents.shape[0], tuple(latents.shape[-2:]), generator, latents.device)

    def latent_channels(self, denoiser_config: Any) -> int:
        return int(denoiser_config.in_channels) // 4  # 2×2 patches of the 16-channel latents

    def predict(self, denoiser, noisy, timesteps, hidden, pooled, crops, device, dtype):
        import torch

        from loratui.engine.flow_matching import apply_prediction_type

        t5_hidden, mask = hidden
        b, c, h, w = noisy.shape
        packed = noisy.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
        img_ids = torch.zeros(h // 2, w // 2, 3, device=device)
        img_ids[..., 1] += torch.arange(h // 2, device=device)[:, None]
        img_ids[..., 2] += torch.arange(w // 2, device=device)[None, :]
        txt_ids = torch.zeros(t5_hidden.shape[1], 3, device=device)
        s = timesteps.settings
        guidance = torch.full((b,), float(s.guidance_scale), device=device) if denoiser.config.guidance_embeds else None
        kwargs = {}
        if mask is not None:  # text padding masked; image tokens always attended
            full = torch.cat([mask.bool(), torch.ones(b, packed.shape[1], dtype=torch.bool, device=device)], dim=1)
            kwargs["joint_attention_kwargs"] = {"attention_mask": full[:, None, None, :]}
        out = denoiser(
            hidden_states=packed.to(dtype), encoder_hidden_states=t5_hidden.to(dtype), pooled_projections=pooled.to(dtype),
            timestep=timesteps.sigmas.to(dtype), img_ids=img_ids.reshape(-1, 3), txt_ids=txt_ids, guidance=guidance,
            return_dict=False, **kwargs,
        )[0]
        pred = out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
        return apply_prediction_type(s.model_prediction_type, pred, noisy, timesteps.sigmas)

    def loss_weights(self, noise_scheduler, timesteps):
        from loratui.engine.flow_matching import loss_weighting

        s = timesteps.settings
        return loss_weighting(s.weighting_scheme, timesteps.sigmas) if s.model_prediction_type == "sigma_scaled" else None

    # ---- images

    def pipeline(self, components, scheduler=None):
        import diffusers

        if scheduler is None:
            from loratui.engine.configs import config_dir

            scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(str(config_dir("flux")), subfolder="scheduler")
        te1, te2 = components.text_encoders
        tok1, tok2 = components.tokenizers
        return diffusers.FluxPipeline(scheduler=scheduler, vae=components.vae, text_encoder=te1, tokenizer=tok1,
                                      text_encoder_2=te2, tokenizer_2=tok2, transformer=components.unet)


FAMILY = Flux()
