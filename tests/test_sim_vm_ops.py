"""VM operations as xapi runs them: concurrent long operations, VM metrics objects, power operations,
checkpoint, revert and provision - through the real XenAPI client and plain HTTP.

Every VM changed here is the test's own (a clone, or a VM of a simulator of the test's own), so the
shared inventory is never changed.
"""
from __future__ import annotations

import io
import time

import pytest
import XenAPI

from helpers import xapi_http as H
from helpers.sim_proc import SimProc, wait_task
from helpers.xva_parse import read_xva

NULL = "OpaqueRef:NULL"


@pytest.fixture(scope="module")
def slow():
    """A pool whose hosts stream exports at 4 MB/s: an export of a 32 MiB disk (~8 MB of data) stays
    open for about two seconds, long enough to act on its VM meanwhile."""
    proc = SimProc("--pools", "1", "--vms-per-pool", "4", "--hosts-per-pool", "1", "--disk-mib", "32",
                   "--host-bandwidth-mbps", "4").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def sx(slow):
    return H.api(slow.session(0))


def _failure(call, *args) -> list[str]:
    with pytest.raises(XenAPI.Failure) as info:
        call(*args)
    return info.value.details


def _halted_source(x) -> str:
    """A source for H.own_vm: a halted VM if there is one (else own_vm goes through a snapshot)."""
    vms = H.user_vms(x)
    return next((ref for ref, rec in vms.items() if rec["power_state"] == "Halted"), next(iter(vms)))


def _running_source(x, windows: bool | None = None) -> str:
    for ref, rec in sorted(H.user_vms(x).items(), key=lambda item: item[1]["name_label"]):
        if rec["power_state"] == "Running" and (
                windows is None or (rec["platform"].get("viridian") == "true") == windows):
            return ref
    pytest.skip("the inventory has no such running VM")


def _open_export(sim, x, vm: str):
    """An /export of ``vm`` whose head has arrived; its body still flows (slowly)."""
    task = x.task.create("held export", "")
    resp = H.get(sim.pool(0)["master"], "/export", {"session_id": H.handle(x), "ref": vm, "task_id": task})
    assert resp.status == 200
    return resp, task


def _finish(resp) -> bytes:
    try:
        return resp.read()
    finally:
        resp.close()
        resp.connection_.close()


def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.02)


# -- concurrency (xapi_vm_lifecycle.ml is_allowed_concurrently) -----------------
def test_two_concurrent_exports_of_one_vm_both_stream_the_same_disks(slow, sx):
    """Given a halted VM of our own
    When a second /export of it starts while the first still streams
    Then both succeed (xapi_vm_lifecycle.ml is_allowed_concurrently: export, clone and copy - the
    ``long_copies`` - may run together), current_operations holds both exports, each under its
    own task (message_forwarding.ml with_vm_operation keys the op by task), allowed_operations
    lists no op that would be refused meanwhile (update_allowed_operations), and both XVAs carry
    the same disk bytes, member for member, and the same VM record (only the Ref:N export ids
    differ: export.ml numbers objects from one process-wide counter)."""
    vm = H.own_vm(sx, "concurrent exports", _halted_source(sx))
    first, task1 = _open_export(slow, sx, vm)
    second, task2 = _open_export(slow, sx, vm)
    ops = sx.VM.get_current_operations(vm)
    assert ops == {task1: "export", task2: "export"}
    allowed = sx.VM.get_allowed_operations(vm)
    assert {"export", "clone", "copy"} <= set(allowed)
    assert not {"destroy", "start", "snapshot"} & set(allowed), allowed
    body1, body2 = _finish(first), _finish(second)
    assert len(body1) > 4_000_000 and len(body1) == len(body2)
    xva1, xva2 = read_xva(io.BytesIO(body1)), read_xva(io.BytesIO(body2))
    disks1, disks2 = xva1.disk_by_vdi_uuid(), xva2.disk_by_vdi_uuid()
    assert disks1 and {u: (d.numbers, d.lengths, d.sha256) for u, d in disks1.items()} == \
        {u: (d.numbers, d.lengths, d.sha256) for u, d in disks2.items()}
    assert xva1.objects("VM")[0]["snapshot"]["uuid"] == xva2.objects("VM")[0]["snapshot"]["uuid"]
    assert wait_task(sx, task1)["status"] == "success" and wait_task(sx, task2)["status"] == "success"
    assert sx.VM.get_current_operations(vm) == {}
    assert "destroy" in sx.VM.get_allowed_operations(vm)


