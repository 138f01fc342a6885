"""VHD images as vhd-tool streams them, written and read one block at a time.

Writing follows ``vhd-tool stream`` (ocaml-vhd ``vhd_format/f.ml``,
``Vhd_input.vhd_common``): footer copy at 0, header at 512, one empty sector
(where a parent locator's data would go), the BAT at 2048 rounded up to a
sector with unused entries 0xFFFFFFFF, then each included 2 MiB block as its
sector bitmap (every bit set) followed by its data, in block order, then the
footer.  Without a base the image is *dynamic*; with one (``--relative-to``)
it is *differencing*: the header names the parent (its unique id, time stamp,
UTF-16 name and a MacX ``file://`` locator pointing at offset 1536, whose
data vhd-tool leaves as zeros).  The footer says creator ``caml`` version 1,
host OS 0, time stamp 0, features 2 (reserved), a fresh random uid, as
``Footer.create`` does.

Reading follows the streaming parser vhd-tool serve uses
(``From_input.openstream``): footer at 0, header at its data offset, BAT at
its table offset, then the blocks in physical order; only sectors whose
bitmap bit is set are data.  A fixed VHD (no footer copy at 0) is refused.
"""
from __future__ import annotations

import struct
import uuid as uuidlib
from dataclasses import dataclass

from tinabs_tasks.sim.xva import read_exact

SECTOR = 512
BLOCK = 2 << 20                      # Header.default_block_size_sectors_shift = 12
BITMAP = BLOCK // SECTOR // 8        # one bit per sector of a block
MAX_VHD_SIZE = 2040 << 30            # f.ml max_disk_size; xapi Constants.max_vhd_size
TABLE_OFFSET = 2048
UNUSED = 0xFFFFFFFF
DYNAMIC, DIFFERENCING, FIXED = 3, 4, 2
VHD_EPOCH = 946684800                # VHD time stamps count seconds from 2000-01-01 UTC
_FOOTER = struct.Struct(">8sIIQI4sIIQQHBBII16sB")
_HEADER = struct.Struct(">8sQQIIII16sII")
_LOCATOR = struct.Struct(">IIIIQ")
MACX = 0x4D616358


class VhdFormatError(ValueError):
    """Not a VHD vhd-tool would read; the message is vhd-format's."""


def checksum(data: bytes) -> int:
    """One's complement of the byte sum (footer and header checksums)."""
    return ~sum(data) & 0xFFFFFFFF


