"""Read a dynamic or differencing VHD as it streams from ``/export_raw_vdi?format=vhd``.

An incremental backup reads ``/export_raw_vdi?format=vhd&base=<older snapshot>``: xapi's
vhd-tool streams a VHD holding only the blocks that differ from the base.  The image is
parsed *as it arrives* (``VhdStreamReader.write`` is a download's sink: pieces of any size,
in buffers the downloader reuses), never spooled to a file, holding about one block in memory:

- the footer copy (512 bytes, cookie ``conectix``) at offset 0, then the dynamic header
  (1024 bytes, cookie ``cxsparse``) at the footer's data offset, then the BAT (one big-endian
  sector number per block, 0xFFFFFFFF for none, padded to a sector) at the header's table
  offset; each with its checksum verified;
- each allocated block at its BAT sector: its sector bitmap (one bit per sector, MSB first,
  padded to a whole sector) then its data, handed to ``on_block`` in physical order;
- the footer again, right after the last block, equal to the copy at 0.

Gaps between structures (the empty parent-locator sector vhd-tool sends at 1536) are skipped.
A stream cannot seek back: a BAT entry before the end of the BAT, or blocks that overlap, are
refused when the BAT arrives, before any block is delivered.  A fixed VHD (no footer copy, no
BAT) is refused.  Every error is a VhdStreamError naming what was wrong and at which offset.

Blocks delivered before ``finish`` are provisional: only a ``finish`` that returns says the
image was whole (the pool may cut a transfer, or append its error page, at any point).

Each block's data is copied once, from the caller's piece into a ``BytesIO`` whose buffer
becomes the ``bytes`` given to ``on_block`` (CPython's ``getvalue`` hands its buffer over
without a copy); there is no per-byte Python loop.
"""
from __future__ import annotations

import io
import struct
import sys
from array import array
from typing import Callable

SECTOR = 512
COOKIE, SPARSE = b"conectix", b"cxsparse"
VERSION = 0x00010000
FIXED, DYNAMIC, DIFFERENCING = 2, 3, 4
UNUSED = 0xFFFFFFFF
NO_OFFSET = 0xFFFFFFFFFFFFFFFF
#: the VHD format's largest disk (ocaml-vhd's max_disk_size, xapi's max_vhd_size)
MAX_DISK = 2040 << 30
#: one block is held in memory: refuse headers asking for absurd ones (vhd-tool's are 2 MiB)
MAX_BLOCK = 256 << 20
#: the BAT is held in memory (4 bytes an entry): 2040 GiB in 2 MiB blocks is about 1M entries
MAX_ENTRIES = 1 << 22
_FOOTER = struct.Struct(">8sIIQI4sIIQQHBBII16sB")
_HEADER = struct.Struct(">8sQQIIII16sII")
_FOOTER_SUM, _HEADER_SUM = 64, 36       # offsets of the checksum fields


class VhdStreamError(ValueError):
    """The stream is not a VHD image vhd-tool sends (message says what and where)."""


def _checksum(raw: bytes, at: int) -> int:
    """One's complement of the byte sum, the checksum field (4 bytes at ``at``) counted as zeros."""
    return ~(sum(raw) - sum(raw[at:at + 4])) & 0xFFFFFFFF


