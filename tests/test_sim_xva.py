"""The XVA the simulator streams, parsed by an independent reader (FACTS.md §7), and disk contents.

Every VM exported here is one the test made itself (a clone of a snapshot of
an inventory VM, with its data disks dropped or small disks of its own added),
so the shared inventory never changes and exports stay a few MiB.
"""
from __future__ import annotations

import io
import json
import re
import xmlrpc.client
from pathlib import Path

import pytest

from helpers import xapi_http as H
from helpers.sim_proc import wait_task
from helpers.xva_parse import CHUNK, read_xva, xxhash_text

MiB = 1 << 20
METHODS = Path("/work/shared/xapi/methods.json")
EXPORTED_CLASSES = ("VM", "VBD", "VIF", "VDI", "SR", "network")


def export(sim, x, vm: str, pool: int = 0, **params):
    resp = H.get(sim.pool(pool)["master"], "/export", {"session_id": H.handle(x), "ref": vm, **params})
    try:
        assert resp.status == 200, (resp.status, resp.read())
        return read_xva(resp)
    finally:
        resp.close()
        resp.connection_.close()


def export_bytes(sim, x, vm: str, pool: int = 0) -> bytes:
    resp, body = H.get_all(sim.pool(pool)["master"], "/export", {"session_id": H.handle(x), "ref": vm})
    assert resp.status == 200, body
    return body


@pytest.fixture(scope="module")
def x(sim):
    return H.api(sim.session(0))


@pytest.fixture(scope="module")
def halted_source(x):
    return next(ref for ref, rec in H.user_vms(x).items() if rec["power_state"] == "Halted")


@pytest.fixture(scope="module")
def small_vm(x, halted_source):
    """A halted VM of our own with only its 16 MiB system disk."""
    return H.own_vm(x, "xva small", halted_source)


def api_ref_of(x, obj: dict) -> str:
    return getattr(x, obj["class"]).get_by_uuid(obj["snapshot"]["uuid"])


# -- the order of disks -------------------------------------------------------
def test_disks_stream_in_string_order_of_their_ref_ids(sim, x, halted_source):
    """Given a VM whose next export gives its VDIs ids on both sides of a power of ten
    When it is exported
    Then its disks stream in string order of their Ref ids (Ref:10 before Ref:9), not numeric order."""
    vm = H.own_vm(x, "xva order", halted_source)
    nfs = H.sr_by_name(x, "nfs-shared")
    for dev in ("1", "2", "4"):
        H.add_disk(sim, x, vm, 2 * MiB, dev, nfs, [(MiB + 17, b"order" + dev.encode())])
    master = sim.pool(0)["master"]

    def metadata_ids(**params) -> list[tuple[str, str]]:
        resp, body = H.get_all(master, "/export_metadata",
                               {"session_id": H.handle(x), "ref": vm, "export_snapshots": "false", **params})
        assert resp.status == 200, body
        return [(o["class"], o["id"]) for o in read_xva(io.BytesIO(body)).header["objects"]]

    probe = metadata_ids()          # the same objects, so the same id layout, as the export will use
    numbers = [int(i.split(":")[1]) for _, i in probe]
    base = min(numbers)
    vdi_rel = sorted(int(i.split(":")[1]) - base for cls, i in probe if cls == "VDI")
    assert len(vdi_rel) == 4
    next_id = max(numbers) + 1
    boundary = 10
    while boundary - vdi_rel[1] < next_id:
        boundary *= 10
    wanted_base = boundary - vdi_rel[1]   # the two lowest VDI ids then straddle the boundary
    # xapi's id counter is process-global: each metadata export of the bare VM uses one id
    for _ in range(wanted_base - next_id):
        assert len(metadata_ids(excluded_device_types="vbd,vif")) == 1

    xva = export(sim, x, vm)

    vdi_ids = [o["id"] for o in xva.objects("VDI")]
    numeric = sorted(vdi_ids, key=lambda i: int(i.split(":")[1]))
    assert list(xva.disks) == sorted(vdi_ids)
    assert sorted(vdi_ids) != numeric, f"ids {vdi_ids} do not straddle a power of ten"
    for uuid, disk in xva.disk_by_vdi_uuid().items():
        assert disk.sha256 == sim.vdi_info(uuid)["sha256"]


