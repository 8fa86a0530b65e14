"""Long captions (``optimization.max_token_length`` 150 / 225) as sd-scripts encodes them
(library/train_util.py ``get_input_ids`` / ``get_hidden_states``, sdxl_train_util.py):

- the caption is tokenized to ``n + 2`` tokens and cut into ``n / 75`` chunks of 77
  (BOS, 75 tokens, the last token), each chunk encoded on its own by the CLIP text
  encoder(s); where padding is not EOS (SD 2.x, SDXL's second encoder) a chunk ending in
  a word gets an EOS, and an empty chunk starts BOS EOS;
- the hidden states are put back as BOS, the 75 middle states of each chunk, the last
  state (``1 + n + 1`` positions); SDXL's pooled output is the first chunk's.

At 75 tokens the family's own ``tokenize`` / ``encode_text`` are called unchanged.
"""

from __future__ import annotations

from typing import Any

from loratui.engine.training.paths import TrainingError

CHUNK = 77


def _chunks(tok, captions: list[str], n: int):
    import torch

    ids = tok(captions, padding="max_length", max_length=n + 2, truncation=True, return_tensors="pt").input_ids
    eos, pad = tok.eos_token_id, tok.pad_token_id
    rows = []
    for row in ids:
        for i in range(1, n + 2 - CHUNK + 2, CHUNK - 2):
            chunk = torch.cat((row[:1], row[i : i + CHUNK - 2], row[-1:]))
            if pad != eos:
                if chunk[-2] != eos and chunk[-2] != pad:
                    chunk[-1] = eos
                if chunk[1] == pad:
                    chunk[1] = eos
            rows.append(chunk)
    return torch.stack(rows)  # (batch * n/75, 77)


def tokenize(fam: Any, tokenizers: list, captions: list[str], n: int) -> list:
    """Token ids per tokenizer: the family's own at 75, else (batch × chunks, 77) chunks."""
    if n <= 75:
        return fam.tokenize(tokenizers, captions)
    for tok in tokenizers:
        if tok.model_max_length != CHUNK:
            raise TrainingError(
                f"optimization.max_token_length: {n} needs CLIP tokenizers of 77 tokens; this model's has {tok.model_max_length}",
                "set max_token_length to 75",
            )
    return [_chunks(tok, captions, n) for tok in tokenizers]


def merge(hidden, n: int):
    """(batch × chunks, 77, d) hidden states → (batch, n + 2, d). (sd-scripts' SD 2.x path
    has an empty-chunk fix whose condition compares ids with the EOS *string*, so it never
    applies; it is left out here.)"""
    import torch

    k = n // 75
    h = hidden.reshape(hidden.shape[0] // k, k * CHUNK, hidden.shape[-1])
    parts = [h[:, :1]] + [h[:, i : i + CHUNK - 2] for i in range(1, n, CHUNK)] + [h[:, -1:]]
    return torch.cat(parts, dim=1)


def encode_text(fam: Any, text_encoders: list, ids: list, clip_skip: int, device, n: int):
    """(hidden, pooled) for the ids of :func:`tokenize`."""
    if n <= 75:
        return fam.encode_text(text_encoders, ids, clip_skip, device)
    hidden, pooled = fam.encode_text(text_encoders, ids, clip_skip, device)
    return merge(hidden, n), (pooled[:: n // 75] if pooled is not None else None)
