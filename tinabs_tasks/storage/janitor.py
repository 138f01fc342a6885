"""Removing things: pruned backups (with their sr-copy disks), litter of dead runs, stale partials.

Everything here takes the Xapi port (or a function giving it for a pool), the destination and
the decisions to act on; nothing reads the config or Celery, so the tasks stay thin and the
tests can call it directly.

Deleting a backup (``delete_backup``): the manifest goes first (it is what makes a backup: once
it is gone, nothing treats the rest as one), then the data file, then, for sr-copy, the copied
disks the manifest names in ``copied_vdis``, by uuid on the manifest's pool.  A disk is destroyed
only when it carries ``tinabs:keep=true`` and ``tinabs:run`` equal to the manifest's run; anything
else is reported and left alone.  The disks are looked up *before* the manifest is removed, so an
unreachable pool skips the backup (it is pruned on a later pass) instead of orphaning kept disks.
A repository backup (mode "repo") has no data file: after its manifest goes its index, removed
without the key (``repo.index.remove_index_file``: a backup is its index file); its blocks stay
until a GC finds that no index references them.  Only the worker's own repository is touched: a
manifest naming another one is reported and left alone (its index would outlive it otherwise).

The janitor (``find_litter`` / ``remove_litter`` / ``stale_partials``) is the safety net for
crashes no errback saw: pool objects (VMs and VDIs) with tinabs markers whose run is not active
(its Redis state is not queued/running/retrying/failing, or Redis no longer knows it) and whose
``tinabs:created`` is older than the maximum age.  Kept sr-copy disks (``tinabs:keep=true``) are
never litter: they belong to backups and go only through retention.  Objects without a readable
``tinabs:created`` (a crash between creating and marking leaves only the name) are reported as
skipped, never removed: their age is unknown.

Bases (xapi/bases.py: kept, so never litter) have their own rule (``stale_bases``): the bases of a
VM that no longer exists on the pool, and all but the newest of a VM that has several, are
removed once their ``tinabs:created`` is older than the maximum age; they are listed among the
removed objects with ``role`` "base" and the ``reason``.  A living VM's only base is never
removed.
"""
from __future__ import annotations

import datetime as dt
import os
import time

import XenAPI

from tinabs_tasks.repo import index as repo_index
from tinabs_tasks.storage import bases_upkeep
from tinabs_tasks.storage import catalog
from tinabs_tasks.storage import destination
from tinabs_tasks.storage import retention
from tinabs_tasks.xapi import bases as base_snapshots
from tinabs_tasks.xapi import markers
from tinabs_tasks.xapi import run_objects

ACTIVE_STATES = ("queued", "running", "retrying", "failing")
LITTER_CLASSES = ("VM", "VDI")  # VBDs go with their VM / VDI; tasks are xapi's to collect


# -- retention ------------------------------------------------------------------------------------
def prune_vm(dest: str, pool: str, vm_uuid: str, policy: retention.Policy, xapi_for,
             dry_run: bool = False, repository: str | None = None) -> dict:
    """Apply ``policy`` to one VM's backups in ``dest``; ``xapi_for(pool)`` gives a pool's Xapi port,
    ``repository`` the path of the worker's repository (None: it has none)."""
    items = [b for b in catalog.scan(dest, pool=pool, vm=vm_uuid, include_incomplete=True)
             if b.vm_uuid.lower() == vm_uuid.lower()]
    decisions = retention.plan_vm(items, policy)
    out = {"pool": pool, "vm_uuid": vm_uuid, "dry_run": dry_run,
           "decisions": [d.as_dict() for d in decisions], "deleted": [], "errors": []}
    for d in decisions:
        if d.keep:
            continue
        done = delete_backup(d.backup, xapi_for, dry_run=dry_run, repository=repository)
        (out["errors"] if done.get("error") else out["deleted"]).append(done)
    return out


