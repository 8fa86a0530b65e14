"""The structure of the default BLIP-2 and GIT captioners, without their files.

``published_config(kind)`` builds the transformers config of
``Salesforce/blip2-opt-2.7b`` (``blip2``) or ``microsoft/git-large-coco``
(``git``) from transformers' own config classes with the published sizes, so
their full-size models can be built on the meta device (no weights, no
network): the structure check in the tests, and the parameter count the
memory estimate can use before anything is downloaded.

- BLIP-2: EVA ViT-g/14 (1408 wide, 39 layers; the Blip2VisionConfig defaults),
  a 12-layer Q-Former with 32 query tokens (the Blip2QFormerConfig defaults) and
  OPT-2.7b (2560 wide, 32 layers, 32 heads, FFN 10240, 50304 tokens with the
  image token 50265, tied input/output embeddings).
- GIT-large: a CLIP ViT-L/14 image encoder at 224 px (1024 wide, 24 layers) and a
  6-layer BERT-base-sized text decoder (768 wide, 30522 tokens).
"""

from __future__ import annotations

from typing import Any

PUBLISHED = {
    "blip2": "Salesforce/blip2-opt-2.7b",
    "git": "microsoft/git-large-coco",
}
# parameters of the models built from these configs (tied embeddings counted once)
PUBLISHED_PARAMS = {"blip2": 3.745e9, "git": 0.394e9}


def published_config(kind: str) -> Any:
    """The transformers config of the default ``kind`` ("blip2" or "git") captioner."""
    import transformers

    if kind == "blip2":
        text = transformers.OPTConfig(
            vocab_size=50304, hidden_size=2560, num_hidden_layers=32, ffn_dim=10240, num_attention_heads=32,
            max_position_embeddings=2048, word_embed_proj_dim=2560, do_layer_norm_before=True,
            eos_token_id=50118, bos_token_id=2, pad_token_id=1, tie_word_embeddings=True)
        return transformers.Blip2Config(
            vision_config=transformers.Blip2VisionConfig().to_dict(),
            qformer_config=transformers.Blip2QFormerConfig().to_dict(),
            text_config=text.to_dict(), num_query_tokens=32, image_token_index=50265)
    if kind == "git":
        vision = transformers.GitVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
            image_size=224, patch_size=14)
        return transformers.GitConfig(
            vision_config=vision.to_dict(), vocab_size=30522, hidden_size=768, num_hidden_layers=6,
            num_attention_heads=12, intermediate_size=3072, max_position_embeddings=1024,
            bos_token_id=101, eos_token_id=102, pad_token_id=0)
    raise ValueError(f"no published config for {kind!r} (blip2 or git)")


def build_empty(kind: str, config: Any = None) -> Any:
    """The full-size model of ``kind`` on the meta device: its structure, no memory for weights."""
    import torch
    import transformers

    from loratui.engine.captioners.vlm import KINDS

    cls = getattr(transformers, KINDS[kind][0])
    with torch.device("meta"):
        return cls(config or published_config(kind))


def parameter_count(model: Any) -> int:
    """Parameters of ``model``, shared (tied) ones once."""
    return sum(p.numel() for p in model.parameters())
