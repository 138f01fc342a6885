"""Splitting real XVAs (exported over HTTP by the simulator) into the repository, and rebuilding them.

Compressed exports (``use_compression=gzip|zstd``) are out of scope: tinabs asks for uncompressed
exports, and the splitter refuses a compressed one with a message that says so.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import xmlrpc.client
from pathlib import Path

import pytest

from helpers import xapi_http as H
from helpers.sim_proc import wait_task
from helpers.xva_parse import member_offsets
from tinabs_tasks.storage import ova
from tinabs_tasks.repo.errors import BlockMissing, RepoCorrupt
from tinabs_tasks.repo.index import (BackupExists, InvalidBackupId, delete_index, list_backups, load_index,
                                     referenced_blocks, save_index)
from tinabs_tasks.repo.layout import init_repository
from tinabs_tasks.repo.xva_rebuild import rebuild_xva, write_xva_file
from tinabs_tasks.repo.xva_split import XvaChecksumMismatch, XvaRejected, XvaSplitter, XvaTruncated, split_xva

MiB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent


# -- helpers ------------------------------------------------------------------------------
@pytest.fixture(params=[("zstd", "aes-256-gcm"), ("none", "none")], ids=["zstd-aes", "plain"])
def repo(request, tmp_path):
    compression, encryption = request.param
    key = os.urandom(32) if encryption != "none" else None
    return init_repository(str(tmp_path / "repo"), compression=compression, encryption=encryption, key=key)


@pytest.fixture
def plain_repo(tmp_path):
    return init_repository(str(tmp_path / "repo"), compression="zstd", encryption="aes-256-gcm", key=os.urandom(32))


def export(x, master, vm, **params) -> bytes:
    resp, body = H.get_all(master, "/export", {"session_id": H.handle(x), "ref": vm, **params})
    assert resp.status == 200, body[:200]
    return body


def split_bytes(repo, backup_id: str, body: bytes, piece: int = 4 * MiB):
    """Split ``body`` fed in ``piece``-sized writes, and save the index (as a backup stage does)."""
    splitter = XvaSplitter(repo, backup_id)
    for at in range(0, len(body), piece):
        splitter.write(body[at:at + piece])
    index = splitter.finish()
    save_index(repo, index)
    return index


def rebuilt(repo, backup_id: str) -> bytes:
    return b"".join(rebuild_xva(repo, load_index(repo, backup_id)))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def block_files(repo) -> set[str]:
    return set(repo.blocks.block_ids())


def empty_disk(x, vm, userdevice: str | None = None, size: int = 64 * MiB) -> str:
    if userdevice is None:
        userdevice = str(1 + max(int(x.VBD.get_userdevice(v)) for v in x.VM.get_VBDs(vm)))
    sr = x.pool.get_default_SR(x.pool.get_all()[0])
    vdi = x.VDI.create({"SR": sr, "virtual_size": str(size), "type": "user", "sharable": False, "read_only": False,
                        "other_config": {}, "name_label": "empty"})
    x.VBD.create({"VM": vm, "VDI": vdi, "userdevice": userdevice, "bootable": False, "mode": "RW", "type": "Disk",
                  "empty": False, "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})
    return vdi


@pytest.fixture(scope="module")
def vms(sim, x):
    """Halted VMs of the module simulator: one with all its disks (system + data) and a CD drive,
    one with its system disk plus an empty disk, one with only its system disk."""
    sources = list(H.user_vms(x))
    full = H.own_vm(x, "repo full", sources[0], keep=lambda vbd, rec: True)
    if not any(x.VBD.get_type(v) == "CD" for v in x.VM.get_VBDs(full)):
        x.VBD.create({"VM": full, "VDI": H.NULL, "userdevice": "3", "bootable": False, "mode": "RO", "type": "CD",
                      "empty": True, "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})
    with_empty = H.own_vm(x, "repo empty disk", sources[1])
    empty_disk(x, with_empty)
    system_only = H.own_vm(x, "repo system", sources[2])
    return {"full": full, "empty-disk": with_empty, "system-only": system_only}


def user_vdi_uuids(x, vm) -> list[str]:
    return [vdi["uuid"] for _, vdi in H.vm_disks(x, vm)]


# -- identity -------------------------------------------------------------------------------
def test_split_then_rebuild_gives_the_same_stream(x, master, vms, repo):
    """Given real exports of VMs with data disks, an empty disk and a CD drive
    When each is split into the repository (encrypted+compressed, or neither) and rebuilt
    Then every rebuilt stream is byte-identical (same sha256 as the index says), and the index
    stays compact: one template header, no raw header."""
    full_vbds = [x.VBD.get_record(v) for v in x.VM.get_VBDs(vms["full"])]
    assert any(v["type"] == "CD" for v in full_vbds) and len(H.vm_disks(x, vms["full"])) >= 2
    for name, vm in vms.items():
        body = export(x, master, vm)
        index = split_bytes(repo, name, body, piece=1_000_003)   # pieces that straddle every member

        again = rebuilt(repo, name)

        assert sha(again) == sha(body) == index.figures["stream_sha256"], name
        assert index.figures["stream_bytes"] == len(body) == index.figures["transferred_bytes"]
        assert len(index.templates) == 1
        framings = [row[3] for d in index.disks for row in d.chunks if len(row) > 3]
        assert not framings, framings[:3]
        rows = sum(len(d.chunks) for d in index.disks)
        assert index.sealed_bytes < len(index.ova_xml) + 2048 + 100 * rows, (index.sealed_bytes, rows)
    index = load_index(repo, "empty-disk")
    (empty_id,) = [o["id"] for o in ova.decode(index.ova_xml)["objects"]
                   if o["class"] == "VDI" and o["snapshot"]["name_label"] == "empty"]
    (empty,) = [d for d in index.disks if d.export_id == empty_id]
    assert [row[0] for row in empty.chunks] == [0, 63], "an empty disk: first and last chunk, the rest holes"


def test_figures_count_blocks_and_bytes(x, master, vms, plain_repo):
    """Given a VM with several disks
    Then logical_bytes is the chunks' data, new + reused blocks the chunks with data, and
    stored_bytes the bytes the block files take."""
    body = export(x, master, vms["full"])
    index = split_bytes(plain_repo, "b1", body)
    f = index.figures
    chunk_sizes = [size for name, _, size in member_offsets(body) if name != "ova.xml" and "." not in name]
    assert f["logical_bytes"] == sum(chunk_sizes)
    assert f["new_blocks"] + f["reused_blocks"] == f["chunks"] == len([s for s in chunk_sizes if s])
    assert f["new_blocks"] == len(block_files(plain_repo))
    assert f["stored_bytes"] == sum(plain_repo.blocks.stored_size(b) for b in block_files(plain_repo))


def test_keepalive_members_are_kept_as_members_not_blocks(fresh_sim, tmp_path):
    """Given a pool that sends an empty keep-alive member at every skipped chunk
    When an export is split and rebuilt
    Then the keep-alives are index rows with no block, and the stream is the same."""
    sim = fresh_sim("--pools", "1", "--vms-per-pool", "1", "--hosts-per-pool", "1", "--disk-mib", "8",
                    "--export-keepalive", "0")
    x = H.api(sim.session(0))
    vm = H.own_vm(x, "keepalive", next(iter(H.user_vms(x))))
    body = export(x, sim.pool(0)["master"], vm)
    repo = init_repository(str(tmp_path / "repo"), encryption="none", key=None)

    index = split_bytes(repo, "k", body)

    assert index.figures["keepalives"] > 0
    assert sum(row[1] is None and row[2] == 0 for d in index.disks for row in d.chunks) == index.figures["keepalives"]
    assert sha(rebuilt(repo, "k")) == sha(body)


# -- deduplication ----------------------------------------------------------------------------
def test_second_backup_of_the_same_vm_stores_nothing_new(x, master, vms, plain_repo):
    """Given a VM backed up once
    When it is backed up again, unchanged
    Then no block is new, stored_bytes is 0 (only the index is written), and both rebuild."""
    body = export(x, master, vms["full"])
    first = split_bytes(plain_repo, "night1", body)
    blocks = block_files(plain_repo)

    body2 = export(x, master, vms["full"])     # its ova.xml differs (the export's date)
    second = split_bytes(plain_repo, "night2", body2)

    assert second.figures["new_blocks"] == 0 and second.figures["stored_bytes"] == 0
    assert second.figures["reused_blocks"] == first.figures["chunks"]
    assert block_files(plain_repo) == blocks
    assert 0 < second.sealed_bytes < 64 * 1024
    assert sha(rebuilt(plain_repo, "night1")) == sha(body)
    assert sha(rebuilt(plain_repo, "night2")) == sha(body2)


def test_a_guest_write_costs_about_its_size(sim, x, master, vms, plain_repo):
    """Given a VM backed up once
    When the guest writes 3 MiB of fresh data (seeded, MiB-aligned) and it is backed up again
    Then exactly 3 blocks are new, and stored_bytes is about 3 MiB."""
    vm = H.own_vm(x, "repo write", next(iter(H.user_vms(x))))
    split_bytes(plain_repo, "before", export(x, master, vm))
    (uuid,) = user_vdi_uuids(x, vm)
    status, body = sim.control_call("POST", f"/sim/vdi/{uuid}/write", {"offset": 2 * MiB, "length": 3 * MiB,
                                                                         "seed": 1313})
    assert status == 200, body

    after = split_bytes(plain_repo, "after", export(x, master, vm))

    assert after.figures["new_blocks"] == 3
    assert 3 * MiB <= after.figures["stored_bytes"] <= 3 * MiB + 4096


def _exported_chunks(data: bytes) -> list[bytes]:
    """The chunks an export carries: non-zero ones, plus the first and the last."""
    chunks = [data[at:at + MiB] for at in range(0, len(data), MiB)]
    last = len(chunks) - 1
    return [c for k, c in enumerate(chunks) if k in (0, last) or c.count(0) != len(c)]


def test_vms_of_a_template_fleet_share_most_blocks(fresh_sim, tmp_path):
    """Given a fleet cloned from one template image (128 MiB disks)
    When each VM is backed up in turn
    Then each stores exactly the chunks no earlier backup held, and every VM after the first
    reuses more blocks than it adds."""
    sim = fresh_sim("--pools", "1", "--vms-per-pool", "3", "--hosts-per-pool", "1", "--disk-mib", "128",
                    "--clone-from-template")
    x = H.api(sim.session(0))
    repo = init_repository(str(tmp_path / "repo"), key=os.urandom(32))
    seen: set[bytes] = set()
    for n, source in enumerate(H.user_vms(x)):
        vm = H.own_vm(x, f"fleet {n}", source)
        (uuid,) = user_vdi_uuids(x, vm)
        chunks = _exported_chunks(sim.vdi_bytes(uuid))

        index = split_bytes(repo, f"vm{n}", export(x, sim.pool(0)["master"], vm))

        fresh = {c for c in chunks if c not in seen}
        assert index.figures["new_blocks"] == len(fresh), n
        if n:
            assert index.figures["reused_blocks"] > index.figures["new_blocks"], index.figures
        seen |= set(chunks)


# -- failures -------------------------------------------------------------------------------
def _edit_member(body: bytes, suffix: str, edit) -> bytes:
    name, offset, size = next(m for m in member_offsets(body) if m[0].endswith(suffix))
    data = bytearray(body)
    data[offset:offset + size] = edit(bytes(body[offset:offset + size]))
    return bytes(data)


def _other_hex(text: bytes) -> bytes:
    return (b"0" if text[:1] != b"0" else b"1") + text[1:]


@pytest.mark.parametrize("damage", ["checksum-member", "chunk-data"])
def test_a_corrupt_chunk_fails_the_split_and_leaves_no_index(x, master, vms, plain_repo, damage):
    """Given an export whose checksum member (or chunk data) was damaged in transit
    When it is split
    Then the split fails naming the chunk, and no index (no backup) exists."""
    body = export(x, master, vms["system-only"])
    if damage == "checksum-member":
        bad = _edit_member(body, "/00000001.xxhash", _other_hex)
    else:
        bad = _edit_member(body, "/00000001", lambda d: bytes([d[0] ^ 0xFF]) + d[1:])

    with pytest.raises(XvaChecksumMismatch, match=r"Ref:\d+/00000001.*corrupt"):
        split_xva(plain_repo, "bad", io.BytesIO(bad).read)

    assert list_backups(plain_repo) == []
    assert not os.listdir(plain_repo.index_dir())


def test_a_stream_cut_midway_leaves_no_index(sim, x, master, vms, plain_repo):
    """Given an export whose connection the pool drops after 3 MB
    When the response is split as it streams
    Then the split fails (truncated) at its end and no index exists; the same holds for a
    stream cut inside the tar's end blocks."""
    sim.add_fault({"handler": "/export", "drop_after_bytes": 3_000_000, "times": 1, "pool": "pool-a"})
    resp = H.get(master, "/export", {"session_id": H.handle(x), "ref": vms["full"]})
    splitter = XvaSplitter(plain_repo, "cut")
    try:
        while piece := resp.read(4 * MiB):
            splitter.write(piece)
    except (OSError, Exception) as exc:   # a reset instead of a clean close is a cut too
        assert not isinstance(exc, XvaRejected), exc
    finally:
        resp.close()
        resp.connection_.close()
    sim.clear_faults()
    assert 0 < splitter.stream_bytes < 4_000_000

    with pytest.raises(XvaTruncated, match="ended after"):
        splitter.finish()
    body = export(x, master, vms["system-only"])
    with pytest.raises(XvaTruncated):
        split_xva(plain_repo, "cut2", io.BytesIO(body[:-700]).read)
    assert list_backups(plain_repo) == []


