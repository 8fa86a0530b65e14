"""Tiny SD3- and FLUX-shaped models with random weights (the tests' and the demo's).

Same module types and naming as the full-size models (diffusers' SD3Transformer2DModel /
FluxTransformer2DModel, transformers' CLIP and T5 encoders, a 16-channel AutoencoderKL),
narrow and shallow. The T5 tokenizer is a tiny Unigram vocabulary built here.
"""

from __future__ import annotations

T5_WORDS = "a an the photo picture of on in with and toy cat dog table red blue green sks person style".split()


def tiny_t5_tokenizer(max_length: int = 16):
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(f"\u2581{w}", -float(i + 1)) for i, w in enumerate(T5_WORDS)]
    vocab += [(c, -30.0) for c in "abcdefghijklmnopqrstuvwxyz,.\u2581"]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def tiny_t5(vocab_size: int, d_model: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=d_model, d_ff=64, d_kv=8, num_heads=4, num_layers=2,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, relative_attention_max_distance=16,
        dropout_rate=0.0, is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False,
    ))


def tiny_vae16(scaling_factor: float, shift_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
        latent_channels=16, norm_num_groups=8, sample_size=64, scaling_factor=scaling_factor,
        shift_factor=shift_factor, use_quant_conv=False, use_post_quant_conv=False,
    )


def tiny_flux_transformer():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=32,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 14, 14),
    )


def tiny_sd3_transformer():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64, out_channels=16,
        pos_embed_max_size=16, qk_norm="rms_norm", dual_attention_layers=(0,),
    )


def build_tiny_flow_pipeline(family: str, seed: int, write_tiny_tokenizer, _text_config):
    """A diffusers FluxPipeline / StableDiffusion3Pipeline of tiny random models (the CLIP
    tokenizer writer and text config come from ``engine.tiny``, which calls this)."""
    import tempfile
    from pathlib import Path

    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    tok_dir = write_tiny_tokenizer(Path(tempfile.mkdtemp(prefix="loratui-tok-")))
    clip_tok = CLIPTokenizer.from_pretrained(tok_dir)
    t5_tok = tiny_t5_tokenizer()
    vocab = len(clip_tok)
    if family == "flux":
        return FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny_vae16(0.3611, 0.1159),
            text_encoder=CLIPTextModel(_text_config(vocab)), tokenizer=clip_tok,
            text_encoder_2=tiny_t5(len(t5_tok), 32), tokenizer_2=t5_tok, transformer=tiny_flux_transformer(),
        )
    if family == "sd3":
        return StableDiffusion3Pipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny_vae16(1.5305, 0.0609),
            transformer=tiny_sd3_transformer(),
            text_encoder=CLIPTextModelWithProjection(_text_config(vocab)), tokenizer=clip_tok,
            text_encoder_2=CLIPTextModelWithProjection(_text_config(vocab, hidden_act="gelu")),
            tokenizer_2=CLIPTokenizer.from_pretrained(tok_dir),
            text_encoder_3=tiny_t5(len(t5_tok), 64), tokenizer_3=t5_tok,
        )
    raise ValueError(f"unknown tiny flow family {family!r}")
