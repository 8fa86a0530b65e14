"""kohya-format LoRA files: read, group by module, check, hash.

A file holds, per module, ``<name>.lora_down.weight``, ``<name>.lora_up.weight``
and a scalar ``<name>.alpha``, with sd-scripts' names (``engine.kohya_names``).
This module reads such a file (``.safetensors`` or a weights-only torch
pickle), groups and validates its tensors, says which base-model family it was
probably made for when it does not fit, and computes the ``sshs_*`` hashes
sd-scripts writes. The network that trains one is :mod:`loratui.engine.lora`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loratui.engine.families import family_label, guess_family
from loratui.engine.kohya_names import LORA_PREFIX_TEXT_ENCODER, LORA_PREFIX_UNET

if TYPE_CHECKING:  # pragma: no cover
    import torch

LORA_FILE_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".pth", ".bin")
_KOHYA_SUFFIXES = ("lora_down.weight", "lora_up.weight", "alpha")
_OTHER_NETWORKS = {
    "hada_": "LoHa (LyCORIS)",
    "lokr_": "LoKr (LyCORIS)",
    "lora_mid": "LoCon with Tucker decomposition (LyCORIS)",
    "dora_scale": "DoRA",
    "oft_": "OFT",
    "diff": "full-weight difference (LyCORIS)",
    "w_norm": "GLoRA/IA3 (LyCORIS)",
}


class LoRAWeightsError(Exception):
    """A LoRA file that cannot be read or does not fit the base model.  The
    message names the file and says what does not match."""


# --------------------------------------------------------------------------- file


def read_lora_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a LoRA file: ``(state_dict, metadata)``.  ``.safetensors`` (with its
    metadata) or a torch pickle (``.pt``/``.ckpt``, read with weights_only).
    Raises LoRAWeightsError, naming the file, for a missing, truncated or
    otherwise unreadable file."""
    import torch

    p = Path(path).expanduser()
    where = str(p)
    if not p.exists():
        raise LoRAWeightsError(f"{where}: file not found")
    if p.is_dir():
        raise LoRAWeightsError(f"{where}: is a folder; expected a LoRA .safetensors file")
    suffix = p.suffix.lower()
    if suffix not in LORA_FILE_SUFFIXES:
        raise LoRAWeightsError(f"{where}: not a LoRA file (expected .safetensors)")
    if p.stat().st_size == 0:
        raise LoRAWeightsError(f"{where}: the file is empty (an interrupted download or copy?)")
    metadata: dict[str, str] = {}
    if suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt", device="cpu") as f:
                metadata = dict(f.metadata() or {})
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # SafetensorError, OSError, ...
            raise LoRAWeightsError(
                f"{where}: not a readable .safetensors file ({_short(exc)}); it may be truncated by an "
                "interrupted download or copy -- download it again or pick another file"
            ) from None
    else:
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise LoRAWeightsError(
                f"{where}: not a readable LoRA file ({_short(exc)}); it may be truncated or not a LoRA -- "
                "a .safetensors LoRA is preferred"
            ) from None
        if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise LoRAWeightsError(f"{where}: does not hold a LoRA state dict (name -> tensor)")
        sd = dict(obj)
    if not sd:
        raise LoRAWeightsError(f"{where}: holds no tensors")
    return sd, metadata


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


@dataclass
class _FileModule:
    down: Any
    up: Any
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


