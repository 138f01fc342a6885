"""The simulator's operations with their xapi semantics (FACTS.md §2-§4), driven by the XenAPI client.

Given the shared simulator, each test builds its own small VM (VM.create, VDI.create,
VBD.create, VIF.create: 2 disks of 8 MiB with distinct bytes written through the
control API) so nothing here depends on, or disturbs, the inventory; then it runs
VM/VDI/VBD/VIF/network/SR/task operations and checks records and disk bytes.
"""
from __future__ import annotations

import itertools
import time
import xmlrpc.client

import pytest
import XenAPI

from helpers.sim_proc import wait_task

MiB = 1 << 20
GiB = 1 << 30
NULL = "OpaqueRef:NULL"
_names = itertools.count(1)


# -- helpers ------------------------------------------------------------------
def failure(call, *args) -> list[str]:
    with pytest.raises(XenAPI.Failure) as info:
        call(*args)
    return info.value.details


def vm_args(name: str) -> dict:
    """The 25 required VM.create fields; 64-bit ints go as strings, as real clients must send them."""
    return {
        "name_label": name, "user_version": "1", "is_a_template": False, "affinity": NULL,
        "memory_static_max": str(4 * GiB), "memory_dynamic_max": str(4 * GiB),
        "memory_dynamic_min": str(2 * GiB), "memory_static_min": str(1 * GiB),
        "VCPUs_params": {"weight": "256"}, "VCPUs_max": "4", "VCPUs_at_startup": "2",
        "actions_after_shutdown": "destroy", "actions_after_reboot": "restart", "actions_after_crash": "restart",
        "PV_bootloader": "", "PV_kernel": "", "PV_ramdisk": "", "PV_args": "", "PV_bootloader_args": "",
        "PV_legacy_args": "", "HVM_boot_policy": "BIOS order", "HVM_boot_params": {"order": "cd"},
        "platform": {"acpi": "1", "apic": "true", "viridian": "false"}, "PCI_bus": "",
        "other_config": {"made-by": "tinabs-tests"}, "recommendations": "",
    }


def sr_named(x, name: str) -> str:
    return x.SR.get_by_name_label(name)[0]


def write(sim, vdi_uuid: str, offset: int, data: bytes) -> None:
    status, body = sim.control_call("POST", f"/sim/vdi/{vdi_uuid}/write", {"offset": offset, "hex": data.hex()})
    assert status == 200, body


def sha(sim, x, vdi: str) -> str:
    return sim.vdi_info(x.VDI.get_uuid(vdi))["sha256"]


def new_vdi(x, sim, sr: str, name: str, size: int = 8 * MiB, fill: bytes | None = None) -> str:
    vdi = x.VDI.create({"SR": sr, "virtual_size": str(size), "type": "user", "sharable": False,
                        "read_only": False, "other_config": {}, "name_label": name})
    if fill:
        write(sim, x.VDI.get_uuid(vdi), MiB + 512, fill)
    return vdi


def vbd_args(vm: str, vdi: str, userdevice: str, mode: str = "RW") -> dict:
    return {"VM": vm, "VDI": vdi, "userdevice": userdevice, "bootable": userdevice == "0", "mode": mode,
            "type": "Disk", "empty": False, "other_config": {}, "qos_algorithm_type": "",
            "qos_algorithm_params": {}}


def vif_args(vm: str, network: str, device: str, mac: str) -> dict:
    return {"device": device, "network": network, "VM": vm, "MAC": mac, "MTU": "1500", "other_config": {},
            "qos_algorithm_type": "", "qos_algorithm_params": {}}


