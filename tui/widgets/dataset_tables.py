"""What the dataset screen's tables and notes say, from an inspection
(``engine.inspection.DatasetInspection``): rows of cells, and the texts around
them.  No widget state here; ``fill_table`` puts rows into a DataTable."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.text import Text

if TYPE_CHECKING:
    from textual.widgets import DataTable

    from loratui.engine.inspection import DatasetInspection, ImageInfo

Rows = list[tuple[str | None, list[Any]]]  # [(row key, cells)]

COLUMNS = {
    "concepts": ("concept", "repeats", "images", "captions", "samples", "suggested", "balanced"),
    "images": ("file", "size", "bucket", "caption"),
    "tags": ("count", "share", "tag"),
    "buckets": ("bucket", "images", "samples/epoch"),
    "problems": ("kind", "problem"),
}

ISSUE_STYLES = {
    "error": "bold red",
    "unreadable": "red",
    "duplicate": "yellow",
    "near-duplicate": "yellow",
    "tiny": "yellow",
    "no-caption": "cyan",
    "warning": "yellow",
}


def fill_table(table: "DataTable", name: str, rows: Rows) -> None:
    """Replace the table's rows ([(key, cells)]), with column widths set from the
    content. (Widths left to the DataTable are measured when it is next idle; a
    table filled before its first layout could then keep header-wide columns.)"""
    labels = COLUMNS[name]
    widths = [len(label) for label in labels]
    for _key, cells in rows:
        for i, cell in enumerate(cells):
            widths[i] = max(widths[i], cell.cell_len if isinstance(cell, Text) else Text(str(cell)).cell_len)
    table.clear(columns=True)
    for label, width in zip(labels, widths):
        table.add_column(label, width=width, key=label)
    for key, cells in rows:
        table.add_row(*cells, key=key)


def clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def summary_line(insp: "DatasetInspection") -> str:
    return (
        f"{len(insp.concepts)} concepts · {insp.image_count} images · "
        f"{insp.captioned}/{insp.image_count} captioned · {insp.samples_per_epoch}/epoch "
    )


def concept_rows(insp: "DatasetInspection") -> Rows:
    rows: Rows = []
    for c in insp.concepts:
        caps = Text(f"{c.captioned}/{c.images}", style="yellow" if c.images and c.missing_captions else "")
        bal = Text(str(c.balanced_repeats), style="cyan" if c.balanced_repeats != c.repeats else "dim")
        images = str(c.images) + (f" +{c.unreadable}✗" if c.unreadable else "")
        cells = [c.folder_name, str(c.repeats), images, caps, str(c.samples), Text(str(c.suggested.repeats), style="dim"), bal]
        rows.append((c.folder_name, cells))
    return rows


def image_rows(images: "list[ImageInfo]") -> Rows:
    rows: Rows = []
    for im in images:
        if not im.ok:
            bad = [Text(im.name, style="red"), Text("unreadable", style="red"), "", Text(clip(im.problem, 60), style="red")]
            rows.append((im.name, bad))
            continue
        size = f"{im.size[0]}×{im.size[1]}" if im.size else ""
        bucket = f"{im.bucket[0]}×{im.bucket[1]}" if im.bucket else ""
        cap = Text(clip(im.caption, 60)) if im.caption is not None else Text("(none)", style="yellow")
        rows.append((im.name, [im.name, Text(size, style="yellow") if im.tiny else size, bucket, cap]))
    return rows


def tag_rows(insp: "DatasetInspection") -> Rows:
    n_caps = max(1, insp.image_count)
    return [(None, [str(count), f"{100 * count / n_caps:.0f}%", tag]) for tag, count in insp.tag_table()]


def bucket_rows(insp: "DatasetInspection") -> Rows:
    return [(None, [f"{bw}×{bh}", str(n), str(samples)]) for (bw, bh), n, samples in insp.bucket_table()]


def problem_rows(insp: "DatasetInspection") -> Rows:
    rows: Rows = [
        (f"p{i}", [Text(issue.kind, style=ISSUE_STYLES.get(issue.kind, "")), issue.message])
        for i, issue in enumerate(insp.issues())
    ]
    rows += [(f"h{i}", [Text("hint", style="cyan"), hint]) for i, hint in enumerate(insp.hints)]
    return rows


def caption_text(im: "ImageInfo", concept_name: str, caption_extension: str) -> Text:
    """The caption box for one image: its caption, or why it has none, and its bucket."""
    t = Text()
    if not im.ok:
        t.append(f"unreadable: {im.problem}", style="red")
    elif im.caption is None:
        t.append(f"no {caption_extension} caption: trains as {concept_name!r}", style="yellow")
        t.append("  · e writes one, c captions the missing ones", style="dim")
    else:
        t.append(im.caption)
    if im.ok and im.size and im.bucket:
        t.append(f"\n{im.size[0]}×{im.size[1]} → bucket {im.bucket[0]}×{im.bucket[1]}", style="dim")
        if im.tiny:
            t.append(f" (enlarged {im.upscale:.1f}×: blurry)", style="yellow")
    return t


def balance_lines(insp: "DatasetInspection") -> list[str]:
    """What balancing would do to each concept folder."""
    lines = []
    for c in insp.concepts:
        new = c.balanced_repeats
        arrow = f"→ {new}_{c.name}" if new != c.repeats else "(unchanged)"
        lines.append(f"{c.folder_name:<24} {c.images:>4} images × {new:>3} = {c.images * new:>5}  {arrow}")
    return lines


def caption_job_note(summary: Any) -> tuple[str, str]:
    """(what a finished captioning job did, its style)."""
    head = "captioning stopped" if summary.stopped_early else "captioning done"
    parts = [f"{summary.written} written"]
    for key, label in (("overwritten", "overwritten"), ("appended", "appended"), ("skipped_existing", "kept")):
        if getattr(summary, key):
            parts.append(f"{getattr(summary, key)} {label}")
    if summary.failed:
        parts.append(f"{len(summary.failed)} unreadable")
    return f"{head}: {', '.join(parts)}", "green" if not summary.stopped_early else "yellow"