def test_a_compressed_export_is_refused_with_the_fix(x, master, vms, plain_repo):
    """Given a gzip-compressed export (out of scope: tinabs asks for uncompressed exports)
    Then the split refuses it and says to export without compression."""
    body = export(x, master, vms["system-only"], use_compression="gzip")
    with pytest.raises(XvaRejected, match="gzip-compressed.*without use_compression"):
        split_xva(plain_repo, "gz", io.BytesIO(body).read)
    assert list_backups(plain_repo) == []


def test_rebuild_with_a_missing_or_damaged_block_names_it(x, master, vms, plain_repo, tmp_path):
    """Given a backup one of whose blocks is deleted (or damaged)
    When it is rebuilt (or exported to a file)
    Then RepoCorrupt names the block and the backup, and no .xva file is left."""
    index = split_bytes(plain_repo, "victim", export(x, master, vms["system-only"]))
    block = index.disks[0].chunks[1][1]
    path = plain_repo.blocks.path(block)
    sealed = Path(path).read_bytes()
    os.unlink(path)

    with pytest.raises(BlockMissing, match=f"victim.*{block}") as caught:
        rebuilt(plain_repo, "victim")
    assert caught.value.block_id == block
    out = tmp_path / "out.xva"
    with pytest.raises(BlockMissing):
        write_xva_file(plain_repo, "victim", str(out))
    assert not out.exists() and os.listdir(tmp_path) == ["repo"]

    Path(path).write_bytes(sealed[:-1] + bytes([sealed[-1] ^ 1]))
    with pytest.raises(RepoCorrupt, match=f"victim.*{block}"):
        rebuilt(plain_repo, "victim")


