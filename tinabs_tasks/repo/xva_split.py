"""Storing an XVA as it streams in: its chunks into the block store, the rest into the backup's index.

``XvaSplitter`` is a ``write(bytes)`` sink: feed it the body of ``/export`` in pieces of
any size, then call ``finish()`` for the backup's ``BackupIndex`` (not yet saved);
``split_xva`` runs the whole thing from a ``read(n)`` function and saves the index.
Memory stays bounded: the splitter holds at most the member being read (a chunk is
1 MiB; members larger than MAX_CHUNK are refused).

Each chunk is checked against the checksum member that follows it (XXH64 or SHA-1)
*before* it is stored: a mismatch means the pool sent corrupt data, and fails the
backup.  Anything that is not an uncompressed XVA as xapi writes it (FACTS.md §7) is
refused with ``XvaRejected``, whose message says what was wrong: ova.xml first, then
``Ref:N/NNNNNNNN`` chunks each followed by its checksum member, then two zero blocks.
A stream that ends before its end-of-archive blocks raises ``XvaTruncated`` at
``finish()``.  Either way no index is written, so the backup does not exist; the
blocks already stored are orphans that GC reclaims.

With ``threads``, chunks are hashed, compressed, encrypted and written by that many threads
while the stream is read (zstd, AES-GCM, SHA-256 and the fsync all release the GIL); a few
chunks per thread wait at most, so memory stays bounded, and each row gets its block id when
its chunk is stored.  ``close()`` stops them (always call it: a failed backup's pending chunks
are dropped).

Figures (in ``BackupIndex.figures``): ``stream_bytes`` (the size of the XVA),
``stream_sha256`` (of the XVA as the pool sent it), ``transferred_bytes`` (read from
the pool: the stream here), ``logical_bytes`` (disk data the XVA carries: the chunks'
bytes), ``stored_bytes`` (bytes the block store newly took; the index's own size is
``BackupIndex.sealed_bytes`` once saved), ``new_blocks``, ``reused_blocks``,
``chunks`` (chunk members with data), ``keepalives`` (empty keep-alive members).
"""
from __future__ import annotations

import collections
import datetime
import hashlib
import tarfile
from concurrent.futures import ThreadPoolExecutor

from tinabs_tasks.repo.errors import RepoError
from tinabs_tasks.repo.index import BackupIndex, DiskRun, check_backup_id, save_index
from tinabs_tasks.repo.xva_framing import BLOCK, HeaderCodec, b64, checksum_matches, checksum_text
from tinabs_tasks.storage import ova
from tinabs_tasks.storage.xva_headers import CHUNK_NAME, SUM_NAME, member_problem, tar_header

#: xapi's chunks are 1 MiB; a member bigger than this is not one, and is not held in memory
MAX_CHUNK = 16 << 20
MAX_OVA_XML = 16 << 20
MAX_CHECKSUM = 4096
#: what may follow the end-of-archive blocks and be kept (tar record padding is zeros, any size)
MAX_TRAILER = 64 << 10
READ_SIZE = 4 << 20
_ZERO_BLOCK = bytes(BLOCK)
_COMPRESSED = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}


class XvaRejected(RepoError):
    """The stream is not an XVA the repository can store (or the pool sent corrupt data)."""


class XvaChecksumMismatch(XvaRejected):
    """A chunk does not match its checksum member: the pool sent corrupt data."""


class XvaTruncated(XvaRejected):
    """The stream ended before the end of the archive."""


