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
    """A disk's bytes.  ``lineage`` names the history a content belongs to (an overlay shares
    its base's); ``parent`` is the content an overlay was written over; ``children`` counts the
    overlays written over this one (a content with children is never changed in place)."""

    size: int
    parent: "Content | None" = None

    @property
    def lineage(self) -> object:
        return self.__dict__.setdefault("_lineage", object())

    @lineage.setter
    def lineage(self, value: object) -> None:
        self.__dict__["_lineage"] = value

    @property
    def children(self) -> int:
        return self.__dict__.get("_children", 0)

    @children.setter
    def children(self, value: int) -> None:
        self.__dict__["_children"] = value

    def layer_chunks(self) -> set[int]:
        """The chunks this layer itself holds (all of them, for a content that is no overlay)."""
        candidates = self.candidate_chunks()
        return set(range(self.chunk_count()) if candidates is None else candidates)

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
        """The sha256 of every byte.  Zero chunks are hashed from memory, never read, but the
        hash still walks the whole disk: ``digest`` is the one that costs only the data."""
        digest = hashlib.sha256()
        data = set(self.data_chunks())
        for k in range(self.chunk_count()):
            digest.update(self.chunk(k) if k in data else ZERO_CHUNK[: self.chunk_length(k)])
        return digest.hexdigest()

    def digest(self) -> str:
        """A hash of the disk that reads only its data: sha256 over the size, then each non-zero
        chunk's number and sha256.  Equal disks give equal digests, whatever their history."""
        digest = hashlib.sha256(b"tinabs-sim-digest-1 %d\n" % self.size)
        for k in self.data_chunks():
            digest.update(struct.pack(">Q", k) + hashlib.sha256(self.chunk(k)).digest())
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
    """``base`` with some chunks replaced (guest writes after a snapshot, imports into a disk).

    Whole chunks written from a seed are kept as their seed and made again on each read
    (``POST /sim/drift`` on a 64 GiB fleet costs bytes, not GiB); other written chunks go to
    a sparse scratch file, never to memory.  ``base`` is never changed: a snapshot that
    shares it keeps its bytes.
    """

    def __init__(self, base: Content, scratch_dir: str):
        self.base = base
        self.size = base.size
        self.lineage = base.lineage
        base.children += 1
        self._seeded: dict[int, int] = {}     # chunk -> seed of its whole-chunk pattern
        self._literal: set[int] = set()       # chunks whose bytes are in the scratch file
        self._scratch_dir = scratch_dir
        self._file: FileContent | None = None
        self._lock = threading.Lock()

    @property
    def parent(self) -> Content:
        return self.base

    def layer_chunks(self) -> set[int]:
        return set(self._seeded) | self._literal

    def write(self, offset: int, data: bytes) -> None:
        while data:
            k, inner = divmod(offset, CHUNK)
            piece = data[: self.chunk_length(k) - inner]
            if inner == 0 and len(piece) == self.chunk_length(k):
                self._store(k, piece)
            else:
                current = bytearray(self.chunk(k))
                current[inner: inner + len(piece)] = piece
                self._store(k, bytes(current))
            offset += len(piece)
            data = data[len(piece):]

    def write_seeded(self, offset: int, length: int, seed: int) -> None:
        """Bytes [offset, offset+length) become the deterministic pattern of ``seed`` (see ``seeded_bytes``)."""
        end = offset + length
        while offset < end:
            k, inner = divmod(offset, CHUNK)
            stop = min(end, k * CHUNK + self.chunk_length(k))
            if inner == 0 and stop == k * CHUNK + self.chunk_length(k):
                with self._lock:
                    self._literal.discard(k)
                    self._seeded[k] = seed
            else:
                self.write(offset, seeded_bytes(seed, offset, stop - offset))
            offset = stop

    def _store(self, k: int, chunk: bytes) -> None:
        with self._lock:
            if self._file is None:
                self._file = FileContent(self._scratch_dir, self.size)
            self._file.write(k * CHUNK, chunk)
            self._seeded.pop(k, None)
            self._literal.add(k)

    def chunk(self, k: int) -> bytes:
        seed = self._seeded.get(k)
        if seed is not None:
            return _pattern(seed, k, 0, self.chunk_length(k))
        if k in self._literal:
            return self._file.chunk(k)
        return self.base.chunk(k)

    def chunk_is_zero(self, k: int) -> bool:
        if k in self._seeded:
            return False
        if k in self._literal:
            return super().chunk_is_zero(k)
        return self.base.chunk_is_zero(k)

    def candidate_chunks(self) -> list[int] | None:
        base = self.base.candidate_chunks()
        return None if base is None else sorted(set(base) | self.layer_chunks())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class GrownContent(Content):
    """A disk grown by ``VDI.resize``: its bytes, then zeros (a VHD's new blocks are unallocated)."""

    def __init__(self, base: Content, size: int):
        self.base, self.size = base, size
        self.lineage = base.lineage
        base.children += 1

    @property
    def parent(self) -> Content:
        return self.base

    def layer_chunks(self) -> set[int]:
        return set()

    def chunk(self, k: int) -> bytes:
        length = self.chunk_length(k)
        data = self.base.chunk(k) if k < self.base.chunk_count() and self.base.size else b""
        return data + ZERO_CHUNK[: length - len(data)]

    def chunk_is_zero(self, k: int) -> bool:
        return k >= self.base.chunk_count() or not self.base.size or self.base.chunk_is_zero(k)

    def candidate_chunks(self) -> list[int] | None:
        return self.base.candidate_chunks()


def seeded_bytes(seed: int, offset: int, length: int) -> bytes:
    """The bytes a seeded write puts at [offset, offset+length): a function of (seed, position)
    only, so two writes with one seed agree wherever they overlap."""
    out, end = [], offset + length
    while offset < end:
        k, inner = divmod(offset, CHUNK)
        stop = min(end, (k + 1) * CHUNK)
        out.append(_pattern(seed, k, inner, inner + stop - offset))
        offset = stop
    return b"".join(out)


class UnrelatedContent(ValueError):
    """Two disks that share no history: no delta between them can be computed."""


def history(content: Content) -> list[Content]:
    """``content`` and the contents it was written over, newest first."""
    chain = [content]
    while chain[-1].parent is not None:
        chain.append(chain[-1].parent)
    return chain


def differing_chunks(new: Content, old: Content) -> list[int]:
    """Sorted chunk numbers where ``new`` may differ from ``old``, found from their histories
    (the layers written since their newest common ancestor), without reading any data.

    Raises UnrelatedContent when they have no common ancestor.  A chunk listed may hold the
    same bytes in both (a write of equal data): like a VHD's allocated block, it is listed.
    """
    older = history(old)
    ids = {id(c): i for i, c in enumerate(older)}
    changed: set[int] = set()
    for layer in history(new):
        if id(layer) in ids:
            for above in older[: ids[id(layer)]]:
                changed |= above.layer_chunks()
            if new.size != old.size:  # a resize: every chunk past the smaller end differs
                small, big = sorted((new.chunk_count(), old.chunk_count()))
                changed |= set(range(small, big)) & set(range(new.chunk_count()))
            return sorted(k for k in changed if k < new.chunk_count())
        changed |= layer.layer_chunks()
    raise UnrelatedContent("the disks share no history")


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
