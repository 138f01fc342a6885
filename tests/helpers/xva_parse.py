"""An independent XVA reader for the tests (FACTS.md §7), written against the format, not the simulator.

It reads a tar stream 512-byte block by block (no seeking, so it works on an
HTTP response), insists on the layout xapi writes - ``ova.xml`` first, then
``Ref:N/NNNNNNNN`` chunk members each immediately followed by its
``.xxhash`` - verifies every checksum, and rebuilds each disk *sequentially*
the way xapi's importer does (§7.3): ``(number - previous - 1)`` MiB of zeros,
then the member's actual bytes.  It never assumes that a member number is an
offset, because after a keep-alive member it is not.

Disks are hashed (sha256) while they are rebuilt, so a 64 GiB sparse disk
costs no memory; only disks up to ``keep_up_to`` bytes are kept in memory.
"""
from __future__ import annotations

import hashlib
import re
import tarfile
import xmlrpc.client
from dataclasses import dataclass, field

import xxhash

BLOCK = 512
CHUNK = 1 << 20
_ZEROS = bytes(16 * CHUNK)
_CHUNK_NAME = re.compile(r"^(Ref:\d+)/(\d{8})$")
_XXHASH_TEXT = re.compile(rb"^[0-9A-F]{16}$")


class XvaFormatError(AssertionError):
    """The stream is not an XVA as xapi writes it."""


@dataclass
class Disk:
    export_id: str
    virtual_size: int
    numbers: list[int] = field(default_factory=list)   # member numbers, in stream order
    lengths: list[int] = field(default_factory=list)   # each member's byte count
    offsets: list[int] = field(default_factory=list)   # where each member's bytes landed
    zero_members: list[int] = field(default_factory=list)   # non-empty members that are all zeros
    written: int = 0
    sha256: str | None = None
    data: bytes | None = None

    @property
    def numbers_are_offsets(self) -> bool:
        return all(off == no * CHUNK for no, off in zip(self.numbers, self.offsets))

    @property
    def empty_members(self) -> list[int]:
        return [no for no, n in zip(self.numbers, self.lengths) if n == 0]


@dataclass
class Xva:
    names: list[str]            # every member name, in order
    ova_xml: bytes
    header: dict                # the decoded ova.xml value
    disks: dict[str, Disk]      # export id -> disk, in stream order
    size: int                   # bytes of tar read, end blocks included

    def objects(self, cls: str) -> list[dict]:
        return [o for o in self.header["objects"] if o["class"] == cls]

    def by_id(self) -> dict[str, dict]:
        return {o["id"]: o for o in self.header["objects"]}

    def disk_by_vdi_uuid(self) -> dict[str, Disk]:
        ids = self.by_id()
        return {ids[eid]["snapshot"]["uuid"]: disk for eid, disk in self.disks.items()}


def parse_ova_xml(data: bytes):
    """ova.xml is one bare XML-RPC <value>; xmlrpc.client decodes it inside a response envelope."""
    text = data.decode("utf-8")
    if text.lstrip().startswith("<?xml"):
        raise XvaFormatError("ova.xml starts with an <?xml?> declaration; xapi writes a bare <value>")
    if not text.startswith("<value>"):
        raise XvaFormatError(f"ova.xml does not start with <value>: {text[:40]!r}")
    envelope = f"<methodResponse><params><param>{text}</param></params></methodResponse>"
    (value,), _ = xmlrpc.client.loads(envelope, use_builtin_types=False)
    return value


class _Blocks:
    def __init__(self, stream):
        self.stream, self.pos = stream, 0

    def exact(self, n: int) -> bytes:
        parts, want = [], n
        while want:
            piece = self.stream.read(want)
            if not piece:
                raise XvaFormatError(f"stream ended at byte {self.pos + n - want} inside a {n}-byte read")
            parts.append(piece)
            want -= len(piece)
        self.pos += n
        return b"".join(parts)

    def at_eof(self) -> bool:
        return not self.stream.read(1)


def _members(blocks: _Blocks):
    """(name, data) for every member; checks the two zero blocks of the tar end and EOF after them."""
    while True:
        block = blocks.exact(BLOCK)
        if block == bytes(BLOCK):
            if blocks.exact(BLOCK) != bytes(BLOCK):
                raise XvaFormatError("a zero block not followed by a second one")
            if not blocks.at_eof():
                raise XvaFormatError("data after the two zero blocks of the tar end")
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
        except tarfile.HeaderError as exc:
            raise XvaFormatError(f"bad tar header at byte {blocks.pos - BLOCK}: {exc}") from None
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise XvaFormatError(f"member {info.name!r} has type {info.type!r}, not a regular file")
        data = blocks.exact(info.size)
        if blocks.exact(-info.size % BLOCK) != bytes(-info.size % BLOCK):
            raise XvaFormatError(f"non-zero padding after {info.name!r}")
        yield info.name, data


