"""Offline verification of a backup: re-read the ``.xva`` once, as a stream, and say what is wrong.

Checks (FACTS.md §7): the tar structure (512-byte headers, padding, the two
zero blocks at the end), member types (regular files only: no links, devices,
FIFOs, directories or GNU/pax extension headers) and names (no absolute
paths, no ``..``, only ``ova.xml``, ``Ref:N/NNNNNNNN`` and its checksum),
``ova.xml`` first and parseable, every chunk's ``.xxhash`` (XXH64, seed 0,
16 upper-case hex digits) or legacy ``.checksum`` (SHA-1 hex), each disk
rebuilt *sequentially* (gap of ``(n - previous - 1)`` MiB, then the member's
bytes) ending exactly at its VDI's ``virtual_size``, the file's size and
sha256 against the manifest, and the VM in ``ova.xml`` against the manifest's
``skeleton``.

Memory stays bounded whatever the file holds: the file is read in large
pieces, chunk data is hashed piece by piece and never kept; only ``ova.xml``
(capped) and the checksum members (a few bytes) are held.

The manifest and the data file are read only if they are regular files, not
symlinks (a link or FIFO planted in the destination is reported, never opened).
``xva_headers.header_problems`` walks only the tar headers, for a restore's quick check;
``ova.decode`` reads ova.xml for both.

A ``.metadata.xva`` (sr-copy) holds only ``ova.xml``; that the copied VDIs
still exist on the backup SR needs the pool and is checked elsewhere.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass, field

import xxhash

from tinabs_tasks.storage import catalog
from tinabs_tasks.storage import destination
from tinabs_tasks.storage import ova
from tinabs_tasks.storage.ova import MAX_OVA_XML
from tinabs_tasks.storage.verify_skeleton import compare_skeleton, to_int
from tinabs_tasks.storage.xva_headers import CHUNK_NAME, SUM_NAME, member_problem, tar_header

BLOCK = 512
CHUNK = 1 << 20
READ = 4 << 20
MAX_CHECKSUM = 4096
MAX_PROBLEMS = 50
_ZERO_BLOCK = bytes(BLOCK)
_XXHASH_TEXT = re.compile(r"^[0-9A-F]{16}$")
_SHA1_TEXT = re.compile(r"^[0-9a-fA-F]{40}$")


@dataclass
class Report:
    manifest: str
    data: str = ""
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    bytes: int = 0          # bytes of the data file read
    disks: int = 0          # disks rebuilt from chunks
    chunks: int = 0         # chunk members whose checksum was checked
    record_error: str = ""  # why the verdict could not be written into the manifest

    def as_dict(self) -> dict:
        return {"manifest": self.manifest, "data": self.data, "ok": self.ok, "problems": list(self.problems),
                "bytes": self.bytes, "disks": self.disks, "chunks": self.chunks, "record_error": self.record_error}


class _Problems(list):
    """A list that stops growing (with one closing line) after MAX_PROBLEMS."""

    dropped = 0

    def add(self, text: str) -> None:
        if len(self) < MAX_PROBLEMS:
            self.append(text)
        else:
            self.dropped += 1

    def final(self) -> list[str]:
        return list(self) + ([f"... and {self.dropped} more problem(s)"] if self.dropped else [])


class _Truncated(Exception):
    pass


class _Fatal(Exception):
    """The tar structure is broken here: nothing after this point can be read as members."""


class _Stream:
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


def verify_backup(manifest_path: str, *, record: bool = False, pool_check=None) -> Report:
    """Verify one backup; ``pool_check(manifest) -> [problems]`` also checks what lives on a pool
    (the copies an sr-copy backup keeps on the backup SR)."""
    report = Report(manifest=manifest_path)
    problems = _Problems()
    manifest = _load_manifest(manifest_path, problems)
    if manifest is None:  # nothing to record the verdict in
        return _finish(report, problems, None, record=False)
    name = manifest.get("file")
    if not isinstance(name, str) or not name or os.path.basename(name) != name or name in (".", "..") \
            or "\0" in name:
        problems.add(f"manifest names no plain data file (file: {name!r})")
        return _finish(report, problems, manifest, record)
    report.data = os.path.join(os.path.dirname(os.path.abspath(manifest_path)), name)
    metadata_only = name.endswith(".metadata.xva") or manifest.get("mode") == "sr-copy"
    try:
        fh = destination.open_regular(report.data)
    except destination.NotRegular as exc:  # a planted link or FIFO: never followed, never read
        problems.add(f"data file {name} is {exc.kind}: not followed, not read (tinabs writes only regular files)")
        return _finish(report, problems, manifest, record)
    except OSError as exc:
        problems.add(f"data file {name} cannot be read: {exc.strerror}")
        return _finish(report, problems, manifest, record)
    with fh:
        stream = _Stream(fh)
        header = _read_tar(stream, problems, report, metadata_only)
        stream.drain()
    report.bytes = stream.total
    if manifest.get("size") is not None and manifest.get("size") != stream.total:
        problems.add(f"size differs from the manifest (file has {stream.total} bytes, manifest says "
                     f"{manifest.get('size')})")
    digest = stream.sha.hexdigest()
    if manifest.get("sha256") != digest:
        problems.add(f"sha256 differs from the manifest (manifest says {manifest.get('sha256')}, "
                     f"file hashes to {digest})")
    if header is not None:
        compare_skeleton(header, manifest.get("skeleton"), problems)
    if pool_check is not None and metadata_only:
        for problem in pool_check(manifest):
            problems.add(problem)
    return _finish(report, problems, manifest, record)


def _load_manifest(path: str, problems: _Problems) -> dict | None:
    try:
        with destination.open_regular(path) as fh:
            manifest = json.loads(fh.read())
    except destination.NotRegular as exc:  # a planted link: never read, nor replaced by a verdict
        problems.add(f"manifest {path} is {exc.kind}: not followed, not read")
        return None
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict):
        problems.add(f"manifest {path} is missing or not valid JSON")
        return None
    return manifest


def verify_all(dest: str, *, record: bool = False, pool_check=None) -> list[tuple[str, Report]]:
    """Every backup with a manifest under ``dest`` (incomplete ones too: they fail), in path order."""
    manifests = sorted({b.manifest_path for b in catalog.scan(dest, include_incomplete=True) if b.manifest_path})
    return [(path, verify_backup(path, record=record, pool_check=pool_check)) for path in manifests]


def _finish(report: Report, problems: _Problems, manifest: dict | None, record: bool) -> Report:
    report.problems = problems.final()
    report.ok = not report.problems
    if record and manifest is not None:
        manifest["verified"] = {"state": "ok" if report.ok else "failed",
                                "at": dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
                                "problems": report.problems}
        try:
            destination.write_json_atomic(report.manifest, manifest)
        except OSError as exc:  # a read-only copy of the backups: the verdict stands, unrecorded
            report.record_error = f"could not record the result in {report.manifest}: {exc.strerror or exc}"
    return report


# -- the tar ----------------------------------------------------------------------
def _read_tar(stream: _Stream, problems: _Problems, report: Report, metadata_only: bool):
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


def _trailing(stream: _Stream, problems: _Problems) -> None:
    """Zero padding after the two end blocks is a tar record's padding; anything else is not ours."""
    at = stream.pos
    for piece in stream.rest():
        if bytes(piece).count(0) != len(piece):
            problems.add(f"data after the end-of-archive blocks (from byte {at})")
            stream.drain()
            return


def _member(stream: _Stream, info: tarfile.TarInfo, problems: _Problems, report: Report, state: dict,
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


def _not_a_checksum(state: dict, name: str, problems: _Problems) -> None:
    if state["pending"] is not None:
        problems.add(f"chunk {state['pending'][0]} has no checksum member after it (next member is {name!r})")
        state["pending"] = None


def _checksum_member(stream: _Stream, name: str, size: int, match, problems: _Problems, report: Report,
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


def _parse_ova_xml(data: bytes, problems: _Problems):
    try:
        return ova.decode(data)
    except ova.BadOva as exc:
        problems.add(str(exc))
        return None


# -- disks ------------------------------------------------------------------------
def _check_disks(state: dict, problems: _Problems, metadata_only: bool) -> None:
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
