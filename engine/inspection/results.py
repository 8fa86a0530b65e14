"""What an inspection finds: per image, per concept folder, duplicates and the
issues worth fixing, with the tables the CLI prints and the screen shows."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loratui.engine.inspection.duplicates import NEAR_DUPLICATE_BITS, DuplicateGroup
from loratui.engine.inspection.guidance import RepeatsSuggestion
from loratui.engine.problems import Problem

@dataclass
class ImageInfo:
    path: Path
    folder: str  # concept folder name, e.g. "10_mychar"
    size: tuple[int, int] | None = None  # (w, h) after EXIF rotation; None when unreadable
    bucket: tuple[int, int] | None = None
    resized: tuple[int, int] | None = None
    caption: str | None = None  # the caption training reads (first line); None: no caption file / empty
    file_size: int = 0
    problem: str = ""  # why it cannot be trained on ("" when fine)
    upscale: float = 1.0  # how much it is enlarged to fill its bucket
    tiny: bool = False
    sha256: str = ""
    dhash: int | None = None
    mean_rgb: tuple[int, int, int] | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def ok(self) -> bool:
        return not self.problem

    @property
    def has_caption(self) -> bool:
        return self.caption is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "folder": self.folder,
            "size": list(self.size) if self.size else None,
            "bucket": list(self.bucket) if self.bucket else None,
            "caption": self.caption,
            "file_size": self.file_size,
            "problem": self.problem,
            "upscale": round(self.upscale, 3),
            "tiny": self.tiny,
            "sha256": self.sha256,
            "dhash": f"{self.dhash:016x}" if self.dhash is not None else None,
        }


@dataclass
class ConceptInfo:
    folder: Path
    name: str  # class tokens
    repeats: int  # from the folder name
    images: int  # readable images
    captioned: int
    unreadable: int
    suggested: RepeatsSuggestion
    balanced_repeats: int  # repeats the balancing rule gives (== repeats when unchanged)
    is_reg: bool = False

    @property
    def folder_name(self) -> str:
        return self.folder.name

    @property
    def missing_captions(self) -> int:
        return self.images - self.captioned

    @property
    def samples(self) -> int:
        return self.images * self.repeats

    @property
    def coverage(self) -> float:
        return self.captioned / self.images if self.images else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "name": self.name,
            "repeats": self.repeats,
            "images": self.images,
            "captioned": self.captioned,
            "missing_captions": self.missing_captions,
            "unreadable": self.unreadable,
            "samples_per_epoch": self.samples,
            "suggested_repeats": self.suggested.repeats,
            "suggested_epochs": self.suggested.epochs,
            "balanced_repeats": self.balanced_repeats,
        }


@dataclass
class Issue:
    kind: str  # "error" | "unreadable" | "tiny" | "duplicate" | "near-duplicate" | "no-caption" | "warning"
    message: str
    path: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "path": self.path, "message": self.message}


@dataclass
class DatasetInspection:
    root: Path
    resolution: int
    caption_extension: str
    concepts: list[ConceptInfo] = field(default_factory=list)
    images: list[ImageInfo] = field(default_factory=list)
    tags: dict[str, dict[str, int]] = field(default_factory=dict)  # folder name → tag → captions holding it
    duplicates: list[DuplicateGroup] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # the scan's errors: training cannot start
    warnings: list[Problem] = field(default_factory=list)  # the scan's other warnings
    hints: list[str] = field(default_factory=list)
    decoded: bool = False  # images were fully decoded (duplicates and corrupt data checked)

    # -- figures ---------------------------------------------------------------
    @property
    def image_count(self) -> int:
        return sum(c.images for c in self.concepts)

    @property
    def captioned(self) -> int:
        return sum(c.captioned for c in self.concepts)

    @property
    def samples_per_epoch(self) -> int:
        return sum(c.samples for c in self.concepts)

    def images_of(self, concept: ConceptInfo | str) -> list[ImageInfo]:
        name = concept.folder_name if isinstance(concept, ConceptInfo) else Path(concept).name
        return [im for im in self.images if im.folder == name]

    def missing_caption_images(self, concept: ConceptInfo | str | None = None) -> list[Path]:
        """Readable images without a caption (in one concept, or everywhere)."""
        ims = self.images if concept is None else self.images_of(concept)
        return [im.path for im in ims if im.ok and not im.has_caption]

    def tag_table(self, concept: ConceptInfo | str | None = None) -> list[tuple[str, int]]:
        """(tag, captions holding it), most frequent first, then by name."""
        if concept is None:
            c: Counter = Counter()
            for freq in self.tags.values():
                c.update(freq)
        else:
            c = Counter(self.tags.get(concept.folder_name if isinstance(concept, ConceptInfo) else Path(concept).name, {}))
        return sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))

    def bucket_table(self) -> list[tuple[tuple[int, int], int, int]]:
        """(bucket (w, h), images, samples per epoch with the folder repeats), by bucket."""
        repeats = {c.folder_name: c.repeats for c in self.concepts}
        imgs: Counter = Counter()
        samples: Counter = Counter()
        for im in self.images:
            if im.ok and im.bucket:
                imgs[im.bucket] += 1
                samples[im.bucket] += repeats.get(im.folder, 1)
        return [(b, imgs[b], samples[b]) for b in sorted(imgs)]

    def balance_plan(self) -> dict[Path, tuple[int, int]]:
        """Concept folder → (repeats now, balanced repeats), only those that change."""
        return {c.folder: (c.repeats, c.balanced_repeats) for c in self.concepts if c.balanced_repeats != c.repeats}

    def issues(self) -> list[Issue]:
        """Everything worth fixing, most serious first."""
        out = [Issue("error", str(p)) for p in self.problems]
        for im in self.images:
            if im.problem:
                out.append(Issue("unreadable", f"{im.folder}/{im.name}: {im.problem}", str(im.path)))
        for g in self.duplicates:
            names = ", ".join(_rel(p, self.root) for p in g.paths)
            if g.kind == "exact":
                msg = f"identical files: {names} — the picture trains {len(g.paths)}× as often; delete the copies"
                out.append(Issue("duplicate", msg, str(g.paths[0])))
            else:
                msg = (
                    f"look alike (difference hash within {g.distance} of 64 bits): {names} — "
                    "near copies over-train that picture; keep the best one"
                )
                out.append(Issue("near-duplicate", msg, str(g.paths[0])))
        for im in self.images:
            if im.tiny and im.size and im.bucket:
                w, h = im.size
                out.append(
                    Issue(
                        "tiny",
                        f"{im.folder}/{im.name}: {w}×{h} is enlarged {im.upscale:.1f}× to fill its "
                        f"{im.bucket[0]}×{im.bucket[1]} bucket (blurry) — use a larger image",
                        str(im.path),
                    )
                )
        for c in self.concepts:
            if c.images and c.missing_captions:
                out.append(
                    Issue(
                        "no-caption",
                        f"{c.folder_name}: {c.missing_captions} of {c.images} images have no "
                        f"{self.caption_extension} caption (they train as {c.name!r}) — caption them",
                        str(c.folder),
                    )
                )
        out += [Issue("warning", str(w)) for w in self.warnings]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "resolution": self.resolution,
            "caption_extension": self.caption_extension,
            "images": self.image_count,
            "captioned": self.captioned,
            "samples_per_epoch": self.samples_per_epoch,
            "concepts": [c.to_dict() for c in self.concepts],
            "buckets": [{"bucket": list(b), "images": n, "samples": s} for b, n, s in self.bucket_table()],
            "tags": [{"tag": t, "count": n} for t, n in self.tag_table()],
            "tags_by_concept": self.tags,
            "duplicates": [g.to_dict() for g in self.duplicates],
            "duplicates_checked": self.decoded,
            "near_duplicate_bits": NEAR_DUPLICATE_BITS,
            "issues": [i.to_dict() for i in self.issues()],
            "hints": self.hints,
            "files": [im.to_dict() for im in self.images],
        }


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
