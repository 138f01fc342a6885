"""Stage 3: empty data disks like the original's, a CD drive if it had one,
and (export mode) a writable clone of the system snapshot at userdevice 0.

Creates: per data disk one VDI on the configured shared SR (same size, type,
sharable, read_only) created with its markers (role data-disk:<userdevice>),
and one VBD per device on the backup VM (same userdevice, mode, bootable).
In export mode, a VDI.clone of the snapshot (role system-disk).
Earlier attempt: VBDs already on the backup VM are skipped by userdevice;
VDIs are found by their run-specific name.
Undone by: cleanup / compensation (VM.destroy drops VBDs; VDIs by marker).
"""
from __future__ import annotations

from ..xapi.port import NULL_REF
from . import markers


def run(xapi, ctx: dict, report) -> dict:
    x = xapi.x
    backup_vm = ctx["refs"]["backup_vm"]
    taken = {x.VBD.get_userdevice(vbd) for vbd in x.VM.get_VBDs(backup_vm)}
    shared_sr = xapi.sr_by_name_or_uuid(xapi.pool.shared_sr)
    for vbd in x.VM.get_VBDs(ctx["refs"]["source_vm"]):
        rec = x.VBD.get_record(vbd)
        if rec["userdevice"] in taken or rec["userdevice"] == "0":
            continue
        if rec["type"] == "CD":
            _attach(x, backup_vm, NULL_REF, rec, ctx)
        elif rec["type"] == "Disk" and rec["VDI"] != NULL_REF:
            _attach(x, backup_vm, _empty_disk(xapi, shared_sr, rec, ctx), rec, ctx)
    if ctx["mode"] == "export" and "0" not in taken:
        system = _system_clone(xapi, ctx, report)
        _attach(x, backup_vm, system, x.VBD.get_record(ctx["refs"]["system_vbd"]), ctx)
    return ctx


def _empty_disk(xapi, sr: str, vbd: dict, ctx: dict) -> str:
    x = xapi.x
    role = f"{markers.Role.DATA_DISK}:{vbd['userdevice']}"
    label = markers.name(ctx, f"data {vbd['userdevice']}")
    existing = markers.find_named(x, "VDI", label, ctx["run"])
    if existing:
        return existing
    src = x.VDI.get_record(vbd["VDI"])
    return xapi.call_async("VDI.create", {
        "name_label": label, "name_description": src["name_description"], "SR": sr,
        "virtual_size": str(src["virtual_size"]), "type": src["type"], "sharable": src["sharable"],
        "read_only": src["read_only"], "other_config": markers.markers(ctx, role),
        "sm_config": {}, "xenstore_data": {}, "tags": []})


def _system_clone(xapi, ctx: dict, report) -> str:
    x = xapi.x
    label = markers.name(ctx, "system disk")
    clone = markers.find_named(x, "VDI", label, ctx["run"])
    if clone is None:
        clone = xapi.call_async("VDI.clone", ctx["refs"]["snapshot"], {}, progress=report.fraction)
        markers.mark(x, "VDI", clone, ctx, markers.Role.SYSTEM_DISK, label)
    ctx["refs"]["system_disk"] = clone
    return clone


def _attach(x, vm: str, vdi: str, template: dict, ctx: dict) -> str:
    empty = vdi == NULL_REF
    return x.VBD.create({
        "VM": vm, "VDI": vdi, "userdevice": template["userdevice"], "bootable": template["bootable"],
        "mode": "RO" if template["type"] == "CD" else template["mode"], "type": template["type"],
        "empty": empty, "other_config": markers.markers(ctx, "vbd"),
        "qos_algorithm_type": template["qos_algorithm_type"],
        "qos_algorithm_params": template["qos_algorithm_params"], "unpluggable": template["unpluggable"]})
