"""Stage 5 (export mode): stream the backup VM's XVA into the destination.

Creates: ``<stamp>.xva`` and its manifest ``<stamp>.json`` (written last).
The body streams into ``<stamp>.xva.partial`` with a large buffer, hashed
(sha256) on the fly, fsynced and renamed; a transfer cut short raises
StreamCut and the partial file is removed, so a retry starts clean.
Earlier attempt: a manifest for this run means the export is done.
Holds a pool slot and the run's lease, so a redelivered duplicate never writes
the same file concurrently.
Undone by: compensation removes the partial or unmanifested file.
"""
from __future__ import annotations

import hashlib
import os
import time

from .. import destination
from ..xapi import http as xhttp
from ..xapi.errors import StreamCut
from . import manifest


def run(xapi, ctx: dict, report, slots, dest: str) -> dict:
    paths = destination.backup_paths(ctx, dest)
    done = destination.read_manifest(paths["manifest"])
    if done and done.get("run") == ctx["run"]:
        ctx["result"] = {"path": paths["data"], "manifest": paths["manifest"]}
        return ctx
    with slots.hold(ctx["run"], "export") as beat:
        began = time.time()
        size, digest = download(xapi, "/export", {"ref": ctx["refs"]["backup_vm"]}, paths, report, beat)
        manifest.write(ctx, paths, size=size, sha256=digest, transfer_s=time.time() - began, xapi=xapi)
    ctx["result"] = {"path": paths["data"], "manifest": paths["manifest"], "size": size, "sha256": digest}
    return ctx


def download(xapi, handler: str, query: dict, paths: dict, report, beat, expect_tar_end: bool = True):
    """GET ``handler`` into ``paths['data']`` atomically; returns (size, sha256)."""
    os.makedirs(paths["dir"], exist_ok=True)
    partial = paths["data"] + ".partial"
    task = xapi.x.task.create(f"tinabs {handler} {os.path.basename(paths['data'])}", "")
    digest = hashlib.sha256()
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        conn, resp = xhttp.open_get(xapi.base_url, handler,
                                    {**query, "session_id": xapi.handle, "task_id": task},
                                    xapi.session.context)
        try:
            def sink(chunk):
                digest.update(chunk)
                _write_all(fd, chunk)
                if beat.lost.is_set():
                    raise StreamCut("lost the export lease (Redis unreachable?)")

            size = xhttp.stream_to(resp, sink, lambda n: report.bytes(n), expect_tar_end)
        finally:
            conn.close()
        xapi.wait_task(task, timeout_s=60)
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
    finally:
        xapi._destroy_task(task)


def _write_all(fd: int, chunk) -> None:
    while chunk:
        written = os.write(fd, chunk)
        chunk = chunk[written:]
