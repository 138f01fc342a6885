"""Where backups go, and how files get there: safe names, atomic writes, manifests.

Layout: ``<dest>/<pool>/<vm-name>--<vm-uuid>/<UTC stamp>-<run>.xva`` (or
``.metadata.xva`` for sr-copy) with ``<UTC stamp>-<run>.json`` beside it; the
run id keeps two jobs started in the same second from sharing a file.  Names are
made safe for paths, and every path is checked to stay inside the
destination: a VM called ``../../etc`` never escapes it.  Only a file with a
manifest is a backup; the manifest is written last.

Files in the destination are read only when they are regular files reached
without a symlink (``open_regular``), and written only through a fresh
temporary file that is renamed into place: a link, FIFO or device planted in
the destination can neither pull data in from elsewhere, nor be written
through, nor make a reader hang.
"""
from __future__ import annotations

import errno
import json
import os
import re
import stat
import unicodedata
import uuid

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME = 80


class UnsafePath(ValueError):
    pass


class NotRegular(ValueError):
    """A path in the destination that is a symlink, directory, FIFO, socket or device."""

    def __init__(self, path: str, kind: str):
        super().__init__(f"{path} is {kind}, not a regular file")
        self.path, self.kind = path, kind


class NotWritable(Exception):
    """The destination cannot take a backup; the message says why and what to do."""


def safe_name(name: str, fallback: str = "vm") -> str:
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    text = _UNSAFE.sub("_", text).strip("._-")
    return text[:MAX_NAME] or fallback


def vm_dir(dest: str, pool: str, vm_name: str, vm_uuid: str) -> str:
    path = os.path.join(dest, safe_name(pool, "pool"), f"{safe_name(vm_name)}--{safe_name(vm_uuid, 'uuid')}")
    return inside(dest, path)


def inside(dest: str, path: str) -> str:
    root, full = os.path.realpath(dest), os.path.realpath(path)
    if os.path.commonpath([root, full]) != root:
        raise UnsafePath(f"{path} is outside the destination {dest}")
    return full


def backup_paths(ctx: dict, dest: str) -> dict[str, str]:
    folder = vm_dir(dest, ctx["pool"], ctx["vm"]["name"], ctx["vm"]["uuid"])
    base = os.path.join(folder, f"{ctx['stamp']}-{ctx['run']}")
    if ctx["mode"] == "repo":  # the data is in the repository: the manifest names its index
        return {"dir": folder, "data": None, "manifest": base + ".json"}
    suffix = ".xva" if ctx["mode"] == "export" else ".metadata.xva"
    return {"dir": folder, "data": base + suffix, "manifest": base + ".json"}


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def open_regular(path: str):
    """``path`` opened for reading (unbuffered, binary) if it is a regular file and not a symlink.

    Raises NotRegular otherwise, without opening it: opening a FIFO blocks and opening a device
    can have effects.  The lstat/fstat pair catches a swap between the check and the open."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegular(path, file_kind(st.st_mode))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # it became a symlink after the lstat
            raise NotRegular(path, "a symlink") from None
        raise
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(now.st_mode):
        os.close(fd)
        raise NotRegular(path, "a file that changed while it was opened")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb", buffering=0)


def assert_writable(dest: str) -> None:
    """The destination is a directory this process can create files in (as root too: a read-only
    mount or a path through a regular file fails here).  Checked before a long export starts."""
    probe = os.path.join(dest, f".tinabs-write-test-{uuid.uuid4().hex[:12]}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise NotWritable(f"destination {dest} is not writable ({_why(dest, exc)}) — nothing was exported; "
                          "make it a directory the worker user can write to, on every worker host") from None
    os.close(fd)
    os.unlink(probe)


def _why(dest: str, exc: OSError) -> str:
    """What is wrong with ``dest``, in words: which component is missing or not a directory."""
    path = os.path.abspath(dest)
    while path != os.path.dirname(path):
        parent = os.path.dirname(path)
        if os.path.lexists(parent) and not os.path.isdir(parent):
            return f"{parent} is a file, not a directory"
        path = parent
    if not os.path.lexists(dest):
        return "it does not exist"
    if not os.path.isdir(dest):
        return "it is a file, not a directory"
    return exc.strerror or str(exc)


def write_json_atomic(path: str, payload: dict) -> None:
    tmp = path + ".partial"
    remove_quietly(tmp)  # a leftover, or a planted symlink: unlinked itself, never written through
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def read_manifest(path: str) -> dict | None:
    """The manifest's JSON; None when it is missing, not JSON, or not a regular file."""
    try:
        with open_regular(path) as fh:
            return json.loads(fh.read())
    except (OSError, ValueError):
        return None


def remove_quietly(*paths: str) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
