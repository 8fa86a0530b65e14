"""Diffusers-format config folders bundled for each model family.

A single-file checkpoint (the ``.safetensors``/``.ckpt`` users download) holds
weights only; diffusers needs the matching pipeline configs and tokenizer files
to build the models around them.  They ship here so that loading a local file
never touches the network.

Folders (each with model_index.json, unet/, vae/, text_encoder/, scheduler/,
tokenizer/; SDXL also text_encoder_2/ and tokenizer_2/):

- ``sd15``  Stable Diffusion 1.x (stable-diffusion-v1-5), epsilon.
- ``sd2``   Stable Diffusion 2.x 512 base (stable-diffusion-2-1-base), epsilon.
- ``sd2-v`` Stable Diffusion 2.x 768-v (stable-diffusion-2-1), v-prediction.
- ``sdxl``  SDXL base 1.0 (stable-diffusion-xl-base-1.0), epsilon.
- ``flux``  FLUX.1-dev (transformer/, vae/ 16 channels, text_encoder/ CLIP-L, text_encoder_2/ T5-XXL).
- ``sd35-large``, ``sd35-medium``, ``sd3-medium``: SD 3.x (transformer/, vae/, CLIP-L, CLIP-G, T5-XXL).
  Flow-matching families take their CLIP tokenizers from ``sdxl`` (the same files); the T5
  tokenizer (a SentencePiece model) does not ship: it comes from the model's folder or the Hub cache.

The tokenizer files are the CLIP BPE vocabulary (49408 tokens), generated from
OpenCLIP's ``bpe_simple_vocab_16e6.txt.gz`` exactly as the Hugging Face CLIP
tokenizer files are.  SD 2.x and SDXL's second tokenizer pad with ``!`` (id 0),
SD 1.x and SDXL's first with ``<|endoftext|>``.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

FAMILY_DIRS = {
    "sd15": "sd15",
    "sd1": "sd15",
    "sd2": "sd2",
    "sd2-v": "sd2-v",
    "sd2v": "sd2-v",
    "sdxl": "sdxl",
    "flux": "flux",
    "sd35-large": "sd35-large",
    "sd35-medium": "sd35-medium",
    "sd3-medium": "sd3-medium",
}


def config_dir(family: str) -> Path:
    """Folder of the bundled diffusers configs for ``family``.

    ``family`` is one of ``sd15`` (alias ``sd1``), ``sd2`` (512 base, epsilon),
    ``sd2-v`` (768-v, v-prediction) ``sdxl``, ``flux``, ``sd35-large``, ``sd35-medium`` or ``sd3-medium``.
    """
    try:
        name = FAMILY_DIRS[family]
    except KeyError:
        raise ValueError(
            f"unknown model family {family!r}; expected one of {', '.join(sorted(set(FAMILY_DIRS.values())))}"
        ) from None
    return HERE / name
