"""Giving back a backup's ``.xva`` byte for byte, as a stream, from its index and the block store.

``rebuild_xva`` yields the pieces of the stream (a few chunks held at a time: those its
read-ahead threads have read, READ_AHEAD_THREADS + 1 at most, and the one being sent), so a
restore sends it straight to a pool's ``/import`` and ``write_xva_file`` writes it for
``tinabs repo export-xva``.  Every block is checked as it is read (the block store
authenticates it and re-hashes it against its id) and its length against the index; the
sha256 of everything yielded is compared with the index's ``stream_sha256`` at the end
(a synthetic full, which no pool ever streamed, has none: its size is compared).
A missing or damaged block raises ``RepoCorrupt`` (``BlockMissing`` when it is absent)
naming the block, the chunk and the backup.  Because the stream is checked as it goes, a
consumer sees the error after the bytes before it: ``write_xva_file`` therefore writes a
temp file and renames it only once the whole stream checked out.
"""
from __future__ import annotations

import collections
import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from tinabs_tasks.repo.atomic import fsync_dir, temp_name
from tinabs_tasks.repo.errors import BlockMissing, RepoCorrupt, RepoError
from tinabs_tasks.repo.index import BackupIndex, load_index
from tinabs_tasks.repo.xva_framing import BLOCK, HeaderCodec, checksum_text, unb64

#: small members (headers, checksums, padding) are gathered into pieces of about this size
PIECE = 256 << 10
#: threads that read blocks ahead of the stream (read, authenticate, decompress, re-hash: all but
#: the Python around them release the GIL), so disk reads and both cores work while a piece is sent
READ_AHEAD_THREADS = 2
_END_OF_ARCHIVE = bytes(2 * BLOCK)


