"""GET /export_raw_vdi and PUT /import_raw_vdi as the simulator serves them (FACTS.md §5, §10):
raw and VHD disk transfer, differential VHD exports, their errors and redirects.

qemu-img is the independent VHD reader, beside the tests' own parser (helpers/vhd_parse.py).
Every disk exported or written is the tests' own (clones, snapshots, VDI.create), so the
shared inventory never changes.
"""
from __future__ import annotations

import base64
import hashlib
import io
import struct
import tarfile
import time
import urllib.parse

import pytest

from helpers import vhd_parse as V
from helpers import xapi_http as H
from helpers.sim_proc import wait_task

MiB = 1 << 20
GiB = 1 << 30
BLOCK = 2 * MiB


def _system_vdi_on(x, sr: str) -> str:
    return next(d["uuid"] for vm in H.user_vms(x) for b, d in H.vm_disks(x, vm)
                if b["userdevice"] == "0" and d["SR"] == sr)


@pytest.fixture(scope="module")
def disk(x, nfs):
    """Our own writable 16 MiB disk: a clone of an inventory system disk on the shared SR."""
    return x.VDI.clone(x.VDI.get_by_uuid(_system_vdi_on(x, nfs)), {})


def _export(x, base_url, vdi, fmt=None, base=None, task=None, **extra):
    params = {"session_id": H.handle(x), "vdi": vdi, **extra}
    if fmt:
        params["format"] = fmt
    if base:
        params["base"] = base
    if task:
        params["task_id"] = task
    return H.get_all(base_url, "/export_raw_vdi", params)


def _new_vdi(x, sr, size) -> str:
    return x.VDI.create({"name_label": "raw vdi test", "name_description": "", "SR": sr, "virtual_size": str(size),
                         "type": "user", "sharable": False, "read_only": False, "other_config": {},
                         "xenstore_data": {}, "sm_config": {}, "tags": []})


def _sha(sim, x, vdi) -> str:
    return sim.vdi_info(x.VDI.get_uuid(vdi))["sha256"]


def _save(tmp_path, name, data) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# -- raw ------------------------------------------------------------------------------------
@pytest.mark.parametrize("by", ("ref", "uuid"))
def test_raw_export_streams_every_byte_with_xapi_headers(sim, x, master, disk, by):
    """export_raw_vdi.ml ``localhost_handler``, importexport.ml ``vdi_of_req`` / ``Format``:
    Given our own disk, named by ref or by uuid, and a task made with task.create
    When /export_raw_vdi?format=raw is fetched
    Then the answer is HTTP/1.1 200 (Http.http_200_ok ~keep_alive:false: Connection: close, no
    Content-Length), with task-id, content-type application/octet-stream and content-disposition
    attachment; filename="<uuid>.raw"; the body is every byte of the disk; the task succeeds."""
    task = x.task.create("raw export", "")
    uuid = x.VDI.get_uuid(disk)
    resp, body = _export(x, master, disk if by == "ref" else uuid, "raw", task=task)
    assert (resp.status, resp.version) == (200, 11)
    assert resp.getheader("Connection") == "close"
    assert resp.getheader("Content-Length") is None
    assert resp.getheader("task-id") == task
    assert resp.getheader("content-type") == "application/octet-stream"
    assert resp.getheader("content-disposition") == f'attachment; filename="{uuid}.raw"'
    assert len(body) == int(x.VDI.get_virtual_size(disk))
    assert hashlib.sha256(body).hexdigest() == _sha(sim, x, disk)
    rec = wait_task(x, task)
    assert (rec["status"], rec["progress"]) == ("success", 1.0)


