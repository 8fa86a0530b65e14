"""Dataset inspection as a library: what `loratui dataset DIR` prints and the
dataset screen shows, plus the few edits a user makes before training.

Read-only part (``inspect_dataset``) builds on :func:`engine.dataset.scan_dataset`
(the same scan training uses, so the concepts, captions and buckets shown are the
ones training gets) and adds:

- per image: size, bucket, caption, file size; "tiny" images (enlarged more than
  ``engine.dataset.UPSCALE_WARN``× to fill their bucket);
- a full decode of every image (the scan reads headers only), which finds
  images corrupt in the middle, and two hashes:

  * exact duplicates: the SHA-256 of the file's bytes;
  * near duplicates: a 64-bit difference hash (dHash: the picture shrunk to
    9×8 grey pixels, one bit per horizontal neighbour pair "left brighter than
    right") — two images are near duplicates when their hashes differ in at
    most ``NEAR_DUPLICATE_BITS`` (6) of 64 bits *and* their mean colours differ
    by at most ``NEAR_DUPLICATE_COLOUR`` (24 of 255) in every channel. The colour
    check keeps flat images of different colours (which all hash to 0) apart.
    Re-encoded, resized or slightly retouched copies land within the threshold;
    different photos of one subject almost never do.

- the tag frequency table (``ScanResult.tag_frequency``), bucket counts,
  suggested repeats (:func:`suggest_repeats`, from PRODUCT.md's numbers) and a
  balancing plan (the rule ``dataset.balance_concepts`` applies at training time,
  keeping a folder's repeats where they are as close to the mean as the rounded
  value, so balancing twice changes nothing).

Edits, each refusing rather than overwriting anything: :func:`set_repeats`
(rename ``10_x`` → ``6_x``), :func:`apply_balance`, :func:`save_caption`
(atomic write) and :func:`make_kohya_folder` (a ``<repeats>_<name>`` folder
from a flat folder of images, copied or linked; the source is never changed).

No textual, no torch: Pillow and hashlib only, imported where used.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loratui.engine.dataset import IMAGE_EXTENSIONS, UPSCALE_WARN, DatasetError, probe_image, read_caption, scan_dataset

if TYPE_CHECKING:
    from loratui.engine.schema import DatasetSettings

NEAR_DUPLICATE_BITS = 6  # dHash Hamming distance (of 64 bits) at or below which two images look alike
NEAR_DUPLICATE_COLOUR = 24  # and their mean colours differ by at most this (0-255) per channel
MAX_REPEATS = 1000
LINK_MODES = ("copy", "hardlink", "symlink")
_FOLDER_RE = re.compile(r"^(-?\d+)_(.*)$", re.DOTALL)
_BALANCE_PREFIX = "dataset.balance_concepts:"
# scan warnings that the per-file issues below already say, file by file
_COVERED_WARNINGS = ("unreadable image(s) skipped", "enlarged more than", "caption; they are captioned with")


class InspectError(Exception):
    """A request we refuse; ``message`` names the file and what is wrong, ``hint`` what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message + (f" — {hint}" if hint else ""))
        self.message = message
        self.hint = hint


# --------------------------------------------------------------------------- guidance


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


# --------------------------------------------------------------------------- results


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
class DuplicateGroup:
    kind: str  # "exact" (same bytes) | "near" (look alike)
    paths: list[Path]
    distance: int  # largest dHash distance inside the group (0 for exact)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "paths": [str(p) for p in self.paths], "distance": self.distance}


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
    problems: list[str] = field(default_factory=list)  # the scan's errors: training cannot start
    warnings: list[str] = field(default_factory=list)  # the scan's other warnings
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
        out = [Issue("error", p) for p in self.problems]
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
        out += [Issue("warning", w) for w in self.warnings]
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


# --------------------------------------------------------------------------- inspect