# -- bounded memory -------------------------------------------------------------------------
_MEASURE = r"""
import json, os, sys
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))


def peak_kib():
    # VmHWM is this process's own peak; ru_maxrss would carry the peak of the pytest worker this
    # process was forked from (Linux keeps it across execve)
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))


from helpers import xapi_http as H
from tinabs_tasks.repo.layout import init_repository
from tinabs_tasks.repo.xva_split import XvaSplitter
from tinabs_tasks.repo.index import save_index
master, session, vm, repo_path = sys.argv[2:6]
repo = init_repository(repo_path, key=os.urandom(32))
before = peak_kib()
resp = H.get(master, "/export", {"session_id": session, "ref": vm})
splitter = XvaSplitter(repo, "big")
while piece := resp.read(4 << 20):
    splitter.write(piece)
index = splitter.finish()
save_index(repo, index)
after = peak_kib()
print(json.dumps({"growth_kib": after - before, "logical_bytes": index.figures["logical_bytes"]}))
"""


def test_split_memory_stays_bounded(sim, x, master, tmp_path):
    """Given a VM with a 512 MiB disk full of data
    When its export is split in a process of its own
    Then that process's peak RSS grows by less than 64 MiB."""
    vm = H.own_vm(x, "repo big", next(iter(H.user_vms(x))), keep=lambda vbd, rec: False)
    vdi = empty_disk(x, vm, "0", size=512 * MiB)
    status, body = sim.control_call("POST", f"/sim/vdi/{x.VDI.get_uuid(vdi)}/write",
                                    {"offset": 0, "length": 512 * MiB, "seed": 7})
    assert status == 200, body

    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(ROOT), master, H.handle(x), vm,
                           str(tmp_path / "repo")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})

    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["logical_bytes"] == 512 * MiB
    assert result["growth_kib"] < 64 * 1024, result


