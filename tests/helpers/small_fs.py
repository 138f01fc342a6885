"""A small real filesystem for tests that need a disk to be (or become) full: a tmpfs of a given size.

A tmpfs gives a real statvfs and real ENOSPC to every process on the host (workers included),
without a disk image or a loop device; it needs root (`mount`).  ``fill`` takes the free space
with a ballast file, as another writer filling the disk would.
"""
from __future__ import annotations

import contextlib
import os
import subprocess

import pytest


@contextlib.contextmanager
def tmpfs(path, size_mib: int):
    """``path`` (made if needed) as a tmpfs of ``size_mib`` MiB for the block; unmounted after."""
    os.makedirs(path, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"this test mounts a small tmpfs (a disk that fills up), which needs root: "
                    f"{done.stderr.strip()}", pytrace=False)
    try:
        yield path
    finally:
        # lazy: a process that still has a file open there (a worker being stopped) does not keep it
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(directory, name: str = "ballast") -> str:
    """Take every free byte of ``directory``'s filesystem with one file; its path."""
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        size = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
        chunk = b"\xa5" * (1 << 20)  # not zeros: written pages, whatever the filesystem does with holes
        while size > 0:
            try:
                size -= os.write(fd, chunk[:size])
            except OSError:  # ENOSPC: the filesystem's own rounding left less than statvfs said
                break
    finally:
        os.close(fd)
    return path


def free_bytes(directory) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize
