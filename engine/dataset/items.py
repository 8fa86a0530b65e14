"""What the dataset scan returns: the images to train on and the report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loratui.engine.buckets import BucketManager
from loratui.engine.plan import DatasetReport


@dataclass
class ImageItem:
    path: Path
    caption: str  # the caption file's text, or the class tokens when it has none
    concept: str  # class tokens of the concept folder ("mychar" for 10_mychar)
    folder: str  # the concept folder (path)
    repeats: int  # effective repeats per epoch (balanced / reg-matched)
    is_reg: bool
    image_size: tuple[int, int]  # (w, h) after EXIF rotation
    bucket: tuple[int, int]  # (w, h) the image is trained at
    resized: tuple[int, int]  # (w, h) the image is resized to before the centre crop
    has_caption: bool = True
    folder_repeats: int = 0  # repeats from the folder name

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class ScanResult:
    report: DatasetReport
    items: list[ImageItem]
    buckets: BucketManager
    mean_ar_error: float = 0.0
    # concept folder → (repeats from the folder name, repeats used) where balancing changed them
    adjusted_repeats: dict[str, tuple[int, int]] = field(default_factory=dict)
    unused_reg_images: int = 0

    @property
    def train_items(self) -> list[ImageItem]:
        return [it for it in self.items if not it.is_reg]

    @property
    def reg_items(self) -> list[ImageItem]:
        return [it for it in self.items if it.is_reg]

    @property
    def train_samples(self) -> int:
        return sum(it.repeats for it in self.items if not it.is_reg)

    @property
    def reg_samples(self) -> int:
        return sum(it.repeats for it in self.items if it.is_reg)

    def bucket_counts(self) -> dict[tuple[int, int], int]:
        """Samples per epoch (repeats included) in each bucket, sorted by bucket."""
        c: Counter = Counter()
        for it in self.items:
            c[it.bucket] += it.repeats
        return dict(sorted(c.items()))

    def bucket_info(self) -> dict[str, Any]:
        """``ss_bucket_info`` as sd-scripts writes it (counts include repeats)."""
        return {
            "buckets": {
                str(i): {"resolution": [w, h], "count": n} for i, ((w, h), n) in enumerate(self.bucket_counts().items())
            },
            "mean_img_ar_error": self.mean_ar_error,
        }

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """``ss_tag_frequency``: per concept folder name, how many captions hold each tag."""
        out: dict[str, dict[str, int]] = {}
        for it in self.items:
            freq = out.setdefault(Path(it.folder).name, {})
            for tag in it.caption.split(","):
                tag = tag.strip().lower()
                if tag:
                    freq[tag] = freq.get(tag, 0) + 1
        return out

    def dataset_dirs(self, reg: bool = False) -> dict[str, dict[str, int]]:
        """``ss_dataset_dirs`` / ``ss_reg_dataset_dirs``: folder name → n_repeats, img_count."""
        concepts = self.report.reg_concepts if reg else self.report.concepts
        return {Path(c.folder).name: {"n_repeats": c.repeats, "img_count": c.images} for c in concepts}
