"""Whether tonight's backup of a VM can be incremental, and against which base.

A repo or sr-copy backup is incremental when the VM's system disk has a base (a snapshot kept
by its last good backup: ``xapi/bases.py``) that this backup can build on; otherwise it is a
full backup, never silently: ``Plan.reason`` says why, and the manifest, the run's record, its
status, report and the web console show it.  The reasons, in the order they are checked:

- a full backup was asked for (``tinabs backup --full``, a schedule entry's ``full = true``);
- no base: the VM's first backup in this mode, or its base was removed (``tinabs bases
  forget``, by hand), or the VM's system disk was replaced (its base is a snapshot of another
  disk);
- the base was kept by a backup of the other mode, or (repo) for another repository;
- the system disk was resized since the base;
- ``DELTA_ATTEMPTS`` attempts of the stage failed (a delta that fails every time);
- ``[retention] full_every`` nights since the last full backup;
- (repo) the backup the base belongs to is no longer in the repository (pruned), or its
  index has no system disk of the base's size; (sr-copy) that backup's copy on the backup SR is
  gone, not kept, or not on the configured backup SR.

Past the plan, a pool that refuses the delta itself makes the stage fall back to a full backup
in the same attempt, with the pool's error as the reason (``store.py``, ``copy.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import XenAPI

from tinabs_tasks.storage import catalog
from tinabs_tasks.xapi import bases
from tinabs_tasks.xapi import markers
from tinabs_tasks.xapi import run_objects
from tinabs_tasks.xapi.errors import classify

ASKED = "a full backup was asked for"
#: failed attempts of the stage after which it backs up in full: an error worth a retry that
#: comes back every time (vhd-tool's INTERNAL_ERROR on a base it cannot read, say) may be the
#: delta's, and a full backup does not need the base
DELTA_ATTEMPTS = 2


#: permanent errors a full backup would meet as well (the SR is full, the account may not):
#: raised as they are, the run fails and says why
_NOT_THE_DELTA = ("SR_FULL", "PERMISSION_DENIED", "RBAC_PERMISSION_DENIED", "LICENCE_RESTRICTION",
                  "SR_HAS_NO_PBDS", "SR_NOT_ATTACHED")


def delta_refused(exc: XenAPI.Failure, pool: str) -> bool:
    """Whether the pool's error on a delta means "take a full backup now": a permanent one that
    is the delta's (the base or the clone it needs), not the SR's or the account's.  An error
    worth a retry is raised for the retry policy, and ``choose`` gives up on the delta after
    DELTA_ATTEMPTS."""
    code = str(exc.details[0]) if exc.details else ""
    return not classify(exc, pool).transient and code not in _NOT_THE_DELTA


@dataclass
class Plan:
    #: the base to build on; None: a full backup
    base: bases.Base | None = None
    #: why this backup is full (None: incremental)
    reason: str | None = None
    #: incrementals since the last full one, this backup included (0 for a full)
    chain: int = 0
    #: the VM has bases of another disk (its system disk was replaced): cleanup retires them
    stray_bases: bool = False
    #: the VM's newest base, whatever the plan (sr-copy removes stray clones of its copy)
    seen: bases.Base | None = None

    @property
    def incremental(self) -> bool:
        return self.base is not None

    def fields(self) -> dict:
        """What the manifest and the run's record say of it (storage/manifest.KIND_FIELDS)."""
        if self.base is None:
            return {"backup_kind": "full", "full_reason": self.reason, "chain": 0}
        return {"backup_kind": "incremental", "base_backup": self.base.backup_id, "chain": self.chain}


def full(reason: str, stray: bool = False) -> Plan:
    return Plan(None, reason, 0, stray)


def choose(xapi, ctx: dict, mode: str, *, destination: str, full_every: int = 0, stage: str = "") -> Plan:
    """The plan before the mode's own checks (``store_delta.plan`` / ``copy.run`` add theirs)."""
    found = bases.of_disk(xapi.x, ctx["refs"]["system_vdi"])
    plan = _choose(xapi, ctx, mode, found, destination, full_every, stage)
    plan.seen = found[0] if found else None
    return plan


def _choose(xapi, ctx: dict, mode: str, found: list, destination: str, full_every: int, stage: str) -> Plan:
    x = xapi.x
    if ctx.get("full"):
        return full(f"{ASKED} ({ctx['full']})" if isinstance(ctx["full"], str) else ASKED)
    if not found:
        return _no_base(xapi, ctx, mode, destination)
    base = found[0]
    if base.mode != mode:
        return full(f"the VM's base was kept by a backup in {base.mode} mode; this one is in {mode} mode")
    size = int(x.VDI.get_virtual_size(ctx["refs"]["snapshot"]))
    if size != base.virtual_size:
        return full(f"the system disk was resized since its base ({base.virtual_size} -> {size} bytes)")
    failed = ctx.get("failures", {}).get(stage, 0)
    if failed >= DELTA_ATTEMPTS:
        return full(f"{failed} attempts of this incremental backup failed (the run's errors say why): "
                    "a full backup does not need the base")
    if full_every and base.chain + 1 >= full_every:
        return full(f"a full backup every {full_every} nights ([retention] full_every): "
                    f"{base.chain} incremental backups since the last full one")
    return Plan(base, None, base.chain + 1)


def _no_base(xapi, ctx: dict, mode: str, destination: str) -> Plan:
    earlier = [b for b in catalog.scan(destination, pool=ctx["pool"], vm=ctx["vm"]["uuid"])
               if b.mode == mode and b.run != ctx["run"]]
    if not earlier:
        return full(f"the VM's first backup in {mode} mode: no base yet")
    # it had backups: its base went away, or its system disk was replaced (a base of another disk)
    elsewhere = [b for b in bases.of_vm(xapi.x, ctx["vm"]["uuid"]) if b.snapshot_of != ctx["refs"]["system_vdi"]]
    if elsewhere:
        return full("the VM's system disk was replaced since its base (the base is a snapshot of another "
                    "disk): the old base is removed after this backup", stray=True)
    return full("the VM's base snapshot is gone from the pool (removed by `tinabs bases forget` or by hand)")


def copy_of_base(x, base: bases.Base, backup_sr: str) -> tuple[str | None, str | None]:
    """(ref, None) of the sr-copy backup's copy the base belongs to, or (None, why it cannot be
    built on)."""
    if not base.copy_uuid:
        return None, "the VM's base names no copy on the backup SR"
    found = run_objects.by_uuid(x, "VDI", base.copy_uuid)
    if found is run_objects.GONE:
        return None, f"the copy of backup {base.backup_id} on the backup SR is gone (pruned?)"
    ref, rec = found
    other = rec.get("other_config") or {}
    if other.get(markers.KEEP) != "true":
        return None, f"the copy of backup {base.backup_id} is no longer a kept backup copy"
    if rec["SR"] != backup_sr:
        return None, f"the copy of backup {base.backup_id} is not on the configured backup SR"
    if int(rec["virtual_size"]) != base.virtual_size:
        return None, f"the copy of backup {base.backup_id} is not the size of the base"
    return ref, None
