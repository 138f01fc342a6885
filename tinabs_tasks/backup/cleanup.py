"""Stage 7 and compensation: remove what a run made on the pool, by marker.

``run`` (after success): in repo and sr-copy modes first makes the run's snapshot the VM's
base (``xapi/bases.py``: it stops being the run's, so nothing removes it as litter) and only
then destroys the VM's older base; keeps the sr-copy VDI (marked keep), destroys the
backup VM and every other VDI of the run.  It finds them by the names the run
gave them (``markers.name``: each carries the run id; a cheap name lookup, where
reading every record of a large pool is not), plus the refs in the context.  Compensation (after a failure):
everything of the run, the sr-copy VDI included, and every file of the run
in the destination: a failed run leaves nothing, not even a half-made backup.  Both only look at
markers and names, never at what a task remembers, so they are idempotent
and safe from any worker, twice in a row, or after a crash.
"""
from __future__ import annotations

import glob
import logging
import os

from tinabs_tasks.backup import store
from tinabs_tasks.repo import index as repo_index
from tinabs_tasks.storage import destination
from tinabs_tasks.xapi import bases
from tinabs_tasks.xapi import markers
from tinabs_tasks.xapi import run_objects

log = logging.getLogger("tinabs")
#: the modes whose snapshot is kept as the VM's base after a good backup
INCREMENTAL_MODES = ("repo", "sr-copy")


def run(env, ctx: dict) -> dict:
    xapi = env.xapi
    x = xapi.x
    base = _keep_base(x, ctx) if ctx["mode"] in INCREMENTAL_MODES else None
    vdis = _named(xapi, "VDI", ctx, _vdi_labels(ctx), ("snapshot", "system_disk", "system_copy"))
    copy_label = markers.name(ctx, "system copy")
    records = {}
    for ref, label in vdis.items():
        if ref == base:
            continue
        kept = label == copy_label
        if kept and _keep(x, ref) is run_objects.GONE:
            continue
        records[ref] = {"other_config": {markers.KEEP: "true"} if kept else {}}
    vms = _named(xapi, "VM", ctx, [markers.name(ctx, "backup")], ("backup_vm",))
    remove_pool_objects(xapi, ctx["run"], vdis=records, vms=list(vms))
    return ctx


def _keep_base(x, ctx: dict) -> str | None:
    """Make the run's snapshot the VM's base (its backup is complete: cleanup runs after the
    manifest), then destroy the VM's older bases; the base's ref (None: nothing to keep)."""
    snap = ctx.get("refs", {}).get("snapshot")
    m = destination.read_manifest(ctx.get("result", {}).get("manifest") or "") or {}
    if not snap or m.get("run") != ctx["run"]:
        return None
    if run_objects.unless_gone(x.VDI.get_uuid, snap) is run_objects.GONE:
        log.warning("run %s: its snapshot is gone from the pool; %s's next backup will be full",
                    ctx["run"], ctx["vm"]["name"])
        return None
    copies = m.get("copied_vdis") or [{}]
    bases.promote(x, snap, ctx, store.backup_id(ctx), ctx["mode"], chain=int(m.get("chain") or 0),
                  repository=(m.get("repository") or {}).get("id"), copy_uuid=copies[0].get("uuid"))
    bases.retire_others(x, ctx["refs"]["system_vdi"], ctx["vm"]["uuid"], snap, scan=bool(m.get("stray_bases")))
    return snap


def _keep(x, copy: str):
    """Mark the sr-copy VDI kept (it is the backup); run_objects.GONE if it no longer exists."""
    other = run_objects.unless_gone(x.VDI.get_other_config, copy)
    if other is not run_objects.GONE and other.get(markers.KEEP) != "true":
        other[markers.KEEP] = "true"
        x.VDI.set_other_config(copy, other)
    return other


def _vdi_labels(ctx: dict) -> list[str]:
    """Every name a VDI of this run can have (an unrenamed clone of the snapshot has its name)."""
    data = [d["userdevice"] for d in ctx.get("skeleton", {}).get("disks", [])
            if d.get("type") == "Disk" and d.get("userdevice") != "0"]
    return [markers.name(ctx, what) for what in ("system snapshot", "system disk", "system copy",
                                                  *(f"data {device}" for device in data))]


def _named(xapi, cls: str, ctx: dict, labels: list[str], ref_keys: tuple[str, ...]) -> dict[str, str]:
    """The run's ``cls`` objects, ref -> the name they carry: found by name (each label ends with the
    run id, so an exact match is this run's), plus the refs the context holds (read only if a
    lookup missed them)."""
    api, found = getattr(xapi.x, cls), xapi.refs_named(cls, labels)
    for key in ref_keys:
        ref = ctx.get("refs", {}).get(key)
        if not ref or ref in found:
            continue
        rec = run_objects.unless_gone(api.get_record, ref)
        if rec is not run_objects.GONE and markers.is_ours(rec, ctx["run"]):
            found[ref] = rec.get("name_label", "")
    return found


def remove_pool_objects(xapi, run: str, keep_kept: bool = True, vdis: dict | None = None,
                        vms: list[str] | None = None) -> list[str]:
    """Destroy the run's VMs (never started) and VDIs (but kept ones, unless told); returns what
    this call destroyed.  Without ``vms``/``vdis`` they are found by reading every record (by
    marker or name): what compensation does, since a failed run may have left anything.
    Another compensation may be removing the same objects at the same time (a redelivered
    duplicate): an object gone at any step counts as removed by the other one
    (``run_objects``)."""
    keep = run_objects.KEEP_ANY if keep_kept else run_objects.KEEP_NONE
    return run_objects.remove_run(xapi.x, run, vms=vms, vdis=vdis, keep=keep)


def remove_files(ctx: dict, dest: str, repository: str | None = None) -> list[str]:
    """Every file of the run: partial, complete and manifest (manifest first: it makes a backup),
    then the VM's folder if that leaves it empty;
    in repo mode its index in the ``repository`` (a path) too, after the manifest (blocks stay
    for GC: other backups may share them)."""
    paths = destination.backup_paths(ctx, dest)
    base = paths["manifest"][: -len(".json")]
    found = [p for p in (paths["manifest"], paths["data"]) if p and os.path.exists(p)]
    found += glob.glob(glob.escape(base) + "*.partial")
    destination.remove_quietly(*found)
    try:  # the VM's folder, when this run made it and nothing else is in it: no empty folder left
        os.rmdir(paths["dir"])
    except OSError:
        pass  # not empty (the VM's other backups), or never made
    if ctx["mode"] == "repo" and repository:
        bid = store.backup_id(ctx)
        if repo_index.remove_index_file(repository, bid):
            found.append(f"{repository} index {bid}")
    return found
