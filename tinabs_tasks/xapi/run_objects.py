"""Finding and removing what one run (a backup or a restore) made on a pool.

Backup cleanup and compensation (``backup/cleanup.py``) and a restore's
rollback (``restore/into_pool.py``) remove a run's objects the same way: VMs
shut down first, then destroyed; VDIs destroyed unless kept (a ``tinabs:keep``
marker, or a uuid the caller protects).  Another worker may be removing the
same objects at the same time (a redelivered duplicate, a compensation): an
object gone at any step counts as removed by the other one, so every removal
here is idempotent.  The objects are found by marker or by the names the run
gave them (``markers``); the finders here read only what they are given.
"""
from __future__ import annotations

import XenAPI

from tinabs_tasks.xapi import markers
from tinabs_tasks.xapi.port import NULL_REF

#: what ``unless_gone`` returns for an object that no longer exists
GONE = object()
#: which keep markers spare a VDI: every one, another run's only, none
KEEP_ANY, KEEP_OTHERS, KEEP_NONE = "any", "others", "none"


def unless_gone(fn, ref):
    """``fn(ref)``, or GONE when the object no longer exists (another attempt got there first)."""
    try:
        return fn(ref)
    except XenAPI.Failure as exc:
        if exc.details and exc.details[0] == "HANDLE_INVALID":
            return GONE
        raise


def by_uuid(x, cls: str, uuid: str):
    """(ref, record) of the ``cls`` object with this uuid; GONE when there is none (never was, or
    removed by someone else, even between the two lookups)."""
    api = getattr(x, cls)
    try:
        ref = api.get_by_uuid(uuid)
        return ref, api.get_record(ref)
    except XenAPI.Failure as exc:
        if exc.details and exc.details[0] in ("UUID_INVALID", "HANDLE_INVALID"):
            return GONE
        raise


def destroyed(fn, ref) -> bool:
    """``fn(ref)`` (a destroy); False when the object was already gone."""
    return unless_gone(fn, ref) is not GONE


def spared(rec: dict, run: str, keep: str = KEEP_ANY, protect=frozenset()) -> bool:
    """Whether the VDI with record ``rec`` outlives the removal of ``run``'s objects: its uuid is
    in ``protect``, or it is marked keep and ``keep`` honours that marker."""
    if rec.get("uuid") in protect:
        return True
    other = rec.get("other_config", {})
    if other.get(markers.KEEP) != "true" or keep == KEEP_NONE:
        return False
    return keep == KEEP_ANY or other.get(markers.RUN) != run


def remove_vdis(x, vdis: dict[str, dict], run: str, keep: str = KEEP_ANY, protect=frozenset()) -> list[str]:
    """Destroy ``vdis`` (ref -> record) but the ``spared`` ones; returns what this call destroyed.
    VDI.destroy also drops detached VBD records."""
    return [vdi for vdi, rec in vdis.items()
            if not spared(rec, run, keep, protect) and destroyed(x.VDI.destroy, vdi)]


def remove_vms(x, vms, run: str, with_disks: bool = False, protect=frozenset()) -> list[str]:
    """Shut down and destroy ``vms``; ``with_disks``: their disks too, but those in ``protect``
    and those another run marked keep.  Returns what this call destroyed."""
    removed = []
    for vm in vms:
        if with_disks:
            try:
                rec = x.VM.get_record(vm)
            except XenAPI.Failure:
                continue
            state, disks = rec["power_state"], _disks(x, rec["VBDs"])
        else:
            state, disks = unless_gone(x.VM.get_power_state, vm), {}
        if state not in ("Halted", GONE):
            unless_gone(x.VM.hard_shutdown, vm)
        if destroyed(x.VM.destroy, vm):
            removed.append(vm)
        removed += remove_vdis(x, disks, run, KEEP_OTHERS, protect)
    return removed


def remove_run(x, run: str, *, vms=None, vdis: dict | None = None, keep: str = KEEP_ANY, protect=frozenset(),
               vm_disks: bool = False) -> list[str]:
    """Remove ``run``'s VMs (``remove_vms``), then its VDIs (``remove_vdis`` with ``keep`` and
    ``protect``); returns what this call destroyed.  VMs and VDIs not given are found by marker
    or name, reading every record (the VDIs after the VMs are gone): what is left after a failure
    may be anything."""
    removed = remove_vms(x, markers.find(x, "VM", run) if vms is None else vms, run, vm_disks, protect)
    if vdis is None:
        vdis = markers.find_records(x, "VDI", run)
    return removed + remove_vdis(x, vdis, run, keep, protect)


def remove_marked(x, cls: str, run: str) -> list[str]:
    """Destroy every ``cls`` object (a VIF, a VBD) marked with ``run``; returns what this call destroyed."""
    api = getattr(x, cls)
    return [ref for ref in markers.find(x, cls, run) if destroyed(api.destroy, ref)]


def _disks(x, vbds) -> dict[str, dict]:
    """The VDIs behind ``vbds`` with their records (empty drives and vanished ones left out)."""
    disks = {}
    for vbd in vbds:
        try:
            vdi = x.VBD.get_VDI(vbd)
            if vdi != NULL_REF:
                disks[vdi] = x.VDI.get_record(vdi)
        except XenAPI.Failure:
            continue
    return disks