def test_clone_of_a_snapshot_while_it_is_exported(slow, sx):
    """Given a snapshot being exported
    When VM.clone of that snapshot is called during the export
    Then the clone succeeds (clone and export are both long_copies, is_allowed_concurrently),
    the export completes, and the clone is a halted VM with the snapshot's disks."""
    vm = H.own_vm(sx, "clone during export", _halted_source(sx))
    snap = sx.VM.snapshot(vm, "exported snapshot")
    resp, task = _open_export(slow, sx, snap)
    clone = sx.VM.clone(snap, "clone of exported snapshot")
    assert sx.VM.get_current_operations(snap) == {task: "export"}  # the clone has finished already
    body = _finish(resp)
    assert wait_task(sx, task)["status"] == "success" and len(body) > 4_000_000
    assert sx.VM.get_power_state(clone) == "Halted" and not sx.VM.get_is_a_snapshot(clone)
    assert len(H.vm_disks(sx, clone)) == len(H.vm_disks(sx, snap))


def test_destroy_start_and_snapshot_during_an_export_are_refused(slow, sx):
    """Given a VM being exported
    When VM.destroy, VM.start and VM.snapshot are called
    Then each fails with OTHER_OPERATION_IN_PROGRESS ["VM", vm, "export", export task]
    (xapi_vm_lifecycle.ml report_concurrent_operations_error, params as of xen-api PR #6588:
    class, object, operation_type, operation_ref), the power state being right for each;
    once the export ends, VM.destroy succeeds."""
    vm = H.own_vm(sx, "refused during export", _halted_source(sx))
    resp, task = _open_export(slow, sx, vm)
    for call, args in ((sx.VM.destroy, (vm,)), (sx.VM.start, (vm, False, False)),
                       (sx.VM.snapshot, (vm, "no"))):
        assert _failure(call, *args) == ["OTHER_OPERATION_IN_PROGRESS", "VM", vm, "export", task]
    _finish(resp)
    wait_task(sx, task)
    _wait_for(lambda: sx.VM.get_current_operations(vm) == {})
    sx.VM.destroy(vm)


# -- VM_metrics / VM_guest_metrics ---------------------------------------------
def test_every_vm_has_metrics_and_running_guests_report_guest_metrics(x):
    """Given the inventory
    Then every VM, template, snapshot and control domain has a VM_metrics (xapi_vm.ml create makes
    one, xapi_vm_clone.ml copy_vm_record copies it), reachable through the implicit getters,
    get_record and get_all_records; running guests report memory_actual = dynamic_max and
    VCPUs_number = VCPUs_at_startup and have a live VM_guest_metrics with the os_version keys
    xapi_guest_agent.ml fills (name, distro, major, minor, and uname on Linux), PV drivers,
    networks per VIF device and control feature flags; never-started VMs and dom0 have none."""
    records = x.VM.get_all_records()
    all_metrics = x.VM_metrics.get_all_records()
    for ref, rec in records.items():
        assert rec["metrics"] in all_metrics, rec["name_label"]
        metrics = x.VM_metrics.get_record(rec["metrics"])
        assert metrics == all_metrics[rec["metrics"]]
        if rec["power_state"] == "Running":
            assert int(metrics["memory_actual"]) == int(rec["memory_dynamic_max"])
            assert int(metrics["VCPUs_number"]) == int(rec["VCPUs_at_startup"])
            assert str(metrics["start_time"]) > "2000"
        if rec["power_state"] == "Running" and not rec["is_control_domain"]:
            gm = x.VM_guest_metrics.get_record(rec["guest_metrics"])
            assert gm["live"] and gm["PV_drivers_detected"] and gm["other"]["feature-shutdown"] == "1"
            assert {"name", "distro", "major", "minor"} <= set(gm["os_version"])
            devices = {x.VIF.get_device(v) for v in rec["VIFs"]}
            assert {k.split("/")[0] for k in gm["networks"]} == devices
        else:
            assert rec["guest_metrics"] == NULL, rec["name_label"]
    assert x.VM_metrics.get_memory_actual(records[_running_source(x)]["metrics"]) != "0"