def delete_backup(b: catalog.Backup, xapi_for, dry_run: bool = False, repository: str | None = None) -> dict:
    """Manifest, data file (or a repo backup's index in ``repository``, the worker's own), then the
    sr-copy disks it names (checked first); returns what was done."""
    m = destination.read_manifest(b.manifest_path) or {}
    run, pool = m.get("run"), m.get("pool") or b.pool
    copied = [c.get("uuid") for c in m.get("copied_vdis") or [] if isinstance(c, dict) and c.get("uuid")]
    done = {"manifest": b.manifest_path, "data": b.path, "run": run, "pool": pool, "vdis": [], "skipped_vdis": []}
    if m.get("run") is None:
        done["error"] = "manifest unreadable or without a run: left alone"
        return done
    if b.mode == "repo":
        why = _foreign_repository(b, repository)
        if why:
            done["error"] = why
            return done
        done["index"] = {"repository": b.repository, "backup_id": b.backup_id, "removed": False}
    targets = []
    if copied:
        try:
            x = xapi_for(pool).x
            for uuid in copied:
                ref, why = _kept_vdi(x, uuid, run)
                if ref is None:
                    done["skipped_vdis"].append({"uuid": uuid, "why": why})
                else:
                    targets.append((uuid, ref))
        except Exception as exc:  # pool unreachable, unknown pool, refused login: try again next time
            done["error"] = f"pool `{pool}`: cannot check the copied disks, backup left alone: {exc}"
            return done
    if dry_run:
        done["vdis"] = [u for u, _ in targets]
        return done
    destination.remove_quietly(b.manifest_path)
    if b.path:
        destination.remove_quietly(b.path)
    if b.mode == "repo":  # after the manifest, as a data file: a crash between leaves an index no manifest names
        done["index"]["removed"] = repo_index.remove_index_file(b.repository, b.backup_id)
    for uuid, ref in targets:
        try:
            x.VDI.destroy(ref)
        except XenAPI.Failure as exc:
            if exc.details[0] != "HANDLE_INVALID":
                done.setdefault("vdi_errors", []).append({"uuid": uuid, "error": str(exc)})
                continue
        done["vdis"].append(uuid)
    if done.get("vdi_errors"):
        done["error"] = f"backup files removed, but {len(done['vdi_errors'])} copied disk(s) not destroyed"
    return done


def _foreign_repository(b: catalog.Backup, repository: str | None) -> str | None:
    """Why a repo backup's index cannot be removed by this worker (None: it can)."""
    if not b.backup_id or not b.repository:
        return "a repository backup whose manifest names no index: left alone"
    if repository is None:
        return (f"a repository backup (index {b.backup_id} in {b.repository}) but this worker's config has no "
                "[repository]: left alone; prune from a worker configured with that repository")
    if os.path.realpath(b.repository) != os.path.realpath(repository):
        return (f"its index is in the repository {b.repository}, not in this worker's [repository] {repository}: "
                "left alone (deleting only the manifest would keep its blocks forever)")
    return None


def _kept_vdi(x, uuid: str, run: str):
    """(ref, None) for the run's kept copy with this uuid, else (None, why not)."""
    found = run_objects.by_uuid(x, "VDI", uuid)
    if found is run_objects.GONE:
        return None, "already gone"
    ref, rec = found
    other = rec.get("other_config") or {}
    if other.get(markers.KEEP) != "true" or other.get(markers.RUN) != run:
        return None, f"not a kept copy of run {run} (keep={other.get(markers.KEEP)!r}, " \
                     f"run={other.get(markers.RUN)!r}): never touched"
    return ref, None


# -- janitor: pool objects --------------------------------------------------------------------------
def run_of(rec: dict) -> str | None:
    run = (rec.get("other_config") or {}).get(markers.RUN)
    if run:
        return run
    label = rec.get("name_label", "")
    if label.startswith(markers.NAME_PREFIX):
        return label.rsplit(" ", 1)[-1] or None
    return None


def created_of(rec: dict) -> dt.datetime | None:
    text = (rec.get("other_config") or {}).get(markers.CREATED)
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    except (TypeError, ValueError):
        return None


def find_litter(xapi, is_active, max_age_s: float, now: dt.datetime | None = None) -> dict:
    """``{"remove": [...], "skipped": [...]}``: tinabs objects of dead runs older than ``max_age_s``.

    ``is_active(run) -> bool`` says whether a run may still own its objects."""
    now = now or dt.datetime.now(dt.timezone.utc)
    x = xapi.x
    remove, skipped = [], []
    active_cache: dict[str, bool] = {}
    for cls in LITTER_CLASSES:
        for ref, rec in getattr(x, cls).get_all_records().items():
            other = rec.get("other_config") or {}
            if markers.RUN not in other and not rec.get("name_label", "").startswith(markers.NAME_PREFIX):
                continue
            run = run_of(rec)
            item = {"class": cls, "ref": ref, "uuid": rec.get("uuid"), "name": rec.get("name_label", ""),
                    "run": run, "role": other.get(markers.ROLE), "created": other.get(markers.CREATED)}
            if cls == "VDI" and other.get(markers.KEEP) == "true":
                continue  # a backup's disk: only retention removes it
            if cls == "VM" and (rec.get("is_control_domain") or rec.get("power_state", "Halted") != "Halted"):
                skipped.append({**item, "why": "a running VM: tinabs never starts its VMs, not ours to stop"})
                continue
            if run not in active_cache:
                active_cache[run] = bool(run) and is_active(run)
            if active_cache[run]:
                skipped.append({**item, "why": "its run is active"})
                continue
            created = created_of(rec)
            if created is None:
                skipped.append({**item, "why": "no tinabs:created marker: age unknown"})
                continue
            age = (now - created).total_seconds()
            if age < max_age_s:
                skipped.append({**item, "why": f"younger than the maximum age ({age / 3600:.1f} h)"})
                continue
            remove.append({**item, "age_h": round(age / 3600, 1)})
    return {"remove": remove, "skipped": skipped}


