"""Stage 5 (export mode): stream the backup VM's XVA into the destination.

Creates: ``<stamp>.xva`` and its manifest ``<stamp>.json`` (written last).
The body streams into ``<stamp>.xva.partial`` with a large buffer, hashed
(sha256) on the fly, fsynced and renamed; a transfer cut short raises
StreamCut and the partial file is removed, so a retry starts clean.  When the
pool fails the transfer itself (HTTP 500/404, or a cut), the XAPI task's
error_info is the reason that gets classified, not the HTTP status
(``xapi.transfer`` runs the transfer under its task; the file is this module's).
Earlier attempt: a manifest for this run means the export is done.
Holds a pool slot and the run's lease, so a redelivered duplicate never writes
the same file concurrently.
Undone by: compensation removes the partial or unmanifested file.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time

from tinabs_tasks.runs.human import human_bytes
from tinabs_tasks.storage import destination
from tinabs_tasks.storage import manifest
from tinabs_tasks.xapi import transfer
from tinabs_tasks.xapi.errors import DestinationError, StreamCut


def run(env, ctx: dict) -> dict:
    xapi, report, slots = env.xapi, env.report, env.slots
    dest, reserve = env.destination, env.reserve_free_bytes
    paths = destination.backup_paths(ctx, dest)
    earlier = manifest.earlier_result(ctx, paths)
    if earlier:
        ctx["result"] = earlier
        return ctx
    needed = estimated_size(xapi, ctx)
    assert_room(dest, needed, reserve)
    with slots.hold(ctx["run"], "export", park=("export", ctx)) as beat:
        began = time.time()
        size, digest = download(xapi, "/export", {"ref": ctx["refs"]["backup_vm"]}, paths, report, beat,
                                run=ctx["run"])
        manifest.write(ctx, paths, size=size, sha256=digest, transfer_s=time.time() - began, xapi=xapi)
    ctx["result"] = {"path": paths["data"], "manifest": paths["manifest"], "size": size, "sha256": digest,
                     "estimated_size": needed}
    return ctx


def estimated_size(xapi, ctx: dict) -> int:
    """What the run's .xva will take, from the disks the snapshot stage recorded (or, for a run
    started before it recorded them, from the backup VM's disks)."""
    if ctx.get("estimate_disks"):
        return xva_size([tuple(d) for d in ctx["estimate_disks"]])
    return expected_size(xapi, ctx)


def expected_size(xapi, ctx: dict) -> int:
    """What the .xva will take: the data the disks hold, plus their always-written first and last
    chunks and the tar's framing (a little over; never under for the simulator or a real pool)."""
    x = xapi.x
    disks = []
    for vbd in x.VM.get_VBDs(ctx["refs"]["backup_vm"]):
        vdi = x.VBD.get_VDI(vbd)
        if vdi != "OpaqueRef:NULL" and x.VBD.get_type(vbd) == "Disk":
            disks.append((int(x.VDI.get_physical_utilisation(vdi)), int(x.VDI.get_virtual_size(vdi))))
    return xva_size(disks)


def xva_size(disks: list[tuple[int, int]]) -> int:
    """The .xva of a VM whose disks hold (physical_utilisation, virtual_size) each (see expected_size)."""
    return (1 << 20) + sum(min(used, size) + (2 << 20) + used // 512 for used, size in disks)


def assert_room(dest: str, needed: int, reserve: int) -> None:
    """Checked before a long export starts, so a full disk fails in seconds, not hours."""
    assert_writable(dest)
    with _local(dest):
        free = shutil.disk_usage(dest).free
    if free - reserve < needed:
        raise DestinationError(f"destination {dest} has {human_bytes(free)} free (keeping {human_bytes(reserve)} "
                               f"in reserve) but this backup needs about {human_bytes(needed)} — free space, "
                               "prune old backups (tinabs prune) or lower [limits] reserve_free_bytes")


def assert_writable(dest: str) -> None:
    """A destination that cannot take files (missing, a file, read-only) fails before any export."""
    try:
        destination.assert_writable(dest)
    except destination.NotWritable as exc:
        raise DestinationError(str(exc)) from None


def download(xapi, handler: str, query: dict, paths: dict, report, beat, expect_tar_end: bool = True,
             run: str | None = None):
    """GET ``handler`` into ``paths['data']`` atomically; returns (size, sha256).  The transfer's
    XAPI task carries ``run``, so aborting the run's job cancels it (abort.py)."""
    partial = paths["data"] + ".partial"
    with _local(paths["dir"]):
        os.makedirs(paths["dir"], exist_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    digest = hashlib.sha256()
    try:
        flusher = _Writeback(fd)

        def write(chunk):
            with _local(partial):
                _write_all(fd, chunk)
                flusher.wrote(len(chunk))
            if beat.lost.is_set():
                raise StreamCut("lost the export lease (Redis unreachable?)")

        size = transfer.download(xapi, handler, query, (digest.update, write),
                                 label=f"tinabs {handler} {os.path.basename(paths['data'])}", run=run,
                                 progress=lambda n: report.bytes(n), expect_tar_end=expect_tar_end)
        with _local(partial):
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(partial, paths["data"])
            destination.fsync_dir(paths["dir"])
        report.bytes(size, size, force=True)
        return size, digest.hexdigest()
    except BaseException:
        if fd >= 0:
            os.close(fd)
        destination.remove_quietly(partial)
        raise


@contextlib.contextmanager
def _local(path: str):
    """Local file trouble (disk full, permissions) is ours, not the pool's: say so plainly."""
    try:
        yield
    except OSError as exc:
        raise DestinationError(f"destination {path}: {exc.strerror or exc} — check free space and "
                               "that the worker may write there") from None


class _Writeback:
    """Starts writing each finished stretch of the file to disk while the transfer goes on.

    Without it the final fsync writes the whole backup at once after the
    network is done; with it, disk and network work at the same time.  It also
    keeps a nightly run of backups from flushing the host's page cache.
    """

    STRETCH = 32 << 20

    def __init__(self, fd: int):
        self.fd, self.done, self.pending = fd, 0, 0

    def wrote(self, n: int) -> None:
        self.pending += n
        if self.pending >= self.STRETCH:
            os.posix_fadvise(self.fd, self.done, self.pending, os.POSIX_FADV_DONTNEED)
            self.done += self.pending
            self.pending = 0


def _write_all(fd: int, chunk) -> None:
    while chunk:
        written = os.write(fd, chunk)
        chunk = chunk[written:]