class XvaSplitter:
    """A ``write(bytes)`` sink that stores an XVA's chunks and builds its index."""

    def __init__(self, repo, backup_id: str, *, meta: dict | None = None, threads: int = 0):
        self._repo = repo
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="tinabs-store") if threads else None
        self._pending: collections.deque = collections.deque()  # (future, row) in stream order
        self._max_pending = 2 * threads
        self.index = BackupIndex(backup_id=check_backup_id(backup_id), meta=dict(meta or {}))
        self._codec = HeaderCodec()
        self._sha = hashlib.sha256()
        self.stream_bytes = 0
        self._counts = {"logical_bytes": 0, "stored_bytes": 0, "new_blocks": 0, "reused_blocks": 0,
                        "chunks": 0, "keepalives": 0}
        self._acc = bytearray()
        self._at = 0                   # stream offset of the next byte a step consumes
        self._need, self._step = BLOCK, self._on_header
        self._member: str | None = None
        self._member_start = 0
        self._framing: dict = {}       # exceptions of the member being read (ova.xml or a chunk pair)
        self._run: DiskRun | None = None
        self._chunk: tuple | None = None   # (name, number, data) read, waiting for its checksum member
        self._in_trailer = False
        self._failure: RepoError | None = None

    # -- input ------------------------------------------------------------------------
    def write(self, data) -> int:
        """Consume the next piece of the stream; returns its length."""
        if self._failure:
            raise self._failure
        view = memoryview(data).cast("B")
        self._sha.update(view)
        if self.stream_bytes == 0 and len(view) >= 2:
            self._refuse_compressed(bytes(view[:4]))
        self.stream_bytes += len(view)
        try:
            self._consume(view)
        except RepoError as exc:
            self._failure = exc
            raise
        return len(view)

    def _consume(self, view: memoryview) -> None:
        pos = 0
        while True:
            if self._in_trailer:
                self._trailer(view[pos:])
                return
            missing = self._need - len(self._acc)
            if missing > 0:
                take = min(missing, len(view) - pos)
                if take <= 0:
                    return
                self._acc += view[pos:pos + take]
                pos += take
                if take < missing:
                    return
            unit, self._acc = bytes(self._acc), bytearray()
            step = self._step
            step(unit)
            self._at += len(unit)

    def finish(self) -> BackupIndex:
        """The backup's index, once the whole stream was written; XvaTruncated if it was not."""
        if self._failure:
            raise self._failure
        try:
            self._settle(0)
        except RepoError as exc:
            self._failure = exc
            raise
        if not self._in_trailer:
            inside = f", inside member {self._member!r}" if self._member else ""
            self._failure = XvaTruncated(
                f"the XVA stream ended after {self.stream_bytes} bytes{inside}, before the end of the "
                "archive: the connection dropped or the export was cancelled; nothing was indexed "
                "(run `tinabs repo gc` to reclaim blocks already stored), retry the backup")
            raise self._failure
        index = self.index
        index.templates = list(self._codec.templates)
        index.created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        index.figures = {"stream_bytes": self.stream_bytes, "stream_sha256": self._sha.hexdigest(),
                         "transferred_bytes": self.stream_bytes, **self._counts}
        return index

    # -- members --------------------------------------------------------------------------
    def _reject(self, what: str, cls=XvaRejected):
        raise cls(f"backup {self.index.backup_id}: {what}; nothing was indexed")

    def _refuse_compressed(self, head: bytes) -> None:
        for magic, kind in _COMPRESSED.items():
            if head.startswith(magic):
                self._reject(f"the export is {kind}-compressed; the repository stores uncompressed XVAs: "
                             "export without use_compression")

    def _on_header(self, unit: bytes) -> None:
        if unit == _ZERO_BLOCK:
            self._need, self._step = BLOCK, self._on_second_end
            return
        try:
            info = tar_header(unit)
        except tarfile.HeaderError as exc:
            self._reject(f"bad tar header at byte {self._at} ({exc}): this is not an XVA, or it is corrupt")
        problem = member_problem(info)
        if problem:
            self._reject(problem)
        name, size = info.name, info.size
        self._member, self._member_start = name, self._at
        code = self._codec.encode(unit, name, size, int(info.mtime))
        first = not self.index.ova_framing
        if first or name == "ova.xml":
            if not first or name != "ova.xml":
                self._reject(f"ova.xml must be the first member and appear once (found {name!r} at byte {self._at})")
            if size > MAX_OVA_XML:
                self._reject(f"ova.xml is {size} bytes, too large to be an XVA header")
            self._framing = self.index.ova_framing
            self._framing["h"] = code
            self._need, self._step = size, self._on_ova_xml
            return
        chunk, checksum = CHUNK_NAME.match(name), SUM_NAME.match(name)
        if checksum:
            if self._chunk is None or self._chunk[0] != f"{checksum.group(1)}/{checksum.group(2)}":
                self._reject(f"checksum member {name!r} does not follow its chunk")
            if size > MAX_CHECKSUM:
                self._reject(f"checksum member {name!r} is {size} bytes, not a checksum")
            self._set_code("sh", code)
            self._need, self._step = size, self._on_checksum
            return
        if self._chunk is not None:
            self._reject(f"chunk {self._chunk[0]} has no checksum member after it (next: {name!r})")
        if not chunk:
            self._reject(f"unexpected member {name!r}: an XVA holds only ova.xml and Ref:N/NNNNNNNN chunks")
        if size > MAX_CHUNK:
            self._reject(f"chunk {name} is {size} bytes; XVA chunks are 1 MiB")
        self._start_chunk(chunk.group(1), int(chunk.group(2)), name)
        self._set_code("h", code)
        self._need, self._step = size, self._on_chunk

    def _set_code(self, key: str, code) -> None:
        if code != 0:
            self._framing[key] = code

    def _start_chunk(self, export_id: str, number: int, name: str) -> None:
        run = self._run
        if run is None or run.export_id != export_id:
            run = self._run = DiskRun(export_id, checksum_kind="")
            self.index.disks.append(run)
        elif number <= run.chunks[-1][0]:
            self._reject(f"chunk {name}: the numbers of {export_id} do not increase "
                         f"({run.chunks[-1][0]:08d} came before)")
        self._framing = {}
        self._chunk = (name, number, None)

    def _on_ova_xml(self, unit: bytes) -> None:
        try:
            ova.decode(unit)
        except ova.BadOva as exc:
            self._reject(str(exc))
        self.index.ova_xml = unit
        self._padding_then(len(unit), "p", self._on_header)

    def _on_chunk(self, unit: bytes) -> None:
        name, number, _ = self._chunk
        self._chunk = (name, number, unit)
        self._padding_then(len(unit), "p", self._on_header)

    def _on_checksum(self, text: bytes) -> None:
        name, number, data = self._chunk
        kind = self._member.rsplit(".", 1)[1]
        canonical = checksum_text(kind, data)
        if not checksum_matches(text, canonical):
            self._reject(f"chunk {name}: its data hashes to {canonical.decode()} but the pool's {kind} member "
                         f"says {text[:64]!r}: the pool sent corrupt data; retry the backup, and check the "
                         "pool's storage and network if it happens again", XvaChecksumMismatch)
        run = self._run
        if not run.checksum_kind:
            run.checksum_kind = kind
        elif kind != run.checksum_kind:
            self._framing["k"] = kind
        if text != canonical:
            self._framing["st"] = b64(text)
        row = [number, *self._store(data)]
        if self._pool is not None and data:
            self._pending.append((self._pool.submit(self._repo.blocks.put, data), row))
            self._settle(self._max_pending)
        if self._framing:
            row.append(self._framing)
        run.chunks.append(row)
        self._chunk = None
        self._padding_then(len(text), "sp", self._on_header)

    def _store(self, data: bytes) -> tuple[str | None, int]:
        """(block id, length) of a verified chunk, stored; an empty keep-alive member is no block."""
        counts = self._counts
        if not data:
            counts["keepalives"] += 1
            return None, 0
        counts["chunks"] += 1
        counts["logical_bytes"] += len(data)
        if self._pool is not None:
            return None, len(data)  # the id is set when a thread has stored it (_settle)
        block_id, new_bytes = self._repo.blocks.put(data)
        self._count(new_bytes)
        return block_id, len(data)

    def _count(self, new_bytes: int) -> None:
        self._counts["stored_bytes"] += new_bytes
        self._counts["new_blocks" if new_bytes else "reused_blocks"] += 1

    def _settle(self, keep: int) -> None:
        """Wait for stored chunks until at most ``keep`` are pending; their rows get their ids."""
        while len(self._pending) > keep:
            future, row = self._pending.popleft()
            row[1], new_bytes = future.result()
            self._count(new_bytes)

    def close(self) -> None:
        """Stop the storing threads (pending chunks of a failed backup are dropped)."""
        if self._pool is not None:
            for future, _row in self._pending:
                future.cancel()
            self._pool.shutdown(wait=True)
            self._pending.clear()

    def _padding_then(self, size: int, key: str, after) -> None:
        framing = self._framing

        def on_padding(pad: bytes) -> None:
            if pad.count(0) != len(pad):
                framing[key] = b64(pad)
            self._member = None
            self._need, self._step = BLOCK, after

        self._need, self._step = -size % BLOCK, on_padding

    # -- the end ------------------------------------------------------------------------
    def _on_second_end(self, unit: bytes) -> None:
        if unit != _ZERO_BLOCK:
            self._reject(f"a zero block at byte {self._at - BLOCK} is not followed by a second one: "
                         "the tar is corrupt there")
        if self._chunk is not None:
            self._reject(f"chunk {self._chunk[0]} has no checksum member after it")
        self._in_trailer = True

    def _trailer(self, piece: memoryview) -> None:
        index = self.index
        if not piece:
            return
        if index.trailer_raw is None and piece.tobytes().count(0) == len(piece):
            index.trailer_zeros += len(piece)
            return
        raw = index.trailer_raw if index.trailer_raw is not None else bytes(index.trailer_zeros)
        raw += piece.tobytes()
        if len(raw) > MAX_TRAILER:
            self._reject(f"more than {MAX_TRAILER} bytes follow the end of the archive: this is not an XVA")
        index.trailer_raw, index.trailer_zeros = raw, 0


def split_xva(repo, backup_id: str, read, *, meta: dict | None = None, read_size: int = READ_SIZE,
              threads: int = 0) -> BackupIndex:
    """Store the XVA ``read(n)`` gives (until it returns b"") as backup ``backup_id`` and save its
    index last; returns the index (``sealed_bytes`` set).  Raises XvaRejected (nothing indexed)."""
    splitter = XvaSplitter(repo, backup_id, meta=meta, threads=threads)
    try:
        while True:
            piece = read(read_size)
            if not piece:
                break
            splitter.write(piece)
        index = splitter.finish()
    finally:
        splitter.close()
    save_index(repo, index)
    return index
