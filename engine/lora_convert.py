"""A kohya-format SD3/FLUX LoRA -> the diffusers (PEFT) format, for loaders that cannot read
sd-scripts' names.

diffusers 0.42 reads sd-scripts' FLUX files (its kohya converter) but not its SD3 ones:
``SD3LoraLoaderMixin`` takes only diffusers-format keys, so a ``lora_unet_joint_blocks_*`` file
loads nothing. ``loratui convert`` writes the same LoRA under diffusers' own names, which
diffusers' ``load_lora_weights`` and ComfyUI both read:

- ``transformer.<diffusers module>.lora_A.weight`` (= lora_down) and ``.lora_B.weight``
  (= lora_up × alpha / rank: the format has no alpha, so the scale is folded into B);
- sd-scripts' fused modules are split back into diffusers' layers (``qkv`` -> ``to_q``,
  ``to_k``, ``to_v``; FLUX ``linear1`` -> q, k, v and ``proj_mlp``), each with exactly its rows
  of the fused delta (``engine.lora_fused``); SD3's last context adaLN gets its halves swapped,
  as diffusers orders them;
- CLIP text encoders as ``text_encoder.text_model.encoder.layers.N…`` /
  ``text_encoder_2.…``. T5-XXL modules (``train_t5xxl``) are left out, with a note: diffusers'
  SD3 and FLUX loaders do not load LoRA into T5.

Everything is read from the file: block counts from its names, fused parts' rows from its
shapes (a fused ``qkv`` is three equal thirds; ``linear1``'s q, k, v are each as wide as its
input), so no base model is needed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from loratui.engine.families import family_label, get_family, guess_family
from loratui.engine.lora_file import LoRAWeightsError, parse_kohya_state_dict
from loratui.engine.lora_fused import base_name, split

CONVERTIBLE = ("sd3", "flux")
_BLOCK = re.compile(r"lora_unet_(joint_blocks|double_blocks|single_blocks)_(\d+)_")
_CLIP = re.compile(r"text_model_encoder_layers_(\d+)_(self_attn_(?:q|k|v|out)_proj|mlp_fc1|mlp_fc2)$")
_TE = re.compile(r"lora_te(\d)_(.+)$")


@dataclass
class Converted:
    state_dict: dict[str, Any]
    family: str
    modules: int  # diffusers modules written
    source_modules: int  # kohya modules read
    notes: list[str] = field(default_factory=list)


def to_diffusers(sd: Mapping[str, Any], metadata: Mapping[str, str], source: str = "LoRA") -> Converted:
    """The diffusers-format state dict of a kohya-format SD3/FLUX LoRA. Raises
    LoRAWeightsError, naming ``source``, for a file it cannot convert."""
    if any(".lora_A." in k or ".lora_B." in k for k in sd):
        raise LoRAWeightsError(f"{source}: is in the diffusers (PEFT) format already (lora_A / lora_B keys): "
                               "diffusers loads it as it is; convert reads kohya-format files")
    family = guess_family({k: tuple(v.shape) for k, v in sd.items()}, metadata)
    if family not in CONVERTIBLE:
        what = f"a LoRA for {family_label(family)}" if family and "-or-" not in family else "not an SD3 or FLUX.1 LoRA"
        raise LoRAWeightsError(
            f"{source}: {what}; convert --to diffusers is for SD3/SD3.5 and FLUX.1 files. diffusers loads "
            "kohya-format SD 1.x, SD 2.x and SDXL LoRAs as they are (pipe.load_lora_weights(file))"
        )
    modules = parse_kohya_state_dict(sd, source)
    fam = get_family(family)
    flat: dict[str, Any] = {}
    for name, m in modules.items():
        if m.down.ndim != 2:
            raise LoRAWeightsError(f"{source}: module {name} is a convolution ({list(m.down.shape)}); "
                                   f"{family_label(family)} has only linear layers")
        flat[f"{name}.lora_down.weight"], flat[f"{name}.lora_up.weight"] = m.down, m.up
        flat[f"{name}.alpha"] = _scalar(m.alpha)
    paths, layout = _denoiser_paths(fam, family, modules, source)
    parts = split(flat, layout)
    out: dict[str, Any] = {}
    notes: list[str] = []
    t5_left = 0
    te_paths = _text_encoder_paths(fam, modules, source)
    for key in parts:
        if not key.endswith(".lora_down.weight"):
            continue
        internal = key[: -len(".lora_down.weight")]
        if internal.startswith("lora_unet_"):
            target = f"transformer.{paths[internal]}"
        else:
            target = te_paths.get(internal)
            if target is None:
                t5_left += 1
                continue
        down, up = parts[key], parts[f"{internal}.lora_up.weight"]
        scale = float(parts[f"{internal}.alpha"]) / down.shape[0]
        out[f"{target}.lora_A.weight"] = down.contiguous()
        out[f"{target}.lora_B.weight"] = (up.float() * scale).to(up.dtype).contiguous()
    if t5_left:
        notes.append(f"{t5_left} T5-XXL modules (trained with train_t5xxl) were left out: diffusers does not load "
                     "LoRA into T5; the kohya-format file keeps them (ComfyUI, Forge)")
    if not out:
        raise LoRAWeightsError(f"{source}: holds no module diffusers can load")
    return Converted(out, family, len(out) // 2, len(modules), notes)


def _scalar(value: float):
    import torch

    return torch.tensor(float(value))


def _unknown(source: str, name: str, family: str) -> LoRAWeightsError:
    return LoRAWeightsError(
        f"{source}: module {name} is none of the {family_label(family)} transformer-block layers convert knows "
        "(those sd-scripts and loratui train by default; embedder modules from sd-scripts' emb_dims / in_dims "
        "are not converted): nothing was written"
    )


def _denoiser_paths(fam, family: str, modules: Mapping[str, Any], source: str):
    """({internal name: diffusers path}, {fused saved name: [(internal part, rows), ...]})."""
    counts: dict[str, int] = {}
    for name in modules:
        if name.startswith("lora_unet_"):
            hit = _BLOCK.match(name)
            if hit is None:
                raise _unknown(source, name, family)
            counts[hit.group(1)] = max(counts.get(hit.group(1), 0), int(hit.group(2)) + 1)
    config = SimpleNamespace(num_layers=counts.get("joint_blocks", counts.get("double_blocks", 0)),
                             num_single_layers=counts.get("single_blocks", 0))
    paths: dict[str, str] = {}
    by_base: dict[str, list[str]] = {}
    for path, internal in fam.lora_name_table(config).items():
        paths[internal] = path
        by_base.setdefault(base_name(internal), []).append(internal)
    layout: dict[str, list[tuple[str, int]]] = {}
    for name, m in modules.items():
        if not name.startswith("lora_unet_"):
            continue
        internal = by_base.get(name)
        if internal is None:
            raise _unknown(source, name, family)
        rows, width = int(m.up.shape[0]), int(m.down.shape[1])
        if name.endswith("_context_block_adaLN_modulation_1"):
            # SD3's last block modulates its context with shift and scale only (2 × width rows),
            # in the other order than diffusers' AdaLayerNormContinuous
            path = paths[internal[0]]
            if rows == 2 * width:
                paths[f"{name}#s"] = path
                layout[name] = [(f"{name}#s", rows)]
            else:
                paths[name] = path
            continue
        if len(internal) == 1:
            continue
        n = len(internal)
        dims = [rows // 3] * 3 if n == 3 else [width] * 3 + [rows - 3 * width]
        if sum(dims) != rows or min(dims) <= 0:
            raise LoRAWeightsError(f"{source}: module {name} has {rows} output rows, which do not split into "
                                   f"its {n} parts; the file does not fit sd-scripts' layout")
        layout[name] = list(zip(sorted(internal, key=lambda p: int(p.split("#", 1)[1])), dims))
    return paths, layout


def _text_encoder_paths(fam, modules: Mapping[str, Any], source: str) -> dict[str, str]:
    """{internal text-encoder module name: diffusers module path} of the CLIP encoders."""
    specs = fam.text_encoders
    out: dict[str, str] = {}
    for name in modules:
        hit = _TE.match(name)
        if name.startswith("lora_unet_"):
            continue
        if hit is None or not 1 <= int(hit.group(1)) <= len(specs):
            raise LoRAWeightsError(f"{source}: module {name}: not a text-encoder name sd-scripts writes "
                                   f"for {fam.label} (lora_te1_ … lora_te{len(specs)}_)")
        spec = specs[int(hit.group(1)) - 1]
        if spec.model_class == "T5EncoderModel":
            continue
        clip = _CLIP.match(hit.group(2))
        if clip is None:
            raise LoRAWeightsError(f"{source}: module {name}: not a CLIP layer sd-scripts trains")
        layer, leaf = clip.groups()
        leaf = leaf.replace("self_attn_", "self_attn.").replace("mlp_", "mlp.")
        out[name] = f"{spec.subfolder}.text_model.encoder.layers.{layer}.{leaf}"
    return out
