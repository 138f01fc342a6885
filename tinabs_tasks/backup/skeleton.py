"""Stage 2: the skeleton VM, created from the original VM's record.

Creates: one halted VM (``VM.create``) with the original's CPUs, memory,
platform, boot, PV and HA fields, tags and other_config, plus the markers
(role backup-vm) written in the same call, named ``[tinabs] <vm> backup <run>``.
Earlier attempt: a VM of that name carrying this run's marker is reused (looked for only
when an earlier delivery started this stage; the run record says so).
Undone by: cleanup / compensation (VM.destroy).
"""
from __future__ import annotations

from tinabs_tasks.xapi import markers
from tinabs_tasks.backup.skeleton_fields import create_args


def run(env, ctx: dict) -> dict:
    xapi, report = env.xapi, env.report
    x = xapi.x
    label = markers.name(ctx, "backup")
    vm = markers.find_named(x, "VM", label, ctx["run"]) if env.again else None  # (only a re-run made one)
    if vm is None:
        args = create_args(x.VM.get_record(ctx["refs"]["source_vm"]))
        args["name_label"] = label
        args["other_config"].update(markers.markers(ctx, markers.Role.BACKUP_VM))
        # 64-bit ints cannot travel as XML-RPC <int>: send them as strings, as xapi expects.
        args = {k: (str(v) if isinstance(v, int) and not isinstance(v, bool) else v) for k, v in args.items()}
        vm = xapi.call_async("VM.create", args, progress=report.fraction)
    ctx["refs"]["backup_vm"] = vm
    return ctx