def xxhash_text(data: bytes) -> bytes:
    return b"%016X" % xxhash.xxh64_intdigest(data)


def read_xva(stream, *, keep_up_to: int = 64 * CHUNK, hash_up_to: int = 8 << 30) -> Xva:
    """Parse and verify a whole XVA from ``stream`` (anything with ``read(n)``).

    Disks larger than ``hash_up_to`` are rebuilt for size and layout only
    (hashing 64 GiB of zeros takes half a minute).
    """
    blocks = _Blocks(stream)
    members = _members(blocks)
    first = next(members, None)
    if first is None or first[0] != "ova.xml":
        raise XvaFormatError(f"first member is {first and first[0]!r}, not 'ova.xml'")
    ova_xml = first[1]
    header = parse_ova_xml(ova_xml)
    sizes = {o["id"]: int(o["snapshot"]["virtual_size"]) for o in header["objects"] if o["class"] == "VDI"}
    names = ["ova.xml"]
    disks: dict[str, Disk] = {}
    hashers: dict[str, object] = {}
    kept: dict[str, bytearray] = {}
    current: str | None = None
    pending = None
    for name, data in members:
        names.append(name)
        if pending is not None:
            chunk_name, chunk = pending
            if name != chunk_name + ".xxhash":
                raise XvaFormatError(f"{chunk_name!r} is followed by {name!r}, not its .xxhash")
            if not _XXHASH_TEXT.match(data):
                raise XvaFormatError(f"{name!r} holds {data!r}, not 16 upper-case hex digits")
            if data != xxhash_text(chunk):
                raise XvaFormatError(f"checksum mismatch in {name!r}: {data!r} != {xxhash_text(chunk)!r}")
            pending = None
            continue
        match = _CHUNK_NAME.match(name)
        if not match:
            raise XvaFormatError(f"unexpected member {name!r}")
        eid, number = match.group(1), int(match.group(2))
        if eid not in sizes:
            raise XvaFormatError(f"chunk {name!r} of {eid}, which is no VDI of ova.xml")
        if eid != current:
            if eid in disks:
                raise XvaFormatError(f"members of {eid} are not contiguous ({name!r})")
            disks[eid] = Disk(eid, sizes[eid])
            if sizes[eid] <= hash_up_to:
                hashers[eid] = hashlib.sha256()
            if sizes[eid] <= keep_up_to:
                kept[eid] = bytearray()
            current = eid
        disk = disks[eid]
        previous = disk.numbers[-1] if disk.numbers else -1
        if number <= previous:
            raise XvaFormatError(f"{name!r}: member numbers of {eid} do not increase")
        _append(disk, hashers.get(eid), kept.get(eid), (number - previous - 1) * CHUNK, data)
        disk.numbers.append(number)
        disk.lengths.append(len(data))
        if data and data.count(0) == len(data):
            disk.zero_members.append(number)
        pending = (name, data)
    if pending is not None:
        raise XvaFormatError(f"{pending[0]!r} has no .xxhash member")
    for eid, disk in disks.items():
        if eid in hashers:
            disk.sha256 = hashers[eid].hexdigest()
        if eid in kept:
            disk.data = bytes(kept[eid])
    return Xva(names, ova_xml, header, disks, blocks.pos)


def _append(disk: Disk, hasher, keep, gap: int, data: bytes) -> None:
    left = gap
    while left:
        piece = _ZEROS[: min(left, len(_ZEROS))]
        if hasher is not None:
            hasher.update(piece)
        if keep is not None:
            keep += piece
        left -= len(piece)
    disk.written += gap
    disk.offsets.append(disk.written)
    if hasher is not None:
        hasher.update(data)
    if keep is not None:
        keep += data
    disk.written += len(data)
    if disk.written > disk.virtual_size:
        raise XvaFormatError(f"{disk.export_id} grows past its virtual_size {disk.virtual_size}")


def member_offsets(tar: bytes) -> list[tuple[str, int, int]]:
    """(name, offset of the data, size) of each member of an in-memory tar."""
    out, pos = [], 0
    while pos + BLOCK <= len(tar) and tar[pos:pos + BLOCK] != bytes(BLOCK):
        info = tarfile.TarInfo.frombuf(tar[pos:pos + BLOCK], "utf-8", "strict")
        out.append((info.name, pos + BLOCK, info.size))
        pos += BLOCK + info.size + (-info.size % BLOCK)
    return out
