"""A synthetic full: an incremental backup's index, complete and independent of any other.

An incremental night reads from the pool only the backup VM's ova.xml (``/export_metadata``)
and the system disk's blocks that differ from the base (a VHD delta).  Its index is built
from the index of the backup the base belongs to: that backup's system-disk chunk rows with
the changed chunks replaced (``apply_changes``), the data disks as a full export gives empty
disks (their first and last chunk, zeros), and the new ova.xml.  The result is an ordinary
``BackupIndex``: restore, verify, export-xva, retention and GC read it as they read any other,
there is no chain to walk, and pruning the older backup changes nothing for it (its blocks are
shared, and GC keeps a block while any index names it).

What a synthetic index cannot hold is the sha256 of an XVA as the pool streamed it: no pool
ever sent that stream.  Its ``stream_sha256`` is None and its ``synthetic_of`` names the
backup it was built from; its integrity rests on the sealed index and on every block being
checked against its id when read (AES-GCM under the id, or a re-hash: ``repo/blocks``), which
``xva_rebuild`` requires for such an index.

Chunk numbers in a pool's stream are not always disk offsets: a keep-alive (an empty member)
takes a number and shifts the ones after it (as xapi's importer reads them: an offset is the
previous chunk's end plus the gap in numbers).  ``disk_chunks`` replays that to map each row to
its 1 MiB chunk of the disk; a synthetic index has no keep-alives, so its numbers are offsets.
"""
from __future__ import annotations

import datetime
import tarfile
from dataclasses import dataclass

from tinabs_tasks.repo.errors import RepoError
from tinabs_tasks.repo.index import BackupIndex, DiskRun
from tinabs_tasks.repo.xva_framing import BLOCK
from tinabs_tasks.storage import ova

CHUNK = 1 << 20
#: a checksum member's text (XXH64: 16 hex digits; SHA-1: 40) takes one tar block with padding
_CHECKSUM_MEMBER = 2 * BLOCK


class NotApplicable(RepoError):
    """The base's backup cannot take this delta (its disks differ); the message says why."""


@dataclass(frozen=True)
class Disk:
    export_id: str
    userdevice: str
    virtual_size: int

    @property
    def chunk_count(self) -> int:
        return max(1, -(-self.virtual_size // CHUNK))

    def chunk_length(self, k: int) -> int:
        return min(CHUNK, self.virtual_size - k * CHUNK) if self.virtual_size else 0


def disk_layout(ova_xml: bytes) -> list[Disk]:
    """The disks an export of the VM in ``ova_xml`` streams, in stream order (string order of
    their export ids, as xapi streams them): every VDI a Disk VBD of the (one) VM names."""
    try:
        header = ova.decode(ova_xml)
    except ova.BadOva as exc:
        raise NotApplicable(str(exc)) from None
    objects = {o["id"]: o for o in header["objects"]}
    vms = [o for o in header["objects"] if o["class"] == "VM"]
    if len(vms) != 1:
        raise NotApplicable(f"the ova.xml holds {len(vms)} VMs, not one backup VM")
    disks = []
    for o in header["objects"]:
        snap = o["snapshot"]
        if o["class"] != "VBD" or snap.get("type") != "Disk" or snap.get("VM") != vms[0]["id"]:
            continue
        vdi = objects.get(snap.get("VDI"))
        if vdi is None or vdi["class"] != "VDI":
            continue
        disks.append(Disk(vdi["id"], str(snap.get("userdevice")), int(vdi["snapshot"].get("virtual_size") or 0)))
    return sorted(disks, key=lambda d: d.export_id)


def system_disk(layout: list[Disk]) -> Disk:
    for disk in layout:
        if disk.userdevice == "0":
            return disk
    raise NotApplicable("the backup VM has no system disk at userdevice 0")


def disk_chunks(run: DiskRun, disk: Disk) -> dict[int, tuple[str, int]]:
    """{chunk number on the disk: (block id, length)} of a disk's rows, keep-alives replayed."""
    out: dict[int, tuple[str, int]] = {}
    written, last = 0, -1
    for row in run.chunks:
        number, block_id, length = row[0], row[1], row[2]
        offset = written + (number - last - 1) * CHUNK
        written, last = offset + length, number
        if block_id is None:
            continue
        if offset % CHUNK or offset + length > max(disk.virtual_size, CHUNK):
            raise NotApplicable(f"chunk {number} of {run.export_id} is at byte {offset}, not a 1 MiB chunk "
                                f"of a {disk.virtual_size}-byte disk")
        out[offset // CHUNK] = (block_id, length)
    return out


def apply_changes(base_rows: dict[int, tuple[str, int]], changes: dict[int, tuple[str, int] | None]) -> dict:
    """The rows after a delta: a change is a new (block id, length), or None for a chunk that is
    now all zeros (no row: a hole, as an export skips it)."""
    rows = dict(base_rows)
    for k, row in changes.items():
        if row is None:
            rows.pop(k, None)
        else:
            rows[k] = row
    return rows


def empty_disk_rows(disk: Disk, zero_block) -> dict[int, tuple[str, int]]:
    """What an export gives for an empty disk: its first and last chunk, zeros.
    ``zero_block(length)`` stores (or finds) a block of zeros and returns its id."""
    rows = {}
    for k in {0, disk.chunk_count - 1}:
        length = disk.chunk_length(k)
        if length:
            rows[k] = (zero_block(length), length)
    return rows


def build(backup_id: str, metadata: BackupIndex, layout: list[Disk], rows_of: dict[str, dict],
          checksum_kind: str, *, synthetic_of: str, meta: dict) -> BackupIndex:
    """The synthetic full index: ova.xml, its header and the trailer from the metadata export
    (``metadata``, an index of an XVA holding only ova.xml), then each disk of ``layout`` in
    order with the rows ``rows_of[export id]`` ({chunk: (block id, length)}).  Every chunk's
    header and checksum member are the standard ones (template 0; checksums computed again from
    the block at rebuild)."""
    # template 0 is the first header the metadata export's ova.xml member could be patched from
    # (xapi writes every member header alike); a raw one leaves none: the standard layout then
    templates = list(metadata.templates) or [_standard_header()]
    index = BackupIndex(backup_id=backup_id, ova_xml=metadata.ova_xml, ova_framing=dict(metadata.ova_framing),
                        templates=templates, trailer_zeros=metadata.trailer_zeros, trailer_raw=metadata.trailer_raw,
                        meta=dict(meta))
    logical = chunks = 0
    stream = BLOCK + len(index.ova_xml) + (-len(index.ova_xml) % BLOCK)
    for disk in layout:
        run = DiskRun(disk.export_id, checksum_kind=checksum_kind)
        for k in sorted(rows_of.get(disk.export_id, {})):
            block_id, length = rows_of[disk.export_id][k]
            run.chunks.append([k, block_id, length])
            logical += length
            chunks += 1
            stream += BLOCK + length + (-length % BLOCK) + _CHECKSUM_MEMBER
        index.disks.append(run)
    trailer = len(index.trailer_raw) if index.trailer_raw is not None else index.trailer_zeros
    stream += 2 * BLOCK + trailer
    index.created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    index.figures = {"stream_bytes": stream, "stream_sha256": None, "synthetic_of": synthetic_of,
                     "logical_bytes": logical, "chunks": chunks, "keepalives": 0}
    return index


def _standard_header() -> bytes:
    """A ustar member header as xapi's tar writer lays it out (a template: name and size patched)."""
    info = tarfile.TarInfo("ova.xml")
    info.size, info.mode = 0, 0o644
    return info.tobuf(format=tarfile.USTAR_FORMAT)