# -- ova.xml ------------------------------------------------------------------
def test_ova_xml_is_the_first_member_and_a_bare_xmlrpc_value(sim, x, small_vm):
    """Given a halted VM
    When it is exported
    Then the first member is ova.xml: one XML-RPC <value> without <?xml?>, with a full version
    struct (ints as bare strings) and objects that are {class, id, snapshot}."""
    master_host = x.pool.get_master(x.pool.get_all()[0])

    xva = export(sim, x, small_vm)

    assert xva.names[0] == "ova.xml"
    assert xva.ova_xml.startswith(b"<value><struct>") and b"<?xml" not in xva.ova_xml
    assert not re.search(rb"<(i4|i8|int|nil)>", xva.ova_xml), "ints must be bare strings"
    version = xva.header["version"]
    assert set(version) == {"hostname", "date", "product_version", "product_brand", "build_number",
                            "xapi_major", "xapi_minor", "export_vsn"}
    assert version["export_vsn"] == "2"
    assert version["xapi_major"].isdigit() and version["xapi_minor"].isdigit()
    assert all(isinstance(v, str) for v in version.values())
    software = x.host.get_software_version(master_host)
    assert version["product_version"] == software["product_version"]
    assert version["product_brand"] == software["product_brand"]
    assert version["hostname"] == x.host.get_hostname(master_host)
    ids = [o["id"] for o in xva.header["objects"]]
    assert len(ids) == len(set(ids)) and all(re.fullmatch(r"Ref:\d+", i) for i in ids)
    assert all(set(o) == {"class", "id", "snapshot"} for o in xva.header["objects"])
    assert {o["class"] for o in xva.header["objects"]} >= set(EXPORTED_CLASSES)
    assert [o["snapshot"]["uuid"] for o in xva.objects("VM")] == [x.VM.get_uuid(small_vm)]


def _datamodel_fields(cls: str) -> set[str]:
    if METHODS.exists():
        return set(json.loads(METHODS.read_text())[cls]["fields"])
    return set()


# What /export changes in the records (FACTS.md §7.4); every other field must equal the live record.
_EXPORT_OVERRIDES = {
    "VM": {"power_state": "Halted", "is_a_snapshot": False, "snapshot_of": H.NULL, "snapshots": [],
           "parent": H.NULL, "snapshot_time": xmlrpc.client.DateTime("19700101T00:00:00Z"),
           "current_operations": {}, "allowed_operations": [], "consoles": [], "crash_dumps": [], "blobs": {},
           "protection_policy": H.NULL},
    "VBD": {"currently_attached": False, "current_operations": {}, "allowed_operations": []},
    "VIF": {"currently_attached": False, "current_operations": {}, "allowed_operations": []},
    "VDI": {"current_operations": {}, "allowed_operations": []},
    "SR": {"PBDs": [], "current_operations": {}, "allowed_operations": []},
    "network": {"PIFs": [], "current_operations": {}, "allowed_operations": []},
}


