"""Repo mode's incremental night: the ova.xml and the system disk's delta, into a synthetic full.

``plan`` decides (``incremental.choose``, then what only the repository can say: the base's
backup is still there, in this repository, with a system disk of the base's size).
``stream_delta`` reads from the pool only:

1. ``/export_metadata`` of the backup VM (its ova.xml: the VM's structure tonight, which may
   have changed since the base);
2. ``/export_raw_vdi?vdi=<tonight's snapshot>&format=vhd&base=<the base>``: the blocks that
   differ, read as a stream by ``xapi.vhd_stream`` into ``delta.DeltaChunks`` (never a temp
   file);

and saves the synthetic full index (``repo/synthetic``): the base backup's rows with the changes
laid over them, the data disks as an export gives empty disks.  A pool that refuses the delta
(an error that is not worth a retry: the base is not a VHD, say) raises ``DeltaRefused``, and
the store stage takes a full backup instead, saying why.
"""
from __future__ import annotations

import contextlib

import XenAPI

from tinabs_tasks.backup import incremental
from tinabs_tasks.backup.delta import DeltaChunks
from tinabs_tasks.repo import index as repo_index
from tinabs_tasks.repo import synthetic
from tinabs_tasks.repo.errors import BlockMissing, RepoError, RepoFull
from tinabs_tasks.repo.xva_split import XvaSplitter
from tinabs_tasks.xapi import transfer
from tinabs_tasks.xapi.errors import DestinationError, StreamCut
from tinabs_tasks.xapi.vhd_stream import VhdStreamError, VhdStreamReader


class DeltaRefused(Exception):
    """The pool would not give the delta (a permanent error): back up in full; str() says why."""


@contextlib.contextmanager
def storing(repo):
    """A full disk or a write refused while storing is the repository's: a fix, never worth a retry
    (other RepoErrors, a stream that is not a sound XVA, pass on: the pool's, retried).  Wraps only
    repository writes: an OSError of the transfer is the pool's or the network's."""
    try:
        yield
    except RepoFull as exc:
        raise DestinationError(f"repository: {exc}") from None
    except OSError as exc:
        raise DestinationError(f"repository {repo.path}: {exc.strerror or exc} — check free space and that "
                               "the worker may write there") from None


def plan(env, ctx: dict, repo):
    """(incremental.Plan, the base backup's (index, system disk, rows) or None)."""
    p = incremental.choose(env.xapi, ctx, "repo", destination=env.destination, full_every=env.full_every,
                          stage="store")
    if not p.incremental:
        return p, None
    base = p.base
    if base.repository != repo.config.id:
        return incremental.full("the VM's base was kept for another repository"), None
    try:
        prev = repo_index.load_index(repo, base.backup_id)
    except repo_index.BackupNotFound:
        return incremental.full(f"backup {base.backup_id}, which the VM's base belongs to, is no longer in the "
                                "repository (pruned)"), None
    except RepoError as exc:
        return incremental.full(f"the index of backup {base.backup_id} cannot be read ({exc})"), None
    try:
        layout = synthetic.disk_layout(prev.ova_xml)
        disk = synthetic.system_disk(layout)
        run = next(r for r in prev.disks if r.export_id == disk.export_id)
        if disk.virtual_size != base.virtual_size:
            raise synthetic.NotApplicable(f"its system disk is {disk.virtual_size} bytes, the base "
                                          f"{base.virtual_size}")
        rows = synthetic.disk_chunks(run, disk)
    except StopIteration:
        return incremental.full(f"backup {base.backup_id} holds no data of its system disk"), None
    except synthetic.NotApplicable as exc:
        return incremental.full(f"backup {base.backup_id} cannot take a delta: {exc}"), None
    return p, (prev, run.checksum_kind or "xxhash", rows)


