"""BLIP captioner (a sentence per image) through transformers.

``BlipForConditionalGeneration`` + ``BlipProcessor`` from a Hub repo id (default
Salesforce/blip-image-captioning-large) or a local folder saved with
``save_pretrained``. Beam search (deterministic), min/max length in tokens, an
optional text prompt the caption continues from. fp16 on CUDA, fp32 on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loratui.engine.captioners.common import CaptionError, CaptionSettings
from loratui.engine.captioners.hub import download, looks_like_repo_id
from loratui.engine.events import Control, LogEvent, WarningEvent

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

WEIGHTS = ("model.safetensors", "pytorch_model.bin")
OPTIONAL_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "generation_config.json",
)
FILES_WHAT = "config.json, model weights and the tokenizer/processor files (save_pretrained output)"


def resolve_model(model: str, *, on_event: Callable[[object], None], control: Control) -> Path:
    p = Path(model).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise CaptionError(f"{p} has no config.json", hint=f"a BLIP folder holds {FILES_WHAT}")
        return p
    if p.exists():
        raise CaptionError(f"{p} is not a folder", hint=f"pass a folder with {FILES_WHAT}, or a Hub repo id")
    if not looks_like_repo_id(model):
        raise CaptionError(
            f"model folder {model} does not exist",
            hint="pass a folder with a saved BLIP model, or a Hub repo id such as "
            "Salesforce/blip-image-captioning-large",
        )
    files = download(
        model, ["config.json", WEIGHTS], OPTIONAL_FILES, what=FILES_WHAT, on_event=on_event, control=control
    )
    return files["config.json"].parent


def pick_device(setting: str) -> str:
    import torch

    if setting == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if setting == "cuda":
        raise CaptionError("device is set to cuda but torch sees no CUDA GPU", hint="set device to auto or cpu")
    return "cpu"


def onto_device(model, device: str, what: str):
    """``model.to(device)``; a card too full for it is said as such, not as a bug."""
    try:
        return model.to(device)
    except Exception as exc:
        from loratui.engine.errors import is_oom

        if is_oom(exc):
            raise CaptionError(f"{what}: not enough GPU memory to load it on {device}", hint=OOM_HINT) from None
        raise


OOM_HINT = "free the GPU (a training run?), set device to cpu, or for BLIP-2 / GIT set quantize to 8bit"


@dataclass
class BlipCaptioner:
    model: Any
    processor: Any
    device: str
    dtype: Any
    settings: CaptionSettings

    @classmethod
    def load(
        cls,
        settings: CaptionSettings,
        *,
        on_event: Callable[[object], None] = lambda e: None,
        control: Control | None = None,
    ) -> "BlipCaptioner":
        control = control or Control()
        model_id = settings.model_id()
        folder = resolve_model(model_id, on_event=on_event, control=control)
        import torch
        from transformers import BlipForConditionalGeneration, BlipProcessor
        from transformers.utils import logging as hf_logging

        device = pick_device(settings.device)
        dtype = torch.float16 if device == "cuda" else torch.float32
        verbosity = hf_logging.get_verbosity()
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # its tqdm would write over our progress lines
        try:
            processor = BlipProcessor.from_pretrained(str(folder))
            model = BlipForConditionalGeneration.from_pretrained(str(folder), dtype=dtype)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CaptionError(
                f"cannot load a BLIP captioner from {model_id}: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                hint="the folder must hold a BlipForConditionalGeneration model and its BlipProcessor files",
            ) from None
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        onto_device(model, device, f"BLIP captioner {model_id}").eval()
        if getattr(model.config, "model_type", "") != "blip":
            kind = model.config.model_type
            on_event(WarningEvent(f"{model_id} is a {kind!r} model, not BLIP; captions may be wrong"))
        on_event(LogEvent(f"BLIP captioner {model_id} on {device} ({str(dtype).replace('torch.', '')})"))
        return cls(model, processor, device, dtype, settings)

    def caption(self, images: Sequence["PILImage.Image"]) -> list[list[str]]:
        """One caption per image (as a one-element list, like a single tag)."""
        import torch

        if not images:
            return []
        s = self.settings
        kwargs: dict[str, Any] = {"images": list(images), "return_tensors": "pt"}
        if s.prompt.strip():
            kwargs["text"] = [s.prompt.strip()] * len(images)
        inputs = self.processor(**kwargs)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        # The text decoder cannot go past its position embeddings (512 for the real BLIP).
        limit = int(getattr(self.model.config.text_config, "max_position_embeddings", s.max_length))
        max_length = min(s.max_length, limit)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                num_beams=s.num_beams,
                do_sample=False,
                min_length=min(s.min_length, max_length),
                max_length=max_length,
            )
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [[" ".join(t.split())] if t.strip() else [] for t in texts]

    def close(self) -> None:
        import torch

        self.model = None
        if self.device == "cuda":
            torch.cuda.empty_cache()
