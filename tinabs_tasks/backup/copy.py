"""Stage 5 (sr-copy mode): copy the system snapshot to the backup SR and attach it.

Creates: one VDI on the backup SR, marked role system-copy, attached at userdevice 0 of the
backup VM: incremental when the VM has a base to build on (``incremental.choose``; a clone of
the base's backup copy with only the changed blocks written into it, ``copy_delta``), else a
full ``VDI.copy`` (progress from the XAPI task), saying why (``ctx["kind"]``, into the manifest).
No disk data crosses the network: the storage does the copy.
Earlier attempt: a copy of this run found by name/marker is reused (a full VDI.copy is atomic:
a copy that exists is complete; a delta clone is marked pending until its delta is written,
and a pending one is written again: writing the same changed blocks twice gives the same disk).
Holds a pool slot and the run's lease while copying.
Undone by: compensation (VDI.destroy); after success the copy is kept.
"""
from __future__ import annotations

import logging

from tinabs_tasks.backup import copy_delta, incremental
from tinabs_tasks.backup.copy_delta import DELTA_PENDING
from tinabs_tasks.backup.errors import Permanent
from tinabs_tasks.xapi import markers

log = logging.getLogger("tinabs")


def run(env, ctx: dict) -> dict:
    xapi, report, slots = env.xapi, env.report, env.slots
    x = xapi.x
    if not xapi.pool.backup_sr:
        raise Permanent(f"pool `{xapi.pool.name}` has no backup_sr configured; sr-copy mode needs one",
                        "NO_BACKUP_SR")
    label = markers.name(ctx, "system copy")
    copy = markers.find_named(x, "VDI", label, ctx["run"]) if env.again else None  # (only a re-run made one)
    if copy is not None and x.VDI.get_other_config(copy).get(markers.ROLE) == DELTA_PENDING:
        copy = None  # an earlier attempt's clone, the delta maybe half written: written again below
    if copy is None:
        backup_sr = xapi.sr_by_name_or_uuid(xapi.pool.backup_sr)
        plan = incremental.choose(xapi, ctx, "sr-copy", destination=env.destination, full_every=env.full_every,
                                    stage="copy")
        previous = None
        if plan.seen is not None and plan.seen.mode == "sr-copy":  # whatever tonight takes
            copy_delta.remove_stray_clones_of(x, plan.seen.copy_uuid)
        if plan.incremental:
            previous, why = incremental.copy_of_base(x, plan.base, backup_sr)
            if previous is None:
                plan = incremental.full(why)
        with slots.hold(ctx["run"], "copy", park=("copy", ctx)):
            if plan.incremental:
                try:
                    copy = copy_delta.copy_changes(xapi, ctx, plan.base, previous, backup_sr, label, report)
                except copy_delta.DeltaRefused as exc:
                    log.warning("run %s: %s; copying %s in full", ctx["run"], exc, ctx["vm"]["name"])
                    plan = incremental.full(str(exc), plan.stray_bases)
            if not plan.incremental:
                copy_delta.remove_pending(x, label, ctx["run"])
                copy = xapi.call_async_marked("VDI.copy", ctx["refs"]["snapshot"], backup_sr, run=ctx["run"],
                                              progress=report.fraction)  # marked: an abort cancels it
                markers.mark(x, "VDI", copy, ctx, markers.Role.SYSTEM_COPY, label)
        ctx["kind"] = {**plan.fields(), "stray_bases": plan.stray_bases}
        copy_delta.record_kind(x, copy, ctx["kind"])
    else:
        ctx["kind"] = copy_delta.kind_of(x, copy)
    vbds = x.VM.get_VBDs(ctx["refs"]["backup_vm"])
    if not any(x.VBD.get_userdevice(v) == "0" for v in vbds):
        template = x.VBD.get_record(ctx["refs"]["system_vbd"])
        x.VBD.create({
            "VM": ctx["refs"]["backup_vm"], "VDI": copy, "userdevice": "0", "bootable": template["bootable"],
            "mode": "RW", "type": "Disk", "empty": False, "other_config": markers.markers(ctx, "vbd"),
            "qos_algorithm_type": template["qos_algorithm_type"],
            "qos_algorithm_params": template["qos_algorithm_params"]})
    ctx["refs"]["system_copy"] = copy
    return ctx
