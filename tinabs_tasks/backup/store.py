"""Stage 5 (repo mode): stream the backup VM's XVA into the repository.

Creates: the backup's index in the repository (``indexes/<stamp>-<run>``: the backup id) and
its manifest ``<stamp>-<run>.json`` in the destination, beside the file backups of the VM, so
that the catalog, retention, reports and restore find it as they find a file backup.
The export stream is split as it arrives (repo/xva_split.py): each 1 MiB chunk checked against
its checksum member, then hashed, compressed, encrypted and written by ``store_threads``
threads under a temp name and renamed; nothing of the stream is written whole anywhere.  The
index is written once every block it names is stored, the manifest after it: a backup without
an index does not exist, and a crash before it leaves only orphan blocks that GC reclaims.
Incremental nights: when the VM has a base to build on (``store_delta.plan``), only the
backup VM's ova.xml and the system disk's VHD delta against the base are read, into a
synthetic full index (``store_delta``); otherwise, or when the pool refuses the delta, the
whole XVA is streamed as above.  Either way the manifest says how (``backup_kind``, and
``full_reason`` or ``base_backup`` and ``chain``), and the cleanup stage makes the night's
snapshot the VM's next base.
Earlier attempt: a manifest for this run means done; this run's index without a manifest (a
worker died between the two) gets its manifest now.
Holds a pool slot and the run's lease, like the export stage.
Undone by: compensation removes the manifest and the index (cleanup.remove_files); blocks stay
for GC (another backup may share them).
"""
from __future__ import annotations

import logging
import os
import shutil
import time

from tinabs_tasks.backup import incremental, store_delta
from tinabs_tasks.backup.export import assert_writable, estimated_size
from tinabs_tasks.repo import index as repo_index
from tinabs_tasks.repo.configured import open_configured
from tinabs_tasks.repo.errors import RepoError
from tinabs_tasks.repo.xva_split import XvaSplitter
from tinabs_tasks.storage import destination
from tinabs_tasks.storage import manifest
from tinabs_tasks.xapi import transfer
from tinabs_tasks.xapi.errors import DestinationError, StreamCut

#: the repository must have at least this much free besides the reserve before a backup starts:
#: what one backup's blocks in flight and its index take at most (its new blocks are unknown
#: before they arrive: deduplication decides); a disk filling up later fails the run the same way
MIN_FREE_BYTES = 256 << 20
log = logging.getLogger("tinabs")
FIGURES = ("logical_bytes", "transferred_bytes", "stored_bytes", "new_blocks", "reused_blocks")


def backup_id(ctx: dict) -> str:
    """A repo backup's id: the same ``<stamp>-<run>`` that names its manifest."""
    return f"{ctx['stamp']}-{ctx['run']}"


def run(env, ctx: dict) -> dict:
    xapi, report, slots, dest = env.xapi, env.report, env.slots, env.destination
    paths = destination.backup_paths(ctx, dest)
    earlier = manifest.earlier_result(ctx, paths)
    if earlier:
        ctx["result"] = earlier
        return ctx
    assert_writable(dest)
    repo = _open(env.repository)
    bid = backup_id(ctx)
    index = _indexed_earlier(repo, bid, ctx)
    transfer_s, estimate = 0.0, None  # (an earlier attempt's stream: not timed here)
    if index is None:
        _assert_room(repo.path, env.reserve_free_bytes)
        estimate = estimated_size(xapi, ctx)
        plan, prev = store_delta.plan(env, ctx, repo)
        threads = env.repository.store_threads
        with slots.hold(ctx["run"], "export", park=("store", ctx)) as beat:
            began = time.time()
            if plan.incremental:
                try:
                    index = store_delta.stream_delta(xapi, repo, bid, ctx, report, beat, threads, plan, prev,
                                                     _meta(ctx, plan))
                except store_delta.DeltaRefused as exc:
                    log.warning("run %s: %s; backing up %s in full", ctx["run"], exc, ctx["vm"]["name"])
                    plan = incremental.full(str(exc), plan.stray_bases)
            if not plan.incremental:
                index = _stream(xapi, repo, bid, ctx, report, beat, threads, _meta(ctx, plan))
            transfer_s = round(time.time() - began, 3)
    ctx["result"] = _write_manifest(ctx, paths, repo, index, xapi, transfer_s, estimate)
    return ctx


