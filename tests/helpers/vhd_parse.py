"""An independent VHD reader for the tests, written against the VHD specification (and what
ocaml-vhd's vhd-tool writes), not against the simulator; plus ``qemu-img``, a second reader.

``parse(image)`` reads a whole image held in memory: footer copy, header, parent locators,
BAT, each block's sector bitmap, trailing footer; ``apply(disk, image)`` writes an image's
present sectors over a bytearray (what importing it into a disk does).
"""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
from dataclasses import dataclass, field

SECTOR = 512
MiB = 1 << 20


def checksum(data: bytes) -> int:
    return ~sum(data) & 0xFFFFFFFF


@dataclass
class Image:
    footer: dict
    header: dict
    locators: list[tuple[int, int, int, int]]      # (code, data space, data length, data offset)
    bat: list[int]
    bitmaps: dict[int, bytes] = field(default_factory=dict)
    trailing_footer: bytes = b""
    raw_footer: bytes = b""

    def allocated(self) -> list[int]:
        return [b for b, sector in enumerate(self.bat) if sector != 0xFFFFFFFF]


def parse_footer(raw: bytes) -> dict:
    (cookie, features, version, data_offset, stamp, app, app_version, host_os, original, current,
     cyl, heads, spt, disk_type, csum, uid, saved) = struct.unpack_from(">8sIIQI4sIIQQHBBII16sB", raw)
    assert cookie == b"conectix", cookie
    assert csum == checksum(raw[:64] + bytes(4) + raw[68:SECTOR]), "footer checksum"
    assert raw[85:SECTOR] == bytes(SECTOR - 85), "footer reserved bytes"
    return dict(features=features, version=version, data_offset=data_offset, time_stamp=stamp,
                creator_application=app, creator_version=app_version, creator_host_os=host_os,
                original_size=original, current_size=current, geometry=(cyl, heads, spt),
                disk_type=disk_type, uid=uid, saved_state=saved)


def parse(image: bytes) -> Image:
    footer = parse_footer(image[:SECTOR])
    hdr = image[footer["data_offset"]: footer["data_offset"] + 1024]
    cookie, data_offset, table_offset, version, entries, block_size, csum, parent_uid, parent_stamp, _ = \
        struct.unpack_from(">8sQQIIII16sII", hdr)
    assert cookie == b"cxsparse", cookie
    assert csum == checksum(hdr[:36] + bytes(4) + hdr[40:]), "header checksum"
    name = hdr[64:576].decode("utf-16-be").rstrip("\0")
    locators = [struct.unpack_from(">IIIIQ", hdr, 576 + 24 * i) for i in range(8)]
    header = dict(data_offset=data_offset, table_offset=table_offset, version=version,
                  max_table_entries=entries, block_size=block_size, parent_uid=parent_uid,
                  parent_time_stamp=parent_stamp, parent_name=name)
    bat = list(struct.unpack_from(f">{entries}I", image, table_offset))
    bitmap_len = block_size // SECTOR // 8
    out = Image(footer, header, [(c, s, n, o) for c, s, n, _, o in locators], bat,
                trailing_footer=image[-SECTOR:], raw_footer=image[:SECTOR])
    for b in out.allocated():
        out.bitmaps[b] = image[bat[b] * SECTOR: bat[b] * SECTOR + bitmap_len]
    parse_footer(out.trailing_footer)
    return out


def apply(disk: bytearray, image: bytes) -> None:
    """Write the sectors present in ``image`` over ``disk`` (bitmap bit set = present)."""
    parsed = parse(image)
    block_size = parsed.header["block_size"]
    bitmap_len = block_size // SECTOR // 8
    for b in parsed.allocated():
        bits = parsed.bitmaps[b]
        start = parsed.bat[b] * SECTOR + bitmap_len
        for s in range(block_size // SECTOR):
            offset = b * block_size + s * SECTOR
            if bits[s // 8] >> (7 - s % 8) & 1 and offset < len(disk):
                disk[offset: offset + SECTOR] = image[start + s * SECTOR: start + (s + 1) * SECTOR][: len(disk) - offset]


def blocks_with_data(disk: bytes, block_size: int = 2 * MiB) -> list[int]:
    zero = bytes(block_size)
    return [b for b in range(-(-len(disk) // block_size))
            if disk[b * block_size:(b + 1) * block_size] != zero[: len(disk[b * block_size:(b + 1) * block_size])]]


# -- qemu-img ----------------------------------------------------------------------------
def qemu_img(*args: str) -> subprocess.CompletedProcess:
    """Run qemu-img (package qemu-utils, installed by scripts/ensure-test-tools.sh); fails, never
    skips, when it is missing."""
    binary = shutil.which("qemu-img")
    assert binary, "qemu-img is missing: run scripts/ensure-test-tools.sh (apt-get install qemu-utils)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def vpc(path) -> str:
    """``--image-opts`` for a VHD that vhd-tool wrote: qemu's vpc driver takes the size from the
    CHS geometry unless the creator is one it knows to use current_size ('tap', 'qem2', ...);
    vhd-tool's creator is 'caml', so the size in the footer has to be asked for."""
    return f"driver=vpc,force_size_calc=current_size,file.filename={path}"


def qemu_map(path) -> list[dict]:
    done = qemu_img("map", "--output=json", "--image-opts", vpc(path))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def qemu_data_blocks(path, block_size: int = 2 * MiB) -> list[int]:
    """The blocks qemu-img map reports as holding data."""
    blocks = set()
    for extent in qemu_map(path):
        if extent["data"]:
            first = extent["start"] // block_size
            last = (extent["start"] + extent["length"] - 1) // block_size
            blocks.update(range(first, last + 1))
    return sorted(blocks)
