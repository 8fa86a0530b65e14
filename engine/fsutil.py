"""Atomic, non-destructive file writes, and the one file hash.

Every file the tool writes goes to a temporary name in the same folder, is
flushed and fsynced, then renamed over the target, so a crash or a kill -9
leaves either the old file or the new one, never half of one.

File modes: a written file gets the mode a plain ``open()`` would give it — the
old file's mode when it replaces one, else ``0666 & ~umask`` (0644 under 022) —
and a written folder ``0777 & ~umask``. The temporary files are private (0600:
``mkstemp``'s mode, and safetensors' ``save_file`` replaces the file it is given
by its own 0600 temporary file), so the mode is set once the writer is done.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

TMP_PREFIX = ".loratui-tmp-"
_PRIVATE_FILE = 0o600  # the mode of mkstemp's (and safetensors') temporary files
_PRIVATE_DIR = 0o700  # mkdtemp's
_HASH_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in chunks (never the whole file in
    memory). Raises OSError when it cannot be read."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    """The process umask. Read from /proc/self/status on Linux: ``os.umask`` can
    only be read by setting it, and a file another thread (the UI, a writer)
    creates in between would get the temporary mask. The fallback sets a strict
    one for that instant, so such a file is at worst more private, never open."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8) & 0o777
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (0644 under 022)."""
    return 0o666 & ~_umask()


def new_dir_mode() -> int:
    """The mode ``mkdir`` gives a new folder under the current umask (0755 under 022)."""
    return 0o777 & ~_umask()


def _mode_for(target: Path, default: int) -> int:
    """The mode a write of ``target`` gets: the existing one's (as ``open()`` keeps
    it when it truncates a file), else ``default``."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        return default


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it is fsynced
    and renamed to ``target``. On error the temporary file is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # after the writer: it may have replaced the file by a new 0600 one
        os.chmod(tmp_path, _mode_for(target, new_file_mode()))
        with open(tmp_path, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
        fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(target: str | Path, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | Path, text: str) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_save(target: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result into place atomically. A write
    error comes out as an ``OSError`` whatever the writer raised it as (safetensors'
    ``SafetensorError`` for a full disk), so callers that fall back on one catch it."""
    with atomic_path(target) as tmp:
        try:
            writer(tmp)
        except OSError:
            raise
        except Exception as exc:
            code = _io_errno(exc)
            if code is None:
                raise
            raise OSError(code, os.strerror(code), str(target)) from exc
    return Path(target)


def _io_errno(exc: Exception) -> int | None:
    """The errno of an I/O error a library raised as its own type ("... (os error 28)"), else None."""
    import errno
    import re

    if type(exc).__name__ != "SafetensorError":
        return None
    m = re.search(r"(?:os error |code: )(\d+)", str(exc))  # its Display, or its Debug
    if m:
        return int(m.group(1))
    return errno.ENOSPC if "no space left" in str(exc).lower() else None


def atomic_dir(target: str | Path, fill: Callable[[Path], None], *, keep_file_modes: bool = False) -> Path:
    """Build a folder under a temporary name with ``fill(tmp_dir)``, then rename it
    to ``target``. An existing ``target`` is replaced only after the new one is
    complete. The folder gets the old one's mode (else ``0777 & ~umask``); the
    files and folders ``fill`` made that came out private (0600 / 0700: the
    temporary files of a library such as safetensors) get the umask's mode,
    unless ``keep_file_modes`` (``fill`` copies files and keeps their modes)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=target.parent))
    try:
        fill(tmp)
        _sync_and_open_up(tmp, files=not keep_file_modes)
        os.chmod(tmp, _mode_for(target, new_dir_mode()))
        fsync_dir(tmp)
        if target.exists():
            old = target.with_name(TMP_PREFIX + "old-" + target.name)
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _sync_and_open_up(folder: Path, *, files: bool = True) -> None:
    """fsync every file under ``folder``; give folders (and, with ``files``, files)
    with the private temporary modes the umask's modes. Symbolic links and
    hard-linked files (another file's inode, e.g. a dataset image linked in) are
    never changed."""
    file_mode, dir_mode = new_file_mode(), new_dir_mode()
    for root, dir_names, file_names in os.walk(folder):
        for name in dir_names:
            p = os.path.join(root, name)
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == _PRIVATE_DIR:
                os.chmod(p, dir_mode)
        for name in file_names:
            p = os.path.join(root, name)
            st = os.lstat(p)
            if not stat.S_ISREG(st.st_mode):
                continue
            if files and st.st_nlink == 1 and stat.S_IMODE(st.st_mode) == _PRIVATE_FILE:
                os.chmod(p, file_mode)
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())


def remove_leftovers(folder: str | Path) -> list[Path]:
    """Delete temporary files/folders an interrupted save left behind."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.name.startswith(TMP_PREFIX):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            removed.append(p)
    return removed
