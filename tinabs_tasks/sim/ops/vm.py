"""VM messages: create, destroy, snapshot, clone, copy, power, HA setters."""
from __future__ import annotations

import uuid as uuidlib

from tinabs_tasks.sim import wire
from tinabs_tasks.sim.datamodel import EPOCH, NULL_REF, model
from tinabs_tasks.sim.errors import XapiError, bad_power_state
from tinabs_tasks.sim.tasks import now
from tinabs_tasks.sim.ops import Ctx, op
from tinabs_tasks.sim.ops import devices
from tinabs_tasks.sim.ops import storage
from tinabs_tasks.sim.ops.construct import ctor_fields, random_mac, require

#: Reset on every new VM, snapshot and clone alike (xapi_vm_clone.ml copy_vm_record).
_RESET_ON_COPY = {
    "ha_always_run": False, "start_delay": 0, "shutdown_delay": 0, "order": 0,
    "appliance": NULL_REF, "protection_policy": NULL_REF, "snapshot_schedule": NULL_REF,
    "suspend_SR": NULL_REF, "version": 0, "blocked_operations": {},
}
_RUNTIME = {"power_state": "Halted", "resident_on": NULL_REF, "domid": -1, "current_operations": {},
            "scheduled_to_be_resident_on": NULL_REF}
_HALTED_OPS = ["start", "clone", "copy", "snapshot", "export", "destroy", "metadata_export", "start_on"]
_RUNNING_OPS = ["snapshot", "clean_shutdown", "hard_shutdown", "clean_reboot", "hard_reboot", "metadata_export"]
_SNAPSHOT_OPS = ["revert", "clone", "copy", "export", "destroy", "hard_shutdown", "metadata_export"]
HA_PRIORITIES = ("restart", "best-effort", "")


def vm_record(ctx: Ctx, vm: str) -> dict:
    return ctx.store.record("VM", require(ctx.store, "VM", vm))


def allowed_operations(rec: dict) -> list[str]:
    if rec["is_a_snapshot"]:
        return list(_SNAPSHOT_OPS)
    return list(_HALTED_OPS if rec["power_state"] == "Halted" else _RUNNING_OPS)


def refresh_allowed(ctx: Ctx, vm: str) -> None:
    ctx.store.set("VM", vm, "allowed_operations", allowed_operations(ctx.store.record("VM", vm)))


def assert_not_busy(ctx: Ctx, vm: str) -> None:
    for task, operation in ctx.store.get("VM", vm, "current_operations").items():
        raise XapiError("OTHER_OPERATION_IN_PROGRESS", "VM", vm, operation, task)


def assert_power(ctx: Ctx, vm: str, allowed: list[str]) -> None:
    state = ctx.store.get("VM", vm, "power_state")
    if state not in allowed:
        raise bad_power_state(vm, allowed, state)


def _assert_op_allowed(ctx: Ctx, rec: dict, vm: str, operation: str) -> None:
    if rec["is_a_snapshot"] and operation not in _SNAPSHOT_OPS:
        raise XapiError("VM_IS_SNAPSHOT", vm, operation)
    if rec["is_a_template"] and not rec["is_a_snapshot"] and operation in ("snapshot", "start", "export"):
        raise XapiError("VM_IS_TEMPLATE", vm, operation)
    if rec["is_control_domain"] and operation in ("snapshot", "clone", "copy", "destroy", "export", "start"):
        raise XapiError("OPERATION_NOT_ALLOWED", f"Operation {operation} is not allowed on the control domain")


@op("VM.create")
def create(ctx: Ctx, args):
    fields = ctor_fields("VM", args)
    _check_memory(fields)
    require(ctx.store, "host", fields.get("affinity", NULL_REF), allow_null=True)
    ctx.pool.slow_op(ctx.task)
    fields.update(_RUNTIME, is_a_snapshot=False, snapshot_of=NULL_REF, is_control_domain=False)
    fields.setdefault("generation_id", "0:0")
    ref = ctx.store.create("VM", fields)
    refresh_allowed(ctx, ref)
    return ref


def _check_memory(f: dict) -> None:
    keys = ("memory_static_min", "memory_dynamic_min", "memory_dynamic_max", "memory_static_max")
    values = [f[k] for k in keys]
    if values != sorted(values):
        raise XapiError("MEMORY_CONSTRAINT_VIOLATION",
                        "Memory limits must satisfy: static_min <= dynamic_min <= dynamic_max <= static_max")
    if f["VCPUs_at_startup"] > f["VCPUs_max"] or f["VCPUs_at_startup"] < 1:
        raise XapiError("INVALID_VALUE", "VCPUs_at_startup", f["VCPUs_at_startup"])


