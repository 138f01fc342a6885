"""Writing a file so that it is whole under its real name or absent: temp name, fsync, rename.
Once fsynced its pages are dropped from the page cache (``_drop_cached``).

The temp file is in the destination's own directory (rename is atomic only within a
filesystem) and named ``.tmp.<name>.<pid>.<random>`` so that concurrent writers never share one
and GC can recognise (and, once older than its grace, reclaim) what a crashed writer left.  A
full disk becomes ``RepoFull`` after the temp file is removed.
"""
from __future__ import annotations

import os
import secrets

from tinabs_tasks.repo.errors import RepoError, RepoFull, is_no_space
from tinabs_tasks.storage.destination import fsync_dir  # noqa: F401  (index and xva_rebuild use it from here)

TEMP_PREFIX = ".tmp."


def temp_name(name: str) -> str:
    return f"{TEMP_PREFIX}{name}.{os.getpid()}.{secrets.token_hex(6)}"


def write_atomic(path: str, data: bytes, *, mode: int = 0o644, replace: bool = True) -> None:
    """Write ``data`` to ``path`` whole or not at all.  With ``replace=False`` an existing file is
    kept (``os.link`` instead of rename: FileExistsError if it is there)."""
    directory, name = os.path.split(path)
    temp = os.path.join(directory, temp_name(name))
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            _drop_cached(fd)
        finally:
            os.close(fd)
        if replace:
            os.rename(temp, path)
        else:
            os.link(temp, path)
            os.unlink(temp)
        fsync_dir(directory)
    except BaseException as exc:
        _discard(temp)
        if is_no_space(exc):
            raise RepoFull(f"no space left to write {path} ({os.strerror(exc.errno)}); "
                           "free space on the repository's filesystem (or run `tinabs repo gc`), then retry") from None
        if isinstance(exc, PermissionError):
            raise RepoError(f"cannot write {path}: {exc.strerror}; give this user write access "
                            "to the repository") from None
        raise


def _drop_cached(fd: int) -> None:
    """Drop the file's pages (clean once fsynced) from the page cache, as the export stage does:
    what the repository stores is read back rarely, and a night of backups must neither evict the
    host's cache nor make the kernel reclaim gigabytes of it while the backups go on."""
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:  # advice only: a filesystem that does not take it loses nothing
        pass


def _discard(temp: str) -> None:
    try:
        os.unlink(temp)
    except OSError:
        pass