def test_windows_guests_report_windows_and_linux_guests_linux(x):
    """Given running Windows (viridian) and Linux guests of the inventory
    Then VM_guest_metrics.get_os_version says distro "windows" with a "Microsoft Windows" name (and
    no uname) for the first, and a Linux distro with a uname for the second (the keys of
    xapi_guest_agent.ml os_version)."""
    win = x.VM.get_guest_metrics(_running_source(x, windows=True))
    linux = x.VM.get_guest_metrics(_running_source(x, windows=False))
    win_os, linux_os = x.VM_guest_metrics.get_os_version(win), x.VM_guest_metrics.get_os_version(linux)
    assert win_os["distro"] == "windows" and win_os["name"].startswith("Microsoft Windows")
    assert "uname" not in win_os
    assert linux_os["distro"] in ("debian", "ubuntu", "rocky") and linux_os["uname"]


def test_guest_metrics_are_deterministic_from_the_seed(x, fresh_sim):
    """Given a second simulator started with the same seed and sizes (pool 0 only)
    Then every running VM reports the same os_version and networks as in the first."""
    other = H.api(fresh_sim("--pools", "1", "--vms-per-pool", "8", "--hosts-per-pool", "2",
                            "--disk-mib", "16").session(0))

    def reports(api):
        return sorted((rec["name_label"], sorted(api.VM_guest_metrics.get_os_version(rec["guest_metrics"]).items()),
                       sorted(api.VM_guest_metrics.get_networks(rec["guest_metrics"]).items()))
                      for rec in H.user_vms(api).values() if rec["power_state"] == "Running")

    assert reports(x) == reports(other) and reports(x)


def test_metrics_follow_snapshot_clone_start_shutdown_and_destroy(x):
    """Given a running VM
    When it is snapshotted, the snapshot cloned, the clone started, shut down and destroyed
    Then the snapshot and the clone get *copies* of the metrics and guest metrics (new refs, same
    content: xapi_vm_helpers.ml copy_metrics/copy_guest_metrics from copy_vm_record); starting the
    clone (paused) deletes its guest metrics (xapi_vm.ml start → delete_guest_metrics), and once it
    runs the agent's fresh report makes new ones (xapi_guest_agent.ml all); shutdown keeps both objects; destroy removes both (xapi_vm_helpers.ml destroy)."""
    source = _running_source(x)
    src = x.VM.get_record(source)
    snap = x.VM.snapshot(source, "metrics snapshot")
    s = x.VM.get_record(snap)
    assert s["metrics"] not in (NULL, src["metrics"]) and s["guest_metrics"] not in (NULL, src["guest_metrics"])
    assert x.VM_guest_metrics.get_os_version(s["guest_metrics"]) == \
        x.VM_guest_metrics.get_os_version(src["guest_metrics"])
    assert x.VM_metrics.get_memory_actual(s["metrics"]) == x.VM_metrics.get_memory_actual(src["metrics"])
    clone = x.VM.clone(snap, "metrics clone")
    x.VM.set_is_a_template(clone, False)  # a clone of a snapshot is a template, as in xapi
    c = x.VM.get_record(clone)
    assert c["guest_metrics"] not in (NULL, s["guest_metrics"])
    x.VM.start(clone, True, False)  # paused: no guest agent runs yet, the stale report is gone
    assert x.VM.get_guest_metrics(clone) == NULL
    assert _failure(x.VM_guest_metrics.get_record, c["guest_metrics"])[0] == "HANDLE_INVALID"
    x.VM.unpause(clone)
    started = x.VM.get_record(clone)
    assert started["guest_metrics"] not in (NULL, c["guest_metrics"])
    assert x.VM_guest_metrics.get_live(started["guest_metrics"]) is True
    x.VM.hard_shutdown(clone)
    halted = x.VM.get_record(clone)
    assert (halted["metrics"], halted["guest_metrics"]) == (started["metrics"], started["guest_metrics"])
    x.VM.destroy(clone)  # (the snapshot stays: the source VM's parent points at it)
    for cls, ref in (("VM_metrics", halted["metrics"]), ("VM_guest_metrics", halted["guest_metrics"])):
        assert _failure(getattr(x, cls).get_record, ref) == ["HANDLE_INVALID", cls, ref]