def _open(repo_cfg):
    try:
        return open_configured(repo_cfg)
    except RepoError as exc:  # the worker's own config or key: a fix, never worth a retry
        raise DestinationError(f"repository: {exc}") from None


def _indexed_earlier(repo, bid: str, ctx: dict):
    """This run's index, when an earlier attempt saved it (and died before the manifest)."""
    try:
        found = repo_index.load_index(repo, bid)
    except repo_index.BackupNotFound:
        return None
    except RepoError as exc:
        raise DestinationError(f"repository: {exc}") from None
    if found.meta.get("run") != ctx["run"]:
        raise DestinationError(f"repository {repo.path} already holds a backup {bid} of another run; "
                               "run `tinabs repo check`")
    return found


def _assert_room(path: str, reserve: int) -> None:
    try:
        free = shutil.disk_usage(path).free
    except OSError as exc:
        raise DestinationError(f"repository {path}: {exc.strerror}") from None
    if free - reserve < MIN_FREE_BYTES:
        raise DestinationError(f"repository {path} has {free / 1e6:.0f} MB free (keeping {reserve / 1e6:.0f} MB "
                               f"in reserve); a backup needs at least {MIN_FREE_BYTES >> 20} MB to start — free "
                               "space, prune old backups (tinabs prune) and run `tinabs repo gc`")


def _meta(ctx: dict, plan) -> dict:
    """What the index records of its backup (``kind``: how it was taken, for its manifest)."""
    return {"run": ctx["run"], "job": ctx["job"], "pool": ctx["pool"], "stamp": ctx["stamp"],
            "vm": {"uuid": ctx["vm"]["uuid"], "name": ctx["vm"]["name"]},
            "kind": {**plan.fields(), "stray_bases": plan.stray_bases}}


def _stream(xapi, repo, bid: str, ctx: dict, report, beat, threads: int, meta: dict):
    splitter = XvaSplitter(repo, bid, meta=meta, threads=threads)

    def write(chunk) -> None:
        with store_delta.storing(repo):
            splitter.write(chunk)
        if beat.lost.is_set():
            raise StreamCut("lost the export lease (Redis unreachable?)")

    try:
        # the transfer's own errors (a pool away, a connection reset: OSErrors too) pass as they are:
        # the engine waits for the pool or retries; only what storing raised is the repository's
        size = transfer.download(xapi, "/export", {"ref": ctx["refs"]["backup_vm"]}, (write,),
                                 label=f"tinabs /export {bid} (repository)", run=ctx["run"],
                                 progress=lambda n: report.bytes(n))
        with store_delta.storing(repo):
            index = splitter.finish()
            repo_index.save_index(repo, index)
    except RepoError as exc:  # the pool sent something that is not a whole, sound XVA: retried
        raise StreamCut(str(exc)) from None
    finally:
        splitter.close()
    report.bytes(size, size, force=True)
    return index


def _write_manifest(ctx: dict, paths: dict, repo, index, xapi, transfer_s: float, estimate: int | None) -> dict:
    figures = index.figures
    kind = manifest.kind_fields(index.meta.get("kind") or {})
    extra = {"backup_id": index.backup_id, **kind,
             "repository": {"path": repo.path, "id": repo.config.id},
             **{k: int(figures.get(k, 0)) for k in FIGURES},
             "stored_bytes": int(figures.get("stored_bytes", 0)) + index.sealed_bytes,  # the index is new bytes too
             "index_bytes": index.sealed_bytes}
    try:
        os.makedirs(paths["dir"], exist_ok=True)
        manifest.write(ctx, paths, size=int(figures["stream_bytes"]), sha256=figures["stream_sha256"],
                       transfer_s=transfer_s, xapi=xapi, extra=extra)
    except OSError as exc:
        raise DestinationError(f"destination {paths['dir']}: {exc.strerror or exc}") from None
    return {"path": None, "manifest": paths["manifest"], "size": int(figures["stream_bytes"]),
            "sha256": figures["stream_sha256"], "estimated_size": estimate,
            "backup_id": index.backup_id, **{k: extra[k] for k in FIGURES}, **kind}
