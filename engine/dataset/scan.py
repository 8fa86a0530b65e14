"""The folder scanner: the ``<repeats>_<name>`` concept folders of the train
(and reg) folder, their images and captions, concept balancing and the
regularization images matched to the train samples (as sd-scripts)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from loratui.engine.buckets import BucketManager
from loratui.engine.dataset.captions import read_caption
from loratui.engine.dataset.concepts import parse_concept_dir
from loratui.engine.dataset.items import ImageItem, ScanResult
from loratui.engine.imagefile import IMAGE_EXTENSIONS, UNSUPPORTED_IMAGE_EXTENSIONS, DatasetError, probe_image
from loratui.engine.plan import ConceptReport, DatasetReport
from loratui.engine.problems import error, warning

if TYPE_CHECKING:
    from loratui.engine.schema import DatasetSettings

UPSCALE_WARN = 2.0  # images enlarged more than this get a warning


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
        self.key = "dataset.train_data_dir"  # the setting of the root being scanned

    def warn(self, key: str, message: str, hint: str = "") -> None:
        self.report.warnings.append(warning(key, message, hint))

    def problem(self, key: str, message: str, hint: str = "") -> None:
        self.report.problems.append(error(key, message, hint))

    # -- one root (train or reg) ------------------------------------------------
    def scan_root(self, root_text: str, *, is_reg: bool) -> list[_Concept]:
        key = self.key = "dataset.reg_data_dir" if is_reg else "dataset.train_data_dir"
        root = Path(root_text).expanduser()
        if not root.exists():
            if root.is_symlink():
                self.problem(key, f"{root} is a broken or looping symbolic link", "point it at a real folder")
            else:
                self.problem(key, f"{root} does not exist", "check the path")
            return []
        if not root.is_dir():
            self.problem(key, f"{root} is a file, not a folder", "give the folder that holds the <repeats>_<name> folders")
            return []
        try:
            entries = _listdir(root)
        except OSError as exc:
            self.problem(key, f"{root} cannot be read ({exc.strerror or exc})")
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
                parsed = parse_concept_dir(e.name)
                if parsed is None:
                    n = _count_images(Path(e.path))
                    skipped.append(e.name)
                    self.warn(
                        key,
                        f"{Path(e.path)} has no <repeats>_ number prefix, skipped" + (f" ({n} images not used)" if n else ""),
                        f"rename it e.g. to 10_{e.name}",
                    )
                    continue
                repeats, name = parsed[0], parsed[1].strip()
                if repeats < 1:
                    bad_repeats = True
                    self.problem(
                        key,
                        f"{Path(e.path)}: repeats is {repeats}, so its images would never be used",
                        f"rename it to 1_{name} or more (e.g. 10_{name})",
                    )
                    continue
                concepts.append(self.scan_concept(Path(e.path), repeats, name, is_reg=is_reg))
            elif _is_file(e):
                if ext in IMAGE_EXTENSIONS:
                    loose.append(e.name)
            elif os.path.islink(e.path):
                self.warn(key, f"{Path(e.path)} is a broken or looping symbolic link, skipped")
        if loose and concepts:
            self.warn(
                key,
                f"{len(loose)} images directly in {root} are not used ({_few(loose, 3)})",
                "only images inside <repeats>_<name> folders are trained",
            )
        if not concepts:
            what = "regularization images" if is_reg else "images"
            if loose:
                self.problem(
                    key,
                    f"{root} holds {len(loose)} images but no <repeats>_<name> folder",
                    f"move them into a subfolder such as {root / ('10_' + (root.name or 'mychar'))}",
                )
            elif skipped:
                self.problem(
                    key,
                    f"no usable concept folder in {root} ({_few(skipped, 3)} lack the <repeats>_ prefix)",
                    f"rename them like 10_{skipped[0]}",
                )
            elif not any(not e.name.startswith(".") for e in entries):
                self.problem(key, f"{root} is empty", f"add a <repeats>_<name> folder of {what}, e.g. {root / '10_mychar'}")
            elif not bad_repeats:
                self.problem(key, f"no <repeats>_<name> folder in {root}", f"put your {what} in e.g. {root / '10_mychar'}")
        elif not any(c.items for c in concepts):
            if is_reg:
                self.warn(key, f"no usable regularization images in {root}; training without them")
            else:
                self.problem(key, f"no usable images in {root} (png, jpg, jpeg, webp or bmp)")
        return concepts

    # -- one concept folder --------------------------------------------------------
    def scan_concept(self, folder: Path, repeats: int, name: str, *, is_reg: bool) -> _Concept:
        rep = ConceptReport(folder=str(folder), name=name, repeats=repeats, images=0, missing_captions=0, is_reg=is_reg)
        try:
            entries = _listdir(folder)
        except OSError as exc:
            self.warn(self.key, f"{folder}: cannot be read ({exc.strerror or exc}), skipped")
            return _Concept(rep, [])
        names = {e.name for e in entries}
        fs = _FolderScan(folder, name, repeats, is_reg, rep, names, {n.lower(): n for n in names})
        for e in entries:
            path = self._image_path(e, fs)
            if path is not None:
                self._scan_image(fs, path)
        rep.images = len(fs.items)
        self._folder_warnings(fs)
        return _Concept(rep, fs.items)

    def _image_path(self, e: os.DirEntry, fs: "_FolderScan") -> Path | None:
        """The path of ``e`` when it is an image to train on; else None (saying why
        where the user would want to know)."""
        if e.name.startswith("."):
            return None  # hidden files, macOS ._ files, our .loratui_cache
        path = Path(e.path)
        ext = os.path.splitext(e.name)[1].lower()
        if _is_dir(e):
            n = _count_images(path)
            self.warn(
                self.key,
                f"{path}: nested folders are not scanned" + (f" ({n} images inside not used)" if n else ""),
                "move the images up, or make it its own <repeats>_<name> folder beside the others",
            )
            return None
        if not _is_file(e):
            if os.path.islink(e.path):
                self.warn(self.key, f"{path}: broken or looping symbolic link, skipped")
            return None
        if ext in UNSUPPORTED_IMAGE_EXTENSIONS:
            fs.unsupported.append(e.name)
            return None
        return path if ext in IMAGE_EXTENSIONS else None

    def _scan_image(self, fs: "_FolderScan", path: Path) -> None:
        self.seen += 1
        if self.on_progress:
            self.on_progress(self.seen)
        try:
            size = probe_image(path)
        except DatasetError as exc:
            fs.rep.unreadable.append(f"{path.name}: {exc}")
            return
        caption, has_caption = self._caption_of(fs, path.name)
        if not has_caption:
            fs.rep.missing_captions += 1
            caption = fs.name
        choice = self.buckets.select(*size)
        self.ar_errors.append(abs(choice.ar_error))
        if choice.resized[0] / size[0] > UPSCALE_WARN:
            fs.upscaled.append(f"{path.name} ({size[0]}×{size[1]})")
        fs.items.append(
            ImageItem(
                path=path,
                caption=caption or "",
                concept=fs.name,
                folder=str(fs.folder),
                repeats=fs.repeats,
                is_reg=fs.is_reg,
                image_size=size,
                bucket=choice.bucket,
                resized=choice.resized,
                has_caption=has_caption,
                folder_repeats=fs.repeats,
            )
        )

    def _caption_of(self, fs: "_FolderScan", image_name: str) -> tuple[str | None, bool]:
        """(caption, True) from the image's caption file (its name matched
        ignoring case), else (None, False), noting empty and unreadable files."""
        cap_ext = self.ds.caption_extension
        if not cap_ext:
            return None, False
        cap_name = os.path.splitext(image_name)[0] + cap_ext
        cap_name = cap_name if cap_name in fs.names else fs.lower_names.get(cap_name.lower())
        if not cap_name:
            return None, False
        text, note = read_caption(fs.folder / cap_name)
        if note:
            self.warn(self.key, note)
        if text is None and note:
            fs.bad_captions += 1
        elif text is None:
            fs.empty_captions.append(cap_name)
        else:
            return text, True
        return None, False

    def _folder_warnings(self, fs: "_FolderScan") -> None:
        folder, name, rep, cap_ext = fs.folder, fs.name, fs.rep, self.ds.caption_extension
        if rep.unreadable:
            self.warn(self.key, f"{folder}: {len(rep.unreadable)} unreadable image(s) skipped: {_few(rep.unreadable)}")
        if fs.unsupported:
            self.warn(
                self.key,
                f"{folder}: {len(fs.unsupported)} file(s) of a type not trained on skipped ({_few(fs.unsupported, 3)})",
                "convert them to png or jpg",
            )
        if fs.empty_captions:
            self.warn("dataset.caption_extension", f"{folder}: empty caption file(s) {_few(fs.empty_captions, 3)}; using the class tokens {name!r}")
        missing = rep.missing_captions - len(fs.empty_captions) - fs.bad_captions
        if missing > 0 and cap_ext and rep.images:
            self.warn(
                "dataset.caption_extension",
                f"{folder}: {missing} of {rep.images} images have no {cap_ext} caption; "
                f"they are captioned with the class tokens {name!r}",
            )
        if rep.missing_captions and not name:
            self.warn(
                self.key,
                f"{folder}: the folder name has no class tokens after the number, so images without a caption train with an empty caption",
            )
        if fs.upscaled:
            self.warn(
                self.key,
                f"{folder}: {len(fs.upscaled)} image(s) enlarged more than {UPSCALE_WARN:g}× to fit their bucket (blurry): {_few(fs.upscaled, 3)}",
            )


@dataclass
class _FolderScan:
    """One concept folder being scanned: what it holds and what to say about it."""

    folder: Path
    name: str  # class tokens
    repeats: int
    is_reg: bool
    rep: ConceptReport
    names: set[str]  # file names in the folder
    lower_names: dict[str, str]  # lower-cased → as on disk
    items: list[ImageItem] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    empty_captions: list[str] = field(default_factory=list)
    bad_captions: int = 0
    upscaled: list[str] = field(default_factory=list)


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
        report.warnings.append(warning("dataset.balance_concepts", "repeats adjusted per epoch: " + "; ".join(parts)))
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
    for problem in buckets.problems():
        (report.problems if problem.is_error else report.warnings).append(problem)
    scanner = _Scanner(ds, report, buckets, on_progress)
    train: list[_Concept] = []
    if not ds.train_data_dir:
        report.problems.append(error("dataset.train_data_dir", "not set", "the folder holding your <repeats>_<name> image folders"))
    else:
        train = scanner.scan_root(ds.train_data_dir, is_reg=False)
    reg: list[_Concept] = []
    if ds.reg_data_dir:
        if ds.train_data_dir and os.path.realpath(ds.reg_data_dir) == os.path.realpath(ds.train_data_dir):
            report.problems.append(
                error("dataset.reg_data_dir", "is the same folder as train_data_dir", "regularization images go in their own folder")
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
            warning(
                "dataset.reg_data_dir",
                f"{unused} of {unused + len(reg_items)} regularization images are not used "
                f"(each epoch uses as many reg samples as train samples: {train_samples})",
            )
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