class _Pieces:
    """Gathers small byte strings into bigger pieces; hashes everything that goes out."""

    def __init__(self):
        self.sha = hashlib.sha256()
        self.total = 0
        self._small: list[bytes] = []
        self._small_size = 0

    def add(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        self.sha.update(data)
        self.total += len(data)
        if len(data) >= PIECE:
            yield from self.flush()
            yield data
            return
        self._small.append(data)
        self._small_size += len(data)
        if self._small_size >= PIECE:
            yield from self.flush()

    def flush(self) -> Iterator[bytes]:
        if self._small:
            piece = b"".join(self._small)
            self._small, self._small_size = [], 0
            yield piece


def _padding(framing: dict, key: str, size: int) -> bytes:
    return unb64(framing[key]) if key in framing else bytes(-size % BLOCK)


def rebuild_xva(repo, index: BackupIndex, *, threads: int = READ_AHEAD_THREADS) -> Iterator[bytes]:
    """The backup's original XVA stream, in pieces; RepoCorrupt when a block or the index is bad.
    ``threads`` read blocks ahead (in stream order, a few per thread at most; 0: none)."""
    backup_id = index.backup_id
    codec = HeaderCodec(index.templates)
    out = _Pieces()
    ahead = _chunks(repo, index, threads)
    try:
        yield from out.add(codec.decode(index.ova_framing["h"], "ova.xml", len(index.ova_xml)))
        yield from out.add(index.ova_xml)
        yield from out.add(_padding(index.ova_framing, "p", len(index.ova_xml)))
        for run, row, data in ahead:
            number, length = row[0], row[2]
            framing = row[3] if len(row) > 3 else {}
            name = f"{run.export_id}/{number:08d}"
            kind = framing.get("k", run.checksum_kind)
            text = unb64(framing["st"]) if "st" in framing else checksum_text(kind, data)
            yield from out.add(codec.decode(framing.get("h", 0), name, length))
            yield from out.add(data)
            yield from out.add(_padding(framing, "p", length))
            yield from out.add(codec.decode(framing.get("sh", 0), f"{name}.{kind}", len(text)))
            yield from out.add(text)
            yield from out.add(_padding(framing, "sp", len(text)))
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise RepoCorrupt(f"the index of backup {backup_id} is damaged ({exc.__class__.__name__}: {exc}); "
                          "it cannot be rebuilt") from None
    finally:
        ahead.close()
    yield from out.add(_END_OF_ARCHIVE)
    trailer = index.trailer_raw if index.trailer_raw is not None else bytes(index.trailer_zeros)
    yield from out.add(trailer)
    yield from out.flush()
    want = index.figures.get("stream_sha256")
    # a synthetic full (repo/synthetic.py) was never one stream: no sha256 to compare, its
    # blocks were each checked against their ids as they were read (blocks.get)
    unhashed = want is None and bool(index.figures.get("synthetic_of"))
    if (not unhashed and out.sha.hexdigest() != want) or out.total != index.figures.get("stream_bytes"):
        raise RepoCorrupt(f"the rebuilt XVA of backup {backup_id} ({out.total} bytes, sha256 "
                          f"{out.sha.hexdigest()}) is not the one backed up ({index.figures.get('stream_bytes')} "
                          f"bytes, sha256 {want}); the index is damaged")


def _chunks(repo, index: BackupIndex, threads: int) -> Iterator[tuple]:
    """(disk run, row, the chunk's data) of every chunk row in stream order, the data read by
    ``threads`` threads ahead of the consumer; a block's error is raised at its turn."""
    def fetch(run, row) -> bytes:
        return _block(repo, index.backup_id, f"{run.export_id}/{row[0]:08d}", row[1], row[2])

    rows = ((run, row) for run in index.disks for row in run.chunks)
    if threads <= 0:
        for run, row in rows:
            yield run, row, fetch(run, row)
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="tinabs-rebuild")
    pending: collections.deque = collections.deque()
    try:
        for run, row in rows:
            pending.append((run, row, pool.submit(fetch, run, row)))
            if len(pending) > threads:
                run, row, future = pending.popleft()
                yield run, row, future.result()
        while pending:
            run, row, future = pending.popleft()
            yield run, row, future.result()
    finally:
        for _run, _row, future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def _block(repo, backup_id: str, name: str, block_id: str | None, length: int) -> bytes:
    if block_id is None:
        if length:
            raise ValueError(f"chunk {name} has {length} bytes and no block")
        return b""
    try:
        data = repo.blocks.get(block_id)
    except BlockMissing as exc:
        raise BlockMissing(block_id, f"backup {backup_id} cannot be rebuilt: block {block_id} (chunk {name}) "
                                     "is missing from the repository; run `tinabs repo check` to see which "
                                     "backups it affects") from None
    except RepoCorrupt as exc:
        raise RepoCorrupt(f"backup {backup_id} cannot be rebuilt: chunk {name}: {exc}") from None
    if len(data) != length:
        raise RepoCorrupt(f"backup {backup_id} cannot be rebuilt: block {block_id} (chunk {name}) holds "
                          f"{len(data)} bytes, the index says {length}")
    return data


def write_xva_file(repo, backup_id: str, path: str) -> dict:
    """Write backup ``backup_id`` as a standard ``.xva`` at ``path``, whole or not at all (temp
    name beside it, fsync, rename); returns the index's figures (``stream_sha256`` is checked)."""
    index = load_index(repo, backup_id)
    directory = os.path.dirname(os.path.abspath(path))
    temp = os.path.join(directory, temp_name(os.path.basename(path)))
    try:
        # 0600: the file is the VM's disk data in clear, whatever the repository's encryption
        with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
            for piece in rebuild_xva(repo, index):
                fh.write(piece)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(temp, path)
        fsync_dir(directory)
    except BaseException as exc:
        try:
            os.unlink(temp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, RepoError):
            raise RepoError(f"cannot write {path}: {exc.strerror or exc}; choose a writable place "
                            "with room for the XVA") from None
        raise
    return dict(index.figures)