def test_records_are_full_and_refs_are_rewritten(sim, x):
    """Given a snapshot (system disk only) of a running VM with VIFs
    When the snapshot is exported
    Then every object carries every datamodel field; refs to exported objects are Ref:N, all other
    refs are OpaqueRef:NULL; the VM says Halted, not a snapshot, snapshot_of NULL; VBDs and VIFs
    are detached; and every other field equals the live record, value and type."""
    running = next(ref for ref, rec in H.user_vms(x).items() if rec["power_state"] == "Running")
    skip = [vdi["uuid"] for vbd, vdi in H.vm_disks(x, running) if vbd["userdevice"] != "0"]
    snap = x.VM.snapshot(running, "xva records", [x.VDI.get_by_uuid(u) for u in skip])

    xva = export(sim, x, snap)

    assert not re.search(rb"OpaqueRef:(?!NULL)", xva.ova_xml), "a live ref leaked into ova.xml"
    objects = [o for o in xva.header["objects"] if o["class"] in EXPORTED_CLASSES]
    ref_to_id = {api_ref_of(x, o): o["id"] for o in objects}
    assert {o["class"] for o in objects} == set(EXPORTED_CLASSES)
    for obj in objects:
        cls, record = obj["class"], obj["snapshot"]
        live = getattr(x, cls).get_record(api_ref_of(x, obj))
        expected_fields = set(live) | _datamodel_fields(cls)
        assert expected_fields - set(record) == set(), f"{cls} lacks fields"
        overrides = _EXPORT_OVERRIDES[cls]
        for field, value in live.items():
            got = record[field]
            if field in overrides:
                assert got == overrides[field], (cls, field, got)
            elif isinstance(value, str) and value.startswith("OpaqueRef:"):
                assert got == ref_to_id.get(value, H.NULL), (cls, field, value, got)
            elif isinstance(value, list) and value and all(str(v).startswith("OpaqueRef:") for v in value):
                assert sorted(got) == sorted(ref_to_id[v] for v in value if v in ref_to_id), (cls, field)
            else:
                assert type(got) is type(value) and got == value, (cls, field, value, got)
    vm = xva.objects("VM")[0]["snapshot"]
    assert vm["uuid"] == x.VM.get_uuid(snap)
    assert isinstance(vm["memory_static_max"], str) and vm["memory_static_max"].isdigit()
    assert vm["snapshot_time"] == xmlrpc.client.DateTime("19700101T00:00:00Z")
    assert sorted(vm["VBDs"]) == sorted(o["id"] for o in xva.objects("VBD"))
    assert sorted(vm["VIFs"]) == sorted(o["id"] for o in xva.objects("VIF"))
    assert len(vm["VIFs"]) >= 1 and len(xva.objects("VDI")) == 1
    assert all(o["snapshot"]["VM"] == xva.objects("VM")[0]["id"] for o in xva.objects("VBD") + xva.objects("VIF"))


# -- chunks -------------------------------------------------------------------
def _nonzero_chunks(data: bytes) -> set[int]:
    chunks = (data[k:k + CHUNK] for k in range(0, len(data), CHUNK))
    return {k for k, chunk in enumerate(chunks) if chunk.count(0) != len(chunk)}


def test_chunks_skip_zeros_except_first_and_last_and_rebuild_the_disks(sim, x, halted_source):
    """Given a VM with its system disk, a 5 MiB+4 KiB disk written only in its middle and a
    3 MiB+512 B disk written only in its short last chunk
    When it is exported
    Then each chunk member is followed by a correct .xxhash, all-zero chunks are skipped except the
    first and last, the numbers are the chunk offsets, and every disk rebuilds to the exact bytes
    (and sha256) of the VDI it came from; the tar ends with two zero blocks."""
    vm = H.own_vm(x, "xva chunks", halted_source)
    nfs = H.sr_by_name(x, "nfs-shared")
    H.add_disk(sim, x, vm, 5 * MiB + 4096, "1", nfs, [(2 * MiB + 100, b"\x01middle")])
    H.add_disk(sim, x, vm, 3 * MiB + 512, "2", nfs, [(3 * MiB + 500, b"tail\xff")])
    disks = {vdi["uuid"]: vdi for _, vdi in H.vm_disks(x, vm)}

    xva = export(sim, x, vm)

    by_uuid = xva.disk_by_vdi_uuid()
    assert set(by_uuid) == set(disks)
    for uuid, disk in by_uuid.items():
        expected = sim.vdi_bytes(uuid)
        last = (len(expected) - 1) // CHUNK
        assert disk.written == len(expected) == int(disks[uuid]["virtual_size"])
        assert disk.data == expected, f"disk {uuid} rebuilt wrongly"
        assert disk.sha256 == sim.vdi_info(uuid)["sha256"]
        assert disk.numbers == sorted(_nonzero_chunks(expected) | {0, last})
        assert disk.numbers_are_offsets and not disk.empty_members
        assert set(disk.zero_members) <= {0, last}
        assert disk.lengths[-1] == len(expected) - last * CHUNK
    tail_disk = next(d for u, d in by_uuid.items() if disks[u]["virtual_size"] == str(3 * MiB + 512))
    mid_disk = next(d for u, d in by_uuid.items() if disks[u]["virtual_size"] == str(5 * MiB + 4096))
    assert tail_disk.numbers == [0, 3] and tail_disk.zero_members == [0] and tail_disk.lengths == [MiB, 512]
    assert mid_disk.numbers == [0, 2, 5] and mid_disk.zero_members == [0, 5]
    assert xxhash_text(b"") == b"EF46DB3751D8E999"  # the parser's checksum really is XXH64, seed 0


