"""xapi/vhd_stream.py: the push parser of the VHD images /export_raw_vdi?format=vhd streams.

Images come from the simulator's writer (``sim.vhd.stream``, what vhd-tool sends), from
``build`` below (written here from the VHD specification, for what that writer never makes:
partial bitmaps, small blocks, gaps, blocks out of order, damaged structures) and, end to end,
from a real ``tinabs sim`` over HTTP.  Each image is fed in pieces of many sizes, from one byte
to the whole image, through buffers reused between pieces as the downloader does.
"""
from __future__ import annotations

import hashlib
import random
import struct
import uuid as uuidlib

import pytest

from helpers import xapi_http as H
from tinabs_tasks.sim import vhd as simvhd
from tinabs_tasks.xapi import http as xhttp
from tinabs_tasks.xapi.vhd_stream import VhdStreamError, VhdStreamReader, sectors_present

MiB = 1 << 20
BLOCK = 2 * MiB
SECTOR = 512


# -- feeding ----------------------------------------------------------------------------------
def pieces(image: bytes, mode: str, seed: int = 7):
    """The image cut as a download would cut it: ``one`` piece; ``random`` sizes from 1 byte to
    3 MiB; ``bytes`` one byte at a time over the first 5 KiB (every header boundary) then 64 KiB."""
    rng, i = random.Random(seed), 0
    while i < len(image):
        if mode == "one":
            n = len(image)
        elif mode == "bytes":
            n = 1 if i < 5120 else 65536
        else:
            n = rng.choice((1, 1, 7, 511, 512, 513, 4096, rng.randrange(1, 3 * MiB)))
        yield image[i:i + n]
        i += n


def feed(image: bytes, mode: str = "random", finish: bool = True):
    """(reader, [(block, bitmap, data)]): every piece passes through one bytearray that is
    overwritten by the next piece, so a reader keeping a view of it would deliver garbage."""
    got = []
    reader = VhdStreamReader(lambda b, bitmap, data: got.append((b, bytes(bitmap), bytes(data))))
    ring = bytearray(len(image) or 1)
    for piece in pieces(image, mode):
        ring[:len(piece)] = piece
        assert reader.write(memoryview(ring)[:len(piece)]) == len(piece)
        ring[:len(piece)] = b"\xee" * len(piece)
    if finish:
        reader.finish()
    return reader, got


def sim_image(size: int, contents: dict[int, bytes], parent=None) -> bytes:
    return b"".join(simvhd.stream(size, sorted(contents), contents.__getitem__, parent=parent))


def padded(data: bytes, block_size: int = BLOCK) -> bytes:
    return data + bytes(block_size - len(data))


# -- images from the specification ------------------------------------------------------------
def checksum(raw: bytes) -> int:
    return ~sum(raw) & 0xFFFFFFFF


def footer(size: int, disk_type: int = 3, data_offset: int = 512) -> bytes:
    raw = bytearray(struct.pack(">8sIIQI4sIIQQHBBII16sB", b"conectix", 2, 0x10000, data_offset, 0, b"test", 1, 0,
                                size, size, 0, 0, 0, disk_type, 0, uuidlib.uuid4().bytes, 0).ljust(SECTOR, b"\0"))
    struct.pack_into(">I", raw, 64, checksum(raw))
    return bytes(raw)


def header(entries: int, block_size: int, table_offset: int, parent_uid: bytes = bytes(16)) -> bytes:
    raw = bytearray(struct.pack(">8sQQIIII16sII", b"cxsparse", 2 ** 64 - 1, table_offset, 0x10000, entries,
                                block_size, 0, parent_uid, 0, 0).ljust(1024, b"\0"))
    struct.pack_into(">I", raw, 36, checksum(raw))
    return bytes(raw)


