"""A LoRA tried at several weights (and epochs), side by side: what users
otherwise load a WebUI for. ``loratui sample`` and the app's "try it" use this.

One base model in memory; each LoRA file is loaded into the same injected
layers, and the weight is peft's layer scaling (0: the base model)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratui.engine.samples.prompts import SamplePrompt


@dataclass
class SheetResult:
    path: Path
    rows: list[str]  # LoRA file names, top to bottom
    weights: list[float]  # left to right
    images: list[list[Any]]  # [row][col] PIL images


def lora_metadata(path: str | Path) -> dict[str, str]:
    """A LoRA file's metadata (the header only for .safetensors; LoRAWeightsError naming the file)."""
    from loratui.engine.lora_file import LoRAWeightsError, read_lora_file

    p = Path(path).expanduser()
    if p.suffix.lower() == ".safetensors" and p.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(p), "pt") as f:
                return dict(f.metadata() or {})
        except Exception as exc:  # noqa: BLE001 - a broken header is said, not raised through
            raise LoRAWeightsError(f"{p}: not a readable .safetensors file ({exc})") from None
    return read_lora_file(p)[1]


def trigger_words(metadata: dict[str, str]) -> str:
    """The trigger words of a LoRA: modelspec.trigger_phrase, else the most
    frequent tag of ss_tag_frequency, else ss_output_name."""
    phrase = (metadata.get("modelspec.trigger_phrase") or metadata.get("ss_training_comment") or "").strip()
    if phrase:
        return phrase
    try:
        freq = json.loads(metadata.get("ss_tag_frequency") or "{}")
    except ValueError:
        freq = {}
    counts: dict[str, int] = {}
    for tags in freq.values() if isinstance(freq, dict) else []:
        for tag, n in (tags.items() if isinstance(tags, dict) else []):
            counts[tag.strip()] = counts.get(tag.strip(), 0) + int(n)
    if counts:
        return max(counts, key=lambda t: (counts[t], -len(t)))
    return (metadata.get("ss_output_name") or "").strip()


def sheet_path(lora: Path) -> Path:
    """``<LoRA folder>/sample/<name>_sheet_<time>.png``, never one that exists (two sheets in
    one second: ``…_2.png``)."""
    import time

    base = Path(lora).parent / "sample" / f"{Path(lora).stem}_sheet_{time.strftime('%Y%m%d%H%M%S')}"
    out, n = base.with_name(base.name + ".png"), 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}_{n}.png")
    return out


def epoch_files(lora: Path, folder: Path | None) -> list[Path]:
    """``lora`` alone, or every ``<name>-NNNNNN.safetensors`` of its name in
    ``folder`` in epoch order, then the final file."""
    if folder is None:
        return [lora]
    stem = re.sub(r"-\d{6}$", "", lora.stem)
    found = sorted(p for p in folder.glob(f"{stem}-[0-9][0-9][0-9][0-9][0-9][0-9].safetensors"))
    final = folder / f"{stem}.safetensors"
    return found + ([final] if final.exists() else []) or [lora]


def _lora_layers(comp) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for top in [comp.unet, *comp.text_encoders] for m in top.modules() if isinstance(m, LoraLayer)]


def set_weight(layers: list, base: dict, weight: float) -> None:
    """Every LoRA layer at ``weight`` × its own alpha/rank scaling."""
    for m in layers:
        for name, s in base[id(m)].items():
            m.scaling[name] = s * weight


def make_sheet(base_model, loras: list[Path], prompt: SamplePrompt, weights: list[float], out: Path, *,
               device: str | None = None, on_progress=None) -> SheetResult:
    """Render ``prompt`` (resolved: size, seed, sampler set) for each LoRA file at
    each weight and write the contact sheet to ``out``. ``base_model``: a path or
    repo id, or the run's ``ModelSettings`` (a split SD3 / FLUX model's parts)."""
    import torch

    from loratui.engine.lora import LoRANetwork
    from loratui.engine.lora_file import read_lora_file
    from loratui.engine.loading import load_components
    from loratui.engine.samples.render import render
    from loratui.engine.schema import ModelSettings
    from loratui.engine.training.setup import pick_device

    from loratui.engine.text_cache import ENCODE_MARGIN
    from loratui.engine.training.memory import free_memory, module_bytes, to_device

    device = device or pick_device()
    # bf16 where the card has it: SD3 / FLUX overflow in fp16 (black or NaN images)
    dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16) if device.startswith("cuda") else torch.float32
    ms = base_model if isinstance(base_model, ModelSettings) else ModelSettings(base_model=str(base_model))
    comp = load_components(ms, device="cpu", dtype=dtype)  # into main memory, then onto the card what fits
    net = LoRANetwork.create(comp.unet, comp.text_encoders, comp.family, rank=4, alpha=4, weights=str(loras[0]))
    for p in net.parameters():
        p.data = p.data.to(dtype=dtype)  # they move with their layers (peft's are inside the model)
    if ms.fp8_base and device.startswith("cuda"):  # the profile's fp8 base: FLUX's transformer in 12 GB
        from loratui.engine.fp8 import apply_fp8, fp8_unsupported

        if fp8_unsupported() is None:
            apply_fp8(comp.unet, dtype)
    to_device(comp.unet, device)
    to_device(comp.vae, device)
    free = free_memory(device)
    need = sum(map(module_bytes, comp.text_encoders))
    if free is None or need + ENCODE_MARGIN <= free:  # else they encode the prompt where they are (T5-XXL
        for te in comp.text_encoders:  # beside a FLUX transformer on a 24 GB card: in main memory)
            to_device(te, device)
    layers = _lora_layers(comp)
    base = {id(m): dict(m.scaling) for m in layers}
    images: list[list[Any]] = []
    for i, lora in enumerate(loras):
        if i:
            net.load_kohya_state_dict(read_lora_file(lora)[0])
        row = []
        for w in weights:
            if on_progress is not None:
                on_progress(f"{lora.name} at weight {w:g}")
            set_weight(layers, base, w)
            row.append(render(comp, [prompt], device=device)[0].image)
        images.append(row)
    set_weight(layers, base, 1.0)
    save_sheet(images, [p.name for p in loras], weights, prompt, out)
    return SheetResult(out, [p.name for p in loras], list(weights), images)


def save_sheet(images: list[list[Any]], rows: list[str], weights: list[float], prompt: SamplePrompt, out: Path) -> Path:
    """A grid with the weights above the columns and the file names left of the rows."""
    from PIL import Image, ImageDraw

    from loratui.engine.samples.render import png_text, save_png

    w, h = images[0][0].size
    label_w, label_h, pad = 160, 24, 4
    sheet = Image.new("RGB", (label_w + len(weights) * (w + pad), label_h + len(rows) * (h + pad)), (24, 24, 24))
    d = ImageDraw.Draw(sheet)
    for c, wt in enumerate(weights):
        d.text((label_w + c * (w + pad) + 4, 6), f"weight {wt:g}", fill=(230, 230, 230))
    for r, name in enumerate(rows):
        d.text((4, label_h + r * (h + pad) + 4), name[:26], fill=(230, 230, 230))
        for c, im in enumerate(images[r]):
            sheet.paste(im, (label_w + c * (w + pad), label_h + r * (h + pad)))
    return save_png(sheet, out, png_text(prompt, loras=", ".join(rows), weights=",".join(f"{x:g}" for x in weights)))
