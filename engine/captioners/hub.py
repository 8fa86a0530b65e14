"""Fetching caption models from the Hugging Face Hub, with progress as events.

Files land in the normal Hugging Face cache (``HF_HOME``), so a second run, or
one without network, finds them there.  Every Hub error becomes a
:class:`CaptionError` that says what to do.
"""

from __future__ import annotations

import errno
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from loratui.engine.captioners.common import CaptionError
from loratui.engine.events import Aborted, Control, PhaseChanged

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def looks_like_repo_id(text: str) -> bool:
    """'owner/name' that is not an existing path and does not look like one."""
    t = text.strip()
    if not REPO_ID.fullmatch(t) or Path(t).expanduser().exists():
        return False
    return not t.startswith((".", "~")) and not t.endswith((".onnx", ".csv", ".safetensors"))


class _NullIO:
    def write(self, _s: str) -> int:
        return 0

    def flush(self) -> None:
        pass


def progress_class(report: Callable[[str, int, int], None]) -> type:
    """A tqdm class for ``hf_hub_download(tqdm_class=...)`` that prints nothing
    and calls ``report(description, done_bytes, total_bytes)`` on each update."""
    from tqdm.std import tqdm

    class _EventBar(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs) -> None:
            kwargs.pop("name", None)
            kwargs["file"] = _NullIO()
            kwargs["disable"] = False
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            report(str(self.desc or ""), int(self.n), int(self.total or 0))
            return shown

    return _EventBar


def network_reachable(timeout: float = 5.0) -> bool:
    """A quick look for the Hub before a download, so that a machine without
    network gets a clear answer at once instead of half a minute of retries.
    Behind an HTTP(S) proxy we cannot tell, and say yes."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    proxies = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    if any(os.environ.get(k) for k in proxies):
        return True
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _no_network(repo_id: str, what: str) -> CaptionError:
    from huggingface_hub import constants

    hint = "download the files on a machine with network and copy the folder here"
    if constants.HF_HUB_OFFLINE:
        hint = "HF_HUB_OFFLINE is set: unset it to download, or " + hint
    return CaptionError(f"cannot download {repo_id}: no network; pass a local folder with {what}", hint=hint)


class _Unreachable(Exception):
    """The file is not in the cache and the Hub cannot be reached."""


def download(
    repo_id: str,
    required: Iterable[str | tuple[str, ...]],
    optional: Iterable[str] = (),
    *,
    what: str,
    on_event: Callable[[object], None],
    control: Control,
) -> dict[str, Path]:
    """Fetch files of a Hub repo; files in the Hugging Face cache are used
    from there without any network call (so a model fetched once works offline).

    ``required`` entries are file names or tuples of alternatives (the first
    that is available wins, e.g. ``("model.safetensors", "pytorch_model.bin")``);
    ``optional`` files are fetched when the repo has them.  ``what`` names the
    files for the offline message ("model.onnx and selected_tags.csv").
    Returns {file name: local path}. Raises CaptionError, or Aborted when
    ``control`` aborts during a download (the partial file is resumed next time).
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub import errors as hf_errors

    last = [0.0]

    def report(desc: str, done: int, total: int) -> None:
        if control.aborted:
            raise Aborted()
        now = time.monotonic()
        if now - last[0] >= 0.25 or (total and done >= total):
            last[0] = now
            on_event(PhaseChanged("downloading", detail=f"{repo_id}: {desc}", current=done, total=total))

    bar = progress_class(report)
    online: list[bool | None] = [None]  # unknown until a file is missing from the cache

    def fetch(name: str) -> Path:
        try:
            return Path(hf_hub_download(repo_id, name, local_files_only=True))
        except (hf_errors.EntryNotFoundError, hf_errors.OfflineModeIsEnabled, OSError, ValueError):
            pass  # not cached (LocalEntryNotFoundError is an EntryNotFoundError)
        if constants.HF_HUB_OFFLINE:
            raise _Unreachable()
        if online[0] is None:
            online[0] = network_reachable()
        if not online[0]:
            raise _Unreachable()
        on_event(PhaseChanged("downloading", detail=f"{repo_id}: {name}"))
        try:
            return Path(hf_hub_download(repo_id, name, tqdm_class=bar))
        except (hf_errors.OfflineModeIsEnabled, hf_errors.LocalEntryNotFoundError):
            raise _Unreachable() from None  # the hub's word for "lost the connection"

    found: dict[str, Path] = {}
    items: list[tuple[tuple[str, ...], bool]] = [((r,) if isinstance(r, str) else tuple(r), True) for r in required]
    items += [((o,), False) for o in optional]
    for names, needed in items:
        unreachable = False
        for name in names:
            try:
                found[name] = fetch(name)
                break
            except _Unreachable:
                unreachable = True
            except hf_errors.GatedRepoError:
                raise CaptionError(
                    f"{repo_id} is gated on the Hugging Face Hub",
                    hint=f"accept its terms on https://huggingface.co/{repo_id} and log in with `hf auth login`",
                ) from None
            except hf_errors.RepositoryNotFoundError:
                raise CaptionError(
                    f"no model named {repo_id} on the Hugging Face Hub (or it is private)",
                    hint="check the spelling, or pass a local folder; for a private repo log in with `hf auth login`",
                ) from None
            except hf_errors.RevisionNotFoundError:
                raise CaptionError(f"{repo_id}: revision not found on the Hub") from None
            except hf_errors.EntryNotFoundError:
                pass  # the repo has no such file: try the next alternative
            except hf_errors.HfHubHTTPError as exc:
                raise CaptionError(
                    f"cannot download {name} from {repo_id}: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                    hint="check the network, or pass a local folder",
                ) from None
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise CaptionError(
                        f"cannot download {name} from {repo_id}: the disk is full",
                        hint=f"free space in the Hugging Face cache ({constants.HF_HUB_CACHE})",
                    ) from None
                raise CaptionError(f"cannot download {name} from {repo_id}: {exc.strerror or exc}") from None
        else:
            if needed and unreachable:
                raise _no_network(repo_id, what)
            if needed:
                raise CaptionError(
                    f"{repo_id} has no {' or '.join(names)}", hint=f"use a repo (or local folder) that has {what}"
                )
    return found
