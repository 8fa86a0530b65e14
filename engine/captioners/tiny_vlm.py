"""Tiny BLIP-2 and GIT captioners built offline from configs, for tests and the demo.

``save_tiny_blip2(folder)``: a Blip2ForConditionalGeneration (1-layer ViT, Q-Former
and OPT) with a word-level BertTokenizer of the tiny BLIP's words;
``save_tiny_git(folder)``: a GitForCausalLM (1-layer vision and text model) with
the same vocabulary. Random (seeded) weights, the special tokens made unlikely:
they write word salads of known words, deterministically.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from loratui.engine.captioners.tiny import TINY_BLIP_WORDS

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _tokenizer(folder: Path, extra: list[str] = (), **kw):
    from transformers import BertTokenizer

    vocab = SPECIALS + list(extra) + list(TINY_BLIP_WORDS)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    ids = {t: i for i, t in enumerate(vocab)}
    if "vocab" in inspect.signature(BertTokenizer.__init__).parameters:  # transformers 5
        tok = BertTokenizer(vocab=ids, do_lower_case=True, **kw)
    else:  # transformers 4
        tok = BertTokenizer(vocab_file=str(vocab_file), do_lower_case=True, **kw)
    return tok, ids


def _image_processor(cls_name: str, size: int):
    import transformers

    cls = getattr(transformers, cls_name + "Pil", None) or getattr(transformers, cls_name)
    return cls(size={"height": size, "width": size}, do_center_crop=False) if "CLIP" in cls_name else cls(
        size={"height": size, "width": size})


def _no_specials(bias_or_weight, ids: dict[str, int], names) -> None:
    import torch

    with torch.no_grad():
        for t in names:
            bias_or_weight[ids[t]] = -1e4


def save_tiny_blip2(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok, ids = _tokenizer(folder, ["<image>"], bos_token="[CLS]", eos_token="[SEP]")
    tok.image_token = "<image>"
    n_query = 4
    processor = Blip2Processor(image_processor=_image_processor("BlipImageProcessor", image_size), tokenizer=tok,
                               num_query_tokens=n_query)
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=8, initializer_range=0.5),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            encoder_hidden_size=32, vocab_size=len(ids)),
        text_config=dict(model_type="opt", vocab_size=len(ids), hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                         num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=64,
                         bos_token_id=ids["[CLS]"], eos_token_id=ids["[SEP]"], pad_token_id=ids["[PAD]"],
                         init_std=0.5),
        num_query_tokens=n_query,
        image_token_index=ids["<image>"],
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    # OPT's head has no bias: keep the special tokens (the end token too) out through the generation config
    model.generation_config.suppress_tokens = [ids[t] for t in SPECIALS + ["<image>"]]
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder


def save_tiny_git(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    import torch
    from transformers import GitConfig, GitForCausalLM, GitProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok, ids = _tokenizer(folder)
    processor = GitProcessor(image_processor=_image_processor("CLIPImageProcessor", image_size), tokenizer=tok)
    config = GitConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=8, initializer_range=0.5),
        vocab_size=len(ids), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=64, bos_token_id=ids["[CLS]"], eos_token_id=ids["[SEP]"], pad_token_id=ids["[PAD]"],
        initializer_range=0.5,
    )
    torch.manual_seed(seed)
    model = GitForCausalLM(config).eval()
    _no_specials(model.output.bias, ids, SPECIALS)  # no end token: every caption runs to its length
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder
