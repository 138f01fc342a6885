"""A VDI's bytes in the wire formats of /export_raw_vdi and /import_raw_vdi (raw, vhd, tar).

Export (what ``vhd-tool stream`` sends, ocaml/xapi/vhd_tool_wrapper.ml ``send``):
raw is every byte; vhd is a dynamic image of the blocks holding data (2 MiB
blocks over the disk's 1 MiB chunks), or with a base a *differencing* image of
the blocks that differ between the two disks' histories: vhd-tool
``--relative-to`` includes the blocks allocated in either chain but not in
both (ocaml-vhd ``Vhd_input.include_block``), so disks with no common history
give every block either holds, not an error; a disk that is not VHD-backed
(an ISO library's) is refused.  tar is the XVA chunk scheme under ``vdi/``
(export_raw_vdi.ml ``Stream_vdi.send_all`` + ``write_end``).

Import (what ``vhd-tool serve`` writes): raw writes every byte in order; vhd
writes the sectors present in the image (a differencing image too: the
streaming parser never looks at the disk type); xapi's own ``chunked``
protocol is (offset u64 LE, length u32 LE, data)* ended by a zero length;
tar is the XVA chunk scheme.  Every write goes through ``pool.guest_write``
(so changed block tracking sees it), except zeros over a region already zero,
which would change nothing and would allocate.  Disks are read and written one
chunk or one block at a time: memory stays bounded whatever the disk size.
"""
from __future__ import annotations

import datetime as dt
import struct
import uuid as uuidlib

from tinabs_tasks.sim import vhd
from tinabs_tasks.sim.disks import CHUNK, ZERO_CHUNK, Content, UnrelatedContent, differing_chunks
from tinabs_tasks.sim.errors import XapiError
from tinabs_tasks.sim.xva import END_OF_ARCHIVE, TarFormatError, TarReader, disk_members, read_exact, verify_checksum

CHUNKS_PER_BLOCK = vhd.BLOCK // CHUNK
TAR_DIR = "vdi"  # Xapi_globs.vdi_tar_export_dir
_RAW_SR_TYPES = ("iso", "udev")  # SRs whose VDIs are plain files or devices, not VHDs


def is_vhd_backed(pool, vdi: str) -> bool:
    return pool.store.get("SR", pool.store.get("VDI", vdi, "SR"), "type") not in _RAW_SR_TYPES


def _chunk_or_zero(content: Content, k: int, data: set[int] | None) -> bytes:
    if k >= content.chunk_count() or not content.size:
        return b""
    if data is not None and k not in data:
        return ZERO_CHUNK[: content.chunk_length(k)]
    return content.chunk(k)


# -- export ---------------------------------------------------------------------------------
def raw_pieces(content: Content, blocks: set[int] | None = None):
    """Every byte of the disk, a chunk at a time (zero chunks from memory, never read); with
    ``blocks`` (a differential raw export) the blocks not listed are sent as zeros."""
    candidates = content.candidate_chunks()
    data = None if candidates is None else {k for k in candidates if not content.chunk_is_zero(k)}
    if blocks is not None:
        listed = {k for b in blocks for k in range(b * CHUNKS_PER_BLOCK, (b + 1) * CHUNKS_PER_BLOCK)}
        data = listed if data is None else data & listed
    for k in range(content.chunk_count() if content.size else 0):
        yield _chunk_or_zero(content, k, data)


def chunks_to_copy(content: Content, base: Content | None) -> list[int]:
    """The chunks a sparse copy or a VHD export takes: those with data, or those that may differ
    from ``base``; with no common history, every chunk either disk holds (vhd-tool includes the
    blocks allocated in either chain)."""
    if base is None:
        return list(content.data_chunks())
    try:
        return differing_chunks(content, base)
    except UnrelatedContent:
        return sorted(set(content.data_chunks()) | {k for k in base.data_chunks() if k < content.chunk_count()})


