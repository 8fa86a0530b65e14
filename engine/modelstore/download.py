"""Downloading model files from the Hugging Face Hub into the models folder.

``plan(repo, filename)`` asks the Hub what will be fetched (names, sizes, LFS
sha256); ``download(...)`` checks the free disk space, fetches each file with
huggingface_hub's ``http_get`` into ``<models>/.downloads/…incomplete`` (resumed
with an HTTP Range from its last byte: within the run after a dropped link, by
the next call after Ctrl+C or a stop),
reports :class:`DownloadProgress` (bytes, bytes/s, ETA), verifies the sha256
the Hub gives, and moves the file to ``<models>/<kind folder>/<name>``
atomically, so the final name appears only when the file is complete. A diffusers
repo (``model_index.json``) is fetched file by file into a hidden ``.partial``
folder of the models folder and renamed to ``checkpoints/<name>`` when all of it
is there and verified; an interrupted run resumes it (complete files are kept,
a partial one continues).

Gated repos use the Hub's own token (``HF_TOKEN`` or ``hf auth login``);
loratui never stores one. Every failure is a :class:`DownloadError` naming what
to do. No UI here.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loratui.engine.events import Aborted, Control
from loratui.engine.modelfiles import format_size
from loratui.engine.modelstore.catalog import known
from loratui.engine.modelstore.rate import duration

KIND_FOLDER = {"checkpoint": "checkpoints", "vae": "vae", "lora": "lora", "text_encoder": "text_encoders"}
WEIGHT_EXT = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
PROGRESS_EVERY = 0.25  # seconds between progress events
_VARIANT = re.compile(r"\.(fp16|bf16|fp32|non_ema|ema)\.")


class DownloadError(Exception):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message + (f" — {self.hint}" if self.hint else "")


@dataclass(frozen=True)
class DownloadProgress:
    """Where a download stands: ``phase`` is "downloading" or "verifying"."""

    file: str
    done: int  # bytes of all the files so far
    total: int
    rate: float = 0.0  # bytes/s
    eta: float | None = None  # seconds
    phase: str = "downloading"

    def line(self) -> str:
        pct = f"{100 * self.done / self.total:5.1f}%" if self.total else ""
        eta = f"  ETA {duration(self.eta)}" if self.eta is not None else ""
        rate = f"  {format_size(int(self.rate))}/s" if self.rate else ""
        return f"{self.phase} {self.file}  {format_size(self.done)} / {format_size(self.total)} {pct}{rate}{eta}"


@dataclass
class PlannedFile:
    name: str
    size: int
    sha256: str | None = None  # LFS files
    blob_id: str | None = None  # git blob sha1 (small files)


@dataclass
class Plan:
    repo: str
    files: list[PlannedFile]
    diffusers: bool = False  # a whole pipeline folder (the repo id is what the profile names)
    kind: str = ""  # from the catalogue, when known

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class DownloadResult:
    repo: str
    spec: str  # what the profile field gets: the file in the models folder, or the repo id
    kind: str
    files: list[Path] = field(default_factory=list)
    note: str = ""


# --------------------------------------------------------------------------- hub access


def endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def _offline_check() -> None:
    """Say at once, in one line, when the Hub cannot be reached."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise DownloadError("offline: HF_HUB_OFFLINE is set, nothing can be downloaded", "unset HF_HUB_OFFLINE")
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return
    url = urlparse(endpoint())
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError:
        raise DownloadError(f"offline: cannot reach {host} (no network)",
                            "download on a machine with network and copy the file into the models folder") from None


def _hub_error(exc: Exception, repo: str, name: str = "") -> DownloadError:
    from huggingface_hub import errors

    what = f"{repo}/{name}" if name else repo
    if isinstance(exc, errors.GatedRepoError):
        return DownloadError(
            f"{repo} is gated: accept its terms on https://huggingface.co/{repo}",
            "then log in with `hf auth login` or set HF_TOKEN (loratui never stores the token)")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return DownloadError(f"no model {repo} on the Hub (or it is private)",
                             "check the repo id; for a private repo log in with `hf auth login` or set HF_TOKEN")
    if isinstance(exc, errors.RevisionNotFoundError):
        return DownloadError(f"{repo}: revision not found on the Hub")
    if isinstance(exc, errors.EntryNotFoundError):
        return DownloadError(f"{repo} has no file {name}", f"`loratui models download {repo}` lists what it has")
    if isinstance(exc, (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError)):
        return DownloadError(f"offline: lost the connection to the Hub while fetching {what}",
                             "run the same download again to resume")
    if isinstance(exc, OSError) and getattr(exc, "errno", None) == 28:
        return DownloadError(f"the disk is full while downloading {what}", f"free space in {cache_dir()}")
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DownloadError(f"cannot download {what}: {text}", "check the network; the same command resumes")


