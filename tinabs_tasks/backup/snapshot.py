"""Stage 1: a live snapshot of the VM's system disk (the VDI at userdevice 0).

Creates: one VDI snapshot, marked (role system-snapshot) and named
``[tinabs] <vm> system snapshot <run>``.
Earlier attempt: a snapshot of the same system VDI carrying this run's marker
or name is reused (``VDI.get_snapshots`` of the system disk, cheap).  The
XAPI task of the snapshot carries the run's marker, so a snapshot whose
worker died before marking it is found through its task and marked then (looked
for only when an earlier delivery started this stage: reading every task costs).
Undone by: compensation (VDI.destroy by marker or name), and by cleanup in export mode; in
repo and sr-copy modes cleanup keeps it as the VM's base for the next night (xapi/bases.py).  Until
marked, a new snapshot carries only the system disk's own name, so one that
cannot be marked is destroyed on the spot: nothing could find it later.
"""
from __future__ import annotations

import logging

import XenAPI

from tinabs_tasks.xapi.port import NULL_REF
from tinabs_tasks.xapi import markers
from tinabs_tasks.backup.errors import Permanent
from tinabs_tasks.backup.skeleton_fields import summary

log = logging.getLogger("tinabs")


def run(env, ctx: dict) -> dict:
    xapi, report = env.xapi, env.report
    x = xapi.x
    try:
        vm = x.VM.get_by_uuid(ctx["vm"]["uuid"])
    except XenAPI.Failure as exc:
        raise Permanent(f"pool `{xapi.pool.name}`: VM {ctx['vm']['name']} ({ctx['vm']['uuid']}) no longer "
                        f"exists ({exc.details[0]})", exc.details[0]) from None
    rec = x.VM.get_record(vm)
    if rec["is_a_template"] or rec["is_a_snapshot"] or rec["is_control_domain"]:
        raise Permanent(f"{ctx['vm']['name']} is a template, snapshot or control domain: not backed up",
                        "VM_IS_TEMPLATE")
    system_vbd = system_vdi = None
    vbds = xapi.records_where("VBD", "VM", vm, lambda: rec["VBDs"])
    for vbd, vbd_rec in vbds.items():
        if vbd_rec["userdevice"] == "0" and vbd_rec["type"] == "Disk" and vbd_rec["VDI"] != NULL_REF:
            system_vbd, system_vdi = vbd, vbd_rec["VDI"]
    if system_vdi is None:
        raise Permanent(f"{ctx['vm']['name']} has no system disk at userdevice 0", "NO_SYSTEM_DISK")
    snap = _earlier_snapshot(x, system_vdi, ctx["run"]) if env.again else None  # (only a re-run made one)
    if snap is None and env.again:  # only an earlier delivery can have left a task (reading every task costs)
        snap = _snapshot_of_earlier_task(xapi, ctx, report)
    if snap is None:
        snap = xapi.call_async_marked("VDI.snapshot", system_vdi, {}, run=ctx["run"], progress=report.fraction)
        _mark_or_destroy(x, snap, ctx)
    ctx["refs"].update(source_vm=vm, system_vbd=system_vbd, system_vdi=system_vdi, snapshot=snap)
    vdis = {b["VDI"]: x.VDI.get_record(b["VDI"]) for b in vbds.values() if b["VDI"] != NULL_REF and b["type"] == "Disk"}
    vifs = xapi.records_where("VIF", "VM", vm, lambda: rec["VIFs"])
    ctx["skeleton"] = summary(x, rec, vbds, vdis, vifs)
    ctx["estimate_disks"] = estimate_disks(vbds, vdis, system_vdi)
    return ctx


def estimate_disks(vbds: dict, vdis: dict, system_vdi: str) -> list[list[int]]:
    """(physical_utilisation, virtual_size) of the backup VM's disks, for export.xva_size: the system
    disk's data as the snapshot took it, and the data disks, recreated empty."""
    out = [[int(vdis[system_vdi]["physical_utilisation"]), int(vdis[system_vdi]["virtual_size"])]]
    for b in vbds.values():
        if b["userdevice"] != "0" and b["VDI"] in vdis:
            out.append([0, int(vdis[b["VDI"]]["virtual_size"])])
    return out


def _earlier_snapshot(x, system_vdi: str, run: str) -> str | None:
    for snap in x.VDI.get_snapshots(system_vdi):
        if markers.is_ours(x.VDI.get_record(snap), run):
            return snap
    return None


def _snapshot_of_earlier_task(xapi, ctx: dict, report) -> str | None:
    """The snapshot an attempt that died while waiting started: finished, or waited for now."""
    found = None
    for snap in xapi.orphans_of(ctx["run"], progress=report.fraction):
        if found is None:
            found = snap
            _mark_or_destroy(xapi.x, snap, ctx)
        else:
            xapi.x.VDI.destroy(snap)
    return found


def _mark_or_destroy(x, snap: str, ctx: dict) -> None:
    try:
        markers.mark(x, "VDI", snap, ctx, markers.Role.SYSTEM_SNAPSHOT, markers.name(ctx, "system snapshot"))
    except BaseException:
        try:
            x.VDI.destroy(snap)
        except Exception as exc:  # the original failure is the one to report and classify
            log.warning("run %s: could not remove unmarked snapshot %s of %s: %s", ctx["run"], snap,
                        ctx["vm"]["name"], exc)
        raise