def vhd_blocks(content: Content, base: Content | None) -> list[int]:
    """The 2 MiB blocks a VHD export includes."""
    return sorted({k // CHUNKS_PER_BLOCK for k in chunks_to_copy(content, base)})


def vhd_parent(pool, base_vdi: str) -> vhd.Parent:
    """How vhd-tool names the base: its VHD's uid (the simulator uses the VDI's uuid), the file's
    modification time (the snapshot's time) and the path tapdisk serves it from."""
    rec = pool.store.record("VDI", base_vdi)
    sr = pool.store.record("SR", rec["SR"])
    if sr["type"].startswith("lvm"):
        path = f"/dev/VG_XenStorage-{sr['uuid']}/VHD-{rec['location']}"
    else:
        path = f"/var/run/sr-mount/{sr['uuid']}/{rec['location']}.vhd"
    stamp = rec.get("snapshot_time")
    seconds = stamp.timestamp() if isinstance(stamp, dt.datetime) and stamp.year > 1970 else dt.datetime.now().timestamp()
    return vhd.Parent(uuidlib.UUID(rec["uuid"]).bytes, max(0, int(seconds) - vhd.VHD_EPOCH), path)


def vhd_pieces(content: Content, blocks: list[int], parent: vhd.Parent | None):
    candidates = content.candidate_chunks()
    data = None if candidates is None else set(candidates)

    def read_block(b: int) -> bytes:
        first = b * CHUNKS_PER_BLOCK
        return b"".join(_chunk_or_zero(content, k, data) for k in range(first, first + CHUNKS_PER_BLOCK))
    return vhd.stream(content.size, blocks, read_block, parent=parent)


def tar_pieces(content: Content, keepalive_s: float):
    for parts in disk_members(TAR_DIR, content, keepalive_s):
        yield b"".join(parts)
    yield END_OF_ARCHIVE


# -- import ---------------------------------------------------------------------------------
def io_error(detail: str = "Device I/O errors") -> XapiError:
    """How a failing vhd-tool reaches the task (vhd_qcow_parsing.ml ``run_tool``)."""
    return XapiError("VDI_IO_ERROR", detail)


class DiskWriter:
    """Writes into a VDI through the pool (copy on write, CBT), skipping zeros over zeros."""

    def __init__(self, pool, vdi: str, check_cancel=lambda: None):
        self.pool, self.vdi, self.check_cancel = pool, vdi, check_cancel
        self.size = pool.content(vdi).size
        self.written = 0  # bytes received for the disk (zeros skipped or not)

    def write(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise io_error()
        while data:
            k, inner = divmod(offset, CHUNK)
            piece = data[: CHUNK - inner]
            if piece.count(0) != len(piece) or not self.pool.content(self.vdi).chunk_is_zero(k):
                self.pool.guest_write(self.vdi, offset, piece)
            self.written += len(piece)
            offset, data = offset + len(piece), data[len(piece):]
        self.check_cancel()


def receive_raw(read, writer: DiskWriter, length: int | None) -> None:
    """Bytes 0.. of the disk, in order, until ``length`` (or the end of the stream)."""
    offset, pending = 0, b""
    while length is None or offset + len(pending) < length:
        piece = read(CHUNK)
        if not piece:
            break
        pending += piece
        while len(pending) >= CHUNK:
            writer.write(offset, pending[:CHUNK])
            offset, pending = offset + CHUNK, pending[CHUNK:]
    if pending:
        writer.write(offset, pending)
        offset += len(pending)
    if length is not None and offset < length:
        raise io_error("End_of_file")


def receive_vhd(read, writer: DiskWriter) -> None:
    try:
        image = vhd.VhdReader(read)
        for offset, data in image.data():
            end = min(offset + len(data), writer.size)
            if offset >= writer.size:
                if data.count(0) != len(data):
                    raise io_error()
                continue
            writer.write(offset, data[: end - offset])  # a last block's tail past the disk's end
    except vhd.VhdFormatError as exc:
        raise io_error(str(exc)) from None


def receive_chunked(read, writer: DiskWriter) -> None:
    """xapi's ``chunked`` raw protocol (ocaml-vhd cli/chunked.ml): headers of offset and length."""
    while True:
        offset, length = struct.unpack("<QI", _exact(read, 12))
        if length == 0:
            return
        while length:
            data = _exact(read, min(length, CHUNK))
            writer.write(offset, data)
            offset, length = offset + len(data), length - len(data)


def receive_tar(read, writer: DiskWriter) -> None:
    """The XVA chunk scheme under ``vdi/`` (stream_vdi.ml ``recv_all_vdi``, checksums verified)."""
    reader = TarReader(read)
    written, last_no, first_len = 0, -1, None
    try:
        while written < writer.size and (entry := reader.next()) is not None:
            name, size = entry
            prefix, _, number = name.partition("/")
            if prefix != TAR_DIR or not number.isdigit():
                raise XapiError("IMPORT_ERROR_UNEXPECTED_FILE", f"{TAR_DIR}/NNNNNNNN", name)
            data = reader.data(size)
            check = reader.next()
            if check is None or check[0] not in (name + ".xxhash", name + ".checksum"):
                raise XapiError("IMPORT_ERROR_UNEXPECTED_FILE", name + ".xxhash", check[0] if check else "")
            if not verify_checksum(data, check[0], reader.data(check[1])):
                raise XapiError("IMPORT_ERROR_SOME_CHECKSUMS_FAILED")
            no = int(number)
            if no <= last_no:
                raise XapiError("IMPORT_ERROR", f"chunk {name} out of order")
            first_len = first_len or len(data) or None
            offset = written + (no - last_no - 1) * (first_len or CHUNK)
            writer.write(offset, data)
            written, last_no = offset + len(data), no
    except (EOFError, TarFormatError) as exc:
        raise XapiError("IMPORT_ERROR_PREMATURE_EOF" if isinstance(exc, EOFError) else "IMPORT_ERROR",
                        *(() if isinstance(exc, EOFError) else (str(exc),))) from None
    if written < writer.size:
        raise XapiError("IMPORT_ERROR_PREMATURE_EOF")


def _exact(read, n: int) -> bytes:
    try:
        return read_exact(read, n)
    except EOFError:
        raise io_error("End_of_file") from None