def plan(repo: str, filename: str | None = None, *, revision: str | None = None) -> Plan:
    """What downloading ``repo`` (or one ``filename`` of it) fetches, from the Hub's file list."""
    from huggingface_hub import HfApi
    from huggingface_hub import errors

    api = HfApi(endpoint=endpoint())
    try:
        if filename:
            infos = api.get_paths_info(repo, [filename], revision=revision)
            files = [_planned(i) for i in infos if hasattr(i, "size")]
            if not files:
                raise DownloadError(f"{repo} has no file {filename}", f"`loratui models download {repo}` lists what it has")
            entry = known(repo, filename)
            return Plan(repo, files, kind=entry.kind if entry else "")
        tree = [i for i in api.list_repo_tree(repo, recursive=True, revision=revision) if hasattr(i, "size")]
    except DownloadError:
        raise
    except (errors.HfHubHTTPError, OSError, ValueError) as exc:
        raise _hub_error(exc, repo, filename or "") from None
    return _plan_repo(repo, [_planned(i) for i in tree])


def _planned(info) -> PlannedFile:
    lfs = getattr(info, "lfs", None)
    return PlannedFile(info.path, int(info.size or 0), lfs.sha256 if lfs else None, getattr(info, "blob_id", None))


def _plan_repo(repo: str, files: list[PlannedFile]) -> Plan:
    """Repo only: its catalogue file, else the diffusers pipeline, else its one model file."""
    by_name = {f.name: f for f in files}
    entry = known(repo)
    if entry and entry.filename in by_name:
        return Plan(repo, [by_name[entry.filename]], kind=entry.kind)
    if "model_index.json" in by_name:
        return Plan(repo, _diffusers_files(files), diffusers=True, kind="checkpoint")
    top = [f for f in files if "/" not in f.name and f.name.lower().endswith(WEIGHT_EXT)]
    if len(top) == 1:
        return Plan(repo, top)
    if not top:
        raise DownloadError(f"{repo} holds no model file (.safetensors/.ckpt) at its top level",
                            "name the file: loratui models download REPO FILE")
    names = ", ".join(f"{f.name} ({format_size(f.size)})" for f in top[:8])
    raise DownloadError(f"{repo} holds several model files: {names}",
                        f"name one: loratui models download {repo} FILE")


def _diffusers_files(files: list[PlannedFile]) -> list[PlannedFile]:
    """A diffusers pipeline: configs, tokenizers and each component's weights (no fp16/ema
    variant when a plain one exists, no .bin beside .safetensors, no top-level single file)."""
    out = [f for f in files if f.name == "model_index.json"]
    comps: dict[str, list[PlannedFile]] = {}
    for f in files:
        if "/" in f.name:
            comps.setdefault(f.name.split("/", 1)[0], []).append(f)
    for items in comps.values():
        weights = [f for f in items if f.name.endswith((".safetensors", ".bin"))]
        plain = [f for f in weights if not _VARIANT.search(f.name)]
        chosen = plain or weights
        if any(f.name.endswith(".safetensors") for f in chosen):
            chosen = [f for f in chosen if f.name.endswith(".safetensors")]
        out += [f for f in items if f.name.endswith((".json", ".txt", ".model")) and f not in weights] + chosen
    return out


# --------------------------------------------------------------------------- disk and checksums


def _cached(repo: str, f: PlannedFile) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    got = try_to_load_from_cache(repo, f.name, cache_dir=str(cache_dir()))
    return Path(got) if isinstance(got, str) else None


def check_disk(repo: str, need: int, where: Path, hint: str) -> None:
    """DownloadError when the disk ``where`` is on has less than ``need`` bytes free."""
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise DownloadError(
            f"not enough disk space: {repo} needs {format_size(need)} more, {format_size(free)} free on {probe}", hint)


def verify(path: Path, f: PlannedFile, report: Callable[[int], None] = lambda n: None) -> str | None:
    """Why ``path`` is not the file the Hub lists (sha256 of LFS files, git blob sha1 of others), or None."""
    if f.sha256:
        h, want = hashlib.sha256(), f.sha256
    elif f.blob_id:
        h, want = hashlib.sha1(), f.blob_id
        h.update(f"blob {path.stat().st_size}\0".encode())
    else:
        return None
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            h.update(chunk)
            report(len(chunk))
    got = h.hexdigest()
    return None if got == want else f"{f.name}: checksum mismatch (got {got[:12]}…, the Hub says {want[:12]}…)"