def parse_kohya_state_dict(sd: Mapping[str, torch.Tensor], source: str = "LoRA") -> dict[str, _FileModule]:
    """Group a kohya-format state dict by module: ``{name: (down, up, alpha)}``.
    A missing ``.alpha`` means alpha = rank (old files); alpha 0 too, as in
    sd-scripts.  Raises LoRAWeightsError for anything else."""
    groups: dict[str, dict[str, Any]] = {}
    foreign: list[str] = []
    other: dict[str, str] = {}
    for key, value in sd.items():
        name, _, suffix = key.partition(".")
        if not name.startswith((LORA_PREFIX_UNET + "_", LORA_PREFIX_TEXT_ENCODER)):
            foreign.append(key)
            continue
        if suffix not in _KOHYA_SUFFIXES:
            kind = next((label for marker, label in _OTHER_NETWORKS.items() if suffix.startswith(marker)), None)
            other.setdefault(kind or f"unknown key '{key}'", key)
            continue
        groups.setdefault(name, {})[suffix] = value
    if other:
        kinds = ", ".join(sorted(other))
        raise LoRAWeightsError(
            f"{source}: holds {kinds} modules (e.g. '{next(iter(other.values()))}'); only plain LoRA/LoCon files "
            "(lora_down/lora_up/alpha) can be continued as network_type lora/locon; for a LyCORIS file set "
            "network.network_type to its algorithm (loha, lokr, ...) and the settings it was trained with"
        )
    if foreign:
        hint = ""
        if any(k.startswith(("unet.", "text_encoder", "base_model.model.", "transformer.")) for k in foreign):
            hint = " It looks like a diffusers/PEFT-format LoRA; convert it to kohya format first."
        raise LoRAWeightsError(
            f"{source}: not a kohya-format LoRA ({len(foreign)} keys do not start with lora_unet_/lora_te, "
            f"e.g. '{foreign[0]}').{hint}"
        )
    if not groups:
        raise LoRAWeightsError(f"{source}: holds no LoRA modules")
    modules: dict[str, _FileModule] = {}
    for name, parts in groups.items():
        down, up = parts.get("lora_down.weight"), parts.get("lora_up.weight")
        if down is None or up is None:
            missing = "lora_down.weight" if down is None else "lora_up.weight"
            raise LoRAWeightsError(f"{source}: module {name} has no {missing} (incomplete file)")
        if down.ndim not in (2, 4) or up.ndim != down.ndim or down.shape[0] != up.shape[1] or down.shape[0] < 1:
            raise LoRAWeightsError(
                f"{source}: module {name} has inconsistent shapes: lora_down {list(down.shape)}, "
                f"lora_up {list(up.shape)}"
            )
        if up.ndim == 4 and tuple(up.shape[2:]) != (1, 1):
            raise LoRAWeightsError(f"{source}: module {name}: lora_up must be a 1x1 conv, got {list(up.shape)}")
        rank = int(down.shape[0])
        alpha_t = parts.get("alpha")
        if alpha_t is None:
            alpha = float(rank)
        else:
            if alpha_t.numel() != 1:
                raise LoRAWeightsError(f"{source}: module {name}: alpha must be a single number, got shape {list(alpha_t.shape)}")
            alpha = float(alpha_t.float().item())
            if not math.isfinite(alpha):
                raise LoRAWeightsError(f"{source}: module {name}: alpha is {alpha}")
            if alpha == 0:
                alpha = float(rank)
        modules[name] = _FileModule(down, up, alpha)
    return modules



def as_dtype(dtype):
    """A torch dtype from a torch dtype, ``fp16``/``bf16``/``fp32`` (also
    ``float16``, ``bfloat16``, ``float32``, ``float``) or None."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}
    try:
        return names[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown save precision {dtype!r}; expected fp16, bf16 or fp32") from None


def _meta_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)



def _family_hint(sd: Mapping[str, Any], metadata: Mapping[str, str], family: str) -> str:
    guessed = guess_family({k: tuple(v.shape) for k, v in sd.items()}, metadata)
    if guessed and guessed != family and family not in guessed.split("-or-"):
        return (
            f". The LoRA was made for {family_label(guessed)} but the base model is {family_label(family)}: "
            f"pick a LoRA trained on {family_label(family)}, or clear network_weights to start a new one"
        )
    return ". Was it trained on a different base model? Clear network_weights to start a new LoRA"
