"""One image file of a dataset: its size from the header, and its pixels at a bucket.

``probe_image`` reads only the header (a few hundred bytes, plus the last bytes
of the file to catch truncated downloads) and says why a file cannot be trained
on; ``load_image_array`` / ``load_image_tensor`` decode it, EXIF-rotated, in RGB,
resized to cover its bucket and centre-cropped, with the ``CropInfo`` SDXL's size
conditioning needs. Used by the dataset scan (engine.dataset) and the latent
cache (engine.latent_cache). numpy, Pillow and torch are imported inside functions.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from loratui.engine.buckets import cover_size

if TYPE_CHECKING:
    from loratui.engine.dataset.items import ImageItem

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# image types people drop into a dataset that we do not train on: said, not silently ignored
UNSUPPORTED_IMAGE_EXTENSIONS = (".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".psd", ".svg", ".jfif")
# Pillow refuses to open images above this (2 × its MAX_IMAGE_PIXELS default):
# a decompression bomb guard. We refuse them in the scan, with a message.
MAX_IMAGE_PIXELS = 178_956_970
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class DatasetError(Exception):
    """A dataset problem a user can fix; ``str(exc)`` names the file."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


class CropInfo(NamedTuple):
    """SDXL size conditioning, all (h, w) / (top, left) as SDXL's time ids."""

    original_size: tuple[int, int]  # (h, w) of the image before resizing
    crop_top_left: tuple[int, int]  # (top, left) pixels cropped off the resized image
    target_size: tuple[int, int]  # (h, w) of the bucket


# --------------------------------------------------------------------------- headers


def _png_header_size(path: Path) -> tuple[int, int] | None:
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return None


def _too_large(w: int | None, h: int | None, pixels: int | None = None) -> str:
    dims = f"{w}×{h} pixels" if w and h else f"{pixels:,} pixels" if pixels else "too many pixels"
    return (
        f"{dims} is too large to decode safely (limit {MAX_IMAGE_PIXELS // 1_000_000} megapixels; "
        "possible decompression bomb): not decoded — downscale it"
    )


def _tail_complete(path: Path, fmt: str, nbytes: int) -> bool:
    """Cheap check that the file is not cut short (a stopped download or copy)."""
    try:
        with open(path, "rb") as f:
            if fmt == "PNG":
                f.seek(max(0, nbytes - 12))
                return f.read(12) == _PNG_END
            if fmt in ("JPEG", "MPO"):  # MPO: a camera JPEG with its preview image after it
                f.seek(max(0, nbytes - 2))
                return f.read(2) == b"\xff\xd9"
            if fmt == "WEBP":
                f.seek(4)
                return nbytes >= int.from_bytes(f.read(4), "little") + 8
            if fmt == "BMP":
                f.seek(2)
                declared = int.from_bytes(f.read(4), "little")
                return declared == 0 or nbytes >= declared
    except OSError:
        return False
    return False  # another format behind one of our extensions: decode to be sure


