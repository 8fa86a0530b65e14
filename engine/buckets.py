"""Aspect-ratio buckets, computed the way sd-scripts computes them.

sd-scripts (library/train_util.py ``BucketManager``, ``make_bucket_resolutions``)
is the reference: the same resolution, min/max side and step give the same
bucket list and put each image in the same bucket, so a profile copied from a
kohya guide trains on the same shapes.

Two deliberate differences, both for inputs sd-scripts crashes on:
- with ``bucket_no_upscale`` a bucket side is never below one step (a 1×1 image
  would give a 0×0 bucket there);
- the geometry helpers work from the size of the image actually decoded, so an
  image whose EXIF rotation was only found at load time still fills its bucket.

Pure Python: no numpy, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loratui.engine.problems import Problem, error, warning

if TYPE_CHECKING:
    from loratui.engine.schema import DatasetSettings

Size = tuple[int, int]  # (width, height)


def make_bucket_resolutions(
    max_reso: Size, min_size: int = 256, max_size: int = 1024, divisible: int = 64
) -> list[Size]:
    """Every bucket (w, h) whose area is at most ``max_reso``'s area, both sides
    multiples of ``divisible`` within [min_size, max_size], plus the largest
    square; sorted. Same list as sd-scripts' ``make_bucket_resolutions``."""
    max_width, max_height = max_reso
    max_area = max_width * max_height
    resos: set[Size] = set()
    side = int(math.sqrt(max_area) // divisible) * divisible
    resos.add((side, side))
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


def cover_size(image: Size, bucket: Size) -> Size:
    """The size an image is resized to so that it covers ``bucket`` with its
    aspect ratio kept (one side equal to the bucket's, the other ≥)."""
    w, h = image
    bw, bh = bucket
    scale = max(bw / w, bh / h)
    return max(bw, int(w * scale + 0.5)), max(bh, int(h * scale + 0.5))


def center_crop_offset(resized: Size, bucket: Size) -> tuple[int, int]:
    """(left, top) of the centred ``bucket`` window inside ``resized``."""
    return (resized[0] - bucket[0]) // 2, (resized[1] - bucket[1]) // 2


@dataclass(frozen=True)
class BucketChoice:
    bucket: Size  # (w, h) the image is trained at
    resized: Size  # (w, h) the image is resized to before the centre crop
    ar_error: float  # bucket aspect ratio − image aspect ratio


class BucketManager:
    """Chooses a bucket for an image size.

    ``enable=False`` means no buckets: every image is resized to cover the
    training resolution and centre-cropped to it (square or ``width×height``).
    """

    def __init__(
        self,
        resolution: Size,
        *,
        enable: bool = True,
        min_size: int = 256,
        max_size: int = 1024,
        step: int = 64,
        no_upscale: bool = False,
    ) -> None:
        self.resolution = resolution
        self.enable = enable
        self.min_size = min_size
        self.max_size = max_size
        self.step = step
        self.no_upscale = no_upscale
        self.max_area = resolution[0] * resolution[1]
        if not enable:
            self.resos: list[Size] = [resolution]
        elif no_upscale:
            self.resos = []  # buckets come from the image sizes
        else:
            self.resos = make_bucket_resolutions(resolution, min_size, max_size, step)
        self._reso_set = set(self.resos)
        self._ars = [w / h for w, h in self.resos]

    @classmethod
    def from_settings(cls, ds: "DatasetSettings") -> "BucketManager":
        res = (ds.resolution, ds.resolution_height or ds.resolution)
        return cls(
            res,
            enable=ds.enable_bucket,
            min_size=ds.min_bucket_reso,
            max_size=ds.max_bucket_reso,
            step=ds.bucket_reso_steps,
            no_upscale=ds.bucket_no_upscale,
        )

    def problems(self) -> list[Problem]:
        """Settings sd-scripts would reject or that give unusable buckets."""
        out = []
        if self.step % 8 and self.step > 8:
            out.append(
                error(
                    "dataset.bucket_reso_steps",
                    f"{self.step} must be a multiple of 8 (the VAE works on 8-pixel blocks)",
                    "64 is usual",
                )
            )
        if not self.enable:
            w, h = self.resolution
            if w % 8 or h % 8:
                cut = f"{w - w % 8}×{h - h % 8}"
                key = "dataset.resolution" if w % 8 else "dataset.resolution_height"
                out.append(warning(key, f"{w}×{h} is not made of 8-pixel blocks: images are trained at {cut} "
                                        "(what the VAE keeps of them, as in sd-scripts)",
                                   f"set the size to {cut} to say so, or turn on enable_bucket"))
        if self.enable and not self.no_upscale:
            big = max(self.resolution)
            if self.max_size < big:
                out.append(
                    error("dataset.max_bucket_reso", f"{self.max_size} is smaller than the resolution {big}", f"raise it to at least {big}")
                )
        return out

    def _round_to_steps(self, x: float) -> int:
        v = int(x + 0.5)
        return v - v % self.step

    def select(self, width: int, height: int) -> BucketChoice:
        """The bucket for an image of ``width × height`` (after EXIF rotation). A step
        below 8 (kohya_ss presets' 1), or a fixed resolution such as 512×650, chooses as
        sd-scripts does, then cuts each side to the VAE's 8-pixel blocks (what sd-scripts'
        VAE keeps of it)."""
        choice = self._select(width, height)
        w, h = choice.bucket
        if not (w % 8 or h % 8):
            return choice
        bucket = (max(8, w - w % 8), max(8, h - h % 8))
        resized = (max(bucket[0], choice.resized[0]), max(bucket[1], choice.resized[1]))
        return BucketChoice(bucket=bucket, resized=resized, ar_error=bucket[0] / bucket[1] - width / height)

    def _select(self, width: int, height: int) -> BucketChoice:
        ar = width / height
        if not self.enable:
            reso = self.resolution
        elif not self.no_upscale:
            reso = (width, height)
            if reso not in self._reso_set:
                # nearest aspect ratio; the first one wins a tie (numpy argmin)
                best = min(range(len(self.resos)), key=lambda i: (abs(self._ars[i] - ar), i))
                reso = self.resos[best]
        else:
            if width * height > self.max_area:
                # shrink to the area keeping the aspect ratio, then round one
                # side to the step, whichever keeps the ratio better
                rw = math.sqrt(self.max_area * ar)
                rh = self.max_area / rw
                bw_r = self._round_to_steps(rw)
                bh_in_wr = self._round_to_steps(bw_r / ar)
                ar_w = bw_r / bh_in_wr if bh_in_wr else math.inf
                bh_r = self._round_to_steps(rh)
                bw_in_hr = self._round_to_steps(bh_r * ar)
                ar_h = bw_in_hr / bh_r if bh_r else math.inf
                if abs(ar_w - ar) < abs(ar_h - ar):
                    resized = (bw_r, int(bw_r / ar + 0.5))
                else:
                    resized = (int(bh_r * ar + 0.5), bh_r)
            else:
                resized = (width, height)
            reso = (
                max(self.step, resized[0] - resized[0] % self.step),
                max(self.step, resized[1] - resized[1] % self.step),
            )
            if resized[0] >= reso[0] and resized[1] >= reso[1]:
                # as sd-scripts: keep this size and crop the remainder (no resampling
                # at all for an image already below the area)
                return BucketChoice(bucket=reso, resized=resized, ar_error=reso[0] / reso[1] - ar)
        return BucketChoice(bucket=reso, resized=cover_size((width, height), reso), ar_error=reso[0] / reso[1] - ar)