def test_metrics_classes_have_xapis_messages_only(x):
    """VM_metrics and VM_guest_metrics have implicit getters, other_config (RW) setters and no
    setters for runtime fields (datamodel_utils.ml: only RW fields get setters)."""
    rec = x.VM.get_record(_running_source(x))
    x.VM_metrics.add_to_other_config(rec["metrics"], "tinabs", "yes")
    assert x.VM_metrics.get_other_config(rec["metrics"])["tinabs"] == "yes"
    x.VM_metrics.remove_from_other_config(rec["metrics"], "tinabs")
    assert _failure(x.VM_metrics.set_memory_actual, rec["metrics"], "1")[0] == "MESSAGE_METHOD_UNKNOWN"
    assert _failure(x.VM_guest_metrics.set_os_version, rec["guest_metrics"], {})[0] == "MESSAGE_METHOD_UNKNOWN"
    assert x.VM_guest_metrics.get_can_use_hotplug_vbd(rec["guest_metrics"]) in ("yes", "no", "unspecified")


# -- power operations (xapi_vm_lifecycle.ml allowed_power_states) ----------------
def test_power_cycle_of_a_vm(x, sim):
    """Given a halted VM of our own
    When it goes through start_on, pause, unpause, clean/hard reboot, suspend, resume(_on) and
    hard_shutdown
    Then each lands in xapi's state (Paused/Running/Suspended/Halted, resident_on, domid), a reboot
    gives a new domid, suspend makes a ``suspend`` VDI that resume destroys, and every call in a
    wrong state fails with VM_BAD_POWER_STATE [vm, expected (lowercase, ", "), actual]
    (report_power_state_error)."""
    hosts = x.host.get_all()
    vm = H.own_vm(x, "power cycle", _halted_source(x))
    assert _failure(x.VM.pause, vm) == ["VM_BAD_POWER_STATE", vm, "running", "halted"]
    assert _failure(x.VM.resume, vm, False, False) == ["VM_BAD_POWER_STATE", vm, "suspended", "halted"]
    x.VM.start_on(vm, hosts[1], False, False)
    assert x.VM.get_resident_on(vm) == hosts[1] and x.VM.get_power_state(vm) == "Running"
    assert _failure(x.VM.start, vm, False, False) == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    x.VM.pause(vm)
    assert x.VM.get_power_state(vm) == "Paused"
    assert _failure(x.VM.clean_reboot, vm) == ["VM_BAD_POWER_STATE", vm, "running", "paused"]
    assert _failure(x.VM.pause, vm) == ["VM_BAD_POWER_STATE", vm, "running", "paused"]
    x.VM.unpause(vm)
    assert _failure(x.VM.unpause, vm) == ["VM_BAD_POWER_STATE", vm, "paused", "running"]
    domid = x.VM.get_domid(vm)
    x.VM.clean_reboot(vm)
    x.VM.hard_reboot(vm)
    assert x.VM.get_power_state(vm) == "Running" and int(x.VM.get_domid(vm)) > int(domid)
    x.VM.suspend(vm)
    image = x.VM.get_suspend_VDI(vm)
    assert x.VM.get_power_state(vm) == "Suspended" and x.VDI.get_type(image) == "suspend"
    assert x.VM.get_resident_on(vm) == NULL and x.VM.get_domid(vm) == "-1"
    assert _failure(x.VM.suspend, vm) == ["VM_BAD_POWER_STATE", vm, "running", "suspended"]
    assert _failure(x.VM.hard_reboot, vm) == ["VM_BAD_POWER_STATE", vm, "paused, running", "suspended"]
    assert set(x.VM.get_allowed_operations(vm)) >= {"resume", "resume_on", "hard_shutdown", "export"}
    x.VM.resume_on(vm, hosts[0], False, False)
    assert x.VM.get_resident_on(vm) == hosts[0] and x.VM.get_suspend_VDI(vm) == NULL
    assert _failure(x.VDI.get_record, image)[0] == "HANDLE_INVALID"
    x.VM.suspend(vm)
    image = x.VM.get_suspend_VDI(vm)
    x.VM.hard_shutdown(vm)  # a suspended VM's image goes with a hard shutdown
    assert x.VM.get_power_state(vm) == "Halted" and _failure(x.VDI.get_record, image)[0] == "HANDLE_INVALID"
    assert _failure(x.VM.hard_shutdown, vm) == ["VM_BAD_POWER_STATE", vm, "paused, suspended, running", "halted"]
    x.VM.destroy(vm)