def _exif_orientation(img) -> int:
    """EXIF orientation without decoding pixels (a PNG's eXIf chunk is only
    seen when it precedes the image data; the loader catches the rest)."""
    try:
        from PIL import Image

        if img.format == "PNG":
            raw = img.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = img.getexif()
        return int(exif.get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make the image unusable
        return 1


def probe_image(path: str | Path) -> tuple[int, int]:
    """(w, h) of an image after EXIF rotation, from its header.

    Raises ``DatasetError`` with the reason when the file cannot be trained on
    (empty, not an image, truncated, too large)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        nbytes = path.stat().st_size
    except OSError as exc:
        raise DatasetError(f"cannot be read ({exc.strerror or exc})") from None
    if nbytes == 0:
        raise DatasetError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                w, h = img.size
                fmt = img.format or ""
                if w * h > MAX_IMAGE_PIXELS:
                    raise DatasetError(_too_large(w, h))
                if w < 1 or h < 1:
                    raise DatasetError(f"has no pixels ({w}×{h})")
                orientation = _exif_orientation(img)
                if not _tail_complete(path, fmt, nbytes):
                    try:
                        img.load()
                    except Exception as exc:  # noqa: BLE001
                        raise DatasetError(f"truncated or corrupt ({exc})") from None
    except DatasetError:
        raise
    except Image.DecompressionBombError as exc:
        dims = _png_header_size(path)
        m = re.search(r"\((\d+) pixels\)", str(exc))
        raise DatasetError(_too_large(*(dims or (None, None)), pixels=int(m.group(1)) if m else None)) from None
    except UnidentifiedImageError:
        try:
            with open(path, "rb") as f:
                head = f.read(512)
        except OSError:
            head = b""
        looks_text = bool(head) and b"\x00" not in head and all(b >= 9 for b in head[:64])
        raise DatasetError("not an image (a text file)" if looks_text else "not an image Pillow can read") from None
    except OSError as exc:
        raise DatasetError(f"cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - any decoder error is a bad file, not a crash
        raise DatasetError(f"cannot be read ({type(exc).__name__}: {exc})") from None
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return w, h


# --------------------------------------------------------------------------- image loading


def _to_rgb(img):
    """Any Pillow mode → RGB. Alpha is flattened on white; 16-bit and float
    greyscale are scaled to 8 bits (a plain convert would clip them to white)."""
    import numpy as np
    from PIL import Image

    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img).astype(np.float64)
        top = float(arr.max()) if arr.size else 0.0
        if mode == "F":
            arr = arr * 255.0 if top <= 1.0 else arr
        elif mode.startswith("I;16") or top > 255:
            arr = arr / 257.0
        return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def load_image_array(item: ImageItem, flip: bool = False):
    """(uint8 H×W×3 numpy array of the bucket size, CropInfo). EXIF rotation
    applied, any mode converted to RGB, resized to cover the bucket (as sd-scripts
    sizes it), centre-cropped, then mirrored when ``flip``."""
    import numpy as np
    from PIL import Image, ImageOps

    bw, bh = item.bucket
    drafted = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(item.path) as img:
                turned = _exif_orientation(img) in (5, 6, 7, 8)
                full = (img.size[1], img.size[0]) if turned else img.size
                # the size the scan planned with, unless the file changed since
                target = tuple(item.resized) if full == tuple(item.image_size) else cover_size(full, (bw, bh))
                if img.format in ("JPEG", "MPO") and target[0] * 2 <= full[0] and target[1] * 2 <= full[1]:
                    # decode a large JPEG at a reduced scale (still ≥ the resize target)
                    drafted = img.draft(None, (target[1], target[0]) if turned else target) is not None
                img.load()
                img = ImageOps.exif_transpose(img) or img
                img = _to_rgb(img)
    except Exception as exc:  # noqa: BLE001
        raise DatasetError(
            f"{item.path}: cannot be read ({exc})",
            "remove or replace the file; `loratui check` lists the unreadable images",
        ) from None
    w, h = img.size
    if (w, h) == full or drafted:
        resized = target
    else:  # a rotation only found when decoding (a PNG's late eXIf chunk)
        full = (w, h)
        resized = cover_size(full, (bw, bh))
    orig_size = full
    if (w, h) != resized:
        img = img.resize(resized, Image.Resampling.LANCZOS)
    left, top = (resized[0] - bw) // 2, (resized[1] - bh) // 2
    img = img.crop((left, top, left + bw, top + bh))
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        left = resized[0] - bw - left
    arr = np.asarray(img, dtype=np.uint8)
    crop = CropInfo(original_size=(int(orig_size[1]), int(orig_size[0])), crop_top_left=(top, left), target_size=(bh, bw))
    return arr, crop


def array_to_tensor(arr):
    """uint8 H×W×3 → float32 3×H×W in [-1, 1]."""
    import torch

    t = torch.from_numpy(arr.copy()).permute(2, 0, 1).float()
    return t / 127.5 - 1.0


def load_image_tensor(item: ImageItem, flip: bool = False):
    """(float32 3×H×W tensor in [-1, 1] at the bucket size, CropInfo for SDXL)."""
    arr, crop = load_image_array(item, flip)
    return array_to_tensor(arr), crop
