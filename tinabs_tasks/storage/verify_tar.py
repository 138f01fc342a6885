"""The tar walk of ``verify``: an XVA read once as a stream, member by member, and what is wrong with it.

Every member's header, type and name (``xva_headers.member_problem``), its
padding and the end-of-archive blocks; ova.xml first and decoded
(``ova.decode``); each chunk hashed piece by piece (XXH64 and SHA-1) against
the checksum member after it; each disk rebuilt sequentially and compared
with its VDI's ``virtual_size``.  The file is read in READ-sized pieces,
sha256-hashed as it comes in (``Stream``), so memory stays bounded.
"""
from __future__ import annotations

import hashlib
import re
import tarfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import xxhash

from tinabs_tasks.storage import ova
from tinabs_tasks.storage.ova import MAX_OVA_XML
from tinabs_tasks.storage.verify_skeleton import to_int
from tinabs_tasks.storage.xva_headers import CHUNK_NAME, SUM_NAME, member_problem, tar_header

if TYPE_CHECKING:
    from tinabs_tasks.storage.verify import Problems, Report

BLOCK = 512
CHUNK = 1 << 20
READ = 4 << 20
MAX_CHECKSUM = 4096
_ZERO_BLOCK = bytes(BLOCK)
_XXHASH_TEXT = re.compile(r"^[0-9A-F]{16}$")
_SHA1_TEXT = re.compile(r"^[0-9a-fA-F]{40}$")


class _Truncated(Exception):
    pass


class _Fatal(Exception):
    """The tar structure is broken here: nothing after this point can be read as members."""


class Stream:
    """Reads a file once, in READ-sized pieces, hashing every byte (sha256) as it comes in."""

    def __init__(self, fh):
        self.fh, self.sha = fh, hashlib.sha256()
        self.buf, self.off, self.pos, self.total = memoryview(b""), 0, 0, 0

    def _fill(self) -> bool:
        data = self.fh.read(READ)
        if not data:
            return False
        self.sha.update(data)
        self.total += len(data)
        self.buf, self.off = memoryview(data), 0
        return True

    def pieces(self, n: int):
        """Yield memoryviews covering the next ``n`` bytes; raises _Truncated if the file ends first."""
        while n:
            if self.off == len(self.buf) and not self._fill():
                raise _Truncated()
            take = min(n, len(self.buf) - self.off)
            yield self.buf[self.off:self.off + take]
            self.off += take
            self.pos += take
            n -= take

    def exact(self, n: int) -> bytes:
        return b"".join(bytes(p) for p in self.pieces(n))

    def skip(self, n: int) -> None:
        for _ in self.pieces(n):
            pass

    def rest(self):
        """Yield whatever is left of the file."""
        while True:
            if self.off < len(self.buf):
                piece = self.buf[self.off:]
                self.pos += len(piece)
                self.off = len(self.buf)
                yield piece
            if not self._fill():
                return

    def drain(self) -> None:
        for _ in self.rest():
            pass


@dataclass
class _Disk:
    eid: str
    last: int = -1
    written: int = 0
    jumps: list = field(default_factory=list)     # (previous, number) where number > previous + 1


# -- the tar ----------------------------------------------------------------------
def read_tar(stream: Stream, problems: Problems, report: Report, metadata_only: bool):
    """Walk every member once; returns the decoded ova.xml (or None)."""
    state = {"header": None, "pending": None, "first": True, "disks": {}, "order": [], "current": None}
    member = None
    try:
        while True:
            start = stream.pos
            member = None
            block = stream.exact(BLOCK)
            if block == _ZERO_BLOCK:
                second = stream.exact(BLOCK)
                if second != _ZERO_BLOCK:
                    problems.add(f"a zero block at byte {start} is not followed by a second one: "
                                 "the tar is corrupt there")
                    raise _Fatal()
                _trailing(stream, problems)
                break
            try:
                info = tar_header(block)
            except tarfile.HeaderError as exc:
                problems.add(f"bad tar header at byte {start}: {exc}")
                raise _Fatal() from None
            member = info.name
            padding = -info.size % BLOCK
            _member(stream, info, problems, report, state, metadata_only)
            pad = stream.exact(padding)
            if pad.count(0) != len(pad):
                problems.add(f"non-zero padding after member {info.name!r}")
    except _Truncated:
        where = f" (the file ends inside member {member!r})" if member else ""
        problems.add(f"file is truncated: no end-of-archive blocks after {stream.pos} bytes{where}")
        state["broken"] = True
    except _Fatal:
        state["broken"] = True
    if state["pending"] is not None and not state.get("broken"):
        problems.add(f"chunk {state['pending'][0]} has no checksum member after it")
    if state["first"]:
        problems.add("the archive holds no members (no ova.xml)")
    elif state["header"] is None and not state.get("ova_seen") and not state.get("broken"):
        problems.add("there is no ova.xml member")
    if not state.get("broken"):
        _check_disks(state, problems, metadata_only)
    report.disks = len(state["disks"])
    return state["header"]


def _trailing(stream: Stream, problems: Problems) -> None:
    """Zero padding after the two end blocks is a tar record's padding; anything else is not ours."""
    at = stream.pos
    for piece in stream.rest():
        if bytes(piece).count(0) != len(piece):
            problems.add(f"data after the end-of-archive blocks (from byte {at})")
            stream.drain()
            return