@op("VM.destroy")
def destroy(ctx: Ctx, self):
    rec = vm_record(ctx, self)
    _assert_op_allowed(ctx, rec, self, "destroy")
    assert_power(ctx, self, ["Halted", "Suspended"])
    assert_not_busy(ctx, self)
    with ctx.store.lock:
        for vbd in rec["VBDs"]:
            ctx.store.destroy("VBD", vbd)
        for vif in rec["VIFs"]:
            ctx.store.destroy("VIF", vif)
        # xapi_vm_helpers.ml destroy: the VDIs stay behind.
        ctx.store.destroy("VM", self)
    return ""


def _copy_record(rec: dict, name: str, *, regenerate_mac_seed: bool) -> dict:
    fields = {k: v for k, v in rec.items() if k not in ("uuid", "VBDs", "VIFs", "snapshots", "children",
                                                          "allowed_operations")}
    fields.update(_RESET_ON_COPY)
    fields.update(_RUNTIME, name_label=name, is_default_template=False, requires_reboot=False,
                  generation_id=f"{uuidlib.uuid4().int % 2**63}:{uuidlib.uuid4().int % 2**63}")
    other = {k: v for k, v in rec["other_config"].items() if k not in ("default_template", "xensource_internal")}
    if regenerate_mac_seed:
        other["mac_seed"] = str(uuidlib.uuid4())
    if rec["is_a_template"]:  # a copy remembers which template it came from
        other.setdefault("base_template_name", rec["name_label"])
    fields["other_config"] = other
    return fields


def _copy_devices(ctx: Ctx, src: dict, dst: str, disk_op, *, keep_macs: bool, ignore=()) -> None:
    for vbd in src["VBDs"]:
        v = ctx.store.record("VBD", vbd)
        vdi = v["VDI"]
        if v["type"] != "CD" and vdi != NULL_REF:
            if vdi in ignore:
                continue
            vdi = disk_op(vdi)
        devices.new_vbd(ctx, dst, vdi, v)
    for vif in src["VIFs"]:
        devices.new_vif(ctx, dst, ctx.store.record("VIF", vif), mac=None if keep_macs else "")


@op("VM.snapshot")
def snapshot(ctx: Ctx, vm, new_name, ignore_vdis=()):
    rec = vm_record(ctx, vm)
    _assert_op_allowed(ctx, rec, vm, "snapshot")
    assert_not_busy(ctx, vm)
    ctx.pool.slow_op(ctx.task)
    fields = _copy_record(rec, str(new_name), regenerate_mac_seed=False)
    fields.update(is_a_snapshot=True, is_a_template=True, snapshot_of=vm, snapshot_time=now(),
                  parent=rec["parent"], snapshot_info={"disk-snapshot-type": "crash_consistent",
                                                       "power-state-at-snapshot": rec["power_state"]})
    with ctx.store.lock:
        snap = ctx.store.create("VM", fields)
        _copy_devices(ctx, rec, snap, lambda vdi: storage.snapshot_vdi(ctx, vdi), keep_macs=True,
                      ignore=set(ignore_vdis or ()))
        ctx.store.set("VM", vm, "parent", snap)
        refresh_allowed(ctx, snap)
    return snap


@op("VM.clone")
def clone(ctx: Ctx, vm, new_name):
    rec = vm_record(ctx, vm)
    return _clone_or_copy(ctx, vm, rec, str(new_name), "clone", lambda vdi: storage.clone_vdi(ctx, vdi))


@op("VM.copy")
def copy(ctx: Ctx, vm, new_name, sr):
    rec = vm_record(ctx, vm)
    if sr != NULL_REF:
        require(ctx.store, "SR", sr)
    return _clone_or_copy(ctx, vm, rec, str(new_name), "copy",
                          lambda vdi: storage.copy_vdi(ctx, vdi, sr if sr != NULL_REF else
                                                       ctx.store.get("VDI", vdi, "SR"), None))


def _clone_or_copy(ctx: Ctx, vm: str, rec: dict, name: str, operation: str, disk_op) -> str:
    _assert_op_allowed(ctx, rec, vm, operation)
    assert_power(ctx, vm, ["Halted", "Suspended"] if rec["is_a_snapshot"] else ["Halted"])
    assert_not_busy(ctx, vm)
    ctx.pool.slow_op(ctx.task)
    fields = _copy_record(rec, name, regenerate_mac_seed=True)
    # A clone of a snapshot is no snapshot: it loses the snapshot's time and info (copy_vm_record).
    fields.update(is_a_snapshot=False, snapshot_of=NULL_REF, parent=NULL_REF, is_control_domain=False,
                  snapshot_time=EPOCH, snapshot_info={})
    with ctx.store.lock:
        new = ctx.store.create("VM", fields)
        _copy_devices(ctx, rec, new, disk_op, keep_macs=False)
        refresh_allowed(ctx, new)
    return new