def geometry(size: int) -> tuple[int, int, int]:
    """Cylinders, heads, sectors per track: the CHS algorithm of the VHD specification."""
    sectors = min(size // SECTOR, 65535 * 16 * 255)
    if sectors > 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = sectors // spt
    else:
        spt = 17
        cth = sectors // spt
        heads = max((cth + 1023) // 1024, 4)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = sectors // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = sectors // spt
    return cth // heads, heads, spt


def block_count(size: int) -> int:
    return -(-size // BLOCK)


def bat_bytes(size: int) -> int:
    return -(-block_count(size) * 4 // SECTOR) * SECTOR


def footer(size: int, disk_type: int, uid: bytes) -> bytes:
    cyl, heads, spt = geometry(size)
    fields = [b"conectix", 2, 0x00010000, SECTOR, 0, b"caml", 1, 0, size, size, cyl, heads, spt,
              disk_type, 0, uid, 0]
    raw = _FOOTER.pack(*fields)
    fields[14] = checksum(raw)
    return _FOOTER.pack(*fields).ljust(SECTOR, b"\0")


@dataclass
class Parent:
    """What a differencing image says of its parent (Header.create's parent_* arguments)."""
    uid: bytes          # the parent VHD's footer uid
    time_stamp: int     # the parent file's modification time, seconds since 2000
    name: str           # the parent file's path (parent_unicode_name, and the locator's file:// URI)


def header(size: int, parent: Parent | None = None) -> bytes:
    uid, stamp, name, locators = bytes(16), 0, b"", b""
    if parent is not None:
        uri = ("file://" + parent.name).encode()
        # platform_data_space is stored in sectors (512 bytes -> 1)
        locators = _LOCATOR.pack(MACX, 1, len(uri), 0, 1536)
        uid, stamp, name = parent.uid, parent.time_stamp, parent.name.encode("utf-16-be")[:512]
    fields = [b"cxsparse", 0xFFFFFFFFFFFFFFFF, TABLE_OFFSET, 0x00010000, block_count(size), BLOCK, 0, uid, stamp, 0]
    body = name.ljust(512, b"\0") + locators.ljust(8 * _LOCATOR.size, b"\0") + bytes(256)
    fields[6] = checksum(_HEADER.pack(*fields) + body)
    return _HEADER.pack(*fields) + body


def image_length(size: int, blocks: int) -> int:
    """Bytes of a streamed image of ``blocks`` included blocks."""
    return TABLE_OFFSET + bat_bytes(size) + blocks * (BITMAP + BLOCK) + SECTOR


def stream(size: int, blocks, read_block, *, parent: Parent | None = None, uid: bytes | None = None):
    """Yield the image's bytes piece by piece: ``blocks`` are the sorted block numbers to include,
    ``read_block(b)`` gives block b's bytes (up to 2 MiB; the rest up to 2 MiB is zeros)."""
    blocks = list(blocks)
    uid = uid or uuidlib.uuid4().bytes
    tail = footer(size, DIFFERENCING if parent else DYNAMIC, uid)
    bat = bytearray(b"\xff" * bat_bytes(size))
    first = (TABLE_OFFSET + len(bat)) // SECTOR
    for i, b in enumerate(blocks):
        struct.pack_into(">I", bat, 4 * b, first + i * (BITMAP + BLOCK) // SECTOR)
    yield tail
    yield header(size, parent)
    yield bytes(SECTOR)  # the parent locator's place: vhd-tool streams it as an empty sector
    yield bytes(bat)
    bitmap = b"\xff" * BITMAP
    for b in blocks:
        data = read_block(b)
        yield bitmap
        yield data
        if len(data) < BLOCK:
            yield bytes(BLOCK - len(data))
    yield tail


# -- reading --------------------------------------------------------------------------------
@dataclass
class Footer:
    disk_type: int
    current_size: int
    data_offset: int
    uid: bytes


@dataclass
class Header:
    table_offset: int
    max_table_entries: int
    block_size: int
    parent_uid: bytes


def parse_footer(raw: bytes) -> Footer:
    fields = _FOOTER.unpack_from(raw)
    if fields[0] != b"conectix":
        raise VhdFormatError(f"Unsupported footer cookie: expected conectix, got {fields[0]!r}")
    if fields[2] != 0x00010000:
        raise VhdFormatError(f"Unsupported footer version: expected 10000, got {fields[2]:x}")
    if fields[13] not in (FIXED, DYNAMIC, DIFFERENCING):
        raise VhdFormatError(f"Unknown disk type {fields[13]}")
    expected = checksum(raw[:64] + b"\0\0\0\0" + raw[68:SECTOR])
    if fields[14] != expected:
        raise VhdFormatError(f"Invalid checksum. Expected {expected:08x} got {fields[14]:08x}")
    return Footer(fields[13], fields[9], fields[3], fields[15])


def parse_header(raw: bytes) -> Header:
    fields = _HEADER.unpack_from(raw)
    if fields[0] != b"cxsparse":
        raise VhdFormatError(f"Expected cookie cxsparse, got {fields[0]!r}")
    if fields[1] != 0xFFFFFFFFFFFFFFFF:
        raise VhdFormatError(f"Expected header data_offset ffffffffffffffff, got {fields[1]:x}")
    if fields[3] != 0x00010000:
        raise VhdFormatError(f"Expected header_version 10000, got {fields[3]:x}")
    size = fields[5]
    if size < SECTOR or size & (size - 1):
        raise VhdFormatError(f"block_size is not a power of 2: {size:x}")
    return Header(fields[2], fields[4], size, fields[7])


class VhdReader:
    """A VHD read front to back from ``read(n)`` (a socket: no seeking, one block in memory)."""

    def __init__(self, read):
        self._read = read
        self.position = 0
        self.footer = parse_footer(self._exact(SECTOR))
        if self.footer.disk_type == FIXED:
            raise VhdFormatError("Fixed disks are not supported")
        self._skip_to(self.footer.data_offset)
        self.header = parse_header(self._exact(1024))
        self._skip_to(self.header.table_offset)
        entries = self.header.max_table_entries
        table = self._exact(-(-entries * 4 // SECTOR) * SECTOR)
        self.bat = struct.unpack_from(f">{entries}I", table)

    def allocated(self) -> list[int]:
        return [b for b, sector in enumerate(self.bat) if sector != UNUSED]

    def data(self):
        """(virtual offset, bytes) of every run of sectors present, in physical order; then the
        trailing footer is read and checked."""
        bsize, bitmap_len = self.header.block_size, self.header.block_size // SECTOR // 8
        for sector, b in sorted((s, b) for b, s in enumerate(self.bat) if s != UNUSED):
            if sector * SECTOR < self.position:
                raise VhdFormatError(f"block {b} at sector {sector} overlaps the data before it")
            self._skip_to(sector * SECTOR)
            bits = int.from_bytes(self._exact(bitmap_len), "big")
            block = self._exact(bsize)
            nsect = bsize // SECTOR
            if bits == (1 << nsect) - 1:  # vhd-tool sets every bit: no need to walk them
                yield b * bsize, block
                continue
            i = 0
            while i < nsect:
                present = bits >> (nsect - 1 - i) & 1
                j = i
                while j < nsect and (bits >> (nsect - 1 - j) & 1) == present:
                    j += 1
                if present:
                    yield b * bsize + i * SECTOR, block[i * SECTOR: j * SECTOR]
                i = j
        parse_footer(self._exact(SECTOR))

    def _exact(self, n: int) -> bytes:
        try:
            data = read_exact(self._read, n)
        except EOFError:
            raise VhdFormatError("End_of_file: the VHD stream ended early") from None
        self.position += n
        return data

    def _skip_to(self, offset: int) -> None:
        if offset < self.position:
            raise VhdFormatError(f"cannot seek back from {self.position} to {offset} in a stream")
        while self.position < offset:
            self._exact(min(offset - self.position, 1 << 20))
