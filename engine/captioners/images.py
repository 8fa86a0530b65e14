"""Finding and opening the images a captioner works on.

Every image comes back as plain 8-bit RGB with any transparency flattened onto
white (what the WD14 taggers were trained on, and harmless for BLIP).  An image
that cannot be read raises :class:`ImageError` naming the file and the reason;
the job reports it and goes on with the next one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from loratui.engine.imagefile import IMAGE_EXTENSIONS

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage


class ImageError(Exception):
    """An image that cannot be used; ``str()`` names the file and why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def image_extensions() -> tuple[str, ...]:
    """The images training uses (engine.imagefile.IMAGE_EXTENSIONS, as sd-scripts'),
    matched case-insensitively: no point captioning an image that is never trained on."""
    return IMAGE_EXTENSIONS


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (and below it with ``recursive``), sorted.
    Hidden files and folders (a leading dot, e.g. our own temporary files) are left out."""
    root = Path(folder)
    exts = image_extensions()
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(
        p for p in found if p.suffix.lower() in exts and not _hidden(p, root) and p.is_file()
    )


def to_rgb(im: "PILImage.Image") -> "PILImage.Image":
    """Any Pillow image as 8-bit RGB; transparency is composited onto white."""
    import numpy as np
    from PIL import Image

    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        # 16-bit / 32-bit greyscale: scale to 0-255 instead of clipping.
        arr = np.asarray(im, dtype=np.float64)
        if mode == "F" and arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = arr * 255.0
        elif mode != "F" and arr.size and float(arr.max()) > 255:
            arr = arr / 257.0
        im = Image.fromarray(np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8), "L")
        mode = "L"
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if not has_alpha:
        return im if mode == "RGB" else im.convert("RGB")
    rgba = im.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def open_rgb(path: str | Path) -> "PILImage.Image":
    """Open ``path`` fully (decoding every pixel, so truncated files fail here)
    and return it as RGB, turned upright by its EXIF orientation as training
    sees it. Raises :class:`ImageError`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ImageError(p, f"cannot read the file ({exc.strerror or exc})") from None
    if size == 0:
        raise ImageError(p, "empty file (0 bytes)")
    try:
        with Image.open(p) as im:
            im.load()
            try:
                upright = ImageOps.exif_transpose(im)
            except Exception:  # noqa: BLE001 - a broken EXIF block must not make the image unusable
                upright = im
            out = to_rgb(upright)
            return out.copy() if out is im else out  # never hand out the file-backed image
    except UnidentifiedImageError:
        raise ImageError(p, "not an image Pillow can read (corrupt or unsupported format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(p, f"image too large to open safely ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(p, f"corrupt or truncated image ({exc})") from None