# -- the rebuilt XVA is an XVA xapi imports --------------------------------------------------
def test_rebuilt_xva_imports_and_gives_the_same_disks(sim, x, master, vms, plain_repo):
    """Given a VM with several disks backed up into the repository
    When the rebuilt stream is PUT to /import
    Then the import succeeds and every disk of the new VM has the original's digest."""
    vm = vms["full"]
    split_bytes(plain_repo, "to-import", export(x, master, vm))
    body = rebuilt(plain_repo, "to-import")
    sr = x.pool.get_default_SR(x.pool.get_all()[0])
    task = x.task.create("repo import", "")

    reply = H.put(master, "/import", {"session_id": H.handle(x), "task_id": task, "sr_id": sr}, body)

    assert reply.status == 200
    result = wait_task(x, task, timeout=120)
    assert result["status"] == "success", result["error_info"]
    (new_vm,) = xmlrpc.client.loads(f"<methodResponse><params><param>{result['result']}</param></params>"
                                    "</methodResponse>")[0][0]
    original = [sim.vdi_info(u)["digest"] for u in user_vdi_uuids(x, vm)]
    assert [sim.vdi_info(u)["digest"] for u in user_vdi_uuids(x, new_vm)] == original


# -- framing that is not the simulator's -------------------------------------------------------
def _retar(body: bytes, header_of, trailer: bytes = b"") -> bytes:
    """The same members with headers from ``header_of(n, name, size)``."""
    out = []
    for n, (name, offset, size) in enumerate(member_offsets(body)):
        out += [header_of(n, name, size), body[offset:offset + size], bytes(-size % 512)]
    return b"".join(out) + bytes(1024) + trailer


