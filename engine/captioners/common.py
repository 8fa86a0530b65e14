"""What every captioner shares: the settings, the error type, tag helpers.

Cheap to import (pydantic only): the UI builds a :class:`CaptionSettings`
before anything heavy is loaded.
"""

from __future__ import annotations

import re
from typing import Literal

from loratui.engine.schema import _Section, setting

DEFAULT_WD14_MODEL = "SmilingWolf/wd-v1-4-convnextv2-tagger-v2"
DEFAULT_BLIP_MODEL = "Salesforce/blip-image-captioning-large"
DEFAULT_BLIP2_MODEL = "Salesforce/blip2-opt-2.7b"
DEFAULT_GIT_MODEL = "microsoft/git-large-coco"
DEFAULT_MODELS = {"wd14": DEFAULT_WD14_MODEL, "blip": DEFAULT_BLIP_MODEL, "blip2": DEFAULT_BLIP2_MODEL,
                  "git": DEFAULT_GIT_MODEL}
# Taggers people use (the SmilingWolf ONNX releases); any repo with model.onnx +
# selected_tags.csv works.
KNOWN_WD14_MODELS = (
    "SmilingWolf/wd-v1-4-convnextv2-tagger-v2",
    "SmilingWolf/wd-v1-4-convnext-tagger-v2",
    "SmilingWolf/wd-v1-4-swinv2-tagger-v2",
    "SmilingWolf/wd-v1-4-vit-tagger-v2",
    "SmilingWolf/wd-v1-4-moat-tagger-v2",
    "SmilingWolf/wd-vit-tagger-v3",
    "SmilingWolf/wd-convnext-tagger-v3",
    "SmilingWolf/wd-swinv2-tagger-v3",
    "SmilingWolf/wd-vit-large-tagger-v3",
    "SmilingWolf/wd-eva02-large-tagger-v3",
)
WRITE_MODES = ("skip", "overwrite", "append")
SEPARATOR = ", "


class CaptionError(Exception):
    """A problem the user can act on: ``message`` says what, ``hint`` what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class CaptionSettings(_Section):
    """One captioning job. Shaped like a profile section (it could become
    ``[caption]`` in a profile as is); kohya names are sd-scripts' option names
    in finetune/tag_images_by_wd14_tagger.py and make_captions.py."""

    tagger: Literal["wd14", "blip", "blip2", "git"] = setting(
        "wd14", "wd14: Danbooru-style tags (anime/illustration). blip, blip2 (BLIP-2, larger, better), "
        "git (Microsoft GIT): a sentence describing the image."
    )
    model: str = setting(
        "",
        "Hugging Face repo id or local folder. Empty: SmilingWolf/wd-v1-4-convnextv2-tagger-v2 (wd14), "
        "Salesforce/blip-image-captioning-large (blip), Salesforce/blip2-opt-2.7b (blip2) or "
        "microsoft/git-large-coco (git). A wd14 folder holds model.onnx + selected_tags.csv.",
        kohya="repo_id",
        kind="model",
    )
    mode: Literal["skip", "overwrite", "append"] = setting(
        "skip",
        "Images that already have a caption: skip them, overwrite the caption, or append the new tags "
        "(no duplicates).",
        kohya="append_tags",
    )
    caption_extension: str = setting(".txt", "Caption files are <image name><this>.", kohya="caption_extension")
    recursive: bool = setting(False, "Also caption images in sub-folders (concept folders).", kohya="recursive")
    trigger: str = setting(
        "",
        "Trigger word(s) put first in every caption, e.g. 'mychar' (comma-separated for several).",
        kohya="always_first_tags",
    )
    batch_size: int = setting(
        8, "Images per model call. Lower it if the GPU runs out of memory.", kohya="batch_size", ge=1, le=512
    )
    general_threshold: float = setting(
        0.35, "wd14: keep a general tag when its score is at least this.", kohya="general_threshold", ge=0.0, le=1.0
    )
    character_threshold: float = setting(
        0.85,
        "wd14: keep a character tag when its score is at least this.",
        kohya="character_threshold",
        ge=0.0,
        le=1.0,
    )
    rating: Literal["none", "first", "last"] = setting(
        "none",
        "wd14: add the most likely rating tag (general/sensitive/questionable/explicit) first, last, or not at all.",
        kohya="use_rating_tags/use_rating_tags_as_last_tag",
    )
    character_first: bool = setting(
        False, "wd14: put character tags before the general tags.", kohya="character_tags_first", advanced=True
    )
    replace_underscores: bool = setting(
        True, "wd14: write 'long hair', not 'long_hair' (kaomoji such as ^_^ are kept).", kohya="remove_underscore"
    )
    exclude: list[str] = setting(
        [], "wd14: tags never written (e.g. the trait your trigger word should absorb).", kohya="undesired_tags"
    )
    num_beams: int = setting(3, "blip: beam-search width (1 = greedy).", kohya="num_beams", ge=1, le=16)
    min_length: int = setting(5, "blip: shortest caption, in tokens.", kohya="min_length", ge=0, le=512)
    max_length: int = setting(75, "blip: longest caption, in tokens.", kohya="max_length", ge=1, le=512)
    prompt: str = setting(
        "", "blip: text the caption starts from, e.g. 'a photo of' (kept in the caption).", advanced=True
    )
    device: Literal["auto", "cuda", "cpu"] = setting(
        "auto", "Where the model runs. auto: the GPU when there is one.", advanced=True
    )
    # -- models: BLIP-2 / GIT loading
    quantize: Literal["auto", "8bit", "none"] = setting(
        "auto",
        "blip2/git on CUDA: auto loads in fp16, or in 8-bit (bitsandbytes) when the free GPU memory is short "
        "for fp16 (BLIP-2 2.7B needs ~8 GB in fp16, ~4.5 GB in 8-bit); 8bit always; none never.",
        advanced=True,
    )

    def checks(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        ext = self.caption_extension
        if not re.fullmatch(r"\.[^./\\\s]+", ext or ""):
            out.append(("caption_extension", f"must be a dot and a name, e.g. '.txt' (got {ext!r})"))
        elif ext.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".avif", ".jxl", ".tif", ".tiff"):
            out.append(("caption_extension", f"{ext} is an image extension: captions would overwrite the images"))
        if self.min_length > self.max_length:
            out.append(("min_length", f"{self.min_length} is more than max_length {self.max_length}"))
        return out

    def model_id(self) -> str:
        return self.model.strip() or DEFAULT_MODELS[self.tagger]


# --------------------------------------------------------------------------- tags


def tag_key(tag: str) -> str:
    """The form two tags are compared in: 'Long_Hair' == 'long hair'."""
    return " ".join(tag.replace("_", " ").lower().split())


def split_tags(text: str) -> list[str]:
    """'a, b,, c ' -> ['a', 'b', 'c']."""
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_tag_list(value: str | list[str] | tuple[str, ...]) -> list[str]:
    if isinstance(value, str):
        return split_tags(value)
    out: list[str] = []
    for item in value:
        out.extend(split_tags(item))
    return out


def with_trigger(tags: list[str], trigger: str) -> list[str]:
    """Put the trigger word(s) first and drop any other copy of them (and of any tag twice)."""
    out: list[str] = []
    seen: set[str] = set()
    for t in split_tags(trigger) + tags:
        k = tag_key(t)
        if k and k not in seen:
            seen.add(k)
            out.append(t)
    return out
