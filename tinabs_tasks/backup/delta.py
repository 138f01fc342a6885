"""The changed chunks of a system disk, from a VHD delta against its base, stored as they arrive.

``DeltaChunks.on_block`` is the sink of ``xapi.vhd_stream.VhdStreamReader``: each 2 MiB VHD
block the pool sends is cut into the disk's 1 MiB chunks (the repository's unit, as in an
XVA).  A chunk whose sectors are all in the block is taken whole; one with none is unchanged;
one with some (vhd-tool sends whole blocks, but the format allows less) is the base backup's
chunk with the present sectors laid over it (read back from the repository).  A changed chunk
that is now all zeros becomes a hole, as an export skips it (but the first and the last chunk,
which an export always sends).  Other chunks are stored by ``threads`` threads while the stream
is read (hashing, compressing, encrypting and the fsync release the GIL), a few pending per
thread at most; ``finish()`` returns ``{chunk: (block id, length) or None}``.
"""
from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor

from tinabs_tasks.repo.synthetic import CHUNK, Disk
from tinabs_tasks.xapi.vhd_stream import VhdStreamError, sectors_present

SECTOR = 512
_ZEROS = bytes(CHUNK)


class DeltaChunks:
    def __init__(self, repo, disk: Disk, base_rows: dict[int, tuple[str, int]], *, threads: int = 2):
        self._repo, self._disk, self._base = repo, disk, base_rows
        self._last = disk.chunk_count - 1
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="tinabs-delta")
        self._pending: collections.deque = collections.deque()
        self._max_pending = 2 * max(1, threads)
        self.changes: dict[int, tuple[str, int] | None] = {}
        self.changed_bytes = 0
        self.stored_bytes = self.new_blocks = self.reused_blocks = 0

    def on_block(self, block_no: int, bitmap: bytes, data) -> None:
        size = len(data)
        if size % CHUNK:
            raise VhdStreamError(f"VHD blocks of {size} bytes are not whole 1 MiB chunks")
        per = size // CHUNK
        view = memoryview(data)
        for part in range(per):
            k = block_no * per + part
            if k > self._last:
                break
            length = self._disk.chunk_length(k)
            first = part * (CHUNK // SECTOR)
            present = sectors_present(bitmap, first, -(-length // SECTOR))
            if present == "none":
                continue
            chunk = bytes(view[part * CHUNK: part * CHUNK + length])
            if present == "some":
                chunk = self._overlay(k, chunk, bitmap, first, length)
            self._change(k, chunk)

    def _change(self, k: int, chunk: bytes) -> None:
        self.changed_bytes += len(chunk)
        if k not in (0, self._last) and chunk == _ZEROS[:len(chunk)]:
            self.changes[k] = None
            return
        self._pending.append((k, len(chunk), self._pool.submit(self._repo.blocks.put, chunk)))
        self._settle(self._max_pending)

    def _overlay(self, k: int, chunk: bytes, bitmap: bytes, first: int, length: int) -> bytes:
        """The base's chunk ``k`` with the sectors present in the delta replaced."""
        row = self._base.get(k)
        out = bytearray(self._repo.blocks.get(row[0]) if row else bytes(length))
        out[length:] = b""
        out += bytes(length - len(out))
        for s in range(-(-length // SECTOR)):
            if sectors_present(bitmap, first + s, 1) == "all":
                out[s * SECTOR: (s + 1) * SECTOR] = chunk[s * SECTOR: (s + 1) * SECTOR]
        return bytes(out[:length])

    def _settle(self, keep: int) -> None:
        while len(self._pending) > keep:
            k, length, future = self._pending.popleft()
            block_id, new_bytes = future.result()
            self.changes[k] = (block_id, length)
            self.stored_bytes += new_bytes
            if new_bytes:
                self.new_blocks += 1
            else:
                self.reused_blocks += 1

    def finish(self) -> dict[int, tuple[str, int] | None]:
        self._settle(0)
        return self.changes

    def close(self) -> None:
        """Stop the storing threads (a failed night's pending chunks are dropped)."""
        for _k, _length, future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)
        self._pending.clear()
