"""Base snapshots: the one object per VM that tinabs leaves on a pool on purpose.

After a good repo or sr-copy backup, the run's snapshot of the VM's system disk is kept as the
VM's *base*: the next night reads (repo mode) or copies (sr-copy mode) only the blocks that
differ from it.  A base is *promoted* from the run's snapshot by the cleanup stage, once the
backup is complete: it loses the run's markers and its run-specific name (so no cleanup,
compensation or janitor pass of any run takes it for litter), and carries instead:

- ``tinabs:role = base``, ``tinabs:keep = true`` (the janitor's litter sweep never takes a kept
  VDI), ``tinabs:vm`` (the VM's uuid), ``tinabs:created`` (when it became the base);
- ``tinabs:base`` the id of the backup whose disk it is (``<stamp>-<run>``): a delta against
  it applies to that backup's index (repo) or copy (sr-copy) and to nothing else;
- ``tinabs:base-mode`` (repo or sr-copy), ``tinabs:base-repository`` (repo: the repository's
  id), ``tinabs:base-copy`` (sr-copy: the uuid of that backup's copy on the backup SR) and
  ``tinabs:base-chain`` (incremental backups since the last full one).

Its name is ``[tinabs] <vm> base <stamp>``: it starts with the tinabs prefix (a sysadmin sees
what it is) but does not end with a run id, so ``markers.is_ours`` never matches it.  The old
base is destroyed only after the new one is promoted (``retire_others``): a crash between
leaves two bases, the newest is used and the next cleanup (or the janitor) removes the other.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

from tinabs_tasks.xapi import markers
from tinabs_tasks.xapi import run_objects

ROLE = "base"
BASE = "tinabs:base"
MODE = "tinabs:base-mode"
REPOSITORY = "tinabs:base-repository"
COPY = "tinabs:base-copy"
CHAIN = "tinabs:base-chain"


@dataclass
class Base:
    ref: str
    uuid: str
    vm_uuid: str
    backup_id: str
    mode: str
    since: str
    name: str
    #: the VDI it is a snapshot of (the VM's system disk when it was taken)
    snapshot_of: str
    virtual_size: int
    #: what it takes on its SR
    physical_utilisation: int
    chain: int = 0
    repository: str | None = None
    copy_uuid: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def of_record(ref: str, rec: dict) -> Base | None:
    """The base a VDI record is, or None if it is not one."""
    other = rec.get("other_config") or {}
    if other.get(markers.ROLE) != ROLE or not other.get(BASE):
        return None
    try:
        chain = int(other.get(CHAIN, "0"))
    except ValueError:
        chain = 0
    return Base(ref=ref, uuid=rec.get("uuid", ""), vm_uuid=other.get(markers.VM, ""), backup_id=other[BASE],
                mode=other.get(MODE, ""), since=other.get(markers.CREATED, ""), name=rec.get("name_label", ""),
                snapshot_of=rec.get("snapshot_of", ""), virtual_size=int(rec.get("virtual_size") or 0),
                physical_utilisation=int(rec.get("physical_utilisation") or 0), chain=chain,
                repository=other.get(REPOSITORY), copy_uuid=other.get(COPY))


def newest_first(bases: list[Base]) -> list[Base]:
    return sorted(bases, key=lambda b: (b.since, b.backup_id), reverse=True)


def of_disk(x, system_vdi: str) -> list[Base]:
    """The bases of one system disk (its snapshots marked base), newest first: cheap, no scan."""
    found = []
    for snap in x.VDI.get_snapshots(system_vdi):
        rec = run_objects.unless_gone(x.VDI.get_record, snap)
        if rec is not run_objects.GONE and (base := of_record(snap, rec)) is not None:
            found.append(base)
    return newest_first(found)


def on_pool(x) -> list[Base]:
    """Every base on the pool (reads every VDI record: for listings and the janitor)."""
    found = [b for ref, rec in x.VDI.get_all_records().items() if (b := of_record(ref, rec)) is not None]
    return sorted(found, key=lambda b: (b.vm_uuid, b.since))


def promote(x, snap: str, ctx: dict, backup_id: str, mode: str, *, chain: int,
            repository: str | None = None, copy_uuid: str | None = None) -> None:
    """Make the run's snapshot ``snap`` the VM's base for backup ``backup_id``.  The name is set
    first, the markers last (one call): until then it is still the run's snapshot, which a
    retried cleanup promotes again."""
    x.VDI.set_name_label(snap, f"{markers.NAME_PREFIX} {ctx['vm']['name']} base {ctx['stamp']}")
    other = markers.unmarked(x.VDI.get_other_config(snap))
    other.update({markers.VM: ctx["vm"]["uuid"], markers.ROLE: ROLE, markers.KEEP: "true",
                  markers.CREATED: dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                  BASE: backup_id, MODE: mode, CHAIN: str(chain)})
    if repository:
        other[REPOSITORY] = repository
    if copy_uuid:
        other[COPY] = copy_uuid
    x.VDI.set_other_config(snap, other)


def destroy(x, base: Base) -> bool:
    """Destroy a base (False if it was already gone)."""
    return run_objects.destroyed(x.VDI.destroy, base.ref)


def retire_others(x, system_vdi: str, vm_uuid: str, keep_ref: str, *, scan: bool = False) -> list[Base]:
    """Destroy every base of the VM but ``keep_ref``: those of its system disk and, with ``scan``
    (the VM's system disk was replaced: its old bases are snapshots of another VDI), every
    other base of the VM (reads every VDI record).  Returns the bases destroyed."""
    found = of_vm(x, vm_uuid) if scan else of_disk(x, system_vdi)
    return [b for b in found if b.ref != keep_ref and destroy(x, b)]


def of_vm(x, vm_uuid: str) -> list[Base]:
    """Every base of the VM, whatever disk it was taken of (reads every VDI record), newest first."""
    return newest_first([b for b in on_pool(x) if b.vm_uuid == vm_uuid])
