"""Tiny Stable-Diffusion-shaped models with random weights.

Used by the demo (``loratui demo``) and by the tests: the same architectures
as SD 1.x / SDXL (same module types and naming, same latent factor 8), only
narrow and shallow, so a CPU trains them in seconds.  Nothing is downloaded:
the tokenizer vocabulary is built here (byte-level CLIP BPE without merges).
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=32,
)


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tiny_tokenizer(folder: Path) -> Path:
    """A CLIP tokenizer (vocab.json + merges.txt) with the 512 byte-level
    symbols, a few merges and the two special tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges = [("t", "h"), ("th", "e</w>"), ("i", "n"), ("a", "n")]
    for a, b in merges:
        vocab_list.append(a + b)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "do_lower_case": True,
            }
        ),
        encoding="utf-8",
    )
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            }
        ),
        encoding="utf-8",
    )
    return folder


def _text_config(vocab_size: int, **over):
    from transformers import CLIPTextConfig

    cfg = dict(TINY_TEXT, vocab_size=vocab_size, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    cfg.update(over)
    return CLIPTextConfig(**cfg)


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    )


def tiny_unet_sd1():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_TEXT["hidden_size"],
        attention_head_dim=8,
        norm_num_groups=16,
    )


def tiny_unet_sdxl():
    from diffusers import UNet2DConditionModel

    time_dim = 8
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=TINY_TEXT["hidden_size"] * 2,
        attention_head_dim=(4, 8),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=time_dim * 6 + TINY_TEXT["projection_dim"],
        norm_num_groups=16,
    )


def tiny_scheduler_config() -> dict:
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_tiny_pipeline(family: str = "sd1", seed: int = 0):
    """Return a diffusers pipeline object (random weights) of the given family.
    The tokenizer files live in a temporary folder until the pipeline is saved."""
    import tempfile

    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if family in ("sd3", "flux"):  # flow-matching transformers: engine.tiny_flow
        from loratui.engine.tiny_flow import build_tiny_flow_pipeline

        return build_tiny_flow_pipeline(family, seed, write_tiny_tokenizer, _text_config)
    torch.manual_seed(seed)
    tok_dir = write_tiny_tokenizer(Path(tempfile.mkdtemp(prefix="loratui-tok-")))
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    vocab = len(tokenizer)
    scheduler = DDIMScheduler(**tiny_scheduler_config())
    vae = tiny_vae()
    if family in ("sd1", "sd2"):  # SD 2.x: an OpenCLIP-like text encoder (gelu), as its configs tell
        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=CLIPTextModel(_text_config(vocab, hidden_act=_TINY_TEXT_ACT[family])),
            tokenizer=tokenizer,
            unet=tiny_unet_sd1(),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    if family == "sdxl":
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=CLIPTextModel(_text_config(vocab)),
            text_encoder_2=CLIPTextModelWithProjection(_text_config(vocab, hidden_act="gelu")),
            tokenizer=tokenizer,
            tokenizer_2=CLIPTokenizer.from_pretrained(tok_dir),
            unet=tiny_unet_sdxl(),
            scheduler=scheduler,
        )
    raise ValueError(f"unknown tiny family {family!r}")


_TINY_TEXT_ACT = {"sd1": "quick_gelu", "sd2": "gelu"}


def save_tiny_pipeline(folder: str | Path, family: str = "sd1", seed: int = 0) -> Path:
    """Build a tiny pipeline and save it as a diffusers folder."""
    folder = Path(folder)
    pipe = build_tiny_pipeline(family, seed)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