def test_cd_drives_are_not_streamed(sim, x, halted_source):
    """Given a VM with a CD drive holding an image that lives on a normal (non-ISO) SR
    When it is exported and the XVA imported again
    Then only the system disk is streamed (FACTS §7.2: VBD type <> CD), the CD drive is still
    described in ova.xml, and the import recreates the VM with its CD drive."""
    vm = H.own_vm(x, "xva cd", halted_source)
    image = x.VDI.create({"name_label": "cd image", "name_description": "", "SR": H.sr_by_name(x, "nfs-shared"),
                          "virtual_size": str(2 * MiB), "type": "user", "sharable": False, "read_only": True,
                          "other_config": {}})
    H.guest_write(sim, x.VDI.get_uuid(image), 0, b"CD001")
    x.VBD.create({"VM": vm, "VDI": image, "userdevice": "3", "bootable": False, "mode": "RO", "type": "CD",
                  "empty": False, "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})
    ((_, system),) = H.vm_disks(x, vm)
    body = export_bytes(sim, x, vm)

    xva = read_xva(io.BytesIO(body))
    _, task = _import(sim, x, body, sr_id=H.sr_by_name(x, "nfs-shared"))

    assert list(xva.disk_by_vdi_uuid()) == [system["uuid"]]
    assert sorted(o["snapshot"]["type"] for o in xva.objects("VBD")) == ["CD", "Disk"]
    assert task["status"] == "success", task["error_info"]
    (new,) = _vm_refs(task["result"])
    assert sorted(x.VBD.get_type(b) for b in x.VM.get_VBDs(new)) == ["CD", "Disk"]


def test_tar_framing_is_exact(sim, x, small_vm):
    """Given a halted VM
    When its XVA is read as raw bytes
    Then it is a whole number of 512-byte blocks ending in exactly two zero blocks."""
    body = export_bytes(sim, x, small_vm)

    assert len(body) % 512 == 0
    assert body[-1024:] == bytes(1024) and body[-1536:-1024] != bytes(512)
    assert read_xva(io.BytesIO(body)).size == len(body)


def test_seeded_data_disk_rebuilds_with_its_virtual_size_and_sha256(sim, x):
    """Given a VM with a system disk and a real (sparse, seeded) data disk of a few GiB
    When it is exported
    Then the data disk rebuilds sequentially to its virtual_size with the sha256 the simulator reports."""
    source, device = next((vm, vbd["userdevice"]) for vm in H.user_vms(x) for vbd, vdi in H.vm_disks(x, vm)
                          if vbd["userdevice"] != "0" and int(vdi["virtual_size"]) <= 4 << 30)
    vm = H.own_vm(x, "xva data", source, keep=lambda ref, rec: rec["userdevice"] in ("0", device))
    disks = {vdi["uuid"]: vdi for _, vdi in H.vm_disks(x, vm)}
    assert len(disks) == 2

    xva = export(sim, x, vm)

    for uuid, disk in xva.disk_by_vdi_uuid().items():
        info = sim.vdi_info(uuid)
        assert disk.written == disk.virtual_size == info["virtual_size"] == int(disks[uuid]["virtual_size"])
        assert disk.sha256 == info["sha256"]
        assert set(disk.zero_members) <= {0, disk.virtual_size // CHUNK - 1}
    big = next(d for d in xva.disks.values() if d.virtual_size > 1 << 30)
    assert len(big.numbers) < big.virtual_size // CHUNK // 10, "a sparse disk must skip its zero chunks"


def test_keepalive_members_make_numbers_differ_from_offsets(fresh_sim):
    """Given a simulator that sends an empty keep-alive member at every skipped zero chunk
    When a VM with zero chunks is exported
    Then empty members appear, member numbers stop being offsets, and a sequential rebuild still
    gives the VDI's exact bytes."""
    sim = fresh_sim("--pools", "1", "--vms-per-pool", "2", "--hosts-per-pool", "1", "--disk-mib", "16",
                    "--export-keepalive", "0")
    x = H.api(sim.session(0))
    vm = H.own_vm(x, "keepalive", next(iter(H.user_vms(x))))
    nfs = H.sr_by_name(x, "nfs-shared")
    H.add_disk(sim, x, vm, 6 * MiB, "1", nfs, [(4 * MiB, b"after the gap")])

    xva = export(sim, x, vm)

    assert len(xva.disks) == 2
    for uuid, disk in xva.disk_by_vdi_uuid().items():
        expected = sim.vdi_bytes(uuid)
        assert disk.empty_members, "keep-alive 0 must produce empty members"
        assert not disk.numbers_are_offsets
        assert disk.data == expected
        assert disk.sha256 == sim.vdi_info(uuid)["sha256"]


# -- disk contents ------------------------------------------------------------
def test_disk_contents_follow_snapshots_writes_and_copies(sim, x, halted_source):
    """Given two different VDIs, a snapshot and a copy of one of them
    When the guest writes to the source
    Then different VDIs hash differently, the snapshot and the copy kept the old bytes and the
    source's export shows the write."""
    other_vm = H.own_vm(x, "xva content", halted_source)
    (_, vdi), = H.vm_disks(x, other_vm)
    unrelated = next(d for vm in H.user_vms(x) for b, d in H.vm_disks(x, vm) if b["userdevice"] == "0"
                     and vm != halted_source and int(d["virtual_size"]) == int(vdi["virtual_size"]))
    ref = x.VDI.get_by_uuid(vdi["uuid"])
    snap = x.VDI.snapshot(ref, {})
    copy = x.VDI.copy(ref, H.sr_by_name(x, "backup-sr"), H.NULL, H.NULL)
    before = sim.vdi_info(vdi["uuid"])["sha256"]
    snap_uuid, copy_uuid = x.VDI.get_uuid(snap), x.VDI.get_uuid(copy)
    assert sim.vdi_info(unrelated["uuid"])["sha256"] != before
    assert sim.vdi_info(snap_uuid)["sha256"] == before
    assert sim.vdi_info(copy_uuid)["sha256"] == before

    H.guest_write(sim, vdi["uuid"], 4096, bytes.fromhex("deadbeef"))

    assert sim.vdi_info(vdi["uuid"])["sha256"] != before
    assert sim.vdi_info(snap_uuid)["sha256"] == before
    assert sim.vdi_info(copy_uuid)["sha256"] == before
    disk = export(sim, x, other_vm).disk_by_vdi_uuid()[vdi["uuid"]]
    assert disk.data[4096:4100] == bytes.fromhex("deadbeef")
    assert disk.sha256 == sim.vdi_info(vdi["uuid"])["sha256"]


# -- import round trips -------------------------------------------------------
def _import(sim, x, body: bytes, path="/import", pool: int = 0, **params):
    task = x.task.create("test import", "")
    reply = H.put(sim.pool(pool)["master"], path, {"session_id": H.handle(x), "task_id": task, **params}, body)
    assert reply.status == 200 and reply.headers.get("task-id") == task, reply
    rec = wait_task(x, task)
    return reply, rec


def _vm_refs(result: str) -> list[str]:
    assert result.startswith("<value><array><data>") and result.endswith("</data></array></value>"), result
    (refs,), _ = xmlrpc.client.loads(f"<methodResponse><params><param>{result}</param></params></methodResponse>")
    return refs


SKELETON = ("name_label", "name_description", "VCPUs_max", "VCPUs_at_startup", "VCPUs_params", "memory_static_max",
            "memory_static_min", "memory_dynamic_max", "memory_dynamic_min", "platform", "HVM_boot_policy",
            "HVM_boot_params", "tags", "ha_restart_priority", "domain_type", "actions_after_crash")


def _vifs(x, vm) -> list[dict]:
    return sorted((x.VIF.get_record(v) for v in x.VM.get_VIFs(vm)), key=lambda r: r["device"])


@pytest.fixture(scope="module")
def round_trip_vm(sim, x, halted_source):
    """A halted VM with tags, HA priority, boot order/delays, its system disk and an odd-sized disk."""
    vm = H.own_vm(x, "xva round trip", halted_source)
    x.VM.set_tags(vm, ["Mon", "round-trip"])
    x.VM.set_ha_restart_priority(vm, "best-effort")
    x.VM.set_order(vm, "3")
    x.VM.set_start_delay(vm, "20")
    x.VM.set_shutdown_delay(vm, "15")
    H.add_disk(sim, x, vm, 5 * MiB + 4096, "1", H.sr_by_name(x, "nfs-shared"),
               [(100, b"boot"), (5 * MiB + 10, b"end of disk")])
    return vm


def test_import_round_trip_recreates_the_vm(sim, x, round_trip_vm):
    """Given the XVA of a halted VM
    When it is PUT to /import with sr_id of nfs-shared
    Then the task result is the XML array of one new VM ref, the VM has the same skeleton, VBDs,
    networks and MTUs and identical disk bytes, fresh MACs, and order/delays reset to 0."""
    body = export_bytes(sim, x, round_trip_vm)
    nfs = H.sr_by_name(x, "nfs-shared")

    _, task = _import(sim, x, body, sr_id=nfs)

    assert task["status"] == "success", task["error_info"]
    (new,) = _vm_refs(task["result"])
    old_rec, new_rec = x.VM.get_record(round_trip_vm), x.VM.get_record(new)
    assert new != round_trip_vm and new_rec["uuid"] != old_rec["uuid"]
    for field in SKELETON:
        assert new_rec[field] == old_rec[field], field
    assert new_rec["power_state"] == "Halted" and not new_rec["is_a_template"]
    assert (new_rec["order"], new_rec["start_delay"], new_rec["shutdown_delay"]) == ("0", "0", "0")
    old_disks, new_disks = H.vm_disks(x, round_trip_vm), H.vm_disks(x, new)
    assert [(b["userdevice"], b["type"], b["bootable"], b["mode"]) for b, _ in new_disks] == \
        [(b["userdevice"], b["type"], b["bootable"], b["mode"]) for b, _ in old_disks]
    for (_, old_vdi), (_, new_vdi) in zip(old_disks, new_disks):
        assert new_vdi["uuid"] != old_vdi["uuid"] and new_vdi["SR"] == nfs
        assert new_vdi["virtual_size"] == old_vdi["virtual_size"]
        assert sim.vdi_info(new_vdi["uuid"])["sha256"] == sim.vdi_info(old_vdi["uuid"])["sha256"]
    old_vifs, new_vifs = _vifs(x, round_trip_vm), _vifs(x, new)
    assert [(v["device"], v["network"], v["MTU"]) for v in new_vifs] == \
        [(v["device"], v["network"], v["MTU"]) for v in old_vifs]
    assert not {v["MAC"] for v in new_vifs} & {v["MAC"] for v in old_vifs}


def test_import_with_restore_keeps_macs_and_sr_uuid_selects_the_sr(sim, x, round_trip_vm):
    """Given the XVA of a halted VM
    When it is imported with restore=true and sr_uuid of backup-sr
    Then the MACs are kept and the disks land on backup-sr."""
    body = export_bytes(sim, x, round_trip_vm)
    backup = H.sr_by_name(x, "backup-sr")

    _, task = _import(sim, x, body, sr_uuid=x.SR.get_uuid(backup), restore="true")

    assert task["status"] == "success", task["error_info"]
    (new,) = _vm_refs(task["result"])
    assert [v["MAC"] for v in _vifs(x, new)] == [v["MAC"] for v in _vifs(x, round_trip_vm)]
    assert {vdi["SR"] for _, vdi in H.vm_disks(x, new)} == {backup}


def test_import_without_sr_uses_the_pool_default_sr_and_other_pool_networks_by_bridge(sim, x, round_trip_vm):
    """Given the XVA of a VM of pool-a
    When it is imported into pool-b without sr_id/sr_uuid
    Then its disks land on pool-b's default SR, byte-identical, and its VIFs join pool-b's networks
    with the same bridges and MTUs."""
    body = export_bytes(sim, x, round_trip_vm)
    xb = H.api(sim.session(1))
    default_sr = xb.pool.get_default_SR(xb.pool.get_all()[0])

    _, task = _import(sim, xb, body, pool=1)

    assert task["status"] == "success", task["error_info"]
    (new,) = _vm_refs(task["result"])
    assert {vdi["SR"] for _, vdi in H.vm_disks(xb, new)} == {default_sr}
    for (_, old_vdi), (_, new_vdi) in zip(H.vm_disks(x, round_trip_vm), H.vm_disks(xb, new)):
        assert sim.vdi_info(new_vdi["uuid"])["sha256"] == sim.vdi_info(old_vdi["uuid"])["sha256"]
    old = [(v["device"], x.network.get_bridge(v["network"]), v["MTU"]) for v in _vifs(x, round_trip_vm)]
    new_vifs = _vifs(xb, new)
    assert [(v["device"], xb.network.get_bridge(v["network"]), v["MTU"]) for v in new_vifs] == old
    assert {v["network"] for v in new_vifs} <= set(xb.network.get_all())


def test_import_metadata_points_vbds_at_existing_or_mapped_vdis(sim, x, round_trip_vm):
    """Given the metadata of a VM whose disks exist, and a VDI.copy of its system disk on backup-sr
    When it is PUT to /import_metadata, first plainly, then with vdi:<uuid>=<copy ref>
    Then each new VM's VBDs point at the existing VDIs, respectively at the copy."""
    master = sim.pool(0)["master"]
    resp, body = H.get_all(master, "/export_metadata", {"session_id": H.handle(x), "ref": round_trip_vm})
    assert resp.status == 200
    disks = H.vm_disks(x, round_trip_vm)
    sys_vdi = disks[0][1]
    copy = x.VDI.copy(x.VDI.get_by_uuid(sys_vdi["uuid"]), H.sr_by_name(x, "backup-sr"), H.NULL, H.NULL)
    vdis_before = len(x.VDI.get_all())

    _, plain = _import(sim, x, body, path="/import_metadata")
    _, mapped = _import(sim, x, body, path="/import_metadata", **{f"vdi:{sys_vdi['uuid']}": copy})

    assert plain["status"] == "success", plain["error_info"]
    assert mapped["status"] == "success", mapped["error_info"]
    assert len(x.VDI.get_all()) == vdis_before, "a metadata import creates no disks"
    (vm1,), (vm2,) = _vm_refs(plain["result"]), _vm_refs(mapped["result"])
    assert x.VM.get_name_label(vm1) == x.VM.get_name_label(round_trip_vm)
    assert [(b["userdevice"], v["uuid"]) for b, v in H.vm_disks(x, vm1)] == \
        [(b["userdevice"], v["uuid"]) for b, v in disks]
    assert [(b["userdevice"], b["VDI"]) for b, _ in H.vm_disks(x, vm2)] == \
        [("0", copy)] + [(b["userdevice"], b["VDI"]) for b, _ in disks[1:]]
