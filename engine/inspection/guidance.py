"""Guidance from PRODUCT.md's numbers: epochs and repeats for a dataset's size."""

from __future__ import annotations

from dataclasses import dataclass

MAX_REPEATS = 1000


@dataclass(frozen=True)
class RepeatsSuggestion:
    images: int
    repeats: int
    epochs: int
    steps: int  # images × repeats × epochs at batch size 1
    reason: str


def suggest_epochs(images: int) -> int:
    """Epochs for a dataset of ``images`` (PRODUCT.md: 10–20 images → 10–20 epochs;
    30–50 → 5–10; 100+ → 2–5). The middle of each range; between ranges, the next one."""
    if images <= 20:
        return 15
    if images <= 50:
        return 8
    if images < 100:
        return 5
    return 3


def suggest_repeats(images: int, epochs: int | None = None) -> RepeatsSuggestion:
    """Repeats so that ``images × repeats × epochs`` (batch 1) lands in PRODUCT.md's
    typical totals: about 400 steps below 100 images (where the character 100–400 and
    style 300–750 ranges meet), about 1,500 from 100 images on (careful LoRA from 100+
    images: 1,000–2,000). ``epochs`` defaults to :func:`suggest_epochs`."""
    n = max(0, int(images))
    e = epochs if epochs and epochs > 0 else suggest_epochs(n)
    target = 1500 if n >= 100 else 400
    if n == 0:
        return RepeatsSuggestion(0, 1, e, 0, "no images")
    repeats = max(1, min(MAX_REPEATS, round(target / (n * e))))
    steps = n * repeats * e
    reason = (
        f"{n} images × {repeats} repeats × {e} epochs ≈ {steps} steps at batch 1 "
        f"(aim ~{target}: {'character 100–400 / style 300–750' if target == 400 else 'careful LoRA 1,000–2,000'} steps)"
    )
    return RepeatsSuggestion(n, repeats, e, steps, reason)
