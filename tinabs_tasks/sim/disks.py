"""Virtual disk contents: deterministic, sparse, produced on demand.

A VDI's bytes are a :class:`Content` object.  Snapshots, clones and copies
share their source's object (copy-on-write: nothing is written until a guest
write or an import), so a pool of many GiB costs nothing until it is read.

* :class:`SeededContent` - a few non-zero regions chosen from a seed; the bytes
  of a region are slices of a handful of pre-generated random blocks, patched
  with (seed, chunk) at every MiB boundary so no two chunks are alike.
* :class:`OverlayContent` - another content plus written chunks (guest writes
  after a snapshot, injected through the control API).
* :class:`FileContent` - a sparse temporary file (disks written by import).
"""
from __future__ import annotations

import hashlib
import os
import random
import struct
import tempfile
import threading

CHUNK = 1 << 20
ZERO_CHUNK = bytes(CHUNK)
_BLOCKS = [random.Random(0x7A15 + i).randbytes(CHUNK) for i in range(8)]
_HEADER = 16


def _pattern(seed: int, chunk_no: int, start: int, end: int) -> bytes:
    """Bytes [start, end) (offsets inside chunk ``chunk_no``) of a non-zero region."""
    block = _BLOCKS[(seed * 7 + chunk_no) % len(_BLOCKS)]
    if start >= _HEADER:
        return block[start:end]
    header = struct.pack("<QQ", seed & (2**64 - 1), chunk_no)
    return (header + block[_HEADER:end])[start:end] if end > _HEADER else header[start:end]


class Content:
    size: int

    def chunk_count(self) -> int:
        return max(1, -(-self.size // CHUNK))

    def chunk_length(self, k: int) -> int:
        return min(CHUNK, self.size - k * CHUNK) if self.size else 0

    def chunk(self, k: int) -> bytes:
        raise NotImplementedError

    def chunk_is_zero(self, k: int) -> bool:
        data = self.chunk(k)
        return data == ZERO_CHUNK[: len(data)]

    def candidate_chunks(self) -> list[int] | None:
        """Sorted chunk numbers that may hold data (None: any may); cheap for sparse disks,
        so an export of a 64 GiB empty disk does not walk 65,536 chunks."""
        return None

    def data_chunks(self):
        """The chunk numbers that are not all zeros, in order."""
        candidates = self.candidate_chunks()
        ks = range(self.chunk_count()) if candidates is None else candidates
        return (k for k in ks if not self.chunk_is_zero(k))

    def nonzero_bytes(self) -> int:
        return sum(self.chunk_length(k) for k in self.data_chunks())

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for k in range(self.chunk_count()):
            digest.update(self.chunk(k))
        return digest.hexdigest()


class SeededContent(Content):
    def __init__(self, seed: int, size: int, density: float = 0.25, regions: int | None = None):
        self.seed = seed
        self.size = size
        self.regions = _choose_regions(random.Random(seed), size, density, regions)

    def chunk(self, k: int) -> bytes:
        base, length = k * CHUNK, self.chunk_length(k)
        pieces, cursor = [], base
        for start, end in self.regions:
            lo, hi = max(start, base), min(end, base + length)
            if lo >= hi:
                continue
            if lo > cursor:
                pieces.append(ZERO_CHUNK[: lo - cursor])
            pieces.append(_pattern(self.seed, k, lo - base, hi - base))
            cursor = hi
        if not pieces:
            return ZERO_CHUNK[:length]
        if cursor < base + length:
            pieces.append(ZERO_CHUNK[: base + length - cursor])
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def chunk_is_zero(self, k: int) -> bool:
        base, end = k * CHUNK, k * CHUNK + self.chunk_length(k)
        return not any(s < end and e > base for s, e in self.regions)

    def candidate_chunks(self) -> list[int]:
        chunks = set()
        for start, end in self.regions:
            chunks.update(range(start // CHUNK, (end - 1) // CHUNK + 1))
        return sorted(chunks)


def _choose_regions(rng: random.Random, size: int, density: float, count: int | None):
    """Sorted, disjoint [start, end) byte ranges covering about ``density`` of the disk.

    The first region starts at 0 (a boot sector is never empty); the others
    fall at 4 KiB-aligned offsets, so some chunks are only partly non-zero.
    """
    if size <= 0 or density <= 0:
        return []
    count = count or rng.randint(3, 6)
    slot = size // count
    target = max(4096, int(size * density / count))
    regions = []
    for i in range(count):
        lo = i * slot
        room = max(0, slot - target)
        start = lo if i == 0 else lo + (rng.randrange(0, room + 1) // 4096) * 4096
        end = min(size, start + target, lo + slot if i < count - 1 else size)
        if end > start:
            regions.append((start, end))
    return regions


class OverlayContent(Content):
    """``base`` with some chunks replaced (guest writes after a snapshot)."""

    def __init__(self, base: Content):
        self.base = base
        self.size = base.size
        self._chunks: dict[int, bytes] = {}

    def write(self, offset: int, data: bytes) -> None:
        while data:
            k, inner = divmod(offset, CHUNK)
            current = bytearray(self.chunk(k))
            piece = data[: len(current) - inner]
            current[inner: inner + len(piece)] = piece
            self._chunks[k] = bytes(current)
            offset += len(piece)
            data = data[len(piece):]

    def chunk(self, k: int) -> bytes:
        return self._chunks[k] if k in self._chunks else self.base.chunk(k)

    def chunk_is_zero(self, k: int) -> bool:
        if k in self._chunks:
            return super().chunk_is_zero(k)
        return self.base.chunk_is_zero(k)

    def candidate_chunks(self) -> list[int] | None:
        base = self.base.candidate_chunks()
        return None if base is None else sorted(set(base) | set(self._chunks))


class FileContent(Content):
    """A sparse file in the simulator's scratch directory; written by import."""

    def __init__(self, directory: str, size: int):
        self.size = size
        fd, self.path = tempfile.mkstemp(dir=directory, suffix=".vdi")
        os.ftruncate(fd, size)
        self._fd = fd
        self._lock = threading.Lock()

    def write(self, offset: int, data: bytes) -> None:
        os.pwrite(self._fd, data, offset)

    def chunk(self, k: int) -> bytes:
        return os.pread(self._fd, self.chunk_length(k), k * CHUNK)

    def chunk_is_zero(self, k: int) -> bool:
        # Holes cost nothing to find: only chunks with allocated extents are read.
        try:
            data_at = os.lseek(self._fd, k * CHUNK, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after this offset
            return True
        if data_at >= k * CHUNK + self.chunk_length(k):
            return True
        return super().chunk_is_zero(k)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                os.unlink(self.path)
                self._fd = -1
