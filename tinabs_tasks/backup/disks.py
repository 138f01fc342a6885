"""Stage 3: empty data disks like the original's, a CD drive if it had one,
and (export and repo modes) a writable clone of the system snapshot at userdevice 0.

Creates: per data disk one VDI on the configured shared SR (same size, type,
sharable, read_only) created with its markers (role data-disk:<userdevice>),
and one VBD per device on the backup VM (same userdevice, mode, bootable).
In export and repo modes, a VDI.clone of the snapshot (role system-disk).
Earlier attempt: VBDs already on the backup VM are skipped by userdevice;
VDIs are found by their run-specific name (looked up only when an earlier
delivery started this stage: a first one has made nothing yet).
Undone by: cleanup / compensation (VM.destroy drops VBDs; VDIs by marker).
"""
from __future__ import annotations

from tinabs_tasks.xapi.port import NULL_REF
from tinabs_tasks.xapi import markers


def run(env, ctx: dict) -> dict:
    xapi = env.xapi
    x = xapi.x
    backup_vm = ctx["refs"]["backup_vm"]
    taken = {x.VBD.get_userdevice(vbd) for vbd in x.VM.get_VBDs(backup_vm)}
    shared_sr = xapi.sr_by_name_or_uuid(xapi.pool.shared_sr)
    source = ctx["refs"]["source_vm"]
    records = xapi.records_where("VBD", "VM", source, lambda: x.VM.get_VBDs(source))
    wanted = [rec for rec in records.values() if rec["userdevice"] not in taken and rec["userdevice"] != "0"]
    wanted.sort(key=lambda rec: rec["userdevice"])
    # Every disk is started before any is waited for: the storage creates them side by side.
    started = []
    if ctx["mode"] in ("export", "repo") and "0" not in taken:
        system = records.get(ctx["refs"]["system_vbd"]) or x.VBD.get_record(ctx["refs"]["system_vbd"])
        started.append((system, _start_system_clone(xapi, ctx, env.again)))
    for rec in wanted:
        if rec["type"] == "CD":
            started.append((rec, (NULL_REF, None)))
        elif rec["type"] == "Disk" and rec["VDI"] != NULL_REF:
            started.append((rec, _start_empty_disk(xapi, shared_sr, rec, ctx, env.again)))
    failure = None
    for template, (vdi, task) in started:
        try:
            if task is not None:
                vdi = xapi.finish(task)
                if template["userdevice"] == "0":
                    markers.mark(x, "VDI", vdi, ctx, markers.Role.SYSTEM_DISK, markers.name(ctx, "system disk"))
            if template["userdevice"] == "0":
                ctx["refs"]["system_disk"] = vdi
            _attach(x, backup_vm, vdi, template, ctx)
        except Exception as exc:  # finish waiting for the others, so none is left running unmarked
            failure = failure or exc
    if failure is not None:
        raise failure
    return ctx


def _start_empty_disk(xapi, sr: str, vbd: dict, ctx: dict, again: bool) -> tuple[str | None, str | None]:
    """(existing VDI, None) if an earlier attempt made it, else (None, task creating it)."""
    x = xapi.x
    role = f"{markers.Role.DATA_DISK}:{vbd['userdevice']}"
    label = markers.name(ctx, f"data {vbd['userdevice']}")
    existing = markers.find_named(x, "VDI", label, ctx["run"]) if again else None
    if existing:
        return existing, None
    src = x.VDI.get_record(vbd["VDI"])
    return None, xapi.start_async("VDI.create", {
        "name_label": label, "name_description": src["name_description"], "SR": sr,
        "virtual_size": str(src["virtual_size"]), "type": src["type"], "sharable": src["sharable"],
        "read_only": src["read_only"], "other_config": markers.markers(ctx, role),
        "sm_config": {}, "xenstore_data": {}, "tags": []})


def _start_system_clone(xapi, ctx: dict, again: bool) -> tuple[str | None, str | None]:
    clone = markers.find_named(xapi.x, "VDI", markers.name(ctx, "system disk"), ctx["run"]) if again else None
    if clone is not None:
        return clone, None
    return None, xapi.start_async("VDI.clone", ctx["refs"]["snapshot"], {})


def _attach(x, vm: str, vdi: str, template: dict, ctx: dict) -> str:
    empty = vdi == NULL_REF
    return x.VBD.create({
        "VM": vm, "VDI": vdi, "userdevice": template["userdevice"], "bootable": template["bootable"],
        "mode": "RO" if template["type"] == "CD" else template["mode"], "type": template["type"],
        "empty": empty, "other_config": markers.markers(ctx, "vbd"),
        "qos_algorithm_type": template["qos_algorithm_type"],
        "qos_algorithm_params": template["qos_algorithm_params"], "unpluggable": template["unpluggable"]})