def make_vm(x, sim, running: bool = False, disks: int = 2) -> str:
    """An own VM: ``disks`` 8 MiB disks on nfs-shared with distinct bytes, and one VIF."""
    n = next(_names)
    vm = x.VM.create(vm_args(f"ops-test-{n}"))
    nfs = sr_named(x, "nfs-shared")
    for d in range(disks):
        vdi = new_vdi(x, sim, nfs, f"ops-test-{n} disk {d}", fill=f"disk {d} of vm {n} ".encode() * 40)
        x.VBD.create(vbd_args(vm, vdi, str(d)))
    x.VIF.create(vif_args(vm, x.network.get_all()[0], "0", "02:00:00:00:%02x:%02x" % (n // 256, n % 256)))
    if running:
        x.VM.start(vm, False, False)
    return vm


def disk_vdis(x, vm: str) -> dict[str, str]:
    """userdevice -> VDI of a VM's disk VBDs."""
    return {x.VBD.get_userdevice(vbd): x.VBD.get_VDI(vbd) for vbd in x.VM.get_VBDs(vm)
            if x.VBD.get_type(vbd) == "Disk"}


def macs(x, vm: str) -> set[str]:
    return {x.VIF.get_MAC(vif) for vif in x.VM.get_VIFs(vm)}


def task_value(x, task: str):
    """task.get_result is an XML-RPC value fragment; decode it as a client would."""
    fragment = x.task.get_result(task)
    assert fragment.startswith("<value>") and fragment.endswith("</value>"), fragment
    (value,), _ = xmlrpc.client.loads(f"<methodResponse><params><param>{fragment}</param></params></methodResponse>")
    return value


@pytest.fixture(scope="module")
def x(sim):
    session = sim.session(0)
    yield session.xenapi
    session.xenapi.session.logout()


@pytest.fixture(scope="module")
def pool_name(sim) -> str:
    return sim.pool(0)["name"]


# -- VM.snapshot ---------------------------------------------------------------
def test_snapshot_of_a_running_vm_copies_and_resets_the_right_fields(x, sim):
    """Given a running VM with order/delays/HA/blocked ops/tags set, when VM.snapshot, then the snapshot is a
    halted template snapshot_of the VM, listed in its snapshots, with order/start_delay/shutdown_delay/
    ha_always_run/blocked_operations reset and ha_restart_priority/tags/memory/VCPUs/platform kept."""
    vm = make_vm(x, sim, running=True)
    x.VM.set_order(vm, 3)
    x.VM.set_start_delay(vm, 10)
    x.VM.set_shutdown_delay(vm, 20)
    x.VM.set_ha_restart_priority(vm, "restart")  # on a running VM this also sets ha_always_run
    x.VM.set_blocked_operations(vm, {"destroy": "protected"})
    x.VM.set_tags(vm, ["Mon", "prod"])
    x.VM.add_to_platform(vm, "cores-per-socket", "2")
    src = x.VM.get_record(vm)
    assert src["ha_always_run"] is True and src["order"] == "3"

    snap = x.VM.snapshot(vm, "before upgrade")

    rec = x.VM.get_record(snap)
    assert rec["is_a_snapshot"] is True and rec["is_a_template"] is True
    assert rec["snapshot_of"] == vm and rec["name_label"] == "before upgrade"
    assert snap in x.VM.get_snapshots(vm)
    assert rec["power_state"] == "Halted" and rec["resident_on"] == NULL
    assert (rec["order"], rec["start_delay"], rec["shutdown_delay"]) == ("0", "0", "0")
    assert rec["ha_always_run"] is False and rec["blocked_operations"] == {}
    for kept in ("ha_restart_priority", "tags", "memory_static_max", "memory_dynamic_max", "memory_dynamic_min",
                 "memory_static_min", "VCPUs_max", "VCPUs_at_startup", "VCPUs_params", "platform",
                 "HVM_boot_policy", "HVM_boot_params", "other_config"):
        assert rec[kept] == src[kept], kept
    assert rec["snapshot_time"].value.endswith("Z")
    after = x.VM.get_record(vm)
    assert after["power_state"] == "Running" and after["order"] == "3" and after["parent"] == snap


def test_snapshot_disks_are_vdi_snapshots_with_the_same_bytes_and_vif_macs_are_kept(x, sim):
    """Given a running VM, when VM.snapshot, then each disk is a VDI snapshot (is_a_snapshot, snapshot_of, same
    SR) with the source's bytes, a later guest write changes only the source, and the VIF MACs are kept."""
    vm = make_vm(x, sim, running=True)
    snap = x.VM.snapshot(vm, "snap")
    src, dst = disk_vdis(x, vm), disk_vdis(x, snap)
    assert sorted(src) == sorted(dst) == ["0", "1"]
    for dev, vdi in dst.items():
        rec = x.VDI.get_record(vdi)
        assert vdi != src[dev]
        assert rec["is_a_snapshot"] is True and rec["snapshot_of"] == src[dev]
        assert rec["SR"] == x.VDI.get_SR(src[dev])
        assert sha(sim, x, vdi) == sha(sim, x, src[dev])
    assert sha(sim, x, src["0"]) != sha(sim, x, src["1"])
    before = sha(sim, x, dst["0"])
    write(sim, x.VDI.get_uuid(src["0"]), 0, b"guest wrote after the snapshot")
    assert sha(sim, x, dst["0"]) == before != sha(sim, x, src["0"])
    assert macs(x, snap) == macs(x, vm) and len(macs(x, vm)) == 1


def test_snapshot_with_ignore_vdis_leaves_that_disk_out(x, sim):
    """Given a VM with 2 disks, when VM.snapshot(vm, name, [disk 1]), then the snapshot has only disk 0."""
    vm = make_vm(x, sim, running=True)
    src = disk_vdis(x, vm)
    snap = x.VM.snapshot(vm, "partial", [src["1"]])
    dst = disk_vdis(x, snap)
    assert list(dst) == ["0"] and x.VDI.get_snapshot_of(dst["0"]) == src["0"]


# -- VM.clone / copy / destroy ------------------------------------------------------
def test_clone_and_destroy_of_a_running_vm_give_vm_bad_power_state(x, sim):
    """Given a running VM, when VM.clone or VM.destroy, then VM_BAD_POWER_STATE [vm, expected, 'running']."""
    vm = make_vm(x, sim, running=True)
    assert failure(x.VM.clone, vm, "c") == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    assert failure(x.VM.destroy, vm) == ["VM_BAD_POWER_STATE", vm, "halted, suspended", "running"]
    assert x.VM.get_power_state(vm) == "Running"


def test_clone_of_a_halted_vm(x, sim):
    """Given a halted VM, when VM.clone, then a new ordinary VM with new disks holding the same bytes."""
    vm = make_vm(x, sim)
    clone = x.VM.clone(vm, "the clone")
    rec = x.VM.get_record(clone)
    assert rec["name_label"] == "the clone" and rec["power_state"] == "Halted"
    assert rec["is_a_snapshot"] is False and rec["snapshot_of"] == NULL and rec["is_a_template"] is False
    src, dst = disk_vdis(x, vm), disk_vdis(x, clone)
    assert sorted(src) == sorted(dst)
    for dev in src:
        assert dst[dev] != src[dev] and sha(sim, x, dst[dev]) == sha(sim, x, src[dev])
    assert x.VM.get_other_config(clone)["mac_seed"] != x.VM.get_other_config(vm).get("mac_seed")


def test_clone_of_a_snapshot(x, sim):
    """Given a snapshot of a running VM, when VM.clone, then a non-snapshot (template) VM with no
    snapshot_time and the snapshot's disks' bytes."""
    vm = make_vm(x, sim, running=True)
    snap = x.VM.snapshot(vm, "snap")
    clone = x.VM.clone(snap, "from snapshot")
    rec = x.VM.get_record(clone)
    assert rec["is_a_snapshot"] is False and rec["snapshot_of"] == NULL
    assert rec["is_a_template"] is True  # copy_vm_record: is_a_snapshot || source.is_a_template
    assert rec["snapshot_time"].value == "19700101T00:00:00Z" and rec["snapshot_info"] == {}
    assert clone not in x.VM.get_snapshots(vm)
    src, dst = disk_vdis(x, snap), disk_vdis(x, clone)
    for dev in src:
        assert sha(sim, x, dst[dev]) == sha(sim, x, src[dev])


def test_copy_to_another_sr_puts_the_disks_there(x, sim):
    """Given a halted VM on nfs-shared, when VM.copy(vm, name, backup-sr), then its disks are in backup-sr
    with the same bytes and the source's disks stay where they were."""
    vm = make_vm(x, sim)
    backup = sr_named(x, "backup-sr")
    copy = x.VM.copy(vm, "the copy", backup)
    src, dst = disk_vdis(x, vm), disk_vdis(x, copy)
    assert sorted(dst) == ["0", "1"]
    for dev in src:
        assert x.VDI.get_SR(dst[dev]) == backup
        assert x.VDI.get_SR(src[dev]) == sr_named(x, "nfs-shared")
        assert sha(sim, x, dst[dev]) == sha(sim, x, src[dev])
        assert dst[dev] in x.SR.get_VDIs(backup)


def test_destroy_of_a_halted_vm_removes_vbds_and_vifs_but_not_vdis(x, sim, pool_name):
    """Given a halted VM with 2 disks and 1 VIF, when VM.destroy, then /sim/state has 2 VBDs and 1 VIF fewer,
    the same VDIs, and the VM is gone (HANDLE_INVALID)."""
    vm = make_vm(x, sim)
    vdis = list(disk_vdis(x, vm).values())
    before = sim.state()["pools"][pool_name]
    x.VM.destroy(vm)
    after = sim.state()["pools"][pool_name]
    assert len(after["VBD"]) == len(before["VBD"]) - 2
    assert len(after["VIF"]) == len(before["VIF"]) - 1
    assert set(after["VDI"]) == set(before["VDI"])
    assert all(vdi in after["VDI"] and after["VDI"][vdi]["VBDs"] == [] for vdi in vdis)
    assert vm not in after["VM"]
    assert failure(x.VM.get_record, vm) == ["HANDLE_INVALID", "VM", vm]


# -- VM.create -------------------------------------------------------------------
def test_vm_create_with_the_25_required_fields(x):
    """Given exactly the 25 required fields (ints as strings, some > 2^31), when VM.create, then a halted VM
    with those values and the optional fields at their defaults."""
    args = vm_args("created")
    del args["name_label"]
    assert len(args) == 25
    vm = x.VM.create(args)
    rec = x.VM.get_record(vm)
    for field, value in args.items():
        assert rec[field] == value, field
    assert rec["name_label"] == "" and rec["power_state"] == "Halted" and rec["order"] == "0"
    assert rec["ha_restart_priority"] == "" and rec["tags"] == [] and rec["VBDs"] == []
    x.VM.destroy(vm)


@pytest.mark.parametrize("missing", ("user_version", "memory_static_max", "VCPUs_at_startup", "HVM_boot_policy",
                                     "PCI_bus", "recommendations", "other_config"))
def test_vm_create_without_a_required_field(x, missing):
    """Given the required fields minus one, when VM.create, then INTERNAL_ERROR [Dispatcher_FieldNotFound]."""
    args = vm_args("incomplete")
    del args[missing]
    assert failure(x.VM.create, args) == [
        "INTERNAL_ERROR", f'Server_helpers.Dispatcher_FieldNotFound("{missing}")']
    assert x.VM.get_by_name_label("incomplete") == []


# -- VDI ---------------------------------------------------------------------------
def test_vdi_snapshot_is_read_only_in_the_same_sr(x, sim):
    """Given a VDI with data, when VDI.snapshot, then a read-only snapshot_of it in the same SR, same bytes."""
    vdi = new_vdi(x, sim, sr_named(x, "nfs-shared"), "to snapshot", fill=b"snapshot me")
    snap = x.VDI.snapshot(vdi)
    rec = x.VDI.get_record(snap)
    assert rec["read_only"] is True and rec["is_a_snapshot"] is True and rec["snapshot_of"] == vdi
    assert rec["SR"] == x.VDI.get_SR(vdi) and snap in x.VDI.get_snapshots(vdi)
    assert rec["virtual_size"] == str(8 * MiB)
    assert sha(sim, x, snap) == sha(sim, x, vdi)


def test_vdi_copy_to_the_backup_sr(x, sim):
    """Given a VDI with data, when VDI.copy(vdi, backup-sr) (no base_vdi/into_vdi), then a new writable
    VDI in backup-sr with identical bytes."""
    vdi = new_vdi(x, sim, sr_named(x, "nfs-shared"), "to copy", fill=b"copy me")
    backup = sr_named(x, "backup-sr")
    copy = x.VDI.copy(vdi, backup)
    rec = x.VDI.get_record(copy)
    assert copy != vdi and rec["SR"] == backup and rec["read_only"] is False and rec["is_a_snapshot"] is False
    assert sha(sim, x, copy) == sha(sim, x, vdi)


def test_vdi_create_and_destroy(x, sim):
    """Given VDI.create on nfs-shared, then the VDI is in SR.VDIs with its size; when VDI.destroy, it is gone."""
    sr = sr_named(x, "nfs-shared")
    vdi = x.VDI.create({"SR": sr, "virtual_size": str(3 * GiB), "type": "user", "sharable": False,
                        "read_only": False, "other_config": {}, "name_label": "scratch"})
    assert vdi in x.SR.get_VDIs(sr) and x.VDI.get_virtual_size(vdi) == str(3 * GiB)
    assert x.VDI.get_name_label(vdi) == "scratch"
    uuid = x.VDI.get_uuid(vdi)
    x.VDI.destroy(vdi)
    assert vdi not in x.SR.get_VDIs(sr)
    assert failure(x.VDI.get_record, vdi) == ["HANDLE_INVALID", "VDI", vdi]
    assert failure(x.VDI.get_by_uuid, uuid) == ["UUID_INVALID", "VDI", uuid]
    assert sim.control_call("GET", f"/sim/vdi/{uuid}")[0] == 404


def test_vdi_custom_name_setters(x, sim):
    """Given a VDI (name fields are RO/constructor), when VDI.set_name_label/set_name_description, then the
    getters return the new values; the implicit VDI.set_SR does not exist."""
    vdi = new_vdi(x, sim, sr_named(x, "nfs-shared"), "old name")
    assert x.VDI.set_name_label(vdi, "new name") == ""
    x.VDI.set_name_description(vdi, "new description")
    assert (x.VDI.get_name_label(vdi), x.VDI.get_name_description(vdi)) == ("new name", "new description")
    assert failure(x.VDI.set_SR, vdi, sr_named(x, "backup-sr")) == ["MESSAGE_METHOD_UNKNOWN", "VDI.set_SR"]


def test_vdi_destroy_of_a_disk_of_a_running_vm_is_vdi_in_use(x, sim):
    """Given a disk attached to a running VM, when VDI.destroy, then VDI_IN_USE [vdi, 'destroy']."""
    vm = make_vm(x, sim, running=True, disks=1)
    vdi = disk_vdis(x, vm)["0"]
    assert failure(x.VDI.destroy, vdi) == ["VDI_IN_USE", vdi, "destroy"]
    assert x.VDI.get_uuid(vdi)


# -- VBD / VIF / network / SR -----------------------------------------------------------
def test_vbd_create_errors_and_destroy(x, sim):
    """Given a halted VM, when VBD.create on a taken userdevice, then DEVICE_ALREADY_EXISTS [userdevice]
    (xapi_vbd.ml create; VM_DUPLICATE_VBD_DEVICE is a start-time check);
    RW on a read-only VDI gives VDI_READONLY [vdi] while RO works; VBD.destroy removes it."""
    vm = make_vm(x, sim, disks=1)
    vdi = new_vdi(x, sim, sr_named(x, "nfs-shared"), "extra")
    assert failure(x.VBD.create, vbd_args(vm, vdi, "0")) == ["DEVICE_ALREADY_EXISTS", "0"]
    readonly = x.VDI.snapshot(vdi)
    assert failure(x.VBD.create, vbd_args(vm, readonly, "1")) == ["VDI_READONLY", readonly]
    vbd = x.VBD.create(vbd_args(vm, readonly, "1", mode="RO"))
    rec = x.VBD.get_record(vbd)
    assert rec["VM"] == vm and rec["VDI"] == readonly and rec["mode"] == "RO" and rec["currently_attached"] is False
    assert vbd in x.VM.get_VBDs(vm) and vbd in x.VDI.get_VBDs(readonly)
    x.VBD.destroy(vbd)
    assert vbd not in x.VM.get_VBDs(vm)
    assert failure(x.VBD.get_record, vbd) == ["HANDLE_INVALID", "VBD", vbd]


def test_vif_create_with_explicit_and_generated_mac_duplicate_device_and_destroy(x, sim):
    """Given a VM, when VIF.create with an explicit MAC, then it is kept (MAC_autogenerated false); with MAC ""
    a MAC is generated (MAC_autogenerated true); a taken device gives DEVICE_ALREADY_EXISTS [device]."""
    vm = make_vm(x, sim, disks=0)
    net = x.network.get_all()[1]
    explicit = x.VIF.create(vif_args(vm, net, "1", "02:ab:cd:ef:01:23"))
    assert x.VIF.get_MAC(explicit) == "02:ab:cd:ef:01:23" and x.VIF.get_MAC_autogenerated(explicit) is False
    generated = x.VIF.create(vif_args(vm, net, "2", ""))
    mac = x.VIF.get_MAC(generated)
    assert len(mac.split(":")) == 6 and all(len(p) == 2 for p in mac.split(":"))
    assert x.VIF.get_MAC_autogenerated(generated) is True and mac not in ("", "02:ab:cd:ef:01:23")
    assert failure(x.VIF.create, vif_args(vm, net, "1", "")) == ["DEVICE_ALREADY_EXISTS", "1"]
    assert failure(x.VIF.create, vif_args(vm, net, "3", "not-a-mac")) == ["MAC_INVALID", "not-a-mac"]
    assert x.VIF.get_network(explicit) == net and explicit in x.network.get_VIFs(net)
    x.VIF.destroy(explicit)
    assert explicit not in x.VM.get_VIFs(vm) and explicit not in x.network.get_VIFs(net)
    assert len(x.VM.get_VIFs(vm)) == 2


def test_network_create_and_destroy(x):
    """Given only other_config (the one required field), when network.create, then MTU 1500, managed and a
    bridge; network.destroy removes it."""
    net = x.network.create({"other_config": {"k": "v"}, "name_label": "ops-test net"})
    rec = x.network.get_record(net)
    assert rec["MTU"] == "1500" and rec["managed"] is True and rec["bridge"] and rec["other_config"] == {"k": "v"}
    assert x.network.get_by_name_label("ops-test net") == [net]
    assert failure(x.network.create, {"name_label": "no other_config"}) == [
        "INTERNAL_ERROR", 'Server_helpers.Dispatcher_FieldNotFound("other_config")']
    x.network.destroy(net)
    assert x.network.get_by_name_label("ops-test net") == []
    assert failure(x.network.get_record, net) == ["HANDLE_INVALID", "network", net]


def test_sr_scan(x, sim):
    """Given a new VDI in backup-sr, when SR.scan, then it succeeds and the SR lists the VDI with its usage."""
    sr = sr_named(x, "backup-sr")
    vdi = new_vdi(x, sim, sr, "scanned", fill=b"x" * 4096)
    assert x.SR.scan(sr) == ""
    rec = x.SR.get_record(sr)
    assert vdi in rec["VDIs"]
    assert int(rec["physical_utilisation"]) == sum(int(x.VDI.get_physical_utilisation(v)) for v in rec["VDIs"])
    assert failure(x.SR.scan, "OpaqueRef:nope") == ["HANDLE_INVALID", "SR", "OpaqueRef:nope"]


def test_vm_start_and_clean_shutdown_attach_and_detach_vbds(x, sim):
    """Given a halted VM, when VM.start, then Running on a host with VBDs/VIFs currently_attached; when
    VM.clean_shutdown, then Halted, resident_on NULL and nothing attached."""
    vm = make_vm(x, sim)
    vbds = x.VM.get_VBDs(vm)
    assert not any(x.VBD.get_currently_attached(v) for v in vbds)
    x.VM.start(vm, False, False)
    assert x.VM.get_power_state(vm) == "Running" and x.VM.get_resident_on(vm) in x.host.get_all()
    assert all(x.VBD.get_currently_attached(v) for v in vbds)
    assert all(x.VIF.get_currently_attached(v) for v in x.VM.get_VIFs(vm))
    assert failure(x.VM.start, vm, False, False)[:2] == ["VM_BAD_POWER_STATE", vm]
    x.VM.clean_shutdown(vm)
    assert x.VM.get_power_state(vm) == "Halted" and x.VM.get_resident_on(vm) == NULL
    assert not any(x.VBD.get_currently_attached(v) for v in vbds)


# -- Async and tasks ------------------------------------------------------------------
def test_async_vm_snapshot_returns_a_task_whose_result_is_the_snapshot_ref(x, sim):
    """Given a running VM, when Async.VM.snapshot, then a task ref; the task ends 'success' with progress 1.0
    and a result fragment <value>OpaqueRef:...</value> naming the new snapshot."""
    vm = make_vm(x, sim, running=True, disks=1)
    task = x.Async.VM.snapshot(vm, "async snap")
    assert task.startswith("OpaqueRef:") and task in x.task.get_all()
    rec = wait_task(x, task)
    assert rec["status"] == "success" == x.task.get_status(task)
    assert x.task.get_progress(task) == 1.0 and x.task.get_error_info(task) == []
    snap = task_value(x, task)
    assert x.task.get_result(task) == f"<value>{snap}</value>"
    assert x.VM.get_snapshot_of(snap) == vm and x.VM.get_name_label(snap) == "async snap"
    x.task.destroy(task)


def test_async_vdi_copy_returns_a_task_whose_result_is_the_copy(x, sim):
    """Given a VDI, when Async.VDI.copy(vdi, backup-sr), then the task result is the copy, with the same bytes."""
    vdi = new_vdi(x, sim, sr_named(x, "nfs-shared"), "async copy", fill=b"async")
    task = x.Async.VDI.copy(vdi, sr_named(x, "backup-sr"))
    assert wait_task(x, task)["status"] == "success"
    copy = task_value(x, task)
    assert x.VDI.get_SR(copy) == sr_named(x, "backup-sr") and sha(sim, x, copy) == sha(sim, x, vdi)


def test_a_failing_async_call_ends_in_failure_with_error_info(x, sim):
    """Given a running VM, when Async.VM.destroy, then the task ends 'failure' with error_info
    [VM_BAD_POWER_STATE, vm, 'halted, suspended', 'running'] and the VM still exists."""
    vm = make_vm(x, sim, running=True, disks=1)
    task = x.Async.VM.destroy(vm)
    rec = wait_task(x, task)
    assert rec["status"] == "failure" == x.task.get_status(task)
    assert x.task.get_error_info(task) == ["VM_BAD_POWER_STATE", vm, "halted, suspended", "running"]
    assert x.VM.get_power_state(vm) == "Running"


def test_task_create_destroy_and_get_all_records(x):
    """Given task.create(label, description), then a pending task listed by get_all_records; task.destroy
    removes it."""
    task = x.task.create("ops-test task", "made by a test")
    records = x.task.get_all_records()
    assert records[task]["name_label"] == "ops-test task" and records[task]["status"] == "pending"
    assert records[task]["name_description"] == "made by a test"
    assert x.task.get_by_name_label("ops-test task") == [task]
    x.task.destroy(task)
    assert task not in x.task.get_all_records()
    assert failure(x.task.get_status, task) == ["HANDLE_INVALID", "task", task]


def slow_sim(fresh_sim):
    return fresh_sim("--latency", "1.5", "--pools", "1", "--hosts-per-pool", "1", "--vms-per-pool", "3",
                     "--disk-mib", "4")


def test_task_progress_advances_while_pending(fresh_sim):
    """Given --latency 1.5, when Async.VM.snapshot, then while pending the progress is sampled strictly between
    0 and 1 and never goes backwards; the task then succeeds with progress 1.0."""
    sim = slow_sim(fresh_sim)
    x = sim.session(0).xenapi
    vm = next(r for r, rec in x.VM.get_all_records().items()
              if rec["power_state"] == "Running" and not rec["is_control_domain"])
    began = time.monotonic()
    task = x.Async.VM.snapshot(vm, "slow")
    assert time.monotonic() - began < 1.0  # Async returns at once
    samples = []
    while x.task.get_status(task) == "pending":
        samples.append(x.task.get_progress(task))
        time.sleep(0.1)
    assert any(0.0 < p < 1.0 for p in samples), samples
    assert samples == sorted(samples)
    assert x.task.get_status(task) == "success" and x.task.get_progress(task) == 1.0
    assert time.monotonic() - began >= 1.5


def test_task_cancel_of_a_slow_async_task(fresh_sim):
    """Given a slow Async.VM.snapshot, when task.cancel, then the task ends 'cancelled' with error_info
    ['TASK_CANCELLED', task], no snapshot is made, and cancelling it again is OPERATION_NOT_ALLOWED."""
    sim = slow_sim(fresh_sim)
    x = sim.session(0).xenapi
    vm = next(r for r, rec in x.VM.get_all_records().items()
              if rec["power_state"] == "Running" and not rec["is_control_domain"])
    task = x.Async.VM.snapshot(vm, "to be cancelled")
    time.sleep(0.3)
    assert x.task.get_allowed_operations(task) == ["cancel"]
    assert x.task.cancel(task) == ""
    rec = wait_task(x, task)
    assert rec["status"] == "cancelled"
    assert x.task.get_error_info(task) == ["TASK_CANCELLED", task]
    assert x.VM.get_by_name_label("to be cancelled") == []
    assert failure(x.task.cancel, task)[0] == "OPERATION_NOT_ALLOWED"
