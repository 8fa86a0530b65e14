"""Masked loss (``optimization.masked_loss``): a mask per training image, as sd-scripts
takes it (library/train_util.py, ``apply_masked_loss``):

- ``dataset.alpha_mask``: the image's own alpha channel (opaque = trained);
- ``dataset.conditioning_data_dir``: a mask image of the same name (any image type) in
  that folder, or in a subfolder named like the image's concept folder; its red channel
  is the mask (white = trained).

The mask gets the image's geometry (EXIF rotation, resize to cover the bucket, centre
crop, mirror with the image's flip), as values in [0, 1]; the loss resizes it to the
latents (``engine.training.losses``). Regularisation images without a mask train
everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loratui.engine.training.paths import TrainingError


def mask_file(item: Any, folder: str) -> Path | None:
    """The mask image of ``item`` in ``folder`` (None when it has none)."""
    from loratui.engine.imagefile import IMAGE_EXTENSIONS

    base = Path(folder).expanduser()
    for where in (base / Path(item.folder).name, base):
        for ext in IMAGE_EXTENSIONS:
            for cand in (where / f"{item.path.stem}{ext}", where / f"{item.path.stem}{ext.upper()}"):
                if cand.is_file():
                    return cand
    return None


def _geometry(img, item: Any, flip: bool):
    """``img`` (a Pillow image of the training image's size) cropped like the training image."""
    from PIL import Image

    from loratui.engine.buckets import cover_size

    bw, bh = item.bucket
    resized = tuple(item.resized) if img.size == tuple(item.image_size) else cover_size(img.size, (bw, bh))
    if img.size != resized:
        img = img.resize(resized, Image.Resampling.BILINEAR)
    left, top = (resized[0] - bw) // 2, (resized[1] - bh) // 2
    img = img.crop((left, top, left + bw, top + bh))
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else img


def load_mask(item: Any, dataset: Any, flip: bool):
    """(H, W) float32 tensor in [0, 1] at the bucket size."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    if dataset.conditioning_data_dir:
        path = mask_file(item, dataset.conditioning_data_dir)
        if path is None:
            if item.is_reg:
                return torch.ones(item.bucket[1], item.bucket[0])
            raise TrainingError(
                f"dataset.conditioning_data_dir: no mask for {item.path} in {dataset.conditioning_data_dir}",
                f"add {item.path.stem}.png there (white = trained), or turn optimization.masked_loss off",
            )
        channel = "R"
    else:
        path, channel = item.path, "A"
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img) or img
            img.load()
            if channel == "A":
                band = img.convert("RGBA").getchannel("A")
            else:
                band = img.convert("RGB").getchannel("R")
    except OSError as exc:
        raise TrainingError(f"{path}: the mask cannot be read ({exc})", "replace the file") from None
    arr = np.asarray(_geometry(band, item, flip), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy())


def batch_masks(profile: Any, items: list, flips: list[bool], device):
    """(N, 1, H, W) masks of one batch on ``device`` (pinned, non-blocking on CUDA, like the
    latents), or None when masked loss is off."""
    import torch

    from loratui.engine.training.fastpath import to_device

    if not profile.optimization.masked_loss:
        return None
    return to_device(torch.stack([load_mask(it, profile.dataset, f) for it, f in zip(items, flips)]).unsqueeze(1), device)
