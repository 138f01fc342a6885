"""sr-copy mode's incremental night: a clone of the last copy, with only the changed blocks written.

The base (the snapshot kept by the last good sr-copy backup) and that backup's copy on the
backup SR hold the same disk.  ``copy_changes`` clones the copy (copy-on-write on the backup
SR: no data moves) and has the storage write into the clone the blocks that differ between
tonight's snapshot and the base: ``VDI.copy(snapshot, sr, base_vdi=base, into_vdi=clone)``
(xapi_vdi.ml ``copy``: with a base, only the differing blocks are copied).  The clone is then
exactly tonight's disk, a copy like any other: restore, verify and retention see no difference,
and pruning the older copy leaves it whole (the SR's copy-on-write keeps what the clone shares).

A clone starts with the copy's own markers (``tinabs:keep`` of the other run), so it is marked
for this run, role ``system-copy-delta``, at once; the role becomes ``system-copy`` once the
delta is written.  A worker that dies between the clone and its marking leaves a clone that
looks like the old copy (same name and markers, another uuid): the next sr-copy night of
that VM, full or incremental, removes such strays first (``remove_stray_clones_of``).
"""
from __future__ import annotations

import XenAPI

from tinabs_tasks.xapi import markers
from tinabs_tasks.xapi import run_objects
from tinabs_tasks.backup import incremental

DELTA_PENDING = "system-copy-delta"
#: what a copy records of how it was taken (read back when a retry finds the copy made)
KIND = "tinabs:kind"
FULL_REASON = "tinabs:full-reason"
BASE_BACKUP = "tinabs:base-backup"
CHAIN = "tinabs:chain"


class DeltaRefused(Exception):
    """The pool would not write the delta (a permanent error): copy in full; str() says why."""


def copy_changes(xapi, ctx: dict, base, previous: str, backup_sr: str, label: str, report) -> str:
    """The run's copy: a clone of ``previous`` (the base's backup copy) with tonight's changes."""
    x = xapi.x
    clone = markers.find_named(x, "VDI", label, ctx["run"])  # an earlier attempt's pending clone
    if clone is None:
        clone = xapi.call_async_marked("VDI.clone", previous, {}, run=ctx["run"])
        markers.replace(x, "VDI", clone, ctx, DELTA_PENDING)
        x.VDI.set_name_label(clone, label)
    try:
        xapi.call_async_marked("VDI.copy", ctx["refs"]["snapshot"], backup_sr, base.ref, clone, run=ctx["run"],
                               progress=report.fraction)
    except XenAPI.Failure as exc:
        if not incremental.delta_refused(exc, ctx["pool"]):
            raise
        raise DeltaRefused(f"the pool refused to copy the changes since the base "
                           f"({' '.join(map(str, exc.details))})") from None
    markers.mark(x, "VDI", clone, ctx, markers.Role.SYSTEM_COPY, label)
    return clone


def remove_pending(x, label: str, run: str) -> None:
    """Destroy the run's pending clone (before a full copy takes its place), if there is one."""
    clone = markers.find_named(x, "VDI", label, run)
    if clone is not None:
        other = run_objects.unless_gone(x.VDI.get_other_config, clone)
        if other is not run_objects.GONE and other.get(markers.ROLE) == DELTA_PENDING:
            run_objects.destroyed(x.VDI.destroy, clone)


def remove_stray_clones_of(x, copy_uuid: str | None) -> None:
    """Clones of the copy ``copy_uuid`` (the base's backup copy) that a dead worker left unmarked:
    its name, its run, kept, another uuid.  Called every sr-copy night of a VM with a base, full
    or not, so none outlives the next night."""
    found = run_objects.by_uuid(x, "VDI", copy_uuid) if copy_uuid else run_objects.GONE
    if found is not run_objects.GONE:  # (a copy gone, pruned: its strays look like nothing any more)
        _remove_stray_clones(x, *found)


def _remove_stray_clones(x, previous: str, rec: dict) -> None:
    run = (rec.get("other_config") or {}).get(markers.RUN)
    for ref in x.VDI.get_by_name_label(rec["name_label"]):
        if ref == previous:
            continue
        other = run_objects.unless_gone(x.VDI.get_other_config, ref)
        if other is not run_objects.GONE and other.get(markers.RUN) == run and other.get(markers.KEEP) == "true" \
                and other.get(markers.ROLE) == markers.Role.SYSTEM_COPY:
            run_objects.destroyed(x.VDI.destroy, ref)


def record_kind(x, copy: str, kind: dict) -> None:
    """Write how the copy was taken into its other_config (a retry that finds it reads it back)."""
    other = dict(x.VDI.get_other_config(copy))
    other.update({KIND: kind["backup_kind"], CHAIN: str(kind.get("chain") or 0)})
    for key, field in ((FULL_REASON, "full_reason"), (BASE_BACKUP, "base_backup")):
        if kind.get(field):
            other[key] = kind[field]
    x.VDI.set_other_config(copy, other)


def kind_of(x, copy: str) -> dict:
    """What ``record_kind`` wrote ({} for a copy made before it existed)."""
    other = x.VDI.get_other_config(copy)
    if KIND not in other:
        return {}
    return {"backup_kind": other[KIND], "full_reason": other.get(FULL_REASON),
            "base_backup": other.get(BASE_BACKUP), "chain": int(other.get(CHAIN) or 0)}
