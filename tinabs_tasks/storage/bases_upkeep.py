"""Bases seen from upkeep: every base of a pool with its VM, forgetting a VM's bases, and which
bases the janitor may remove.

Bases (xapi/bases.py) are the only objects tinabs leaves on a pool on purpose, so they must be
easy to see (`tinabs bases`), to let go of (`tinabs bases forget`: the VM's next backup is a full
one) and must not outlive their use: a VM deleted from the pool leaves its base behind for good,
and a crash between promoting a new base and retiring the old one leaves two.  ``unwanted`` names
those for the janitor, which removes them once they are older than its maximum age.  The only
base of a VM that still exists is never unwanted: it is what the VM's next backup reads against.
A base without a ``tinabs:vm`` marker (none that tinabs made) is never unwanted either: whose
it is cannot be told, so it is shown by `tinabs bases` and left to the user.

Like the rest of storage/, nothing here reads the config, Redis or Celery: the tasks pass the
Xapi port and, for forgetting, whether a backup of the VM is running.
"""
from __future__ import annotations

import XenAPI

from tinabs_tasks.xapi import bases
from tinabs_tasks.xapi import run_objects

VM_GONE = "its VM no longer exists on the pool"
#: ``.format(backup_id=...)``: the newest base's backup
SUPERSEDED = "the VM has a newer base (backup {backup_id})"


def row(pool: str, base: bases.Base, vm_name: str | None) -> dict:
    """A base as the listings show it: no XAPI refs (they mean nothing outside a session), its
    pool, and its VM's name (None: the VM no longer exists)."""
    out = base.as_dict()
    out.pop("ref")
    out.pop("snapshot_of")
    return {"pool": pool, "vm_name": vm_name, "vm_exists": vm_name is not None, **out}


def vm_names(x, uuids) -> dict[str, str | None]:
    """Each VM uuid's name on the pool, None for a VM that no longer exists (one lookup per VM:
    cheaper than reading every VM record when there are few bases)."""
    out: dict[str, str | None] = {}
    for uuid in set(uuids):
        if not uuid:
            out[uuid] = None
            continue
        found = run_objects.by_uuid(x, "VM", uuid)
        out[uuid] = None if found is run_objects.GONE else found[1]["name_label"]
    return out


def listing(xapi, pool: str) -> dict:
    """``{"pool", "bases": [row, ...]}``: every base on the pool, by VM then age."""
    x = xapi.x
    found = bases.on_pool(x)
    names = vm_names(x, [b.vm_uuid for b in found])
    return {"pool": pool, "bases": [row(pool, b, names[b.vm_uuid]) for b in found]}


def _vms(x) -> list[dict]:
    """The pool's VMs a user means by a name: no templates, snapshots or control domains."""
    return [r for r in x.VM.get_all_records().values()
            if not (r.get("is_a_template") or r.get("is_a_snapshot") or r.get("is_control_domain"))]


def match(x, wanted: str, found: list[bases.Base]) -> list[dict]:
    """The VMs ``wanted`` names on the pool, as ``{"uuid", "name", "exists"}``: a VM by uuid; else
    every VM by that exact name; else, by uuid, a VM that is gone but left bases (``found``)."""
    vms = _vms(x)
    key = wanted.strip().lower()
    hits = [v for v in vms if v["uuid"].lower() == key] or [v for v in vms if v["name_label"] == wanted]
    if hits:
        return sorted(({"uuid": v["uuid"], "name": v["name_label"], "exists": True} for v in hits),
                      key=lambda v: v["uuid"])
    gone = sorted({b.vm_uuid for b in found if b.vm_uuid and b.vm_uuid.lower() == key})
    return [{"uuid": u, "name": None, "exists": False} for u in gone]


def forget(xapi, pool: str, wanted: str, dry_run: bool = False, running=None) -> dict:
    """Destroy the bases of the VM ``wanted`` names (a name or a uuid) on the pool, when it names
    exactly one VM there.  ``running(vm_uuid)`` gives the run backing the VM up now, if any: its
    end would promote a new base, so nothing is destroyed then.

    Returns ``{"pool", "wanted", "dry_run", "vms": [{..., "bases": [row, ...]}], "removed":
    [row, ...], "errors": [...], "running": run or None}``; ``removed`` lists what would be
    removed on a dry run."""
    x = xapi.x
    found = bases.on_pool(x)
    vms = match(x, wanted, found)
    out = {"pool": pool, "wanted": wanted, "dry_run": dry_run, "vms": vms, "removed": [], "errors": [],
           "running": None}
    for vm in vms:
        vm["bases"] = [row(pool, b, vm["name"]) for b in bases.newest_first(
            [b for b in found if b.vm_uuid == vm["uuid"]])]
    if len(vms) != 1:
        return out  # none, or a name several VMs have: the caller says which
    vm = vms[0]
    theirs = [b for b in found if b.vm_uuid == vm["uuid"]]
    out["running"] = running(vm["uuid"]) if running and theirs else None
    if out["running"] and not dry_run:
        out["errors"].append({"vm_uuid": vm["uuid"], "error": (
            f"a backup of this VM is running now (run {out['running']}); its end makes a new base: "
            "forget the VM's bases once it is over")})
        return out
    for b in theirs:
        if dry_run:
            out["removed"].append(row(pool, b, vm["name"]))
            continue
        try:
            bases.destroy(x, b)  # gone already: someone else removed it, as good
        except XenAPI.Failure as exc:
            out["errors"].append({"vm_uuid": vm["uuid"], "uuid": b.uuid, "error": f"pool `{pool}`: {exc}"})
            continue
        out["removed"].append(row(pool, b, vm["name"]))
    return out


def unwanted(x) -> list[tuple[bases.Base, str]]:
    """The bases of the pool the janitor may remove, with why: every base of a VM that no longer
    exists, and every base but the newest of a VM that has several.  Their age is the janitor's
    to weigh."""
    found = bases.on_pool(x)
    if not found:
        return []
    living = {r.get("uuid") for r in x.VM.get_all_records().values()}
    by_vm: dict[str, list[bases.Base]] = {}
    for b in found:
        if b.vm_uuid:  # whose base it is cannot be told: never the janitor's to take
            by_vm.setdefault(b.vm_uuid, []).append(b)
    out = []
    for vm_uuid, theirs in by_vm.items():
        newest, *older = bases.newest_first(theirs)
        if vm_uuid not in living:
            out.extend((b, VM_GONE) for b in [newest, *older])
        else:
            out.extend((b, SUPERSEDED.format(backup_id=newest.backup_id)) for b in older)
    return out
