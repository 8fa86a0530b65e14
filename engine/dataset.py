"""The dataset: scan, report, buckets, captions, batches and image loading.

Layout (the kohya_ss convention)::

    train_data_dir/
        10_mychar/            <repeats>_<class tokens>
            img001.png
            img001.txt        caption (optional; else the class tokens)
        5_other style/
    reg_data_dir/             optional, same layout, regularization images

``scan_dataset`` reads only image headers (a few hundred bytes each, plus the
last bytes of the file to catch truncated downloads) and returns a
``DatasetReport`` (what the user sees before any model loads) and the list of
``ImageItem`` the trainer uses.  Nothing here imports torch at module level;
numpy and Pillow are imported inside functions.

The latent cache lives in :mod:`engine.latent_cache`; ``cache_latents`` and
``LatentStore`` are re-exported here.
"""

from __future__ import annotations

import math
import os
import random
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from loratui.engine.buckets import BucketManager, cover_size
from loratui.engine.latent_cache import CACHE_DIR_NAME, LatentCacheError, LatentStore, cache_latents, vae_fingerprint  # noqa: F401
from loratui.engine.plan import ConceptReport, DatasetReport, StepPlan, plan_steps

if TYPE_CHECKING:
    from loratui.engine.schema import DatasetSettings, Profile

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# image types people drop into a dataset that we do not train on: said, not silently ignored
UNSUPPORTED_IMAGE_EXTENSIONS = (".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".psd", ".svg", ".jfif")
# Pillow refuses to open images above this (2 × its MAX_IMAGE_PIXELS default):
# a decompression bomb guard. We refuse them in the scan, with a message.
MAX_IMAGE_PIXELS = 178_956_970
UPSCALE_WARN = 2.0  # images enlarged more than this get a warning
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_FOLDER_RE = re.compile(r"^(-?\d+)_(.*)$", re.DOTALL)


class DatasetError(Exception):
    """A dataset problem a user can fix; ``str(exc)`` names the file."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


# --------------------------------------------------------------------------- items


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


class CropInfo(NamedTuple):
    """SDXL size conditioning, all (h, w) / (top, left) as SDXL's time ids."""

    original_size: tuple[int, int]  # (h, w) of the image before resizing
    crop_top_left: tuple[int, int]  # (top, left) pixels cropped off the resized image
    target_size: tuple[int, int]  # (h, w) of the bucket


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
            if fmt == "JPEG":
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


# --------------------------------------------------------------------------- captions


def read_caption(path: str | Path) -> tuple[str | None, str | None]:
    """(caption, warning). The caption is the first non-empty line, stripped;
    ``None`` when the file has no usable text. Non-UTF-8 files are decoded as
    Windows-1252 (or Latin-1) with a warning instead of failing."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, f"{path}: caption cannot be read ({exc.strerror or exc}); using the class tokens"
    warning = None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = raw.decode("utf-16")
        except UnicodeDecodeError:
            return None, f"{path}: caption is not readable text; using the class tokens"
        warning = f"{path}: caption is UTF-16; read it, but other tools expect UTF-8 — save it as UTF-8"
    elif b"\x00" in raw:
        return None, f"{path}: caption is not a text file; using the class tokens"
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            try:
                text = raw.decode("cp1252")
                enc = "Windows-1252"
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
                enc = "Latin-1"
            warning = f"{path}: caption is not UTF-8; read it as {enc} — check its accents and save it as UTF-8"
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line, warning
    return None, warning


def process_caption(
    caption: str,
    settings: "DatasetSettings | None" = None,
    rng: random.Random | None = None,
    *,
    shuffle: bool | None = None,
    keep_tokens: int | None = None,
    dropout_rate: float | None = None,
) -> str:
    """The caption a training step sees: dropped (→ "") with
    ``caption_dropout_rate``, else its comma-separated tags shuffled after the
    first ``keep_tokens`` (as sd-scripts). ``rng`` makes it reproducible; the
    keyword arguments override ``settings``."""
    if shuffle is None:
        shuffle = bool(settings and settings.shuffle_caption)
    if keep_tokens is None:
        keep_tokens = settings.keep_tokens if settings else 0
    if dropout_rate is None:
        dropout_rate = settings.caption_dropout_rate if settings else 0.0
    rng = rng or random.Random()
    if dropout_rate > 0 and rng.random() < dropout_rate:
        return ""
    if not shuffle:
        return caption
    tokens = [t.strip() for t in caption.strip().split(",")]
    tokens = [t for t in tokens if t]
    fixed, flex = tokens[:keep_tokens], tokens[keep_tokens:]
    rng.shuffle(flex)
    return ", ".join(fixed + flex)


# --------------------------------------------------------------------------- scan


def _listdir(path: Path) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: e.name)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _count_images(path: Path) -> int | None:
    try:
        return sum(1 for e in _listdir(path) if _is_file(e) and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
    except OSError:
        return None


def _few(names: list[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


@dataclass
class _Concept:
    report: ConceptReport
    items: list[ImageItem]


class _Scanner:
    def __init__(self, ds: "DatasetSettings", report: DatasetReport, buckets: BucketManager, on_progress):
        self.ds = ds
        self.report = report
        self.buckets = buckets
        self.on_progress = on_progress
        self.ar_errors: list[float] = []
        self.seen = 0

    def warn(self, msg: str) -> None:
        self.report.warnings.append(msg)

    def problem(self, msg: str) -> None:
        self.report.problems.append(msg)

    # -- one root (train or reg) ------------------------------------------------
    def scan_root(self, root_text: str, *, is_reg: bool) -> list[_Concept]:
        key = "dataset.reg_data_dir" if is_reg else "dataset.train_data_dir"
        root = Path(root_text).expanduser()
        if not root.exists():
            if root.is_symlink():
                self.problem(f"{key}: {root} is a broken or looping symbolic link — point it at a real folder")
            else:
                self.problem(f"{key}: {root} does not exist — check the path")
            return []
        if not root.is_dir():
            self.problem(f"{key}: {root} is a file, not a folder — give the folder that holds the <repeats>_<name> folders")
            return []
        try:
            entries = _listdir(root)
        except OSError as exc:
            self.problem(f"{key}: {root} cannot be read ({exc.strerror or exc})")
            return []
        concepts: list[_Concept] = []
        loose: list[str] = []
        skipped: list[str] = []
        bad_repeats = False
        for e in entries:
            if e.name.startswith("."):
                continue
            ext = os.path.splitext(e.name)[1].lower()
            if _is_dir(e):
                m = _FOLDER_RE.match(e.name)
                if not m:
                    n = _count_images(Path(e.path))
                    skipped.append(e.name)
                    self.warn(
                        f"{key}: {Path(e.path)} has no <repeats>_ number prefix, skipped"
                        + (f" ({n} images not used)" if n else "")
                        + f" — rename it e.g. to 10_{e.name}"
                    )
                    continue
                repeats, name = int(m.group(1)), m.group(2).strip()
                if repeats < 1:
                    bad_repeats = True
                    self.problem(
                        f"{key}: {Path(e.path)}: repeats is {repeats}, so its images would never be used — "
                        f"rename it to 1_{name} or more (e.g. 10_{name})"
                    )
                    continue
                concepts.append(self.scan_concept(Path(e.path), repeats, name, is_reg=is_reg))
            elif _is_file(e):
                if ext in IMAGE_EXTENSIONS:
                    loose.append(e.name)
            elif os.path.islink(e.path):
                self.warn(f"{key}: {Path(e.path)} is a broken or looping symbolic link, skipped")
        if loose and concepts:
            self.warn(
                f"{key}: {len(loose)} images directly in {root} are not used ({_few(loose, 3)}) — "
                "only images inside <repeats>_<name> folders are trained"
            )
        if not concepts:
            what = "regularization images" if is_reg else "images"
            if loose:
                self.problem(
                    f"{key}: {root} holds {len(loose)} images but no <repeats>_<name> folder — "
                    f"move them into a subfolder such as {root / ('10_' + (root.name or 'mychar'))}"
                )
            elif skipped:
                self.problem(
                    f"{key}: no usable concept folder in {root} ({_few(skipped, 3)} lack the <repeats>_ prefix) — "
                    f"rename them like 10_{skipped[0]}"
                )
            elif not any(not e.name.startswith(".") for e in entries):
                self.problem(f"{key}: {root} is empty — add a <repeats>_<name> folder of {what}, e.g. {root / '10_mychar'}")
            elif not bad_repeats:
                self.problem(f"{key}: no <repeats>_<name> folder in {root} — put your {what} in e.g. {root / '10_mychar'}")
        elif not any(c.items for c in concepts):
            if is_reg:
                self.warn(f"{key}: no usable regularization images in {root}; training without them")
            else:
                self.problem(f"{key}: no usable images in {root} (png, jpg, jpeg, webp or bmp)")
        return concepts

    # -- one concept folder --------------------------------------------------------
    def scan_concept(self, folder: Path, repeats: int, name: str, *, is_reg: bool) -> _Concept:
        rep = ConceptReport(folder=str(folder), name=name, repeats=repeats, images=0, missing_captions=0, is_reg=is_reg)
        items: list[ImageItem] = []
        try:
            entries = _listdir(folder)
        except OSError as exc:
            self.warn(f"{folder}: cannot be read ({exc.strerror or exc}), skipped")
            return _Concept(rep, items)
        cap_ext = self.ds.caption_extension
        names = {e.name for e in entries}
        lower_names = {n.lower(): n for n in names}
        unsupported: list[str] = []
        empty_captions: list[str] = []
        bad_captions = 0
        upscaled: list[str] = []
        for e in entries:
            if e.name.startswith("."):
                continue  # hidden files, macOS ._ files, our .loratui_cache
            path = Path(e.path)
            ext = os.path.splitext(e.name)[1].lower()
            if _is_dir(e):
                n = _count_images(path)
                self.warn(
                    f"{path}: nested folders are not scanned"
                    + (f" ({n} images inside not used)" if n else "")
                    + " — move the images up, or make it its own <repeats>_<name> folder beside the others"
                )
                continue
            if not _is_file(e):
                if os.path.islink(e.path):
                    self.warn(f"{path}: broken or looping symbolic link, skipped")
                continue
            if ext in UNSUPPORTED_IMAGE_EXTENSIONS:
                unsupported.append(e.name)
                continue
            if ext not in IMAGE_EXTENSIONS:
                continue
            self.seen += 1
            if self.on_progress:
                self.on_progress(self.seen)
            try:
                size = probe_image(path)
            except DatasetError as exc:
                rep.unreadable.append(f"{e.name}: {exc}")
                continue
            caption, has_caption = None, False
            if cap_ext:
                cap_name = os.path.splitext(e.name)[0] + cap_ext
                cap_name = cap_name if cap_name in names else lower_names.get(cap_name.lower())
                if cap_name:
                    text, warning = read_caption(folder / cap_name)
                    if warning:
                        self.warn(warning)
                    if text is None and warning:
                        bad_captions += 1
                    elif text is None:
                        empty_captions.append(cap_name)
                    else:
                        caption, has_caption = text, True
            if not has_caption:
                rep.missing_captions += 1
                caption = name
            choice = self.buckets.select(*size)
            self.ar_errors.append(abs(choice.ar_error))
            if choice.resized[0] / size[0] > UPSCALE_WARN:
                upscaled.append(f"{e.name} ({size[0]}×{size[1]})")
            items.append(
                ImageItem(
                    path=path,
                    caption=caption or "",
                    concept=name,
                    folder=str(folder),
                    repeats=repeats,
                    is_reg=is_reg,
                    image_size=size,
                    bucket=choice.bucket,
                    resized=choice.resized,
                    has_caption=has_caption,
                    folder_repeats=repeats,
                )
            )
        rep.images = len(items)
        if rep.unreadable:
            self.warn(f"{folder}: {len(rep.unreadable)} unreadable image(s) skipped: {_few(rep.unreadable)}")
        if unsupported:
            self.warn(
                f"{folder}: {len(unsupported)} file(s) of a type not trained on skipped ({_few(unsupported, 3)}) — "
                "convert them to png or jpg"
            )
        if empty_captions:
            self.warn(f"{folder}: empty caption file(s) {_few(empty_captions, 3)}; using the class tokens {name!r}")
        missing = rep.missing_captions - len(empty_captions) - bad_captions
        if missing > 0 and cap_ext and rep.images:
            self.warn(
                f"{folder}: {missing} of {rep.images} images have no {cap_ext} caption; "
                f"they are captioned with the class tokens {name!r}"
            )
        if rep.missing_captions and not name:
            self.warn(f"{folder}: the folder name has no class tokens after the number, so images without a caption train with an empty caption")
        if upscaled:
            self.warn(f"{folder}: {len(upscaled)} image(s) enlarged more than {UPSCALE_WARN:g}× to fit their bucket (blurry): {_few(upscaled, 3)}")
        return _Concept(rep, items)


def _balance(concepts: list[_Concept], report: DatasetReport) -> dict[str, tuple[int, int]]:
    """Repeats so each concept gets about the same samples per epoch, keeping
    the total about the same as the folder names give."""
    live = [c for c in concepts if c.items]
    if len(live) < 2:
        return {}
    total = sum(c.report.images * c.report.repeats for c in live)
    target = total / len(live)
    changed: dict[str, tuple[int, int]] = {}
    for c in live:
        new = max(1, int(target / c.report.images + 0.5))
        old = c.report.repeats
        if new != old:
            changed[c.report.folder] = (old, new)
            c.report.repeats = new
            for it in c.items:
                it.repeats = new
    if changed:
        parts = [
            f"{Path(c.report.folder).name} {c.report.images} images × {c.report.repeats} = {c.report.images * c.report.repeats}"
            for c in live
        ]
        report.warnings.append("dataset.balance_concepts: repeats adjusted per epoch: " + "; ".join(parts))
    return changed


def _match_reg(reg_items: list[ImageItem], train_samples: int) -> tuple[list[ImageItem], int]:
    """sd-scripts' rule: register reg images (with their repeats) until they
    reach the train samples per epoch, then add 1 repeat per image in turn."""
    if not reg_items or train_samples <= 0:
        return [], len(reg_items)
    used: list[ImageItem] = []
    n = 0
    first = True
    while n < train_samples:
        for it in reg_items:
            if first:
                used.append(it)
                n += it.repeats
            else:
                it.repeats += 1
                n += 1
            if n >= train_samples:
                break
        first = False
    return used, len(reg_items) - len(used)


def scan_dataset(ds: "DatasetSettings", *, on_progress: Callable[[int], None] | None = None) -> ScanResult:
    """Scan the train (and reg) folders: the report and the items to train on.

    Never raises for a bad dataset: what stops training is in
    ``report.problems``, the rest in ``report.warnings``. ``on_progress(n)`` is
    called with the number of images looked at so far."""
    report = DatasetReport(root=ds.train_data_dir)
    buckets = BucketManager.from_settings(ds)
    report.problems.extend(buckets.problems())
    scanner = _Scanner(ds, report, buckets, on_progress)
    train: list[_Concept] = []
    if not ds.train_data_dir:
        report.problems.append("dataset.train_data_dir: not set — the folder holding your <repeats>_<name> image folders")
    else:
        train = scanner.scan_root(ds.train_data_dir, is_reg=False)
    reg: list[_Concept] = []
    if ds.reg_data_dir:
        if ds.train_data_dir and os.path.realpath(ds.reg_data_dir) == os.path.realpath(ds.train_data_dir):
            report.problems.append(
                "dataset.reg_data_dir: is the same folder as train_data_dir — regularization images go in their own folder"
            )
        else:
            reg = scanner.scan_root(ds.reg_data_dir, is_reg=True)
    report.concepts = [c.report for c in train]
    report.reg_concepts = [c.report for c in reg]
    adjusted = _balance(train, report) if ds.balance_concepts else {}
    items = [it for c in train for it in c.items]
    train_samples = sum(it.repeats for it in items)
    reg_items, unused = _match_reg([it for c in reg for it in c.items], train_samples)
    if reg_items and unused:
        report.warnings.append(
            f"dataset.reg_data_dir: {unused} of {unused + len(reg_items)} regularization images are not used "
            f"(each epoch uses as many reg samples as train samples: {train_samples})"
        )
    items += reg_items
    errs = scanner.ar_errors
    return ScanResult(
        report=report,
        items=items,
        buckets=buckets,
        mean_ar_error=sum(errs) / len(errs) if errs else 0.0,
        adjusted_repeats=adjusted,
        unused_reg_images=unused if reg_items else 0,
    )


# --------------------------------------------------------------------------- batches and plan


def _bucket_samples(items: list[ImageItem]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, it in enumerate(items):
        if it.repeats > 0:
            groups.setdefault(tuple(it.bucket), []).extend([i] * it.repeats)
    return dict(sorted(groups.items()))


def batches_per_epoch(items: list[ImageItem], batch_size: int) -> int:
    """Batches in one epoch: each bucket rounds up on its own (batches never mix buckets)."""
    return sum(math.ceil(len(idx) / batch_size) for idx in _bucket_samples(items).values())


def epoch_batches(items: list[ImageItem], batch_size: int, epoch: int, seed: int) -> list[list[int]]:
    """The batches of one epoch, as lists of indices into ``items``.

    Every item appears ``repeats`` times; a batch holds samples of one bucket
    only; the order is shuffled per epoch. A pure function of its arguments, so
    a resumed run can rebuild an epoch and skip its first k batches exactly."""
    rng = random.Random(f"loratui.epoch_batches:{seed}:{epoch}")
    batches: list[list[int]] = []
    for idx in _bucket_samples(items).values():
        rng.shuffle(idx)
        batches.extend(idx[j : j + batch_size] for j in range(0, len(idx), batch_size))
    rng.shuffle(batches)
    return batches


def plan_for(profile: "Profile", scan: ScanResult) -> StepPlan:
    """The step plan from the scanned items and the profile's batch settings."""
    o = profile.optimization
    return plan_steps(
        scan.train_samples,
        batch_size=o.train_batch_size,
        grad_accum=o.gradient_accumulation_steps,
        epochs=o.max_train_epochs,
        max_train_steps=o.max_train_steps,
        reg_samples=scan.reg_samples,
        batches_per_epoch=batches_per_epoch(scan.items, o.train_batch_size),
    )


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
                if img.format == "JPEG" and target[0] * 2 <= full[0] and target[1] * 2 <= full[1]:
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