# --------------------------------------------------------------------------- progress


class _Meter:
    """Bytes, bytes/s (smoothed) and ETA over all the files of one download."""

    def __init__(self, total: int, emit: Callable[[DownloadProgress], None], control: Control) -> None:
        self.total, self.emit, self.control = total, emit, control
        self.base = 0  # bytes of the files done
        self.rate = 0.0
        self.last = (time.monotonic(), 0)
        self.shown = 0.0

    def update(self, name: str, done_in_file: int, phase: str = "downloading", force: bool = False) -> None:
        if self.control.aborted:
            raise Aborted()
        now = time.monotonic()
        done = self.base + done_in_file
        t0, d0 = self.last
        if now - t0 >= 0.5:
            inst = max(0, done - d0) / (now - t0)
            self.rate = inst if not self.rate else 0.7 * self.rate + 0.3 * inst
            self.last = (now, done)
        if force or now - self.shown >= PROGRESS_EVERY:
            self.shown = now
            eta = (self.total - done) / self.rate if self.rate > 0 and phase == "downloading" else None
            self.emit(DownloadProgress(name, done, self.total, self.rate, eta, phase))

    def bar(self, name: str) -> type:
        from loratui.engine.captioners.hub import progress_class

        return progress_class(lambda _desc, n, _total: self.update(name, n))


# --------------------------------------------------------------------------- download


def download(
    repo: str,
    filename: str | None = None,
    *,
    models_dir: str | Path | None = None,
    on_progress: Callable[[DownloadProgress], None] = lambda p: None,
    control: Control | None = None,
    revision: str | None = None,
) -> DownloadResult:
    """Fetch ``repo`` (or its ``filename``) and put it in the models folder. Raises
    DownloadError, or Aborted when ``control`` aborts (the partial file is resumed next time)."""

    from huggingface_hub.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its retry warnings would write over the progress line / the app
    try:
        return _download(repo, filename, models_dir, on_progress, control or Control(), revision)
    finally:
        hf_logging.set_verbosity(level)


def _download(repo, filename, models_dir, on_progress, control: Control, revision) -> DownloadResult:
    from loratui.engine.userdirs import models_dir as setting

    _offline_check()
    p = plan(repo, filename, revision=revision)
    meter = _Meter(p.total, on_progress, control)
    root = Path(models_dir).expanduser() if models_dir else setting()
    if p.diffusers:
        return _download_pipeline(p, root, meter, revision)
    f = p.files[0]
    name = Path(f.name).name
    for kind, folder in KIND_FOLDER.items():
        have = root / folder / name
        if (not p.kind or p.kind == kind) and have.is_file() and have.stat().st_size == f.size:
            return DownloadResult(repo, str(have), kind, [have], note="already in the models folder")
    partial = root / ".downloads" / f"{repo.replace('/', '--')}--{name}.incomplete"
    kept = partial.stat().st_size if partial.is_file() else 0
    check_disk(repo, max(0, f.size - kept), root, f"free space, or choose a models folder on a bigger disk ({root})")
    _fetch(repo, f, partial, revision, meter)
    _verify(partial, f, meter)
    return _place(p, partial, root)


def _fetch(repo: str, f: PlannedFile, partial: Path, revision: str | None, meter: "_Meter") -> None:
    """Download one file to ``partial``, resuming from what it holds (a dropped link is
    resumed by huggingface_hub's own retries; an interrupted run, by the next call)."""
    from urllib.parse import urlparse

    from huggingface_hub import errors, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo, f.name, revision=revision, endpoint=endpoint())
    try:
        headers = build_hf_headers()  # the Hub's own token (HF_TOKEN or `hf auth login`), if any
        meta = get_hf_file_metadata(url, headers=headers)
        target = url
        if meta.location and meta.location != url and meta.xet_file_data is None:
            target = meta.location
            if urlparse(target).hostname != urlparse(url).hostname:
                headers.pop("authorization", None)  # a signed CDN url: no token there
        size = meta.size or f.size
        partial.parent.mkdir(parents=True, exist_ok=True)
        kept = partial.stat().st_size if partial.is_file() else 0
        if kept > size:
            partial.unlink()
            kept = 0
        if kept < size:
            with open(partial, "ab") as fh:
                http_get(target, fh, resume_size=kept, headers=headers, expected_size=size,
                         displayed_filename=f.name, tqdm_class=meter.bar(f.name))
    except Aborted:
        raise
    except (errors.HfHubHTTPError, errors.LocalEntryNotFoundError, ValueError) as exc:
        raise _hub_error(exc, repo, f.name) from None
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC: where this file is written, not the Hub cache
            raise DownloadError(f"the disk is full while downloading {repo}/{f.name}",
                                f"free space on the disk of {partial.parent}, then run the same download "
                                "again: it resumes") from None
        raise _hub_error(exc, repo, f.name) from None
    except Exception as exc:  # noqa: BLE001 - httpx connection errors after huggingface_hub's retries
        if type(exc).__module__.startswith(("httpx", "httpcore")):
            raise DownloadError(f"the connection to the Hub dropped while fetching {repo}/{f.name}",
                                "run the same download again: it resumes where it stopped") from None
        raise