def sectors_present(bitmap: bytes, first_sector: int, count: int) -> str:
    """"all", "none" or "some": how many of sectors [first_sector, first_sector + count) of a
    block its sector bitmap (bit set = the image holds that sector, MSB first) says are present."""
    if count <= 0 or first_sector < 0 or first_sector + count > len(bitmap) * 8:
        raise ValueError(f"sectors {first_sector}+{count} are outside a bitmap of {len(bitmap) * 8} sectors")
    if count == 1:                                  # a caller walking a partial chunk sector by sector
        return "all" if bitmap[first_sector >> 3] >> (7 - (first_sector & 7)) & 1 else "none"
    if first_sector % 8 == 0 and count % 8 == 0:   # whole bytes, e.g. the halves of a 2 MiB block
        part = bitmap[first_sector // 8:(first_sector + count) // 8]
        if part.count(0xFF) == len(part):
            return "all"
        return "none" if part.count(0) == len(part) else "some"
    total = len(bitmap) * 8
    bits = int.from_bytes(bitmap, "big") >> (total - first_sector - count) & ((1 << count) - 1)
    return "none" if bits == 0 else "all" if bits == (1 << count) - 1 else "some"


class _Part:
    """One structure the stream holds next: ``length`` bytes from offset ``start``."""
    __slots__ = ("what", "start", "length", "done")

    def __init__(self, what: str, start: int, length: int, done: Callable[[bytes], None]):
        self.what, self.start, self.length, self.done = what, start, length, done


class VhdStreamReader:
    """A push parser: ``write`` the image's bytes as they come, ``finish`` when the stream ends;
    ``on_block(block_no, bitmap, data)`` is called once per allocated block, in physical order,
    with its bitmap (block_size / 512 bits, unpadded) and its block_size bytes of data.

    ``disk_type``, ``virtual_size``, ``block_size`` and ``parent_uid`` are None until the
    header has been read (they are set before the first ``on_block``)."""

    def __init__(self, on_block: Callable[[int, bytes, bytes], None]):
        self._on_block = on_block
        self.disk_type: int | None = None
        self.virtual_size: int | None = None
        self.block_size: int | None = None
        self.parent_uid: bytes | None = None
        self.bytes_read = 0
        self.blocks = 0
        self._footer = self._trailer = b""
        self._table_offset = 0
        self._bat: array | None = None
        self._order = array("I")
        self._next = 0                  # index in _order of the next block
        self._bitmap = b""
        self._error: VhdStreamError | None = None
        self._part: _Part | None = None
        self._buf = io.BytesIO()
        self._have = 0
        self._expect(_Part("the footer copy", 0, SECTOR, self._got_footer))

    # -- feeding ----------------------------------------------------------------------------
    def write(self, data) -> int:
        """Take the next piece of the stream (any bytes-like, any size); returns its length.
        The piece is not kept: the caller may reuse its buffer as soon as this returns."""
        if self._error:
            raise self._error
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        try:
            self._feed(view)
        except VhdStreamError as exc:
            self._error = exc
            raise
        return len(view)

    def finish(self) -> None:
        """The stream ended: raises VhdStreamError unless the whole image, trailing footer
        included, arrived and that footer equals the copy at offset 0."""
        if self._error:
            raise self._error
        part = self._part         # (a structure of no bytes, the BAT of an empty disk, is done by write)
        if part is not None:
            where = f"before {part.what} at offset {part.start}" if self.bytes_read < part.start else \
                f"inside {part.what} (bytes {part.start}..{part.start + part.length})"
            self._error = VhdStreamError(f"the VHD stream ended early: at byte {self.bytes_read}, {where}")
            raise self._error
        if self._trailer != self._footer:
            self._error = VhdStreamError(
                f"the VHD footer at offset {self.bytes_read - SECTOR} (the end of the stream) differs from "
                "its copy at offset 0: the image is damaged")
            raise self._error

    def _feed(self, view: memoryview) -> None:
        i, n = 0, len(view)
        while (part := self._part) is not None:
            if self.bytes_read < part.start:            # a gap: skip it
                if i == n:
                    return
                step = min(part.start - self.bytes_read, n - i)
                i += step
                self.bytes_read += step
                continue
            if self._have < part.length:
                if i == n:
                    return
                step = min(part.length - self._have, n - i)
                self._buf.write(view[i:i + step])
                self._have += step
                i += step
                self.bytes_read += step
                continue
            raw = self._buf.getvalue()       # hands over the buffer, no copy
            self._buf, self._have, self._part = io.BytesIO(), 0, None
            part.done(raw)
        if i < n:
            raise VhdStreamError(f"{n - i} more bytes after the VHD's trailing footer, which ended at offset "
                                 f"{self.bytes_read}: the image is followed by something else")

    def _expect(self, part: _Part) -> None:
        if part.start < self.bytes_read:
            raise VhdStreamError(f"{part.what} is at offset {part.start}, before offset {self.bytes_read} "
                                 "where the stream already is: a stream cannot go back")
        self._part = part

    # -- structures -------------------------------------------------------------------------
    def _got_footer(self, raw: bytes) -> None:
        (cookie, _features, version, data_offset, _stamp, _app, _app_version, _host_os, _original, current,
         _cyl, _heads, _spt, disk_type, checksum, _uid, _saved) = _FOOTER.unpack_from(raw)
        if cookie != COOKIE:
            raise VhdStreamError(f"not a VHD stream: expected the footer cookie {COOKIE!r} at offset 0, "
                                 f"got {bytes(raw[:8])!r}")
        if checksum != _checksum(raw, _FOOTER_SUM):
            raise VhdStreamError(f"the VHD footer at offset 0 has checksum {checksum:08x}, its bytes sum to "
                                 f"{_checksum(raw, _FOOTER_SUM):08x}: the footer is damaged")
        if version != VERSION:
            raise VhdStreamError(f"the VHD footer at offset 0 has format version {version:08x}, not {VERSION:08x}")
        if disk_type == FIXED:
            raise VhdStreamError("the VHD at offset 0 is a fixed disk (type 2): only dynamic and differencing "
                                 "images (types 3 and 4) can be streamed")
        if disk_type not in (DYNAMIC, DIFFERENCING):
            raise VhdStreamError(f"the VHD footer at offset 0 has unknown disk type {disk_type}")
        if current > MAX_DISK:
            raise VhdStreamError(f"the VHD footer at offset 0 says the disk is {current} bytes, over the "
                                 f"format's {MAX_DISK}")
        if data_offset < SECTOR:
            raise VhdStreamError(f"the VHD footer at offset 0 puts the dynamic header at offset {data_offset}, "
                                 f"inside the footer")
        self._footer, self.disk_type, self.virtual_size = bytes(raw), disk_type, current
        self._expect(_Part("the dynamic header", data_offset, 1024, self._got_header))

    def _got_header(self, raw: bytes) -> None:
        at = self.bytes_read - 1024
        cookie, data_offset, table_offset, version, entries, block_size, checksum, parent_uid, _stamp, _ = \
            _HEADER.unpack_from(raw)
        if cookie != SPARSE:
            raise VhdStreamError(f"expected the dynamic header cookie {SPARSE!r} at offset {at}, got {cookie!r}")
        if checksum != _checksum(raw, _HEADER_SUM):
            raise VhdStreamError(f"the VHD dynamic header at offset {at} has checksum {checksum:08x}, its bytes "
                                 f"sum to {_checksum(raw, _HEADER_SUM):08x}: the header is damaged")
        if data_offset != NO_OFFSET or version != VERSION:
            raise VhdStreamError(f"the VHD dynamic header at offset {at} has data offset {data_offset:x} and "
                                 f"version {version:08x}, not {NO_OFFSET:x} and {VERSION:08x}")
        if block_size < SECTOR or block_size & (block_size - 1) or block_size > MAX_BLOCK:
            raise VhdStreamError(f"the VHD dynamic header at offset {at} has block size {block_size}: not a "
                                 f"power of two from {SECTOR} to {MAX_BLOCK}")
        if entries > -(-self.virtual_size // block_size):
            raise VhdStreamError(f"the VHD dynamic header at offset {at} has {entries} BAT entries, more than "
                                 f"a {self.virtual_size}-byte disk in {block_size}-byte blocks needs")
        if entries > MAX_ENTRIES:
            raise VhdStreamError(f"the VHD dynamic header at offset {at} has {entries} BAT entries, over the "
                                 f"{MAX_ENTRIES} this reader holds: use bigger blocks")
        self.block_size, self.parent_uid = block_size, parent_uid
        self._table_offset = table_offset
        self._expect(_Part("the BAT", table_offset, -(-entries * 4 // SECTOR) * SECTOR,
                           lambda table: self._got_bat(table, entries)))

    def _got_bat(self, table: bytes, entries: int) -> None:
        bat = array("I", table[:entries * 4])
        if sys.byteorder == "little":
            bat.byteswap()                                  # big-endian on the wire
        allocated = array("I", (b for b, sector in enumerate(bat) if sector != UNUSED))
        if any(bat[a] > bat[b] for a, b in zip(allocated, allocated[1:])):
            allocated = array("I", sorted(allocated, key=bat.__getitem__))   # vhd-tool's are in order already
        end, previous = self.bytes_read, None
        span = self._bitmap_bytes() + self.block_size
        for b in allocated:
            offset = bat[b] * SECTOR
            if offset < end:
                if previous is None:
                    raise VhdStreamError(f"BAT entry {b} (in the BAT at offset {self._table_offset}) puts block "
                                         f"{b} at offset {offset}, before the end of the BAT at {end}")
                raise VhdStreamError(f"BAT entry {b} (in the BAT at offset {self._table_offset}) puts block {b} "
                                     f"at offset {offset}, inside block {previous} (offsets "
                                     f"{bat[previous] * SECTOR}..{end})")
            end, previous = offset + span, b
        self._bat, self._order = bat, allocated
        self._next_block()

    def _bitmap_bytes(self) -> int:
        """A block's sector bitmap as stored: one bit a sector, padded to a whole sector."""
        return -(-self.block_size // SECTOR // 8 // SECTOR) * SECTOR

    def _next_block(self) -> None:
        if self._next == len(self._order):
            self._expect(_Part("the trailing footer", self.bytes_read, SECTOR, self._got_trailer))
            return
        b = self._order[self._next]
        self._next += 1
        self._expect(_Part(f"the sector bitmap of block {b}", self._bat[b] * SECTOR, self._bitmap_bytes(),
                           lambda raw: self._got_bitmap(raw, b)))

    def _got_bitmap(self, raw: bytes, b: int) -> None:
        self._bitmap = raw[:-(-self.block_size // SECTOR // 8)]
        self._expect(_Part(f"the data of block {b}", self.bytes_read, self.block_size,
                           lambda data: self._got_data(data, b)))

    def _got_data(self, data: bytes, b: int) -> None:
        bitmap, self._bitmap = self._bitmap, b""
        self._next_block()
        self.blocks += 1
        self._on_block(b, bitmap, data)

    def _got_trailer(self, raw: bytes) -> None:
        self._trailer = raw