def test_start_on_a_host_that_cannot_see_the_disks_and_templates_refuse_start(x):
    """VM.start_on a host without a PBD for the VM's local SR fails with VM_REQUIRES_SR [vm, sr]
    (xapi_vm_helpers.ml assert_can_boot_here); a bogus host gives HANDLE_INVALID [host, ref]; a
    template refuses start with VM_IS_TEMPLATE [vm, "start"] (check_template); VM.revert of a VM
    that is no snapshot gives REVERT_ONLY_ALLOWED_ON_SNAPSHOT and VM.provision of a non-template
    PROVISION_ONLY_ALLOWED_ON_TEMPLATE (check_operation_error)."""
    local = set(x.SR.get_by_name_label("Local storage"))
    source = next(ref for ref, rec in H.user_vms(x).items()
                  if any(vdi["SR"] in local for _, vdi in H.vm_disks(x, ref) if _["userdevice"] == "0"))
    vm = H.own_vm(x, "local disk", source)
    sr = next(vdi["SR"] for vbd, vdi in H.vm_disks(x, vm) if vbd["userdevice"] == "0")
    elsewhere = next(h for h in x.host.get_all() if h not in {x.PBD.get_host(p) for p in x.SR.get_PBDs(sr)})
    assert _failure(x.VM.start_on, vm, elsewhere, False, False) == ["VM_REQUIRES_SR", vm, sr]
    bogus = "OpaqueRef:00000000-0000-0000-0000-000000000000"
    assert _failure(x.VM.start_on, vm, bogus, False, False) == ["HANDLE_INVALID", "host", bogus]
    assert x.VM.get_power_state(vm) == "Halted"
    template = x.VM.get_by_name_label("Debian Bookworm 12")[0]
    assert _failure(x.VM.start, template, False, False) == ["VM_IS_TEMPLATE", template, "start"]
    assert _failure(x.VM.revert, vm) == ["REVERT_ONLY_ALLOWED_ON_SNAPSHOT"]
    assert _failure(x.VM.provision, vm) == ["PROVISION_ONLY_ALLOWED_ON_TEMPLATE"]
    x.VM.destroy(vm)


def test_checkpoint_is_a_suspended_snapshot_with_a_memory_image(x):
    """Given a running VM
    When VM.checkpoint is called
    Then the VM keeps running and the new snapshot is Suspended with a ``suspend_VDI`` (the memory
    image, xapi_vm_snapshot.ml checkpoint), allowed only while the VM is Paused/Suspended/Running:
    a halted VM gives VM_BAD_POWER_STATE [vm, "paused, suspended, running", "halted"]."""
    vm = H.own_vm(x, "checkpointed", _halted_source(x))
    assert _failure(x.VM.checkpoint, vm, "no") == ["VM_BAD_POWER_STATE", vm, "paused, suspended, running", "halted"]
    x.VM.start(vm, False, False)
    snap = x.VM.checkpoint(vm, "with memory")
    rec = x.VM.get_record(snap)
    assert rec["is_a_snapshot"] and rec["snapshot_of"] == vm and rec["power_state"] == "Suspended"
    assert x.VDI.get_type(rec["suspend_VDI"]) == "suspend"
    assert x.VM.get_power_state(vm) == "Running"
    x.VM.revert(snap)  # the VM comes back suspended, with a memory image of its own
    assert x.VM.get_power_state(vm) == "Suspended"
    assert x.VM.get_suspend_VDI(vm) not in (NULL, rec["suspend_VDI"])
    x.VM.hard_shutdown(vm)
    x.VM.destroy(snap)
    x.VM.destroy(vm)