def _verify(path: Path, f: PlannedFile, meter: "_Meter") -> None:
    meter.update(f.name, 0, "verifying", force=True)
    done = [0]

    def hashed(n: int) -> None:
        done[0] += n
        meter.update(f.name, done[0], "verifying")

    why = verify(path, f, hashed)
    if why:
        path.unlink(missing_ok=True)
        raise DownloadError(why, "the damaged file was removed: download it again")
    meter.base += f.size
    meter.update(f.name, 0, force=True)


def _download_pipeline(p: Plan, root: Path, meter: "_Meter", revision: str | None) -> DownloadResult:
    """A diffusers repo: its files into ``<root>/.downloads/<owner--name>.partial/`` (each one as
    ``<file>.incomplete`` until complete and verified, so an interrupted run resumes: complete
    files are not fetched again, a partial one continues from its last byte), then the folder is
    renamed to ``<root>/checkpoints/<name>`` in one step: the final name appears only complete.
    A pipeline the Hugging Face cache already holds whole is used from there (its repo id)."""
    cached = [_cached(p.repo, f) for f in p.files]
    if all(cached):
        return DownloadResult(p.repo, p.repo, "checkpoint", [c for c in cached if c],
                              note=f"already in the Hub cache ({cache_dir()})")
    name = p.repo.split("/")[-1]
    final = root / KIND_FOLDER["checkpoint"] / name
    n = 2
    while final.exists():  # <name>, or <name>-2 ... when another folder had the name: this pipeline, complete?
        if (final / "model_index.json").is_file() and all(
                (final / f.name).is_file() and (final / f.name).stat().st_size == f.size for f in p.files):
            return DownloadResult(p.repo, str(final), "checkpoint", [final / f.name for f in p.files],
                                  note="already in the models folder")
        final = final.with_name(f"{name}-{n}")
        n += 1
    final = root / KIND_FOLDER["checkpoint"] / name
    work = root / ".downloads" / f"{p.repo.replace('/', '--')}.partial"
    todo: list[PlannedFile] = []
    need = 0
    for f in p.files:
        done = work / f.name
        if done.is_file() and done.stat().st_size == f.size:  # complete and verified in an earlier run
            meter.base += f.size
            continue
        partial = done.with_name(done.name + ".incomplete")
        need += max(0, f.size - (partial.stat().st_size if partial.is_file() else 0))
        todo.append(f)
    check_disk(p.repo, need, root, f"free space, or choose a models folder on a bigger disk ({root})")
    for f in todo:
        done = work / f.name
        partial = done.with_name(done.name + ".incomplete")
        _fetch(p.repo, f, partial, revision, meter)
        _verify(partial, f, meter)
        os.replace(partial, done)
    n = 2
    while final.exists():  # another folder of that name (not this repo's pipeline): keep it
        final = final.with_name(f"{name}-{n}")
        n += 1
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(work, final)
    return DownloadResult(p.repo, str(final), "checkpoint", [final / f.name for f in p.files],
                          note="a diffusers pipeline folder")


def _place(p: Plan, partial: Path, root: Path) -> DownloadResult:
    """Move the complete, verified file to ``<root>/<kind folder>/<name>`` (one rename: the
    final name appears complete or not at all; an existing other file of that name is kept)."""
    from loratui.engine.modelstore.scan import inspect_file

    entry = inspect_file(partial)
    kind = p.kind or (entry.kind if entry.kind in KIND_FOLDER else "checkpoint")
    name = Path(p.files[0].name)
    dest = root / KIND_FOLDER[kind] / name.name
    n = 2
    while dest.exists():
        dest = dest.with_name(f"{name.stem}-{n}{name.suffix}")
        n += 1
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, dest)
    return DownloadResult(p.repo, str(dest), kind, [dest], note=entry.problem)
