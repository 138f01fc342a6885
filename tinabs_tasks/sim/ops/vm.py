"""VM messages: create, destroy, snapshot, clone, copy, HA and order setters.

Power operations are in ..vm_power, checkpoint/revert/provision in ..vm_snapshot, the
rules for which operation may run in ..vm_lifecycle, metrics objects in ..vm_metrics.
"""
from __future__ import annotations

import uuid as uuidlib

from tinabs_tasks.sim import wire
from tinabs_tasks.sim.datamodel import EPOCH, NULL_REF, model
from tinabs_tasks.sim.errors import XapiError
from tinabs_tasks.sim.tasks import now
from tinabs_tasks.sim.ops import Ctx, op
from tinabs_tasks.sim.ops import devices
from tinabs_tasks.sim.ops import storage
from tinabs_tasks.sim.ops import vm_metrics
from tinabs_tasks.sim.ops.construct import ctor_fields, random_mac, require
from tinabs_tasks.sim.ops.vm_lifecycle import refresh_allowed, vm_operation, vm_record
from tinabs_tasks.sim.ops.vm_lifecycle import allowed_operations as _allowed_operations
from tinabs_tasks.sim.ops.vm_power import start

#: Reset on every new VM, snapshot and clone alike (xapi_vm_clone.ml copy_vm_record).
_RESET_ON_COPY = {
    "ha_always_run": False, "start_delay": 0, "shutdown_delay": 0, "order": 0,
    "appliance": NULL_REF, "protection_policy": NULL_REF, "snapshot_schedule": NULL_REF,
    "suspend_SR": NULL_REF, "version": 0, "blocked_operations": {},
}
_RUNTIME = {"power_state": "Halted", "resident_on": NULL_REF, "domid": -1, "current_operations": {},
            "scheduled_to_be_resident_on": NULL_REF}
HA_PRIORITIES = ("restart", "best-effort", "")


def allowed_operations(rec: dict) -> list[str]:
    """What xapi would list for a record that has no guest metrics yet (the inventory's new VMs)."""
    return _allowed_operations(rec)


@op("VM.create")
def create(ctx: Ctx, args):
    fields = ctor_fields("VM", args)
    _check_memory(fields)
    require(ctx.store, "host", fields.get("affinity", NULL_REF), allow_null=True)
    ctx.pool.slow_op(ctx.task)
    fields.update(_RUNTIME, is_a_snapshot=False, snapshot_of=NULL_REF, is_control_domain=False)
    fields.setdefault("generation_id", "0:0")
    with ctx.store.lock:
        fields["metrics"] = vm_metrics.new_metrics(ctx.store)
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
    with vm_operation(ctx, self, "destroy"), ctx.store.lock:
        rec = vm_record(ctx, self)
        for vbd in rec["VBDs"]:
            ctx.store.destroy("VBD", vbd)
        for vif in rec["VIFs"]:
            ctx.store.destroy("VIF", vif)
        # xapi_vm_helpers.ml destroy: the VDIs stay behind, the metrics objects go.
        vm_metrics.destroy_metrics(ctx.store, rec)
        ctx.store.destroy("VM", self)
    return ""


def copy_record(ctx: Ctx, rec: dict, name: str, *, regenerate_mac_seed: bool) -> dict:
    """The fields of a VM copied from ``rec`` (xapi_vm_clone.ml copy_vm_record), metrics copied too."""
    fields = {k: v for k, v in rec.items() if k not in ("uuid", "VBDs", "VIFs", "snapshots", "children",
                                                          "allowed_operations", "suspend_VDI")}
    fields.update(_RESET_ON_COPY)
    fields.update(_RUNTIME, name_label=name, is_default_template=False, requires_reboot=False,
                  generation_id=f"{uuidlib.uuid4().int % 2**63}:{uuidlib.uuid4().int % 2**63}")
    other = {k: v for k, v in rec["other_config"].items() if k not in ("default_template", "xensource_internal")}
    if regenerate_mac_seed:
        other["mac_seed"] = str(uuidlib.uuid4())
    if rec["is_a_template"]:  # a copy remembers which template it came from
        other.setdefault("base_template_name", rec["name_label"])
    fields["other_config"] = other
    fields.update(vm_metrics.copies_for(ctx.store, rec))
    return fields


def copy_devices(ctx: Ctx, src: dict, dst: str, disk_op, *, keep_macs: bool, ignore=()) -> None:
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
    with vm_operation(ctx, vm, "snapshot"):
        ctx.pool.slow_op(ctx.task)
        return snapshot_of(ctx, vm, str(new_name), set(ignore_vdis or ()), memory=False)


def snapshot_of(ctx: Ctx, vm: str, name: str, ignore: set, *, memory: bool) -> str:
    """A snapshot record and disk snapshots of ``vm`` (xapi_vm_snapshot.ml snapshot/checkpoint)."""
    with ctx.store.lock:
        rec = vm_record(ctx, vm)
        fields = copy_record(ctx, rec, name, regenerate_mac_seed=False)
        fields.update(is_a_snapshot=True, is_a_template=True, snapshot_of=vm, snapshot_time=now(),
                      parent=rec["parent"], snapshot_info={
                          "disk-snapshot-type": "crash_consistent" if not memory else "checkpoint",
                          "power-state-at-snapshot": rec["power_state"]})
        snap = ctx.store.create("VM", fields)
        copy_devices(ctx, rec, snap, lambda vdi: storage.snapshot_vdi(ctx, vdi), keep_macs=True, ignore=ignore)
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
    with vm_operation(ctx, vm, operation):
        ctx.pool.slow_op(ctx.task)
        return _new_top_level(ctx, vm_record(ctx, vm), name, disk_op)


def _new_top_level(ctx: Ctx, rec: dict, name: str, disk_op) -> str:
    fields = copy_record(ctx, rec, name, regenerate_mac_seed=True)
    # A clone of a snapshot is no snapshot: it loses the snapshot's time and info (copy_vm_record).
    fields.update(is_a_snapshot=False, snapshot_of=NULL_REF, parent=NULL_REF, is_control_domain=False,
                  snapshot_time=EPOCH, snapshot_info={})
    with ctx.store.lock:
        new = ctx.store.create("VM", fields)
        copy_devices(ctx, rec, new, disk_op, keep_macs=False)
        refresh_allowed(ctx, new)
    return new


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


__all__ = ["random_mac", "start"]  # inventory.py starts VMs and importer.py refreshes them through here