@op("VM.start")
def start(ctx: Ctx, vm, start_paused, force):
    rec = vm_record(ctx, vm)
    _assert_op_allowed(ctx, rec, vm, "start")
    assert_power(ctx, vm, ["Halted"])
    for vbd in rec["VBDs"]:
        v = ctx.store.record("VBD", vbd)
        if v["VDI"] != NULL_REF:
            storage.assert_attachable(ctx, v["VDI"], v["mode"])
    host = rec["affinity"] if ctx.store.exists("host", rec["affinity"]) else ctx.pool.master_ref
    with ctx.store.lock:
        if rec["ha_restart_priority"] == "restart":  # xapi_vm.ml start: a protected VM is now always-run
            ctx.store.set("VM", vm, "ha_always_run", True)
        ctx.store.update("VM", vm, power_state="Paused" if start_paused else "Running", resident_on=host,
                         domid=max([ctx.store.get("VM", r, "domid") for r in ctx.store.refs("VM")] + [0]) + 1)
        _set_attached(ctx, rec, True)
        refresh_allowed(ctx, vm)
    return ""


def _set_attached(ctx: Ctx, rec: dict, attached: bool) -> None:
    for vbd in rec["VBDs"]:
        ctx.store.set("VBD", vbd, "currently_attached", attached)
    for vif in rec["VIFs"]:
        ctx.store.set("VIF", vif, "currently_attached", attached)


def _shutdown(ctx: Ctx, vm) -> str:
    rec = vm_record(ctx, vm)
    assert_power(ctx, vm, ["Running", "Paused"])
    with ctx.store.lock:
        ctx.store.update("VM", vm, ha_always_run=False, **_RUNTIME)  # a shut-down VM is no longer HA-run
        _set_attached(ctx, rec, False)
        refresh_allowed(ctx, vm)
    return ""


op("VM.clean_shutdown")(_shutdown)
op("VM.hard_shutdown")(_shutdown)
op("VM.shutdown")(_shutdown)


@op("VM.set_ha_restart_priority")
def set_ha_restart_priority(ctx: Ctx, self, value):
    rec = vm_record(ctx, self)
    if value not in HA_PRIORITIES:
        raise XapiError("INVALID_VALUE", "ha_restart_priority", value)
    if value != rec["ha_restart_priority"]:
        with ctx.store.lock:
            ctx.store.set("VM", self, "ha_restart_priority", value)
            # xapi_vm.ml: a running VM is (un)protected at once via ha_always_run
            if rec["power_state"] == "Running":
                ctx.store.set("VM", self, "ha_always_run", value == "restart")
    return ""


@op("VM.set_ha_always_run")
def set_ha_always_run(ctx: Ctx, self, value):
    # Deprecated since boston; xapi degrades it to a restart-priority change.
    value = wire.coerce(model("VM").ftype("ha_always_run"), value, "value")
    return set_ha_restart_priority(ctx, self, "restart" if value else "")


def _nonnegative_setter(field: str):
    """VM.set_order/set_start_delay/set_shutdown_delay: custom setters of RO/constructor ints."""
    def setter(ctx: Ctx, self, value):
        vm_record(ctx, self)
        value = wire.coerce(model("VM").ftype(field), value, "value")
        if value < 0:  # xapi_vm.ml invalid_value
            raise XapiError("INVALID_VALUE", f"{field} must be non-negative", value)
        ctx.store.set("VM", self, field, value)
        return ""
    return setter


for _field in ("order", "start_delay", "shutdown_delay"):
    op(f"VM.set_{_field}")(_nonnegative_setter(_field))


@op("VM.get_allowed_VBD_devices")
def get_allowed_vbd_devices(ctx: Ctx, vm):
    used = {ctx.store.get("VBD", v, "userdevice") for v in vm_record(ctx, vm)["VBDs"]}
    return [str(n) for n in range(16) if str(n) not in used]


@op("VM.get_allowed_VIF_devices")
def get_allowed_vif_devices(ctx: Ctx, vm):
    used = {ctx.store.get("VIF", v, "device") for v in vm_record(ctx, vm)["VIFs"]}
    return [str(n) for n in range(7) if str(n) not in used]


__all__ = ["random_mac"]