def dataset_settings(
    root: str | Path, resolution: int = 512, caption_extension: str = ".txt"
) -> "DatasetSettings":
    """The dataset settings an inspection of ``root`` at ``resolution`` uses: the
    schema's defaults (buckets on, 256–1024, step 64) with the largest bucket side
    raised to the resolution when that is larger. Raises InspectError for a bad value."""
    from pydantic import ValidationError

    from loratui.engine.schema import DatasetSettings

    try:
        res = int(resolution)
    except (TypeError, ValueError):
        raise InspectError(f"resolution: {resolution!r} is not a whole number", "e.g. 512, 768 or 1024") from None
    try:
        return DatasetSettings(
            train_data_dir=str(root),
            resolution=res,
            caption_extension=caption_extension,
            min_bucket_reso=min(256, res),
            max_bucket_reso=max(1024, res),
        )
    except ValidationError as exc:
        msgs = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            msgs.extend(msg.splitlines() if not loc else [f"{loc}: {msg}"])
        hint = "SD 1.x 512, SD 2.x 768, SDXL 1024" if any(m.startswith("resolution") for m in msgs) else ""
        raise InspectError("; ".join(msgs), hint) from None


def inspect_dataset(
    root: str | Path,
    *,
    resolution: int = 512,
    caption_extension: str = ".txt",
    settings: "DatasetSettings | None" = None,
    decode: bool = True,
    on_progress: Callable[[str, int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> DatasetInspection:
    """Inspect the ``<repeats>_<name>`` folders under ``root``.

    ``settings`` (a profile's dataset section) replaces ``resolution`` and
    ``caption_extension`` and gives the bucket settings. ``decode=False`` skips
    the full decode (no duplicate or mid-file corruption check; header reads only).
    ``on_progress(phase, n, total)`` reports "scanning" then "hashing"; ``cancelled()``
    is polled between images while hashing (the result then has ``decoded=False``).
    Raises InspectError only for a bad ``resolution``/``caption_extension``; a
    missing or bad folder comes back in ``problems``."""
    root = Path(root).expanduser()
    if settings is None:
        settings = dataset_settings(root, resolution, caption_extension)
    else:
        settings = settings.model_copy(update={"train_data_dir": str(root)})
    ds = settings.model_copy(update={"balance_concepts": True, "reg_data_dir": ""})
    res = ds.resolution
    report_cb = (lambda n: on_progress("scanning", n, 0)) if on_progress else None
    scan = scan_dataset(ds, on_progress=report_cb)
    insp = DatasetInspection(root=root, resolution=res, caption_extension=ds.caption_extension)
    insp.problems = list(scan.report.problems)
    insp.warnings = [
        w for w in scan.report.warnings if not w.startswith(_BALANCE_PREFIX) and not any(s in w for s in _COVERED_WARNINGS)
    ]
    insp.tags = scan.tag_frequency()
    by_folder: dict[str, list] = {}
    for it in scan.items:
        by_folder.setdefault(it.folder, []).append(it)
    area = ds.resolution * (ds.resolution_height or ds.resolution)
    for rep in scan.report.concepts:
        folder = Path(rep.folder)
        old, new = scan.adjusted_repeats.get(rep.folder, (rep.repeats, rep.repeats))
        items = by_folder.get(rep.folder, [])
        insp.concepts.append(
            ConceptInfo(
                folder=folder,
                name=rep.name,
                repeats=old,
                images=rep.images,
                captioned=rep.images - rep.missing_captions,
                unreadable=len(rep.unreadable),
                suggested=suggest_repeats(rep.images),
                balanced_repeats=new,
            )
        )
        infos: list[ImageInfo] = []
        for it in items:
            w, h = it.image_size
            if ds.bucket_no_upscale:
                up = math.sqrt(area / (w * h)) if w * h else 1.0
            else:
                up = max(it.resized[0] / w, it.resized[1] / h)
            infos.append(
                ImageInfo(
                    path=it.path,
                    folder=folder.name,
                    size=(w, h),
                    bucket=tuple(it.bucket),
                    resized=tuple(it.resized),
                    caption=it.caption if it.has_caption else None,
                    file_size=_file_size(it.path),
                    upscale=up,
                    tiny=up > UPSCALE_WARN,
                )
            )
        for line in rep.unreadable:
            name, _, reason = line.partition(": ")
            p = folder / name
            infos.append(ImageInfo(path=p, folder=folder.name, file_size=_file_size(p), problem=reason or "unreadable"))
        infos.sort(key=lambda im: im.name)
        insp.images.extend(infos)
    _keep_ties(insp.concepts)
    if not insp.concepts and scan.report.problems and root.is_dir():
        loose = _flat_images(root)
        if loose:
            sug = suggest_repeats(len(loose))
            insp.hints.append(
                f"{root} is a flat folder of {len(loose)} images: make a kohya folder from it with "
                f"`loratui dataset {root.parent / (root.name + '_kohya')} --make-kohya {root} --name {_safe_name(root.name)}` "
                f"(suggested repeats {sug.repeats}: {sug.reason})"
            )
    if decode and insp.images:
        _hash_images(insp, on_progress, cancelled)
    return insp


def _keep_ties(concepts: list[ConceptInfo]) -> None:
    """The balancing rule rounds each concept's repeats to the nearest whole
    number of the mean samples; where the folder's own repeats come as close, keep
    them, so that balancing a balanced dataset changes nothing."""
    live = [c for c in concepts if c.images]
    if len(live) < 2:
        return
    target = sum(c.images * c.repeats for c in live) / len(live)
    for c in live:
        if c.balanced_repeats != c.repeats and abs(c.repeats * c.images - target) <= abs(c.balanced_repeats * c.images - target):
            c.balanced_repeats = c.repeats


def _file_size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def _safe_name(name: str) -> str:
    m = _FOLDER_RE.match(name)
    name = m.group(2) if m else name
    return name.replace(" ", "_") or "mychar"


def _hash_images(insp: DatasetInspection, on_progress, cancelled) -> None:
    todo = [im for im in insp.images if im.ok]
    for n, im in enumerate(todo, 1):
        if cancelled is not None and cancelled():
            return
        try:
            im.sha256 = _sha256(im.path)
            im.dhash, im.mean_rgb = image_fingerprint(im.path)
        except DatasetError as exc:
            im.problem = str(exc)
            im.sha256, im.dhash, im.mean_rgb = "", None, None
        if on_progress:
            on_progress("hashing", n, len(todo))
    insp.decoded = True
    # a file found corrupt by the decode is no longer counted as an image of its concept
    broken = Counter(im.folder for im in todo if im.problem)
    broken_caps = Counter(im.folder for im in todo if im.problem and im.has_caption)
    for c in insp.concepts:
        if broken[c.folder_name]:
            c.images -= broken[c.folder_name]
            c.unreadable += broken[c.folder_name]
            c.captioned -= broken_caps[c.folder_name]
    insp.duplicates = find_duplicates([im for im in todo if im.ok])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise DatasetError(f"cannot be read ({exc.strerror or exc})") from None
    return h.hexdigest()


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


# --------------------------------------------------------------------------- captions


def caption_file(image: str | Path, caption_extension: str = ".txt") -> Path:
    """Where ``image``'s caption lives: an existing file whose name differs only in
    case (as the scan accepts) or else ``<stem><caption_extension>``."""
    image = Path(image)
    want = image.stem + caption_extension
    exact = image.with_name(want)
    if exact.exists():
        return exact
    try:
        for e in os.scandir(image.parent):
            if e.name.lower() == want.lower() and e.is_file():
                return Path(e.path)
    except OSError:
        pass
    return exact


def load_caption(image: str | Path, caption_extension: str = ".txt") -> tuple[str, str | None]:
    """(the whole caption file's text, a warning or None) for editing. "" when
    there is no caption. A file that is not UTF-8 is read as the scan reads it,
    with a warning that saving writes UTF-8."""
    if not caption_extension:
        return "", "no caption extension is set (dataset.caption_extension), so images have no caption files"
    path = caption_file(image, caption_extension)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return "", None
    except OSError as exc:
        return "", f"{path}: cannot be read ({exc.strerror or exc})"
    try:
        return raw.decode("utf-8-sig").rstrip("\r\n"), None
    except UnicodeDecodeError:
        text, warning = read_caption(path)
        return text or "", warning or f"{path}: not UTF-8 text"


def save_caption(image: str | Path, text: str, caption_extension: str = ".txt") -> Path:
    """Write ``text`` as ``image``'s caption, atomically (the old file stays whole
    until the new one is complete; its permissions are kept). Returns the path."""
    from loratui.engine.fsutil import atomic_write_text

    image = Path(image)
    if not caption_extension.startswith(".") or len(caption_extension) < 2:
        raise InspectError(f"caption extension {caption_extension!r} must be a dot and a name", "e.g. .txt")
    if caption_extension.lower() in IMAGE_EXTENSIONS:
        raise InspectError(f"caption extension {caption_extension} is an image extension", "use .txt or .caption")
    if not image.parent.is_dir():
        raise InspectError(f"{image.parent} does not exist", "rescan the dataset")
    path = caption_file(image, caption_extension)
    if path.is_dir():
        raise InspectError(f"{path} is a folder, not a caption file", "rename that folder")
    body = "\n".join(line.rstrip() for line in text.strip().splitlines())
    try:
        atomic_write_text(path, body + "\n" if body else "")
    except OSError as exc:
        raise InspectError(f"{path}: cannot be written ({exc.strerror or exc})", "check the folder's permissions and free space") from None
    return path


# --------------------------------------------------------------------------- repeats


def parse_concept_folder(path: str | Path) -> tuple[int, str]:
    """(repeats, class tokens) of a ``<repeats>_<name>`` folder. Raises InspectError."""
    name = Path(path).name
    m = _FOLDER_RE.match(name)
    if not m:
        raise InspectError(f"{path}: the folder name has no <repeats>_ prefix", f"rename it e.g. to 10_{name}")
    return int(m.group(1)), m.group(2)


def find_concept(root: str | Path, spec: str) -> Path:
    """The concept folder under ``root`` that ``spec`` names: its folder name
    ("10_mychar"), its class tokens ("mychar") or a path. Raises InspectError."""
    root = Path(root).expanduser()
    p = Path(spec).expanduser()
    if p.is_absolute() or os.sep in spec:
        cand = p if p.is_absolute() else root / p
        if cand.is_dir():
            return cand
        if p.is_dir():
            return p
        raise InspectError(f"{spec}: no such concept folder", f"see the concept folders with `loratui dataset {root}`")
    if not root.is_dir():
        raise InspectError(f"{root} is not a folder", "give the folder holding the <repeats>_<name> folders")
    folders = sorted(e for e in root.iterdir() if e.is_dir() and not e.name.startswith(".") and _FOLDER_RE.match(e.name))
    direct = [f for f in folders if f.name == spec]
    if direct:
        return direct[0]
    by_name = [f for f in folders if _FOLDER_RE.match(f.name).group(2) == spec]  # type: ignore[union-attr]
    if len(by_name) == 1:
        return by_name[0]
    known = ", ".join(f.name for f in folders) or "none"
    if len(by_name) > 1:
        raise InspectError(
            f"{spec!r} names {len(by_name)} folders in {root} ({', '.join(f.name for f in by_name)})",
            "give the full folder name",
        )
    raise InspectError(f"no concept folder {spec!r} in {root} (there are: {known})", "give a folder name from the list")


def _check_repeats(repeats: Any) -> int:
    if isinstance(repeats, bool) or not isinstance(repeats, int):
        try:
            repeats = int(str(repeats).strip())
        except ValueError:
            raise InspectError(f"repeats: {repeats!r} is not a whole number", "e.g. 10") from None
    if repeats < 1 or repeats > MAX_REPEATS:
        raise InspectError(f"repeats: {repeats} is out of range", f"use 1 to {MAX_REPEATS}")
    return repeats


def repeats_target(folder: str | Path, repeats: int) -> Path:
    """The folder ``folder`` becomes with ``repeats`` (no change on disk)."""
    repeats = _check_repeats(repeats)
    _old, name = parse_concept_folder(folder)
    return Path(folder).with_name(f"{repeats}_{name}")


def set_repeats(folder: str | Path, repeats: int) -> Path:
    """Rename the concept folder ``10_x`` → ``<repeats>_x``; returns the new path
    (the same one when nothing changes). Refuses when the target exists."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InspectError(f"{folder}: no such concept folder", "rescan the dataset")
    target = repeats_target(folder, repeats)
    if target == folder:
        return folder
    if os.path.lexists(target):
        raise InspectError(
            f"{target} already exists; {folder.name} was not renamed",
            "move its images into one folder first, or pick another number",
        )
    try:
        os.rename(folder, target)
    except OSError as exc:
        raise InspectError(f"{folder}: cannot be renamed to {target.name} ({exc.strerror or exc})") from None
    return target


def apply_balance(plan: dict[Path, tuple[int, int]]) -> dict[Path, Path]:
    """Rename every folder of ``plan`` (``DatasetInspection.balance_plan()``) to its
    balanced repeats. All targets are checked before anything is renamed."""
    moves: dict[Path, Path] = {}
    for folder, (_old, new) in plan.items():
        folder = Path(folder)
        if not folder.is_dir():
            raise InspectError(f"{folder}: no such concept folder", "rescan the dataset")
        target = repeats_target(folder, new)
        if target != folder:
            moves[folder] = target
    sources = set(moves)
    for src, dst in moves.items():
        if os.path.lexists(dst) and dst not in sources:
            raise InspectError(f"{dst} already exists; nothing was renamed", f"merge it with {src.name} first")
        if dst in sources:
            raise InspectError(
                f"{src.name} → {dst.name} would replace another concept folder being renamed; nothing was renamed",
                "rename these folders by hand",
            )
    done: dict[Path, Path] = {}
    for src, dst in moves.items():
        try:
            done[src] = set_repeats(src, parse_concept_folder(dst)[0])
        except InspectError as exc:
            undo = ", ".join(f"{d.name} (was {s.name})" for s, d in done.items())
            raise InspectError(exc.message + (f"; already renamed: {undo}" if undo else ""), exc.hint) from None
    return done


# --------------------------------------------------------------------------- kohya folder


@dataclass
class MakeKohyaResult:
    folder: Path
    repeats: int
    images: int
    captions: int
    mode: str
    suggestion: RepeatsSuggestion
    skipped: list[str] = field(default_factory=list)  # "file: reason"


def _flat_images(src: Path) -> list[Path]:
    try:
        return sorted(
            p for p in src.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
        )
    except OSError:
        return []


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise InspectError("name: empty", "give the class tokens / trigger word, e.g. --name mychar")
    if any(c in name for c in "/\\\0") or name in (".", ".."):
        raise InspectError(f"name: {name!r} cannot be part of a folder name (no / or \\)", "e.g. mychar")
    return name


def make_kohya_folder(
    src: str | Path,
    dest_root: str | Path,
    name: str,
    *,
    repeats: int | None = None,
    mode: str = "copy",
    caption_extension: str = ".txt",
    on_progress: Callable[[int, int], None] | None = None,
) -> MakeKohyaResult:
    """Make ``dest_root/<repeats>_<name>`` from the images directly in ``src``.

    Images are copied (``mode="copy"``), hard-linked (``"hardlink"``: no extra
    space, same filesystem only) or symlinked (``"symlink"``); caption files are
    always copied, so editing them later never changes ``src``. ``repeats``
    defaults to :func:`suggest_repeats` of the readable images. Unreadable images
    are left out (listed in ``skipped``). The folder is built under a temporary
    name and renamed into place when complete; an existing folder is never replaced."""
    from loratui.engine.fsutil import atomic_dir

    if mode not in LINK_MODES:
        raise InspectError(f"mode: {mode!r} is not one of {', '.join(LINK_MODES)}")
    name = _check_name(name)
    src = Path(src).expanduser()
    dest_root = Path(dest_root).expanduser()
    if not src.exists():
        raise InspectError(f"{src} does not exist", "check the path of the folder of images")
    if not src.is_dir():
        raise InspectError(f"{src} is a file, not a folder", "give the folder that holds the images")
    s_real, d_real = os.path.realpath(src), os.path.realpath(dest_root)
    if d_real == s_real or d_real.startswith(s_real.rstrip(os.sep) + os.sep):
        raise InspectError(
            f"{dest_root} is inside the source folder {src}; the source is never changed",
            f"make it beside it, e.g. {src.parent / (src.name + '_kohya')}",
        )
    images = _flat_images(src)
    if not images:
        sub = [p.name for p in src.iterdir() if p.is_dir() and _flat_images(p)] if src.is_dir() else []
        hint = (
            f"its images are in sub-folders ({', '.join(sub[:3])}); give one of those" if sub else "put png/jpg/webp/bmp images in it"
        )
        raise InspectError(f"no images in {src}", hint)
    good: list[Path] = []
    skipped: list[str] = []
    for p in images:
        try:
            probe_image(p)
            good.append(p)
        except DatasetError as exc:
            skipped.append(f"{p.name}: {exc}")
    if not good:
        raise InspectError(f"none of the {len(images)} images in {src} can be read", "; ".join(skipped[:3]))
    suggestion = suggest_repeats(len(good))
    reps = suggestion.repeats if repeats is None else _check_repeats(repeats)
    target = dest_root / f"{reps}_{name}"
    if os.path.lexists(target):
        raise InspectError(f"{target} already exists; nothing was written", "pick another --name, or remove that folder")
    if dest_root.exists() and not dest_root.is_dir():
        raise InspectError(f"{dest_root} is a file, not a folder", "give a folder for the dataset")
    names = {p.name.lower(): p for p in src.iterdir() if p.is_file()}
    counts = {"captions": 0}

    def fill(tmp: Path) -> None:
        for i, p in enumerate(good, 1):
            out = tmp / p.name
            if mode == "copy":
                shutil.copy2(p, out)
            elif mode == "hardlink":
                try:
                    os.link(p, out)
                except OSError as exc:
                    raise InspectError(
                        f"cannot hard-link {p} into {dest_root} ({exc.strerror or exc})",
                        "hard links work only within one filesystem: use symbolic links or copies",
                    ) from None
            else:
                os.symlink(os.path.realpath(p), out)
            cap = names.get((p.stem + caption_extension).lower())
            if cap is not None:
                shutil.copyfile(cap, tmp / (p.stem + caption_extension))
                counts["captions"] += 1
            if on_progress:
                on_progress(i, len(good))

    try:
        dest_root.mkdir(parents=True, exist_ok=True)
        atomic_dir(target, fill)
    except InspectError:
        raise
    except OSError as exc:
        raise InspectError(
            f"{target}: cannot be written ({exc.strerror or exc}); nothing was left behind",
            "check the folder's permissions and free space",
        ) from None
    return MakeKohyaResult(
        folder=target,
        repeats=reps,
        images=len(good),
        captions=counts["captions"],
        mode=mode,
        suggestion=suggestion,
        skipped=skipped,
    )