# -- vhd ------------------------------------------------------------------------------------
def test_full_vhd_export_is_a_dynamic_vhd_of_the_allocated_blocks(sim, x, master, disk, tmp_path):
    """vhd_tool_wrapper.ml ``send`` -> ocaml-vhd f.ml ``Vhd_input.vhd_common`` / ``Footer.create`` /
    ``Header.create``; export_raw_vdi.ml (content-type application/vhd, filename <uuid>.vhd):
    Given our own disk (a quarter full) and its raw export
    When it is exported with format=vhd
    Then the image is a dynamic VHD as vhd-tool streams it: footer copy at 0 equal to the footer at
    the end, creator 'caml' v1, features 2, data offset 512, header at 512 with the BAT at 2048,
    2 MiB blocks, one BAT entry per block and exactly the blocks holding data allocated (bitmaps
    all set), nothing else in the file; qemu-img reads it as vpc, converts it to exactly the raw
    export's bytes (the simulator's hash) and maps data at exactly those blocks."""
    uuid = x.VDI.get_uuid(disk)
    _, raw = _export(x, master, disk, "raw")
    resp, image = _export(x, master, uuid, "vhd")
    assert resp.status == 200
    assert resp.getheader("content-type") == "application/vhd"
    assert resp.getheader("content-disposition") == f'attachment; filename="{uuid}.vhd"'
    parsed = V.parse(image)
    size = len(raw)
    assert parsed.raw_footer == parsed.trailing_footer
    f = parsed.footer
    assert (f["disk_type"], f["creator_application"], f["creator_version"], f["features"]) == (3, b"caml", 1, 2)
    assert (f["data_offset"], f["current_size"], f["original_size"], f["version"]) == (512, size, size, 0x10000)
    h = parsed.header
    assert (h["table_offset"], h["block_size"], h["max_table_entries"]) == (2048, BLOCK, -(-size // BLOCK))
    assert h["parent_uid"] == bytes(16) and parsed.locators[0][0] == 0
    wanted = V.blocks_with_data(raw)
    assert 0 < len(wanted) < h["max_table_entries"], "the disk is partly allocated"
    assert parsed.allocated() == wanted
    assert all(bits == b"\xff" * 512 for bits in parsed.bitmaps.values())
    bat_bytes = -(-h["max_table_entries"] * 4 // 512) * 512
    assert len(image) == 2048 + bat_bytes + len(wanted) * (512 + BLOCK) + 512
    rebuilt = bytearray(size)
    V.apply(rebuilt, image)
    assert rebuilt == raw

    path = _save(tmp_path, "full.vhd", image)
    info = V.qemu_img("info", "--output=json", "--image-opts", V.vpc(path))
    assert info.returncode == 0 and '"format": "vpc"' in info.stdout, info.stderr
    assert V.qemu_img("convert", "--image-opts", V.vpc(path), "-O", "raw", str(tmp_path / "full.raw")).returncode == 0
    converted = (tmp_path / "full.raw").read_bytes()
    assert converted == raw and hashlib.sha256(converted).hexdigest() == _sha(sim, x, disk)
    assert V.qemu_data_blocks(path) == wanted


def _delta_setup(sim, x, disk):
    """Snapshot s1 of a fresh clone, guest writes into blocks 1 and 5 (one chunk over two) and a
    zero-write of a chunk in an empty block, then snapshot s2."""
    vdi = x.VDI.clone(disk, {})
    s1 = x.VDI.snapshot(vdi, {})
    uuid = x.VDI.get_uuid(vdi)
    H.guest_write(sim, uuid, 1 * BLOCK + 4096, b"\xa5" * 3000)
    H.guest_write(sim, uuid, 5 * BLOCK + MiB - 10, b"\x5a" * 20)   # straddles chunks 10 and 11
    s2 = x.VDI.snapshot(vdi, {})
    return vdi, s1, s2, [1, 5]


def test_delta_vhd_holds_exactly_the_changed_blocks(sim, x, master, disk, tmp_path):
    """vhd_tool_wrapper.ml ``send ?relative_to`` (``--relative-to``), importexport.ml
    ``base_vdi_of_req``; ocaml-vhd f.ml ``Vhd_input.include_block`` (blocks allocated in one chain
    and not the other) and ``vhd_common`` with ``from`` (a *differencing* image: parent unique id,
    time stamp, UTF-16 parent name, one MacX locator at 1536 whose data vhd-tool leaves empty):
    Given snapshots s1 and s2 of our disk with guest writes between them in blocks 1 and 5
    When s2 is exported as VHD with base=s1 (by uuid)
    Then the image is differencing, names its parent (the base's path on its SR, a file:// MacX
    locator of that length at 1536), and allocates exactly blocks 1 and 5 - by our parser and by
    qemu-img map - and applying it over s1's bytes gives s2's bytes."""
    _, s1, s2, changed = _delta_setup(sim, x, disk)
    _, base_raw = _export(x, master, s1, "raw")
    resp, image = _export(x, master, s2, "vhd", base=x.VDI.get_uuid(s1))
    assert resp.status == 200
    parsed = V.parse(image)
    assert parsed.footer["disk_type"] == 4
    assert parsed.allocated() == changed
    assert parsed.header["parent_uid"] != bytes(16)
    sr_uuid = x.SR.get_uuid(x.VDI.get_SR(s1))
    path = f"/var/run/sr-mount/{sr_uuid}/{x.VDI.get_location(s1)}.vhd"
    assert parsed.header["parent_name"] == path
    assert parsed.locators[0] == (0x4D616358, 1, len("file://" + path), 1536)
    assert all(loc == (0, 0, 0, 0) for loc in parsed.locators[1:])
    assert image[1536:2048] == bytes(512)
    assert V.qemu_data_blocks(_save(tmp_path, "delta.vhd", image)) == changed
    rebuilt = bytearray(base_raw)
    V.apply(rebuilt, image)
    assert hashlib.sha256(rebuilt).hexdigest() == _sha(sim, x, s2)

    _, s2_raw = _export(x, master, s2, "raw")
    resp, raw_delta = _export(x, master, s2, "raw", base=s1)   # raw + base: zeros outside the delta
    expected = bytearray(len(s2_raw))
    for b in changed:
        expected[b * BLOCK:(b + 1) * BLOCK] = s2_raw[b * BLOCK:(b + 1) * BLOCK]
    assert resp.status == 200 and raw_delta == expected


def test_unrelated_base_gives_every_block_of_either_disk(sim, x, master, disk, nfs):
    """ocaml-vhd f.ml ``Vhd_input.include_block``: vhd-tool computes the blocks of the two chains'
    symmetric difference, so disks with no common history are not refused: the image holds every
    block either disk allocated, and still turns the base into the disk.
    Given our disk and a VDI.create'd disk with data only in block 6
    When the disk is exported as VHD relative to it
    Then its allocated blocks are the disk's data blocks plus block 6, and applied over the
    unrelated base they give the disk's bytes."""
    size = int(x.VDI.get_virtual_size(disk))
    other = _new_vdi(x, nfs, size)
    H.guest_write(sim, x.VDI.get_uuid(other), 6 * BLOCK + 100, b"\x77" * 100)
    _, raw = _export(x, master, disk, "raw")
    _, other_raw = _export(x, master, other, "raw")
    resp, image = _export(x, master, disk, "vhd", base=other)
    assert resp.status == 200
    assert V.parse(image).allocated() == sorted(set(V.blocks_with_data(raw)) | {6})
    rebuilt = bytearray(other_raw)
    V.apply(rebuilt, image)
    assert rebuilt == raw


def test_base_on_storage_that_is_not_vhd_fails_the_task_after_the_200(sim, x, master, disk):
    """vhd_tool_wrapper.ml ``send``: a base that is no VHD ("base VDI is not a vhd; cannot compute
    differences") or a disk that is none ("Cannot compute differences on non-VHD images") is a
    failwith after export_raw_vdi.ml sent its 200 headers: the task fails with INTERNAL_ERROR and
    http_svr.ml's catch-all (``response_internal_error``) writes its 500 page after the 200 head.
    Given an ISO library image (a plain file) and our disk
    When either is exported as VHD relative to the other
    Then each answer is 200 whose body is that 500 page naming the failure, and the given task
    fails with INTERNAL_ERROR."""
    iso_sr = H.sr_by_name(x, "ISO library")
    iso = x.SR.get_VDIs(iso_sr)[0]
    for vdi, base, message in ((disk, iso, "base VDI is not a vhd"),
                               (iso, disk, "Cannot compute differences on non-VHD images")):
        task = x.task.create("delta", "")
        resp, body = _export(x, master, vdi, "vhd", base=base, task=task)
        assert resp.status == 200
        assert body.startswith(b"HTTP/1.1 500 Internal Error\r\n") and message.encode() in body
        rec = wait_task(x, task)
        assert rec["status"] == "failure" and rec["error_info"][0] == "INTERNAL_ERROR"
        assert message in rec["error_info"][1]


# -- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ("qcow2", "bogus"))
def test_unknown_format_is_404_and_fails_the_task(x, master, disk, fmt):
    """export_raw_vdi.ml: ``Importexport.Format.of_req`` -> `Unknown x: TaskHelper.failed
    INTERNAL_ERROR ["Unknown format x"], Http.http_404_missing ~version:"1.0".  The simulated xapi
    predates XCP-ng's qcow2 wire format, so qcow2 is unknown to it too."""
    task = x.task.create("bad format", "")
    resp, _ = _export(x, master, disk, fmt, task=task)
    assert (resp.status, resp.version) == (404, 10)
    assert wait_task(x, task)["error_info"] == ["INTERNAL_ERROR", f"Unknown format {fmt}"]


def test_vhd_export_over_2040_gib_is_vdi_too_large(x, master, nfs):
    """export_raw_vdi.ml: format=vhd of a VDI over Constants.max_vhd_size (2040 GiB) raises
    VDI_TOO_LARGE [vdi, max] after the 200 headers; xapi_http.ml ``add_handler`` turns it into
    Http_svr.Generic_error "VDI_TOO_LARGE: [ vdi; max ]", whose 500 page http_svr.ml writes.
    Given a 3 TiB VDI made with VDI.create
    When it is exported as VHD
    Then the answer is 200 whose body is that 500 page, and the task fails with
    VDI_TOO_LARGE [vdi, 2040 GiB]."""
    vdi = _new_vdi(x, nfs, 3 << 40)
    task = x.task.create("too large", "")
    resp, body = _export(x, master, vdi, "vhd", task=task)
    assert resp.status == 200
    assert body.startswith(b"HTTP/1.1 500 Internal Error\r\n")
    assert f"VDI_TOO_LARGE: [ {vdi}; {2040 * GiB} ]".encode() in body
    assert wait_task(x, task)["error_info"] == ["VDI_TOO_LARGE", vdi, str(2040 * GiB)]


def test_bad_session_is_401_and_bad_vdi_is_500(x, master, disk):
    """xapi_http.ml ``assert_credentials_ok`` (401, task failed SESSION_AUTHENTICATION_FAILED);
    importexport.ml ``vdi_of_req`` (not a valid ref, so a uuid: UUID_INVALID raised before the
    handler's context exists: http_svr.ml's catch-all answers 500 and the caller's task is not
    touched)."""
    task = x.task.create("bad session", "")
    resp, _ = H.get_all(master, "/export_raw_vdi", {"session_id": "OpaqueRef:nope", "vdi": disk, "task_id": task})
    assert resp.status == 401
    assert wait_task(x, task)["error_info"] == ["SESSION_AUTHENTICATION_FAILED"]
    task = x.task.create("bad vdi", "")
    resp, body = _export(x, master, "OpaqueRef:no-such-vdi", "raw", task=task)
    assert resp.status == 500
    assert b"UUID_INVALID" in body
    assert x.task.get_status(task) == "pending"


def test_member_redirects_to_the_host_that_sees_a_local_sr(sim, x, master):
    """export_raw_vdi.ml ``export_raw`` / import_raw_vdi.ml ``import``: a host that cannot see the
    VDI's SR answers importexport.ml ``return_302_redirect`` to one that can (FACTS §5).
    Given a disk on a pool member's Local storage
    When the master is asked to export and to import it
    Then both answers are 302 to the member's address with the same path and query, and the
    export followed there streams the disk."""
    pool_master = x.pool.get_master(x.pool.get_all()[0])
    local = next(sr for sr in x.SR.get_by_name_label("Local storage")
                 if x.PBD.get_host(x.SR.get_PBDs(sr)[0]) != pool_master)
    member = x.PBD.get_host(x.SR.get_PBDs(local)[0])
    vdi = x.VDI.get_by_uuid(_system_vdi_on(x, local))
    resp, _ = _export(x, master, vdi, "raw")
    assert resp.status == 302
    location = urllib.parse.urlsplit(resp.getheader("Location"))
    assert location.hostname == x.host.get_address(member)
    assert location.path == "/export_raw_vdi" and dict(urllib.parse.parse_qsl(location.query))["vdi"] == vdi
    resp, body = H.get_all(f"http://{location.netloc}", f"{location.path}?{location.query}")
    assert resp.status == 200 and hashlib.sha256(body).hexdigest() == sim.vdi_info(x.VDI.get_uuid(vdi))["sha256"]
    reply = H.put(master, "/import_raw_vdi", {"session_id": H.handle(x), "vdi": vdi}, b"")
    assert reply.status == 302
    assert urllib.parse.urlsplit(reply.headers["location"]).hostname == x.host.get_address(member)


# -- import ---------------------------------------------------------------------------------
def test_vhd_and_raw_imports_round_trip(sim, x, master, disk, nfs):
    """import_raw_vdi.ml ``localhost_handler`` (early 200 with task-id, task result the VDI ref),
    vhd_tool_wrapper.ml ``receive`` (vhd-tool serve: the sectors present in the image):
    Given a full VHD export of our disk and a delta (s1 -> s2)
    When the full image is imported into an empty VDI, then the delta into that VDI, and the raw
    bytes of s2 into another empty VDI
    Then each import answers 200 before the body, its task's result is the target VDI, and the
    targets' bytes equal s1's, then s2's, and s2's."""
    _, s1, s2, _ = _delta_setup(sim, x, disk)
    size = x.VDI.get_virtual_size(s1)
    _, full = _export(x, master, s1, "vhd")
    _, delta = _export(x, master, s2, "vhd", base=s1)
    _, raw = _export(x, master, s2, "raw")
    target, other = _new_vdi(x, nfs, size), _new_vdi(x, nfs, size)
    for vdi, fmt, body, expected in ((target, "vhd", full, s1), (target, "vhd", delta, s2), (other, "raw", raw, s2)):
        task = x.task.create("import", "")
        reply = H.put(master, "/import_raw_vdi", {"session_id": H.handle(x), "vdi": x.VDI.get_uuid(vdi),
                                                  "format": fmt, "task_id": task}, body)
        assert reply.status == 200 and "content-length" not in reply.headers
        assert reply.headers["task-id"] == task
        rec = wait_task(x, task)
        assert (rec["status"], rec["result"]) == ("success", f"<value>{vdi}</value>")
        assert _sha(sim, x, vdi) == _sha(sim, x, expected)


def test_tar_export_and_tar_and_chunked_imports_round_trip(sim, x, master, disk, nfs):
    """export_raw_vdi.ml Tar branch (``Stream_vdi.send_all`` under Xapi_globs.vdi_tar_export_dir
    "vdi", then ``Tar_unix.write_end``; content-type application/x-tar), import_raw_vdi.ml Tar
    branch (``Stream_vdi.recv_all_vdi``, inline checksums) and the raw ``chunked`` protocol
    (vhd-tool cli/chunked.ml: offset u64 LE, length u32 LE, data; a zero length ends it):
    Given our disk
    When it is exported as tar, and that tar and a chunked stream of its data chunks are
    imported into two empty VDIs
    Then the tar holds vdi/NNNNNNNN chunks each followed by its .xxhash (first and last chunk
    always, zero chunks skipped) and ends with the tar end; both imports give the disk's bytes."""
    uuid = x.VDI.get_uuid(disk)
    resp, tar = _export(x, master, disk, "tar")
    assert resp.getheader("content-type") == "application/x-tar"
    assert resp.getheader("content-disposition") == f'attachment; filename="{uuid}.tar"'
    names = [m.name for m in tarfile.open(fileobj=io.BytesIO(tar), mode="r:")]
    _, raw = _export(x, master, disk, "raw")
    data_chunks = [k for k in range(len(raw) // MiB) if raw[k * MiB:(k + 1) * MiB].count(0) != MiB]
    wanted = sorted(set(data_chunks) | {0, len(raw) // MiB - 1})
    assert names == [n for k in wanted for n in (f"vdi/{k:08d}", f"vdi/{k:08d}.xxhash")]
    assert tar.endswith(bytes(1024))
    chunked = b"".join(struct.pack("<QI", k * MiB, MiB) + raw[k * MiB:(k + 1) * MiB] for k in data_chunks)
    chunked += struct.pack("<QI", 0, 0)
    size = int(x.VDI.get_virtual_size(disk))
    for fmt, params, body in (("tar", {"format": "tar"}, tar), ("chunked", {"chunked": ""}, chunked)):
        target = _new_vdi(x, nfs, size)
        task = x.task.create(f"{fmt} import", "")
        reply = H.put(master, "/import_raw_vdi", {"session_id": H.handle(x), "vdi": target, "task_id": task,
                                                  **params}, body)
        assert reply.status == 200
        assert wait_task(x, task)["status"] == "success", fmt
        assert _sha(sim, x, target) == _sha(sim, x, disk), fmt


def test_raw_import_with_an_sr_makes_an_imported_vdi(sim, x, master, nfs):
    """import_raw_vdi.ml: no vdi, format raw, sr_uuid and a Content-Length -> Client.VDI.create
    ~name_label:"Imported VDI" ~virtual_size:length ~_type:`user; the task's result is it."""
    data = bytes(3 * MiB) + b"\x42" * MiB + bytes(MiB)
    task = x.task.create("import into sr", "")
    reply = H.put(master, "/import_raw_vdi", {"session_id": H.handle(x), "sr_uuid": x.SR.get_uuid(nfs),
                                              "task_id": task}, data)
    assert reply.status == 200
    rec = wait_task(x, task)
    vdi = rec["result"].removeprefix("<value>").removesuffix("</value>")
    assert x.VDI.get_name_label(vdi) == "Imported VDI" and x.VDI.get_SR(vdi) == nfs
    assert (x.VDI.get_virtual_size(vdi), x.VDI.get_type(vdi)) == (str(len(data)), "user")
    assert _sha(sim, x, vdi) == hashlib.sha256(data).hexdigest()
    assert int(x.VDI.get_physical_utilisation(vdi)) == MiB


def test_raw_import_of_zeros_over_zeros_writes_nothing(sim, x, master, nfs):
    """import_raw_vdi.ml passes ``prezeroed`` to vhd-tool serve, which then skips zero blocks: only
    the data reaches the disk, as changed block tracking shows.
    Given an empty VDI with CBT on and a snapshot of it
    When a raw image that is zeros except chunk 5 is imported, then the VDI snapshotted again
    Then list_changed_blocks between the snapshots is exactly the 16 64-KiB blocks of chunk 5."""
    vdi = _new_vdi(x, nfs, 16 * MiB)
    x.VDI.enable_cbt(vdi)
    before = x.VDI.snapshot(vdi, {})
    data = bytearray(16 * MiB)
    data[5 * MiB: 6 * MiB] = b"\x99" * MiB
    task = x.task.create("sparse import", "")
    assert H.put(master, "/import_raw_vdi", {"session_id": H.handle(x), "vdi": vdi, "task_id": task},
                 bytes(data)).status == 200
    assert wait_task(x, task)["status"] == "success"
    after = x.VDI.snapshot(vdi, {})
    bitmap = base64.b64decode(x.VDI.list_changed_blocks(before, after))
    changed = [i for i in range(len(bitmap) * 8) if bitmap[i // 8] >> (7 - i % 8) & 1]
    assert changed == list(range(5 * 16, 6 * 16))


def test_import_refusals(sim, x, master, nfs, tmp_path):
    """import_raw_vdi.ml ``localhost_handler`` / ``import``: Transfer-Encoding -> 404 + INTERNAL_ERROR
    ["Cannot handle encoding: chunked"]; chunked flag with vhd -> 404 "Cannot handle chunked VHD";
    vhd without a vdi -> 400 "Importing a VHD directly into an SR not yet supported"; neither vdi
    nor SR -> 400 + VDI_MISSING []; a body that is no dynamic VHD (a fixed one: vhd-format reads
    the footer copy at 0) -> the task fails with VDI_IO_ERROR (vhd_qcow_parsing.ml ``run_tool``)."""
    vdi = _new_vdi(x, nfs, 4 * MiB)
    cases = (
        ({"vdi": vdi}, {"Transfer-Encoding": "chunked"}, 404, ["INTERNAL_ERROR", "Cannot handle encoding: chunked"]),
        ({"vdi": vdi, "format": "vhd", "chunked": "true"}, {}, 404, ["INTERNAL_ERROR", "Cannot handle chunked VHD"]),
        ({"sr_id": nfs, "format": "vhd"}, {}, 400,
         ["INTERNAL_ERROR", "Importing a VHD directly into an SR not yet supported"]),
        ({}, {}, 400, ["VDI_MISSING"]),
    )
    for params, headers, status, error in cases:
        task = x.task.create("refused import", "")
        reply = H.put(master, "/import_raw_vdi", {"session_id": H.handle(x), "task_id": task, **params},
                      b"x" * 1024, headers=headers, content_length=not headers)
        assert reply.status == status, params
        assert wait_task(x, task)["error_info"] == error
    made = V.qemu_img("create", "-f", "vpc", "-o", "subformat=fixed", str(tmp_path / "fixed.vhd"), "4M")
    assert made.returncode == 0, made.stderr
    fixed = (tmp_path / "fixed.vhd").read_bytes()   # the disk's bytes, then a footer: no copy at 0
    task = x.task.create("fixed vhd", "")
    assert H.put(master, "/import_raw_vdi", {"session_id": H.handle(x), "task_id": task, "vdi": vdi,
                                             "format": "vhd"}, fixed).status == 200
    rec = wait_task(x, task)
    assert rec["status"] == "failure" and rec["error_info"][0] == "VDI_IO_ERROR"


# -- big, slow, cancelled -------------------------------------------------------------------
def _vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))


def test_sparse_64_gib_disk_exports_as_vhd_quickly_in_little_memory(fresh_sim):
    """vhd-tool streams only allocated blocks (f.ml ``vhd_common``): a 64 GiB disk with three
    small writes is a VHD of three blocks plus a 128 KiB BAT.
    Given a simulator and a 64 GiB VDI with writes at 0, 20 GiB + 5 and 64 GiB - 1 KiB
    When it is exported as VHD
    Then the image (three blocks) arrives within seconds, qemu-img maps exactly those blocks,
    and the simulator's peak RSS stays small (under 200 MB)."""
    sim = fresh_sim("--pools", "1", "--vms-per-pool", "1", "--hosts-per-pool", "1", "--disk-mib", "16")
    x = H.api(sim.session(0))
    vdi = _new_vdi(x, H.sr_by_name(x, "nfs-shared"), 64 * GiB)
    for offset in (0, 20 * GiB + 5, 64 * GiB - 1024):
        H.guest_write(sim, x.VDI.get_uuid(vdi), offset, b"\x11" * 512)
    began = time.monotonic()
    resp, image = _export(x, sim.pool(0)["master"], vdi, "vhd")
    elapsed = time.monotonic() - began
    assert resp.status == 200
    blocks = [0, (20 * GiB + 5) // BLOCK, (64 * GiB - 1024) // BLOCK]
    assert V.parse(image).allocated() == blocks
    assert len(image) == 2048 + 32768 * 4 + 3 * (512 + BLOCK) + 512
    assert elapsed < 10, f"{elapsed:.1f}s for three blocks"
    assert _vm_hwm_kib(sim.pid) < 200 * 1024


def test_export_is_throttled_reports_progress_and_can_be_cancelled(fresh_sim):
    """export_raw_vdi.ml (``Vhd_tool_wrapper.update_task_progress``; the task is cancellable,
    taskHelper.ml TASK_CANCELLED): the export goes at the host's bandwidth, its task's progress
    moves, and task.cancel ends it.
    Given a simulator with hosts capped at 2 MB/s and a 16 MiB disk
    When its raw export has started and the task is cancelled after about a second
    Then progress was between 0 and 1 meanwhile, the body stops short and the task is cancelled."""
    sim = fresh_sim("--pools", "1", "--vms-per-pool", "1", "--hosts-per-pool", "1", "--disk-mib", "16",
                    "--host-bandwidth-mbps", "2")
    x = H.api(sim.session(0))
    vm = next(iter(H.user_vms(x)))
    vdi = x.VDI.clone(x.VDI.get_by_uuid(H.vm_disks(x, vm)[0][1]["uuid"]), {})
    task = x.task.create("slow export", "")
    resp = H.get(sim.pool(0)["master"], "/export_raw_vdi",
                 {"session_id": H.handle(x), "vdi": vdi, "task_id": task})
    got = len(resp.read(MiB))
    time.sleep(1)
    progress = x.task.get_progress(task)
    x.task.cancel(task)
    try:
        while piece := resp.read(MiB):
            got += len(piece)
    except OSError:
        pass
    resp.close()
    resp.connection_.close()
    assert 0 < progress < 1
    assert got < 16 * MiB
    assert wait_task(x, task)["status"] == "cancelled"


def test_stats_count_exported_and_imported_bytes(sim, x, master, disk, nfs):
    """The simulator's own counters (GET /sim/stats, tinabs_tasks/sim/control.py): bytes served by
    /export_raw_vdi and written by /import_raw_vdi, per pool."""
    before = sim.control_call("GET", "/sim/stats")[1]["pools"][sim.pool(0)["name"]]
    _, image = _export(x, master, disk, "vhd")
    target = _new_vdi(x, nfs, int(x.VDI.get_virtual_size(disk)))
    task = x.task.create("import", "")
    H.put(master, "/import_raw_vdi", {"session_id": H.handle(x), "vdi": target, "format": "vhd", "task_id": task},
          image)
    assert wait_task(x, task)["status"] == "success"
    after = sim.control_call("GET", "/sim/stats")[1]["pools"][sim.pool(0)["name"]]
    assert after["exported_bytes"] - before["exported_bytes"] == len(image)
    allocated = len(V.parse(image).allocated()) * BLOCK
    assert after["imported_bytes"] - before["imported_bytes"] == allocated