def stale_bases(xapi, max_age_s: float, now: dt.datetime | None = None) -> dict:
    """``{"remove": [...], "skipped": [...]}``: the bases ``bases_upkeep.unwanted`` names, older
    than ``max_age_s`` (items shaped like litter's, with ``role`` "base", ``reason``, ``vm`` and
    ``base``, the backup id)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    remove, skipped = [], []
    for base, reason in bases_upkeep.unwanted(xapi.x):
        item = {"class": "VDI", "ref": base.ref, "uuid": base.uuid, "name": base.name, "run": None,
                "role": base_snapshots.ROLE, "created": base.since, "vm": base.vm_uuid,
                "base": base.backup_id, "reason": reason}
        created = created_of({"other_config": {markers.CREATED: base.since}})
        if created is None:
            skipped.append({**item, "why": f"{reason}, but no tinabs:created marker: age unknown"})
            continue
        age = (now - created).total_seconds()
        if age < max_age_s:
            skipped.append({**item, "why": f"{reason}, but younger than the maximum age ({age / 3600:.1f} h)"})
            continue
        remove.append({**item, "age_h": round(age / 3600, 1)})
    return {"remove": remove, "skipped": skipped}


def remove_litter(xapi, items: list[dict]) -> tuple[list[dict], list[dict]]:
    """Destroy the objects (VMs first: their VBDs go with them); (removed, errors)."""
    x = xapi.x
    removed, errors = [], []
    for item in sorted(items, key=lambda i: i["class"] != "VM"):
        api = getattr(x, item["class"])
        try:
            if item["class"] == "VM" and api.get_power_state(item["ref"]) != "Halted":
                api.hard_shutdown(item["ref"])
            api.destroy(item["ref"])
        except XenAPI.Failure as exc:
            if exc.details[0] != "HANDLE_INVALID":  # gone already: someone else removed it
                errors.append({**item, "error": str(exc)})
                continue
        removed.append(item)
    return removed, errors


# -- janitor: destination ------------------------------------------------------------------------------
def stale_partials(dest: str, pool: str | None, is_active, max_age_s: float, now: float | None = None) -> list[dict]:
    """``.partial`` files of a pool (or all pools) older than ``max_age_s`` whose run is not active."""
    now = time.time() if now is None else now
    found = []
    for b in catalog.scan(dest, pool=pool, include_incomplete=True):
        if b.status != catalog.PARTIAL or not b.path:
            continue
        try:
            st = os.stat(b.path, follow_symlinks=False)
        except OSError:
            continue
        age = now - st.st_mtime
        if age < max_age_s or (b.run and is_active(b.run)):
            continue
        found.append({"path": b.path, "run": b.run, "age_h": round(age / 3600, 1)})
    return found


def remove_files(items: list[dict]) -> list[dict]:
    for item in items:
        destination.remove_quietly(item["path"])
    return items


def janitor_pool(xapi, dest: str, pool: str, is_active, max_age_s: float, dry_run: bool = False) -> dict:
    """One pool's pass: its litter and stale bases on the pool and its stale ``.partial`` files in
    ``dest``."""
    litter = find_litter(xapi, is_active, max_age_s)
    based = stale_bases(xapi, max_age_s)
    partials = stale_partials(dest, pool, is_active, max_age_s)
    out = {"pool": pool, "dry_run": dry_run, "skipped": litter["skipped"] + based["skipped"], "errors": []}
    if dry_run:
        out["objects"], out["files"] = litter["remove"] + based["remove"], partials
        return out
    out["objects"], out["errors"] = remove_litter(xapi, litter["remove"] + based["remove"])
    out["files"] = remove_files(partials)
    return out


def redis_is_active(jobs):
    """``is_active`` over a JobStore: a run Redis does not know (expired, wiped) is not active."""
    def is_active(run: str) -> bool:
        state = jobs.run_state(run)
        return state is not None and state.value in ACTIVE_STATES
    return is_active