def stream_delta(xapi, repo, bid: str, ctx: dict, report, beat, threads: int, p, prev, meta: dict):
    """Read the night's metadata and delta and save the synthetic full index; returns it."""
    prev_index, checksum_kind, base_rows = prev
    label = f"tinabs {bid} (repository, incremental)"

    def lease_kept() -> None:
        if beat.lost.is_set():
            raise StreamCut("lost the export lease (Redis unreachable?)")

    metadata = XvaSplitter(repo, bid, meta=meta)
    try:
        def take_metadata(piece) -> None:
            metadata.write(piece)
            lease_kept()
        meta_bytes = transfer.download(xapi, "/export_metadata",
                                       {"ref": ctx["refs"]["backup_vm"], "export_snapshots": "false"},
                                       (take_metadata,), label=f"{label}: metadata", run=ctx["run"])
        head = metadata.finish()
    except RepoError as exc:  # not an XVA holding ova.xml: what the pool sent is wrong, retried
        raise StreamCut(str(exc)) from None
    finally:
        metadata.close()
    try:
        layout = synthetic.disk_layout(head.ova_xml)
        disk = synthetic.system_disk(layout)
    except synthetic.NotApplicable as exc:
        raise DeltaRefused(f"the backup VM's metadata cannot take a delta ({exc})") from None
    if head.disks or disk.virtual_size != p.base.virtual_size:
        raise DeltaRefused(f"the backup VM's system disk is {disk.virtual_size} bytes, its base "
                           f"{p.base.virtual_size}")
    chunks = DeltaChunks(repo, disk, base_rows, threads=threads)
    reader = VhdStreamReader(chunks.on_block)

    def take_delta(piece) -> None:
        try:
            with storing(repo):  # (blocks are stored as the reader hands them on)
                reader.write(piece)
        except VhdStreamError as exc:  # the pool's error page, or a corrupt image: its task says which
            raise StreamCut(f"the delta of the system disk is not a VHD image ({exc})") from None
        except RepoError as exc:  # a block of the base backup that a partial VHD block needs, unreadable
            raise DeltaRefused(f"the base backup cannot take the delta: {exc}") from None
        lease_kept()

    snapshot_uuid = xapi.x.VDI.get_uuid(ctx["refs"]["snapshot"])
    try:
        delta_bytes = transfer.download(xapi, "/export_raw_vdi",
                                        {"vdi": snapshot_uuid, "format": "vhd", "base": p.base.uuid},
                                        (take_delta,), label=f"{label}: delta", run=ctx["run"],
                                        progress=lambda n: report.bytes(n), expect_tar_end=False)
        try:
            reader.finish()
        except VhdStreamError as exc:
            raise StreamCut(f"the delta of the system disk ended early ({exc})") from None
        with storing(repo):
            changes = chunks.finish()
    except XenAPI.Failure as exc:
        if not incremental.delta_refused(exc, ctx["pool"]):
            raise
        raise DeltaRefused(f"the pool refused a delta against the base ({' '.join(map(str, exc.details))})") from None
    finally:
        chunks.close()
    rows_of = {disk.export_id: synthetic.apply_changes(base_rows, changes)}
    zeros = _ZeroBlocks(repo)
    with storing(repo):
        for other in layout:
            if other.export_id != disk.export_id:
                rows_of[other.export_id] = synthetic.empty_disk_rows(other, zeros.block)
        _mark_reused(repo, rows_of, prev_index.backup_id)
    index = synthetic.build(bid, head, layout, rows_of, checksum_kind, synthetic_of=prev_index.backup_id, meta=meta)
    index.figures.update({
        "transferred_bytes": meta_bytes + delta_bytes, "stored_bytes": chunks.stored_bytes + zeros.stored_bytes,
        "new_blocks": chunks.new_blocks + zeros.new_blocks,
        "reused_blocks": chunks.reused_blocks + zeros.reused_blocks + _unchanged(rows_of, changes, disk),
        "changed_chunks": len(changes), "changed_bytes": chunks.changed_bytes})
    with storing(repo):
        repo_index.save_index(repo, index)
    report.bytes(delta_bytes, delta_bytes, force=True)
    return index


def _mark_reused(repo, rows_of: dict, base_backup: str) -> None:
    """Refresh the GC mark of every block the new index names without having stored it (GC keeps
    what a running backup marked: repo/gc.py); one gone (its backup pruned and collected
    meanwhile) means the base backup cannot be built on."""
    try:
        for block_id in {row[0] for rows in rows_of.values() for row in rows.values()}:
            repo.blocks.touch(block_id)
    except BlockMissing as exc:
        raise DeltaRefused(f"a block of backup {base_backup} is missing from the repository ({exc}); "
                           "run `tinabs repo check`") from None


def _unchanged(rows_of: dict, changes: dict, disk) -> int:
    """Blocks the night references without reading them: the system disk's unchanged chunks."""
    return sum(1 for k in rows_of[disk.export_id] if k not in changes)


class _ZeroBlocks:
    """The blocks of zeros an empty data disk's first and last chunk take (stored once, ever)."""

    def __init__(self, repo):
        self._repo, self._ids = repo, {}
        self.stored_bytes = self.new_blocks = self.reused_blocks = 0

    def block(self, length: int) -> str:
        if length not in self._ids:
            block_id, new = self._repo.blocks.put(bytes(length))
            self._ids[length] = block_id
            self.stored_bytes += new
            self.new_blocks += 1 if new else 0
            self.reused_blocks += 0 if new else 1
        else:
            self.reused_blocks += 1
        return self._ids[length]
