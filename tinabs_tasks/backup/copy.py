"""Stage 5 (sr-copy mode): copy the system snapshot to the backup SR and attach it.

Creates: one VDI on the backup SR (``VDI.copy``, progress from the XAPI
task), marked role system-copy, attached at userdevice 0 of the backup VM.
No disk data crosses the network: the storage does the copy.
Earlier attempt: a copy of this run found by name/marker is reused (VDI.copy
is atomic: a copy that exists is complete).
Holds a pool slot and the run's lease while copying.
Undone by: compensation (VDI.destroy); after success the copy is kept.
"""
from __future__ import annotations

from tinabs_tasks.xapi import markers
from tinabs_tasks.backup.errors import Permanent


def run(env, ctx: dict) -> dict:
    xapi, report, slots = env.xapi, env.report, env.slots
    x = xapi.x
    if not xapi.pool.backup_sr:
        raise Permanent(f"pool `{xapi.pool.name}` has no backup_sr configured; sr-copy mode needs one",
                        "NO_BACKUP_SR")
    label = markers.name(ctx, "system copy")
    copy = markers.find_named(x, "VDI", label, ctx["run"]) if env.again else None  # (only a re-run made one)
    if copy is None:
        backup_sr = xapi.sr_by_name_or_uuid(xapi.pool.backup_sr)
        with slots.hold(ctx["run"], "copy", park=("copy", ctx)):
            copy = xapi.call_async_marked("VDI.copy", ctx["refs"]["snapshot"], backup_sr, run=ctx["run"],
                                          progress=report.fraction)  # marked: an abort cancels it
        markers.mark(x, "VDI", copy, ctx, markers.Role.SYSTEM_COPY, label)
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