def _ocaml_tar_header(name: str, size: int, mtime: int = 0) -> bytes:
    """A V7 header laid out as ocaml-tar writes it: no ustar magic, mode 0400, a 7-digit checksum."""
    h = bytearray(512)
    h[0:100] = name.encode().ljust(100, b"\0")
    h[100:108], h[108:116], h[116:124] = b"0000400\0", b"0000000\0", b"0000000\0"
    h[124:136], h[136:148] = b"%011o\0" % size, b"%011o\0" % mtime
    h[148:156], h[156:157] = b" " * 8, b"0"
    h[148:156] = b"%07o\0" % sum(h)
    return bytes(h)


def test_other_tar_layouts_rebuild_exactly(x, master, vms, plain_repo):
    """Given an XVA whose headers are laid out as ocaml-tar (xapi) writes them, one with a different
    mtime on every member, one with unusual checksum text and data after the end blocks
    Then each rebuilds byte for byte; the ocaml-tar layout still needs one template only."""
    body = export(x, master, vms["system-only"])
    ocaml = _retar(body, lambda n, name, size: _ocaml_tar_header(name, size))
    mtimes = _retar(body, lambda n, name, size: _ocaml_tar_header(name, size, 1_700_000_000 + n))
    odd = _edit_member(body, "/00000000.xxhash", lambda t: t.lower()) + b"\0" * 9000 + b"tail"
    for n, stream in enumerate((ocaml, mtimes, odd)):
        index = split_bytes(plain_repo, f"layout{n}", stream, piece=700)
        assert sha(rebuilt(plain_repo, f"layout{n}")) == sha(stream), n
    assert len(load_index(plain_repo, "layout0").templates) == 1
    framed = [row[3] for row in load_index(plain_repo, "layout0").disks[0].chunks if len(row) > 3]
    assert not framed


def test_headers_a_template_cannot_make_are_kept_raw(x, master, vms, plain_repo):
    """Given an XVA whose every header has another uid (so no template fits twice)
    Then the headers beyond the template limit are kept raw and the stream still rebuilds."""
    body = export(x, master, vms["system-only"])

    def header(n, name, size):
        info = tarfile.TarInfo(name)
        info.size, info.uid = size, n
        return info.tobuf(format=tarfile.USTAR_FORMAT)

    stream = _retar(body, header)
    index = split_bytes(plain_repo, "raw", stream)
    assert any(isinstance(row[3].get("h"), str) for row in index.disks[0].chunks if len(row) > 3)
    assert sha(rebuilt(plain_repo, "raw")) == sha(stream)


# -- the index directory ----------------------------------------------------------------------
def test_index_ids_listing_deletion_and_binding(x, master, vms, plain_repo):
    """Backup ids cannot be paths; an index is never replaced; one renamed to another id does not
    open; list, referenced blocks and delete see what is there."""
    for bad in ("a/b", "..", "", ".tmp.x", "x\n", "a" * 201):
        with pytest.raises(InvalidBackupId):
            XvaSplitter(plain_repo, bad)
    body = export(x, master, vms["system-only"])
    index = split_bytes(plain_repo, "one", body)
    with pytest.raises(BackupExists):
        save_index(plain_repo, index)
    split_bytes(plain_repo, "two", body)
    assert list_backups(plain_repo) == ["one", "two"]
    assert dict(referenced_blocks(plain_repo)) == {"one": set(index.block_ids()), "two": set(index.block_ids())}

    os.rename(os.path.join(plain_repo.index_dir(), "two"), os.path.join(plain_repo.index_dir(), "three"))
    with pytest.raises(RepoCorrupt, match="three"):
        load_index(plain_repo, "three")
    delete_index(plain_repo, "one")
    assert list_backups(plain_repo) == ["three"]
