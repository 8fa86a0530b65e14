"""Duplicates: exact copies (SHA-256 of the bytes) and look-alikes.

Near duplicates: a 64-bit difference hash (dHash: the picture shrunk to 9×8
grey pixels, one bit per horizontal neighbour pair "left brighter than right") —
two images are near duplicates when their hashes differ in at most
``NEAR_DUPLICATE_BITS`` (6) of 64 bits *and* their mean colours differ by at most
``NEAR_DUPLICATE_COLOUR`` (24 of 255) in every channel. The colour check keeps
flat images of different colours (which all hash to 0) apart. Re-encoded, resized
or slightly retouched copies land within the threshold; different photos of one
subject almost never do.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loratui.engine.fsutil import file_sha256
from loratui.engine.imagefile import DatasetError

if TYPE_CHECKING:
    from loratui.engine.inspection.results import ImageInfo

NEAR_DUPLICATE_BITS = 6  # dHash Hamming distance (of 64 bits) at or below which two images look alike
NEAR_DUPLICATE_COLOUR = 24  # and their mean colours differ by at most this (0-255) per channel


@dataclass
class DuplicateGroup:
    kind: str  # "exact" (same bytes) | "near" (look alike)
    paths: list[Path]
    distance: int  # largest dHash distance inside the group (0 for exact)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "paths": [str(p) for p in self.paths], "distance": self.distance}


def file_hash(path: Path) -> str:
    """The SHA-256 of a file's bytes; DatasetError when it cannot be read."""
    try:
        return file_sha256(path)
    except OSError as exc:
        raise DatasetError(f"cannot be read ({exc.strerror or exc})") from None


def image_fingerprint(path: str | Path) -> tuple[int, tuple[int, int, int]]:
    """(64-bit difference hash, mean (r, g, b)) of an image, decoding all of it.
    Raises DatasetError when the pixels cannot be decoded."""
    from PIL import Image, ImageOps

    from loratui.engine.captioners.images import to_rgb

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                if img.format == "JPEG":
                    img.draft("RGB", (64, 64))  # decode a large JPEG at 1/8 scale: far quicker, same hash
                img.load()
                try:
                    img = ImageOps.exif_transpose(img) or img
                except Exception:  # noqa: BLE001 - a broken EXIF block is not a broken image
                    pass
                rgb = to_rgb(img)
                if max(rgb.size) > 256:
                    rgb = rgb.reduce(max(1, min(rgb.size) // 64))
                small = rgb.resize((9, 8), Image.Resampling.BOX)
    except Exception as exc:  # noqa: BLE001 - any decoder error is a bad file
        raise DatasetError(f"corrupt: the image data cannot be decoded ({type(exc).__name__}: {exc})") from None
    px = list(small.getdata())
    mean = tuple(int(round(sum(p[i] for p in px) / len(px))) for i in range(3))
    grey = list(small.convert("L").getdata())
    bits = 0
    for y in range(8):
        row = grey[y * 9 : y * 9 + 9]
        for x in range(8):
            bits = (bits << 1) | (1 if row[x] > row[x + 1] else 0)
    return bits, mean  # type: ignore[return-value]


def hash_distance(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def find_duplicates(images: list[ImageInfo]) -> list[DuplicateGroup]:
    """Groups of identical files (same SHA-256) and of look-alikes (see the module doc)."""
    n = len(images)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def near(a: ImageInfo, b: ImageInfo) -> bool:
        if a.dhash is None or b.dhash is None or a.mean_rgb is None or b.mean_rgb is None:
            return False
        if hash_distance(a.dhash, b.dhash) > NEAR_DUPLICATE_BITS:
            return False
        return max(abs(x - y) for x, y in zip(a.mean_rgb, b.mean_rgb)) <= NEAR_DUPLICATE_COLOUR

    for i in range(n):
        for j in range(i + 1, n):
            a, b = images[i], images[j]
            if (a.sha256 and a.sha256 == b.sha256) or near(a, b):
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[rj] = ri
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(i)
    groups = []
    for members in comps.values():
        if len(members) < 2:
            continue
        ims = [images[i] for i in members]
        if len({im.sha256 for im in ims}) == 1:
            groups.append(DuplicateGroup("exact", [im.path for im in ims], 0))
            continue
        dist = max(
            hash_distance(a.dhash, b.dhash)  # type: ignore[arg-type]
            for k, a in enumerate(ims)
            for b in ims[k + 1 :]
        )
        groups.append(DuplicateGroup("near", [im.path for im in ims], dist))
    groups.sort(key=lambda g: (g.kind != "exact", [str(p) for p in g.paths]))
    return groups
