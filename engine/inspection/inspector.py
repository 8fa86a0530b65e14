"""``inspect_dataset``: the dataset scan training uses, plus per-image facts, a
full decode with the duplicate hashes, suggested repeats and a balancing plan
(see :mod:`engine.inspection`)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from loratui.engine.dataset import UPSCALE_WARN, parse_concept_dir, scan_dataset
from loratui.engine.imagefile import DatasetError
from loratui.engine.inspection.duplicates import file_hash, find_duplicates, image_fingerprint
from loratui.engine.inspection.errors import InspectError
from loratui.engine.inspection.guidance import suggest_repeats
from loratui.engine.inspection.kohya_folder import flat_images
from loratui.engine.inspection.results import ConceptInfo, DatasetInspection, ImageInfo

if TYPE_CHECKING:
    from loratui.engine.schema import DatasetSettings

_BALANCE_KEY = "dataset.balance_concepts"
# scan warnings that the per-file issues below already say, file by file
_COVERED_WARNINGS = ("unreadable image(s) skipped", "enlarged more than", "caption; they are captioned with")


def dataset_settings(
    root: str | Path, resolution: int = 512, caption_extension: str = ".txt"
) -> "DatasetSettings":
    """The dataset settings an inspection of ``root`` at ``resolution`` uses: the
    schema's defaults (buckets on, 256–1024, step 64) with the largest bucket side
    raised to the resolution when that is larger. Raises InspectError for a bad value."""
    from pydantic import ValidationError

    from loratui.engine.schema import DatasetSettings
    from loratui.engine.schema.validation import describe_error

    try:
        res = int(resolution)
    except (TypeError, ValueError):
        raise InspectError(f"resolution: {resolution!r} is not a whole number", "e.g. 512, 768 or 1024") from None
    try:
        return DatasetSettings(
            train_data_dir=str(root),
            resolution=res,
            caption_extension=caption_extension,
            min_bucket_reso=max(64, min(256, res)),
            max_bucket_reso=max(1024, -(-res // 64) * 64),  # the schema's step 64
        )
    except ValidationError as exc:
        msgs = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            if err["type"] == "cross_field":
                msgs += [f"{key}: {msg}" for key, msg in err["ctx"]["problems"]]
            else:
                msgs.append(f"{loc}: {describe_error(err)}")
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
        w for w in scan.report.warnings if w.key != _BALANCE_KEY and not any(s in w.message for s in _COVERED_WARNINGS)
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
        loose = flat_images(root)
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
    parsed = parse_concept_dir(name)
    name = parsed[1] if parsed else name
    return name.replace(" ", "_") or "mychar"


def _hash_images(insp: DatasetInspection, on_progress, cancelled) -> None:
    todo = [im for im in insp.images if im.ok]
    for n, im in enumerate(todo, 1):
        if cancelled is not None and cancelled():
            return
        try:
            im.sha256 = file_hash(im.path)
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