def build(size: int, block_size: int, blocks: dict[int, tuple[bytes, bytes, int]], *, table_offset: int = 1536,
          disk_type: int = 3) -> bytes:
    """An image whose ``blocks`` are ``{block: (bitmap, data, sector)}``: each written at its
    sector (anything between structures is a zero gap), the footer after the furthest one."""
    entries = -(-size // block_size)
    bat = bytearray(b"\xff" * (-(-entries * 4 // SECTOR) * SECTOR))
    image = bytearray(footer(size, disk_type) + header(entries, block_size, table_offset))
    image += bytes(table_offset - len(image))
    bitmap_space = -(-block_size // SECTOR // 8 // SECTOR) * SECTOR
    for b, (bitmap, data, sector) in blocks.items():
        struct.pack_into(">I", bat, 4 * b, sector)
    image += bat
    for b, (bitmap, data, sector) in sorted(blocks.items(), key=lambda kv: kv[1][2]):
        image += bytes(max(0, sector * SECTOR - len(image)))  # none when the test wants an overlap
        image += bitmap.ljust(bitmap_space, b"\0") + padded(data, block_size)
    return bytes(image + image[:SECTOR])


# -- the simulator's images -------------------------------------------------------------------
@pytest.mark.parametrize("mode", ("random", "one", "bytes"))
def test_dynamic_image_delivers_each_block_with_its_data(mode):
    """Given a dynamic image of a 9 MiB + 3 sectors disk (the last block partial) holding blocks
    0, 2 (all zeros) and 4 (the partial one), as vhd-tool streams it
    When it is fed in pieces (random sizes, one piece, or byte by byte over the headers)
    Then blocks 0, 2 and 4 arrive in that order with their 2 MiB of data (zero padded) and full
    bitmaps, and the reader says dynamic, the disk size, 2 MiB blocks, no parent, every byte read."""
    size = 9 * MiB + 3 * SECTOR
    contents = {0: random.Random(1).randbytes(BLOCK), 2: bytes(BLOCK), 4: b"\x5a" * (MiB + 3 * SECTOR)}
    image = sim_image(size, contents)
    reader, got = feed(image, mode)
    assert [b for b, _, _ in got] == [0, 2, 4]
    assert all(data == padded(contents[b]) for b, _, data in got)
    assert all(bitmap == b"\xff" * 512 for _, bitmap, _ in got)
    assert (reader.disk_type, reader.virtual_size, reader.block_size, reader.parent_uid) == (3, size, BLOCK, bytes(16))
    assert (reader.bytes_read, reader.blocks) == (len(image), 3)


@pytest.mark.parametrize("mode", ("random", "one", "bytes"))
def test_differencing_image_names_its_parent_and_skips_the_locator_sector(mode):
    """Given a differencing image (a parent uid, a locator whose empty sector sits at 1536) of a
    5 MiB disk with block 1 changed
    When it is fed
    Then block 1 arrives with its data, the disk type is 4 and the parent uid is the header's."""
    parent = simvhd.Parent(uid=uuidlib.uuid4().bytes, time_stamp=1234, name="/var/run/sr-mount/x/base.vhd")
    contents = {1: b"\xa5" * 3000}
    image = sim_image(5 * MiB, contents, parent)
    reader, got = feed(image, mode)
    assert [(b, data) for b, _, data in got] == [(1, padded(contents[1]))]
    assert (reader.disk_type, reader.parent_uid, reader.virtual_size) == (4, parent.uid, 5 * MiB)


def test_many_blocks_and_an_empty_delta():
    """Given an image of 24 random blocks of a 100 MiB disk, an image holding no block, and
    the image of a disk of no bytes
    When each is fed in random pieces
    Then the first delivers exactly those blocks in order, the others none, and all finish (the
    last one cut before its trailing footer does not)."""
    rng = random.Random(3)
    contents = {b: rng.randbytes(64) * (BLOCK // 64) for b in sorted(rng.sample(range(50), 24))}
    reader, got = feed(sim_image(100 * MiB, contents))
    assert [(b, data) for b, _, data in got] == sorted(contents.items())
    assert reader.blocks == 24
    empty = sim_image(100 * MiB, {})
    reader, got = feed(empty)
    assert (got, reader.blocks, reader.bytes_read, reader.block_size) == ([], 0, len(empty), BLOCK)
    nothing = sim_image(0, {})                      # a disk of no bytes: a BAT of no bytes
    assert len(nothing) == 2048 + SECTOR
    reader, got = feed(nothing)
    assert (got, reader.virtual_size, reader.bytes_read) == ([], 0, 2560)
    reader, _ = feed(nothing[:2048], finish=False)
    with pytest.raises(VhdStreamError, match="at byte 2048, inside the trailing footer"):
        reader.finish()


# -- what the simulator never writes ----------------------------------------------------------
@pytest.mark.parametrize("mode", ("random", "bytes"))
def test_partial_bitmaps_small_blocks_gaps_and_physical_order(mode):
    """Given an image with 4 KiB blocks (an 8-sector bitmap, one byte padded to a sector), the
    BAT at 3072 after a gap, block 5 stored before block 2 with a gap between them, and bitmaps
    with some sectors only
    When it is fed
    Then the blocks arrive in physical order (5 then 2) with their own 1-byte bitmaps and data."""
    size = 40 * 1024
    blocks = {2: (b"\x81", b"\x22" * 4096, 40), 5: (b"\x0f", b"\x55" * 4096, 10)}
    image = build(size, 4096, blocks, table_offset=3072)
    reader, got = feed(image, mode)
    assert got == [(5, b"\x0f", b"\x55" * 4096), (2, b"\x81", b"\x22" * 4096)]
    assert (reader.block_size, reader.blocks, reader.bytes_read) == (4096, 2, len(image))


def test_a_half_present_2mib_block_is_delivered_with_its_bitmap():
    """Given a 2 MiB block whose bitmap holds its first MiB and one sector of the second
    When it is read
    Then its bitmap is delivered as is and says the first half is all there, the second some."""
    bitmap = b"\xff" * 256 + b"\x00" * 100 + b"\x20" + b"\x00" * 155
    image = build(4 * MiB, BLOCK, {1: (bitmap, b"\x11" * BLOCK, 8)})
    _, got = feed(image)
    assert got == [(1, bitmap, b"\x11" * BLOCK)]
    assert [sectors_present(bitmap, first, 2048) for first in (0, 2048)] == ["all", "some"]
    assert [sectors_present(bitmap, 2849, n) for n in (1, 2)] == ["none", "some"]
    assert sectors_present(bitmap, 2850, 1) == "all"


def test_sectors_present_says_all_none_or_some():
    """Given bitmaps of 32 sectors
    Then sectors_present answers for whole bytes, single sectors and unaligned runs, and refuses
    a range outside the bitmap or of no sectors."""
    bitmap = bytes([0xFF, 0x00, 0x0F, 0xF0])
    cases = [((0, 8), "all"), ((8, 8), "none"), ((16, 8), "some"), ((0, 16), "some"), ((0, 32), "some"),
             ((20, 8), "all"), ((21, 6), "all"), ((19, 10), "some"), ((9, 7), "none"), ((12, 5), "none"),
             ((12, 6), "none"), ((12, 9), "some"), ((7, 1), "all"), ((8, 1), "none"), ((20, 1), "all"),
             ((19, 1), "none"), ((28, 1), "none"), ((27, 1), "all")]
    assert [sectors_present(bitmap, f, c) for (f, c), _ in cases] == [want for _, want in cases]
    assert sectors_present(b"\xff" * 512, 0, 4096) == "all" and sectors_present(bytes(512), 4095, 1) == "none"
    for first, count in ((30, 3), (-1, 2), (0, 0), (32, 1)):
        with pytest.raises(ValueError):
            sectors_present(bitmap, first, count)


# -- refusals ---------------------------------------------------------------------------------
SIZE = 6 * MiB
CONTENTS = {0: b"\x01" * BLOCK, 2: b"\x02" * 1000}


def sim_small() -> bytes:
    return sim_image(SIZE, CONTENTS)


# offsets in sim_small(): footer 0, header 512, gap 1536, BAT 2048..2560, block 0's bitmap at
# 2560 and data at 3072, block 2's bitmap at 3072 + 2 MiB, the trailing footer at the end
B2 = 3072 + BLOCK
END = B2 + SECTOR + BLOCK


@pytest.mark.parametrize("cut, where", [
    (0, "at byte 0, inside the footer copy (bytes 0..512)"),
    (100, "at byte 100, inside the footer copy"),
    (600, "at byte 600, inside the dynamic header (bytes 512..1536)"),
    (1700, "at byte 1700, before the BAT at offset 2048"),
    (2100, "at byte 2100, inside the BAT (bytes 2048..2560)"),
    (2600, "at byte 2600, inside the sector bitmap of block 0 (bytes 2560..3072)"),
    (3072 + MiB, f"at byte {3072 + MiB}, inside the data of block 0"),
    (B2, f"at byte {B2}, inside the sector bitmap of block 2"),
    (END, f"at byte {END}, inside the trailing footer (bytes {END}..{END + SECTOR})"),
    (END + 511, f"at byte {END + 511}, inside the trailing footer"),
])
def test_a_stream_that_ends_early_fails_at_finish_saying_where(cut, where):
    """Given the image cut at the footer, header, gap, BAT, a bitmap, a block's data, between
    blocks, or in the trailing footer
    When the pieces before the cut are fed and the stream ends
    Then finish raises VhdStreamError saying it ended early, at which byte and in what."""
    image = sim_small()
    reader, _ = feed(image[:cut], finish=False)
    with pytest.raises(VhdStreamError, match="ended early") as err:
        reader.finish()
    assert where in str(err.value)
    with pytest.raises(VhdStreamError):
        reader.finish()                      # it stays failed


def test_the_whole_small_image_finishes():
    """The image the cut tests cut, whole: it finishes (so their failures are the cuts')."""
    reader, got = feed(sim_small())
    assert [b for b, _, _ in got] == [0, 2] and reader.bytes_read == END + SECTOR


def _patched(image: bytes, offset: int, data: bytes) -> bytes:
    return image[:offset] + data + image[offset + len(data):]


@pytest.mark.parametrize("damage, message", [
    (lambda im: _patched(im, 40, b"\x07"), "the VHD footer at offset 0 has checksum"),
    (lambda im: _patched(im, 512 + 24, b"\x00\x00\x00\x09"), "dynamic header at offset 512 has checksum"),
    (lambda im: b"HTTP/1.1 500 Internal Error\r\n\r\n" + im, "expected the footer cookie b'conectix' at offset 0"),
    (lambda im: _patched(im, 512, b"cxspars!"), "expected the dynamic header cookie b'cxsparse' at offset 512"),
])
def test_damaged_structures_are_refused_as_they_arrive(damage, message):
    """Given the image with a byte of the footer copy changed, a header field changed, an error
    page before it, or the header cookie changed
    When it is fed
    Then write raises VhdStreamError naming the structure and its offset, before any block."""
    got = []
    reader = VhdStreamReader(lambda *a: got.append(a))
    with pytest.raises(VhdStreamError, match=message):
        for piece in pieces(damage(sim_small()), "random"):
            reader.write(piece)
    assert got == []
    with pytest.raises(VhdStreamError, match=message):
        reader.write(b"x")                   # it stays failed


def test_a_trailing_footer_unlike_the_copy_fails_at_finish():
    """Given the image whose last footer differs from the copy at offset 0 (its uid)
    When it is fed whole
    Then every block was delivered, but finish raises: the image is damaged."""
    image = sim_small()
    reader, got = feed(_patched(image, END + 70, b"\x99"), finish=False)
    assert len(got) == 2
    with pytest.raises(VhdStreamError, match=f"footer at offset {END} .* differs from its copy at offset 0"):
        reader.finish()


def test_bytes_after_the_trailing_footer_are_refused():
    """Given the image followed by an error page
    When it is fed
    Then write raises saying more bytes followed the trailing footer."""
    with pytest.raises(VhdStreamError, match=f"19 more bytes after the VHD's trailing footer, which ended at offset "
                                             f"{END + SECTOR}"):
        feed(sim_small() + b"HTTP/1.1 500 Oops\r\n")


def _resummed(image: bytes, offset: int, data: bytes, at: int, length: int) -> bytes:
    """The image with ``data`` written at ``offset`` inside the structure at ``at`` (``length``
    bytes, its checksum ``at + 64`` for a footer, ``at + 36`` for a header) and that checksum fixed."""
    raw = bytearray(_patched(image, offset, data)[at:at + length])
    field = 64 if length == SECTOR else 36
    raw[field:field + 4] = bytes(4)
    raw[field:field + 4] = struct.pack(">I", checksum(raw))
    return _patched(image, at, bytes(raw))


def _write_all(image: bytes) -> None:
    reader = VhdStreamReader(lambda *a: pytest.fail("no block may be delivered"))
    for piece in pieces(image, "random"):
        reader.write(piece)
    reader.finish()


@pytest.mark.parametrize("image, message", [
    (lambda: footer(SIZE, disk_type=2, data_offset=2 ** 64 - 1) + bytes(SIZE) + footer(SIZE, 2), "fixed disk"),
    (lambda: build(SIZE, BLOCK, {}, disk_type=5), "unknown disk type 5"),
    (lambda: build(SIZE, 3000, {}), "block size 3000: not a power of two"),
    (lambda: build(SIZE, 256, {}), "block size 256: not a power of two"),
    (lambda: build(SIZE, BLOCK, {1: (b"\xff" * 512, b"", 3)}),
     "BAT entry 1 .* puts block 1 at offset 1536, before the end of the BAT at 2048"),
    (lambda: build(SIZE, BLOCK, {0: (b"\xff" * 512, b"", 4), 2: (b"\xff" * 512, b"", 8)}),
     r"BAT entry 2 .* puts block 2 at offset 4096, inside block 0 \(offsets 2048..2099712\)"),
    (lambda: _patched(sim_small(), 0, b"\0" * 8), "expected the footer cookie"),
    (lambda: _resummed(sim_small(), 12, b"\0\2\0\0", 0, SECTOR), "footer at offset 0 has format version 00020000"),
    (lambda: _resummed(sim_small(), 512 + 24, b"\0\2\0\0", 512, 1024),
     "header at offset 512 has data offset ffffffffffffffff and version 00020000"),
    (lambda: _resummed(sim_small(), 512 + 8, b"\0" * 8, 512, 1024), "header at offset 512 has data offset 0 "),
    (lambda: _resummed(sim_small(), 512 + 28, b"\0\0\0\5", 512, 1024),
     "header at offset 512 has 5 BAT entries, more than a 6291456-byte disk in 2097152-byte blocks needs"),
])
def test_images_vhd_tool_never_sends_are_refused(image, message):
    """Given a fixed VHD, an unknown disk type, block sizes that are no power of two or under a
    sector, a BAT entry pointing into the headers, two blocks overlapping, a bad cookie, another
    format version of footer or header, a header data offset, more BAT entries than the disk has blocks
    When the image is fed
    Then VhdStreamError says why, and no block was delivered."""
    with pytest.raises(VhdStreamError, match=message):
        _write_all(image())


# -- end to end -------------------------------------------------------------------------------
def test_delta_downloaded_from_the_simulator_turns_the_base_into_the_snapshot(sim, x, master, nfs):
    """Given a 7 MiB disk (the last block partial) written in blocks 0 and 3, snapshot s1, then
    written in blocks 1 (over half of it, random bytes) and 3 (a few bytes), snapshot s2
    When /export_raw_vdi?vdi=s2&format=vhd&base=s1 is downloaded over HTTP into the reader, by
    the real downloader (xapi.http.stream_to, whose buffers are reused) and by reads of random sizes
    Then blocks 1 and 3 arrive, a differencing image of the disk's size whose parent is named,
    and writing each block's present sectors over s1's raw bytes gives s2's raw bytes."""
    size = 7 * MiB
    vdi = x.VDI.create({"name_label": "vhd stream test", "name_description": "", "SR": nfs,
                        "virtual_size": str(size), "type": "user", "sharable": False, "read_only": False,
                        "other_config": {}, "xenstore_data": {}, "sm_config": {}, "tags": []})
    uuid = x.VDI.get_uuid(vdi)
    H.guest_write(sim, uuid, 100, random.Random(5).randbytes(5000))
    H.guest_write(sim, uuid, 3 * BLOCK + 4096, b"\x33" * 700)
    s1 = x.VDI.snapshot(vdi, {})
    H.guest_write(sim, uuid, BLOCK + 1000, random.Random(6).randbytes(MiB + 50000))
    H.guest_write(sim, uuid, 3 * BLOCK + 4096 + 600, b"\x55" * 300)
    s2 = x.VDI.snapshot(vdi, {})
    session = H.handle(x)

    def raw(snapshot) -> bytes:
        resp, body = H.get_all(master, "/export_raw_vdi", {"session_id": session, "vdi": snapshot, "format": "raw"})
        assert resp.status == 200 and len(body) == size
        return body

    base, want = raw(s1), raw(s2)
    assert base != want
    query = {"session_id": session, "vdi": x.VDI.get_uuid(s2), "format": "vhd", "base": x.VDI.get_uuid(s1)}

    def check(reader, got) -> None:
        assert [b for b, _, _ in got] == [1, 3]
        assert (reader.disk_type, reader.virtual_size, reader.block_size) == (4, size, BLOCK)
        assert reader.parent_uid != bytes(16)
        disk = bytearray(base)
        for b, bitmap, data in got:
            for s in range(BLOCK // SECTOR):
                at = b * BLOCK + s * SECTOR
                if at < size and sectors_present(bitmap, s, 1) == "all":
                    disk[at:at + SECTOR] = data[s * SECTOR:(s + 1) * SECTOR]
        assert hashlib.sha256(disk).hexdigest() == hashlib.sha256(want).hexdigest()

    got = []
    reader = VhdStreamReader(lambda b, bitmap, data: got.append((b, bitmap, data)))
    conn, resp = xhttp.open_get(master, "/export_raw_vdi", query, None)
    try:
        total = xhttp.stream_to(resp, [reader.write], expect_tar_end=False)
    finally:
        conn.close()
    reader.finish()
    assert total == reader.bytes_read
    check(reader, got)

    got = []
    reader = VhdStreamReader(lambda b, bitmap, data: got.append((b, bitmap, data)))
    resp = H.get(master, "/export_raw_vdi", query)
    rng = random.Random(11)
    try:
        while piece := resp.read(rng.choice((1, 511, 4096, 70000, 3 * MiB))):
            reader.write(piece)
    finally:
        resp.close()
        resp.connection_.close()
    reader.finish()
    check(reader, got)