def _member(stream: Stream, info: tarfile.TarInfo, problems: Problems, report: Report, state: dict,
            metadata_only: bool) -> None:
    name, size = info.name, info.size
    first, state["first"] = state["first"], False
    if first and name != "ova.xml":
        problems.add(f"ova.xml is not the first member (found {name!r})")
    unsafe = member_problem(info)
    if unsafe:
        problems.add(unsafe)
        _not_a_checksum(state, name, problems)
        stream.skip(size)
        return
    if name == "ova.xml":
        _not_a_checksum(state, name, problems)
        if state.get("ova_seen"):
            problems.add("ova.xml appears twice")
            stream.skip(size)
            return
        state["ova_seen"] = True
        if size > MAX_OVA_XML:
            problems.add(f"ova.xml is {size} bytes, too large to be an XVA header")
            stream.skip(size)
            return
        state["header"] = _parse_ova_xml(stream.exact(size), problems)
        return
    sum_match = SUM_NAME.match(name)
    if sum_match:
        _checksum_member(stream, name, size, sum_match, problems, report, state)
        return
    _not_a_checksum(state, name, problems)
    chunk_match = CHUNK_NAME.match(name)
    if not chunk_match:
        problems.add(f"unexpected member {name!r}")
        stream.skip(size)
        return
    if metadata_only:
        problems.add(f"unexpected chunk member {name!r} in a metadata-only backup")
    eid, number = chunk_match.group(1), int(chunk_match.group(2))
    disks: dict[str, _Disk] = state["disks"]
    if eid != state["current"]:
        if eid in disks:
            problems.add(f"chunk {name}: the members of {eid} are not contiguous")
        else:
            disks[eid] = _Disk(eid)
        state["current"] = eid
    disk = disks[eid]
    if number <= disk.last:
        problems.add(f"chunk {name}: numbers of {eid} do not increase ({disk.last:08d} came before)")
    else:
        if number > disk.last + 1 and disk.last >= 0:
            disk.jumps.append((disk.last, number))
        disk.written += (number - disk.last - 1) * CHUNK
        disk.last = number
    disk.written += size
    xx, sha1 = xxhash.xxh64(), hashlib.sha1()
    for piece in stream.pieces(size):
        xx.update(piece)
        sha1.update(piece)
    state["pending"] = (name, xx.hexdigest().upper().zfill(16), sha1.hexdigest())


def _not_a_checksum(state: dict, name: str, problems: Problems) -> None:
    if state["pending"] is not None:
        problems.add(f"chunk {state['pending'][0]} has no checksum member after it (next member is {name!r})")
        state["pending"] = None


def _checksum_member(stream: Stream, name: str, size: int, match, problems: Problems, report: Report,
                     state: dict) -> None:
    pending, state["pending"] = state["pending"], None
    chunk = f"{match.group(1)}/{match.group(2)}"
    kind = match.group(3)
    if pending is None or pending[0] != chunk:
        after = f" (it follows chunk {pending[0]}, which has no checksum)" if pending else ""
        problems.add(f"checksum member {name!r} does not follow its chunk{after}")
        stream.skip(size)
        return
    if size > MAX_CHECKSUM:
        problems.add(f"chunk {chunk}: {kind} member is {size} bytes, not a checksum")
        stream.skip(size)
        return
    text = stream.exact(size).decode("ascii", "replace")
    report.chunks += 1
    if kind == "xxhash":
        want, good = pending[1], _XXHASH_TEXT.match(text)
        if not good:
            problems.add(f"chunk {chunk}: xxhash member holds {text!r}, not 16 upper-case hex digits "
                         f"(data hashes to {want})")
        elif text != want:
            problems.add(f"chunk {chunk}: xxhash mismatch (file says {text}, data hashes to {want})")
    else:
        want, good = pending[2], _SHA1_TEXT.match(text.strip())
        if not good:
            problems.add(f"chunk {chunk}: checksum member holds {text!r}, not a SHA-1 hex digest "
                         f"(data hashes to {want})")
        elif text.strip().lower() != want:
            problems.add(f"chunk {chunk}: checksum (SHA-1) mismatch (file says {text.strip()}, "
                         f"data hashes to {want})")


def _parse_ova_xml(data: bytes, problems: Problems):
    try:
        return ova.decode(data)
    except ova.BadOva as exc:
        problems.add(str(exc))
        return None


# -- disks ------------------------------------------------------------------------
def _check_disks(state: dict, problems: Problems, metadata_only: bool) -> None:
    header, disks = state["header"], state["disks"]
    if header is None:
        return
    objects = {o["id"]: o for o in header["objects"]}
    vdis = {i: o["snapshot"] for i, o in objects.items() if o["class"] == "VDI"}
    for eid, disk in disks.items():
        if eid not in vdis:
            problems.add(f"chunks of {eid}, which is no VDI in ova.xml")
            continue
        size = to_int(vdis[eid].get("virtual_size"))
        if size is None:
            problems.add(f"ova.xml VDI {eid} has no usable virtual_size ({vdis[eid].get('virtual_size')!r})")
        elif disk.written < size:
            jumps = ", ".join(f"{a:08d} -> {b:08d}" for a, b in disk.jumps[:5])
            problems.add(f"missing chunk: {eid} chunk numbers jump ({jumps or 'none'}) and end at "
                         f"{disk.last:08d}, and the disk reconstructs to {disk.written} bytes instead of "
                         f"virtual_size {size}")
        elif disk.written > size:
            problems.add(f"disk {eid} reconstructs to {disk.written} bytes, more than its virtual_size {size}")
    if metadata_only:
        return
    for o in header["objects"]:
        if o["class"] != "VBD":
            continue
        vbd = o["snapshot"]
        vdi = vbd.get("VDI")
        if vbd.get("type") != "CD" and vdi in vdis and vdi not in disks:
            problems.add(f"missing disk: {vdi} (userdevice {vbd.get('userdevice')}) has no chunks in the file")
