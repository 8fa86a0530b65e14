"""LoRA module names exactly as kohya-ss/sd-scripts writes them.

Every loader (AUTOMATIC1111, Forge, ComfyUI, diffusers) expects the names that
sd-scripts' ``networks/lora.py`` produces: the prefix (``lora_unet``,
``lora_te`` or, with two text encoders, ``lora_te1``/``lora_te2``), then the
module's path inside the model with every ``.`` turned into ``_``.

- SD 1.x / 2.x U-Net: sd-scripts' U-Net has the diffusers layout, so the name is
  the diffusers path (``lora_unet_down_blocks_0_attentions_0_proj_in``).
- SDXL U-Net: sd-scripts' SDXL U-Net has the original (SGM) layout, so diffusers
  paths are mapped to it (``down_blocks.1.attentions.0`` ->
  ``input_blocks.4.1``), computed from the U-Net config so that it works for any
  ``layers_per_block`` and any mix of blocks with and without attention.
- Text encoders: always ``text_model_encoder_layers_...`` -- transformers 5.x
  ``CLIPTextModel`` has no ``text_model.`` level in its module paths, but every
  kohya-format LoRA carries it.

Pure Python: no torch import here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LORA_PREFIX_UNET = "lora_unet"
LORA_PREFIX_TEXT_ENCODER = "lora_te"
# Which module classes get LoRA layers, and how each family's U-Net is named
# (diffusers or SGM layout), is declared by the family (engine.families).

# diffusers ResnetBlock2D child -> SGM ResBlock child
_RESNET_SGM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def text_encoder_prefix(index: int, count: int) -> str:
    """``lora_te`` with one text encoder; ``lora_te1``/``lora_te2`` with two."""
    return LORA_PREFIX_TEXT_ENCODER if count == 1 else f"{LORA_PREFIX_TEXT_ENCODER}{index + 1}"


def text_encoder_lora_name(module_path: str, prefix: str = LORA_PREFIX_TEXT_ENCODER) -> str:
    """``encoder.layers.0.self_attn.q_proj`` (transformers 5.x CLIPTextModel) or
    ``text_model.encoder.layers.0.self_attn.q_proj`` ->
    ``lora_te_text_model_encoder_layers_0_self_attn_q_proj``."""
    if not module_path.startswith("text_model."):
        module_path = "text_model." + module_path
    return f"{prefix}_{module_path}".replace(".", "_")


def _cfg(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


@dataclass(frozen=True)
class SGMLayout:
    """Where each diffusers U-Net block sits in the original SGM/LDM U-Net.

    ``input_blocks``: [conv_in], then for each down block its resnets (one
    input block each, attention alongside at position 1), then its downsampler
    (own input block, ``op``) unless it is the last block.  ``middle_block``:
    resnet, attention, resnet.  ``output_blocks``: for each up block
    ``layers+1`` resnets (attention at position 1), the upsampler appended to
    the block's last output block (``conv``).
    """

    down_resnet_start: tuple[int, ...]
    down_sampler_index: tuple[int | None, ...]
    up_start: tuple[int, ...]
    up_layers: tuple[int, ...]
    up_has_attention: tuple[bool, ...]

    @classmethod
    def from_config(cls, config: Any) -> SGMLayout:
        down_types = list(_cfg(config, "down_block_types"))
        up_types = list(_cfg(config, "up_block_types"))
        n = len(down_types)
        lpb = _cfg(config, "layers_per_block", 2)
        layers = list(lpb) if isinstance(lpb, Sequence) else [int(lpb)] * n
        starts: list[int] = []
        samplers: list[int | None] = []
        idx = 1  # input_blocks.0 is conv_in
        for i in range(n):
            starts.append(idx)
            idx += layers[i]
            if i < n - 1:
                samplers.append(idx)
                idx += 1
            else:
                samplers.append(None)
        rev = list(reversed(layers))
        up_start: list[int] = []
        up_layers: list[int] = []
        idx = 0
        for i in range(len(up_types)):
            up_start.append(idx)
            up_layers.append(rev[i] + 1)
            idx += rev[i] + 1
        return cls(
            tuple(starts),
            tuple(samplers),
            tuple(up_start),
            tuple(up_layers),
            tuple("CrossAttn" in t for t in up_types),
        )

    def map(self, path: str) -> str:
        """Diffusers module path -> SGM module path (unknown parts kept)."""
        parts = path.split(".")
        head = parts[0]
        if head == "down_blocks" and len(parts) >= 4:
            i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
            if kind == "resnets":
                return _join(f"input_blocks.{self.down_resnet_start[i] + j}.0", _resnet_child(rest))
            if kind == "attentions":
                return _join(f"input_blocks.{self.down_resnet_start[i] + j}.1", rest)
            if kind == "downsamplers":
                target = self.down_sampler_index[i]
                return _join(f"input_blocks.{target}.0", _sampler_child(rest, "op"))
        elif head == "mid_block" and len(parts) >= 3:
            kind, j, rest = parts[1], int(parts[2]), parts[3:]
            if kind == "resnets":
                return _join(f"middle_block.{2 * j}", _resnet_child(rest))
            if kind == "attentions":
                return _join(f"middle_block.{2 * j + 1}", rest)
        elif head == "up_blocks" and len(parts) >= 4:
            i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
            if kind == "resnets":
                return _join(f"output_blocks.{self.up_start[i] + j}.0", _resnet_child(rest))
            if kind == "attentions":
                return _join(f"output_blocks.{self.up_start[i] + j}.1", rest)
            if kind == "upsamplers":
                block = self.up_start[i] + self.up_layers[i] - 1
                pos = 2 if self.up_has_attention[i] else 1
                return _join(f"output_blocks.{block}.{pos}", _sampler_child(rest, "conv"))
        return path


def _join(base: str, rest: Sequence[str]) -> str:
    return ".".join([base, *rest]) if rest else base


def _resnet_child(rest: Sequence[str]) -> list[str]:
    if rest and rest[0] in _RESNET_SGM:
        return [_RESNET_SGM[rest[0]], *rest[1:]]
    return list(rest)


def _sampler_child(rest: Sequence[str], conv_name: str) -> list[str]:
    if rest and rest[0] == "conv":
        return [conv_name, *rest[1:]]
    return list(rest)

