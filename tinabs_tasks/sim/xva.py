"""The XVA stream: writing it (/export) and reading it (/import).

Layout (FACTS.md §7): ``ova.xml`` first, then per disk, in the string order of
their ``Ref:N`` ids, 1 MiB chunks ``Ref:N/NNNNNNNN`` each followed by
``Ref:N/NNNNNNNN.xxhash`` (XXH64, 16 upper-case hex digits); all-zero chunks
are skipped except the first and the last; then the two zero blocks of a tar
end.  When nothing was written for ``keepalive_s`` an empty member is sent
without advancing the disk offset, exactly like xapi, so member numbers are
*not* offsets and a reader must reconstruct disks sequentially.
"""
from __future__ import annotations

import hashlib
import tarfile
import time

import xxhash

from tinabs_tasks.sim.disks import Content

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)


def member_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


def checksum_text(data: bytes) -> bytes:
    return b"%016X" % xxhash.xxh64_intdigest(data)


def member(name: str, data: bytes) -> list[bytes]:
    return [member_header(name, len(data)), data, padding(len(data))]


def disk_members(export_id: str, content: Content, keepalive_s: float, clock=time.monotonic):
    """Yield lists of byte strings (one chunk + its checksum member each)."""
    last = content.chunk_count() - 1
    shift = 0
    quiet_since = clock()
    for k, zero in _chunk_walk(content, last, keepalive_s):
        if zero:
            if clock() - quiet_since > keepalive_s:
                yield _chunk(export_id, k + shift, b"")
                shift += 1
                quiet_since = clock()
            continue
        yield _chunk(export_id, k + shift, content.chunk(k))
        quiet_since = clock()


def _chunk_walk(content: Content, last: int, keepalive_s: float):
    """(chunk, is skipped zero) pairs.  Chunk-by-chunk when keep-alives may fall between any
    two chunks; otherwise only the chunks with data plus the first and last are visited, and
    each skipped stretch is one step (it takes no time, so at most one keep-alive fits)."""
    candidates = content.candidate_chunks()
    if keepalive_s <= 0 or candidates is None:
        for k in range(last + 1):
            yield k, k not in (0, last) and content.chunk_is_zero(k)
        return
    wanted = sorted(set(candidates) | {0, last})
    previous = -1
    for k in wanted:
        if k - previous > 1:
            yield previous + 1, True
        if k in (0, last) or not content.chunk_is_zero(k):
            yield k, False
        else:
            yield k, True
        previous = k


def _chunk(export_id: str, number: int, data: bytes) -> list[bytes]:
    name = f"{export_id}/{number:08d}"
    return member(name, data) + member(name + ".xxhash", checksum_text(data))


class TarFormatError(ValueError):
    pass


def read_exact(read, n: int) -> bytes:
    """Exactly ``n`` bytes from a ``read(k)`` stream, asking for 1 MiB at most at a time (a skip
    over a large gap stays bounded); EOFError when the stream ends first."""
    parts, want = [], n
    while want:
        piece = read(min(want, 1 << 20))
        if not piece:
            raise EOFError
        parts.append(piece)
        want -= len(piece)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class TarReader:
    """A sequential tar reader over a ``read(n)`` stream (no seeking, bounded memory)."""

    def __init__(self, read):
        self._read = read
        self.bytes_read = 0

    def _exact(self, n: int) -> bytes:
        data = read_exact(self._read, n)
        self.bytes_read += n
        return data

    def next(self) -> tuple[str, int] | None:
        """(name, size) of the next member; None at the end-of-archive blocks."""
        block = self._exact(BLOCK)
        if block == bytes(BLOCK):
            return None
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise TarFormatError(f"bad tar header: {exc}") from None
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise TarFormatError(f"unexpected tar member type {info.type!r} for {info.name!r}")
        return info.name, info.size

    def data(self, size: int) -> bytes:
        data = self._exact(size)
        self._exact(-size % BLOCK)
        return data


def verify_checksum(data: bytes, name: str, text: bytes) -> bool:
    if name.endswith(".xxhash"):
        return text.strip().upper() == checksum_text(data)
    return text.strip().lower() == hashlib.sha1(data).hexdigest().encode()

