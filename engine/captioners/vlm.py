"""BLIP-2 and GIT captioners (a sentence per image) through transformers.

``Blip2ForConditionalGeneration`` (default Salesforce/blip2-opt-2.7b) and
``GitForCausalLM`` (default microsoft/git-large-coco) with their processors,
from a Hub repo id (sharded weights too) or a local ``save_pretrained`` folder.
Same options as BLIP: beam search, min/max length (new tokens), a prompt the
caption continues from. On CUDA: fp16, or 8-bit (bitsandbytes) when the free GPU
memory is short for fp16 (``quantize = auto``) or when asked (``8bit``); fp32 on
the CPU.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratui.engine.captioners.blip import OOM_HINT, OPTIONAL_FILES, onto_device, pick_device
from loratui.engine.captioners.common import CaptionError, CaptionSettings
from loratui.engine.captioners.hub import download, looks_like_repo_id
from loratui.engine.events import Control, LogEvent, WarningEvent

KINDS = {
    "blip2": ("Blip2ForConditionalGeneration", "BLIP-2", "blip-2"),
    "git": ("GitForCausalLM", "GIT", "git"),
}
WEIGHTS = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")
MORE_FILES = OPTIONAL_FILES + ("vocab.json", "merges.txt", "added_tokens.json", "tokenizer.model", "chat_template.json")
FILES_WHAT = "config.json, the model weights and the processor/tokenizer files (save_pretrained output)"


def resolve_model(model: str, label: str, *, on_event: Callable[[object], None], control: Control) -> Path:
    """A local folder, or the files of a Hub repo (sharded weights: the index, then every shard)."""
    p = Path(model).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise CaptionError(f"{p} has no config.json", hint=f"a {label} folder holds {FILES_WHAT}")
        return p
    if p.exists() or not looks_like_repo_id(model):
        raise CaptionError(f"{model} is not a model folder or a Hub repo id",
                           hint=f"pass a folder with {FILES_WHAT}, or a repo id")
    files = download(model, ["config.json", WEIGHTS], MORE_FILES, what=FILES_WHAT, on_event=on_event, control=control)
    index = next((files[n] for n in WEIGHTS if n.endswith(".json") and n in files), None)
    if index is not None:
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError) as exc:
            raise CaptionError(f"{model}: its weight index {index.name} cannot be read ({exc})") from None
        download(model, shards, what=FILES_WHAT, on_event=on_event, control=control)
    return files["config.json"].parent


def weights_bytes(folder: Path) -> tuple[int, int]:
    """(bytes of the weight files, bytes per parameter in them): the .safetensors where the
    folder has them, else the pytorch_model*.bin (a folder may hold both, or training_args.bin)."""
    total, per = 0, 4
    for f in list(folder.glob("*.safetensors")) or list(folder.glob("pytorch_model*.bin")):
        total += f.stat().st_size
        if f.suffix == ".safetensors" and per == 4:
            from loratui.engine.modelfiles import _predominant_dtype, _read_safetensors_header

            hdr, _ = _read_safetensors_header(f, f.stat().st_size)
            per = {"fp16": 2, "bf16": 2, "fp32": 4}.get(_predominant_dtype(hdr) or "", 4) if hdr else 4
    return total, per


def choose_precision(setting: str, device: str, folder: Path, free_bytes: int | None) -> str:
    """"fp32" on the CPU; on CUDA "fp16", or "8bit" when asked or when fp16 would not fit."""
    if device != "cuda":
        return "fp32"
    if setting == "8bit":
        return "8bit"
    if setting == "none" or free_bytes is None:
        return "fp16"
    total, per = weights_bytes(folder)
    fp16 = total * 2 // max(1, per)
    return "8bit" if fp16 * 1.2 > free_bytes else "fp16"


def model_kwargs(precision: str) -> dict[str, Any]:
    """The ``from_pretrained`` arguments for a precision of :func:`choose_precision`: fp32
    (the CPU), fp16 (CUDA; the caller moves the model), 8-bit (bitsandbytes, placed on GPU 0
    by transformers itself, fp16 for what stays unquantized)."""
    import torch

    if precision == "fp32":
        return {"dtype": torch.float32}
    if precision == "fp16":
        return {"dtype": torch.float16}
    if precision != "8bit":
        raise ValueError(f"unknown precision {precision!r} (fp32, fp16 or 8bit)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise CaptionError("8-bit loading needs bitsandbytes", hint="pip install bitsandbytes, "
                           "or set quantize to none") from None
    import transformers

    return {"dtype": torch.float16, "quantization_config": transformers.BitsAndBytesConfig(load_in_8bit=True),
            "device_map": {"": 0}}


@dataclass
class VlmCaptioner:
    kind: str  # blip2 | git
    model: Any
    processor: Any
    device: str
    dtype: Any
    settings: CaptionSettings

    @classmethod
    def load(cls, settings: CaptionSettings, *, on_event: Callable[[object], None] = lambda e: None,
             control: Control | None = None) -> "VlmCaptioner":
        control = control or Control()
        kind = settings.tagger
        class_name, label, model_type = KINDS[kind]
        model_id = settings.model_id()
        folder = resolve_model(model_id, label, on_event=on_event, control=control)
        import torch
        import transformers
        from transformers.utils import logging as hf_logging

        device = pick_device(settings.device)
        free = torch.cuda.mem_get_info()[0] if device == "cuda" else None
        precision = choose_precision(getattr(settings, "quantize", "auto"), device, folder, free)
        kwargs = model_kwargs(precision)
        dtype = kwargs["dtype"]
        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # its tqdm would write over our progress lines
        try:
            processor = transformers.AutoProcessor.from_pretrained(str(folder))
            model = getattr(transformers, class_name).from_pretrained(str(folder), **kwargs)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            from loratui.engine.errors import is_oom

            if is_oom(exc):  # (an 8-bit load goes onto the card as it loads)
                raise CaptionError(f"{label} captioner {model_id}: not enough GPU memory to load it ({precision})",
                                   hint=OOM_HINT) from None
            first = str(exc).splitlines()[0] if str(exc) else repr(exc)
            raise CaptionError(f"cannot load a {label} captioner from {model_id}: {first}",
                               hint=f"the folder must hold a {class_name} model and its processor files") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        if precision != "8bit":
            onto_device(model, device, f"{label} captioner {model_id}")
        model.eval()
        if getattr(model.config, "model_type", "") != model_type:
            on_event(WarningEvent(f"{model_id} is a {model.config.model_type!r} model, not {label}; captions may be wrong"))
        if precision == "8bit" and getattr(settings, "quantize", "auto") == "auto":
            on_event(WarningEvent(f"{label}: {free / 2**30:.1f} GiB of GPU memory free is short for fp16: loading in 8-bit"))
        on_event(LogEvent(f"{label} captioner {model_id} on {device} ({precision})"))
        return cls(kind, model, processor, device, dtype, settings)

    def _inputs(self, images: Sequence[Any]) -> dict[str, Any]:
        s = self.settings
        prompt = s.prompt.strip()
        if self.kind == "git" or not prompt:
            inputs = dict(self.processor(images=list(images), return_tensors="pt"))
            if prompt:  # GIT continues from [CLS] + the prompt, without the end token
                tok = self.processor.tokenizer
                ids = [tok.cls_token_id] + tok(prompt, add_special_tokens=False).input_ids
                import torch

                inputs["input_ids"] = torch.tensor([ids] * len(images))
        else:
            inputs = dict(self.processor(images=list(images), text=[prompt] * len(images), return_tensors="pt"))
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs

    def caption(self, images: Sequence[Any]) -> list[list[str]]:
        """One caption per image (as a one-element list, like a single tag)."""
        import torch

        if not images:
            return []
        s = self.settings
        inputs = self._inputs(images)
        with torch.inference_mode():
            out = self.model.generate(**inputs, num_beams=s.num_beams, do_sample=False,
                                      min_new_tokens=min(s.min_length, s.max_length), max_new_tokens=s.max_length)
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        prompt = " ".join(s.prompt.split())
        result = []
        for t in texts:
            t = " ".join(t.split())
            if prompt and not t.lower().startswith(prompt.lower()):
                t = f"{prompt} {t}".strip()
            result.append([t] if t and t.lower() != prompt.lower() else [])
        return result

    def close(self) -> None:
        import torch

        self.model = None
        if self.device == "cuda":
            torch.cuda.empty_cache()