def test_revert_restores_fields_disks_and_power_state(sim, x):
    """Given a running VM of our own with a snapshot (taken while it ran), then a guest write to
    its disk and a changed name_description
    When VM.revert(snapshot) is called
    Then (xapi_vm_snapshot.ml revert) the VM is Halted (the snapshot's power state), its old disk
    is destroyed and replaced by a new VDI cloned from the snapshot's - same bytes as the snapshot
    disk, not the written ones - the snapshot's VDI now has that clone as snapshot_of, the
    description is back (revert_vm_fields), parent is the snapshot and the VM has copies of the
    snapshot's metrics objects (update_metrics/update_guest_metrics)."""
    vm = H.own_vm(x, "revert me", _halted_source(x))
    x.VM.start(vm, False, False)
    (_, disk), = H.vm_disks(x, vm)
    snap = x.VM.snapshot(vm, "before the write")
    (_, snap_disk), = H.vm_disks(x, snap)
    before = sim.vdi_info(snap_disk["uuid"])["sha256"]
    H.guest_write(sim, disk["uuid"], 4096, b"\xee" * 65536)
    assert sim.vdi_info(disk["uuid"])["sha256"] != before
    x.VM.set_name_description(vm, "changed after the snapshot")
    x.VM.revert(snap)
    (_, new_disk), = H.vm_disks(x, vm)
    assert new_disk["uuid"] != disk["uuid"]
    assert _failure(x.VDI.get_by_uuid, disk["uuid"]) == ["UUID_INVALID", "VDI", disk["uuid"]]
    assert sim.vdi_info(new_disk["uuid"])["sha256"] == before
    assert x.VDI.get_snapshot_of(x.VDI.get_by_uuid(snap_disk["uuid"])) == x.VDI.get_by_uuid(new_disk["uuid"])
    rec = x.VM.get_record(vm)
    assert rec["power_state"] == "Halted" and rec["name_description"] == x.VM.get_name_description(snap)
    assert rec["parent"] == snap and rec["name_label"] == "revert me"
    assert rec["guest_metrics"] not in (NULL, x.VM.get_guest_metrics(snap))
    assert x.VM_guest_metrics.get_os_version(rec["guest_metrics"]) == \
        x.VM_guest_metrics.get_os_version(x.VM.get_guest_metrics(snap))
    x.VM.destroy(snap)
    x.VM.destroy(vm)


def test_provision_makes_the_disks_of_the_template_spec(x):
    """Given a template (a clone of a default one) whose other_config:disks holds a provision spec
    When VM.provision is called
    Then (xapi_vm.ml provision, xapi_templates.ml pre_install/create_disk/post_install) it is no
    longer a template, it has one new empty VDI per <disk> - named after its userdevice, of the given
    size and type, in the SR named by uuid - with a VBD at that userdevice, and the disks key is
    gone; a spec naming an unknown SR uuid fails with UUID_INVALID [SR, uuid]."""
    template = x.VM.clone(x.VM.get_by_name_label("Debian Bookworm 12")[0], "provision me")
    sr = H.sr_by_name(x, "nfs-shared")
    spec = ('<provision><disk device="0" size="1073741824" sr="{}" bootable="true" type="system"/>'
            '<disk device="1" size="2147483648" sr="{}" bootable="false" type="user"/></provision>')
    x.VM.add_to_other_config(template, "disks", spec.format("no-such-sr", "no-such-sr"))
    assert _failure(x.VM.provision, template) == ["UUID_INVALID", "SR", "no-such-sr"]
    uuid = x.SR.get_uuid(sr)
    x.VM.remove_from_other_config(template, "disks")
    x.VM.add_to_other_config(template, "disks", spec.format(uuid, uuid))
    task = x.Async.VM.provision(template)
    assert wait_task(x, task)["status"] == "success"
    rec = x.VM.get_record(template)
    assert not rec["is_a_template"] and "disks" not in rec["other_config"]
    disks = H.vm_disks(x, template)
    assert [(v["userdevice"], d["name_label"], d["virtual_size"], d["type"], d["SR"], v["bootable"])
            for v, d in disks] == [("0", "0", "1073741824", "system", sr, True),
                                  ("1", "1", "2147483648", "user", sr, False)]
    assert "start" in rec["allowed_operations"]
    x.VM.destroy(template)


def test_every_listed_operation_is_a_message_the_simulator_serves(x):
    """For every VM record, each operation in allowed_operations names a message that exists
    (update_allowed_operations lists only what a client can call): calling VM.<op> (VM.set_is_a_template
    for make_into_template) with no arguments gives MESSAGE_PARAMETER_COUNT_MISMATCH, never
    MESSAGE_METHOD_UNKNOWN."""
    listed = {op for rec in x.VM.get_all_records().values() for op in rec["allowed_operations"]}
    assert {"start", "clean_shutdown", "snapshot", "revert", "export"} <= listed
    for operation in sorted(listed - {"export"}):  # export is the /export handler
        method = "set_is_a_template" if operation == "make_into_template" else operation
        details = _failure(getattr(x.VM, method))  # the session only: too few parameters
        assert details[0] == "MESSAGE_PARAMETER_COUNT_MISMATCH", (operation, details)
