"""Restoring a backup into a pool: the import, its fix-up and marking, and removal on failure.

Plain functions over the Xapi port; ``tasks.restore``, ``cli.restore`` and the
web console are thin wrappers, and ``health_check`` (the restore test) builds on it.

Before anything reaches a pool, ``backup_file.load_backup`` checks the backup (on the
command's host and again on the worker); the names callers use from there
(``load_backup``, ``check_pool``, ``BadBackup``, ``name_problem``) are importable from
here too.

Export backups (``.xva``): ``PUT /import`` of the file (Content-Length, never
chunked) under a task (``xapi.transfer``), into ``--sr`` (else the pool's
``shared_sr``, else the pool's default SR).  Repository backups (mode ``repo``)
the same way, the XVA rebuilt from the repository as it is sent
(``repo_backup.RebuiltXva``: no temp file; a damaged block cuts the upload).

sr-copy backups (``.metadata.xva`` + the kept copy on the backup SR):
``PUT /import_metadata`` with ``vdi:<uuid in ova.xml>=<new vdi uuid>``.  The
kept copy is never attached nor modified: with ``--sr`` it is ``VDI.copy``-ed
to that SR; without, it is ``VDI.clone``-d on the backup SR (copy-on-write on
real SRs: instant, and the kept copy stays read-only history) and the VM is
mapped to the clone.  The data disks (empty recreations in every backup) are
created empty, same size and type, on ``--sr``/``shared_sr``/default SR.

After the import, what xapi resets on import (FACTS.md §4: ``order``,
``start_delay``, ``shutdown_delay``, ``ha_always_run``) is re-applied from the
manifest's skeleton (ova.xml as fallback).  ``ha_always_run`` is deprecated:
xapi turns ``set_ha_always_run`` into a restart-priority change and sets the
field itself when a protected VM starts, so it is re-applied only when it was
true, followed by the recorded ``ha_restart_priority``.

Defaults that avoid outages: the VM is not started; it is named
``<name> (restored <UTC stamp>)``; it gets new MACs when the original VM (by
uuid) still exists in the pool (``restore=false``), the original MACs
otherwise (``restore=true``).  ``macs="keep"``/``"new"`` overrides.

Leaving nothing behind: every object a restore makes is marked with the
restore run id (``tinabs:run``, role ``restored-*``) right after it exists;
the imported VM comes with the *backup* run's markers, which are replaced at
once.  On any failure the run's objects are removed by marker (and the VMs
the import returned, in case marking itself failed); a failed import rolls
back its own objects (xapi, and the simulator, unless ``force``).  The kept
sr-copy VDI is never destroyed: it is protected by uuid and by its keep
marker.  On success the markers are removed (the VM is a user VM now, not
litter) and ``tinabs:restore-run`` / ``tinabs:restored-from`` record where it
came from; the restore-run key also makes a redelivered task return the VM
restored by its first delivery instead of importing twice.  Known window: a
process killed between an import (or a VDI.clone) finishing and its marking
leaves that object unmarked; it still carries the backup run's name
(``[tinabs] ... <backup run>``) and markers.
"""
from __future__ import annotations

import datetime as dt
import os
import uuid as uuidlib

import XenAPI

from tinabs_tasks.restore.backup_file import (  # noqa: F401  (BadBackup, name_problem, ...: for callers)
    BadBackup, RestoreFailed, backup_ova, check_pool, is_true, load_backup, name_problem, ova_objects, plain)
from tinabs_tasks.restore.repo_backup import RebuiltXva
from tinabs_tasks.xapi import markers
from tinabs_tasks.xapi import run_objects
from tinabs_tasks.xapi import transfer
from tinabs_tasks.xapi.markers import RestoreRole as Role
from tinabs_tasks.xapi.port import NULL_REF

RESTORE_RUN = "tinabs:restore-run"
RESTORED_FROM = "tinabs:restored-from"
MACS = ("auto", "keep", "new")


def new_run_id() -> str:
    return "r" + uuidlib.uuid4().hex[:11]


# -- restore -------------------------------------------------------------------
def restore(xapi, backup: dict, *, sr: str | None = None, name: str | None = None, macs: str = "auto",
            start: bool = False, run: str | None = None, report=None, keep_markers: bool = False) -> dict:
    """Restore ``backup`` (from load_backup) into xapi's pool; returns what was made.

    Raises on failure after removing everything this run made.
    """
    if macs not in MACS:
        raise ValueError(f"macs must be one of {MACS}")
    run = run or new_run_id()
    report = report or (lambda **_: None)
    x = xapi.x
    m = backup["manifest"]
    if not keep_markers:
        done = _already_restored(xapi, run)
        if done is not None:
            return done
    protect = {c["uuid"] for c in m.get("copied_vdis", [])}
    ctx = {"run": run, "job": "restore", "vm": {"uuid": plain(m["vm"]["uuid"]), "name": plain(m["vm"]["name"])}}
    imported: list[str] = []
    try:
        # what an earlier delivery of this run left, including what its XAPI tasks made after it died
        remove(xapi, run, protect=protect, extra_vms=_remove_orphan_vdis(xapi, run, protect))
        ova_vm, by_id = ova_objects(backup_ova(backup))
        keep_macs, mac_reason = _mac_policy(xapi, m, macs)
        networks_before = set(x.network.get_all())
        report(stage="import", progress=0.0)
        if backup["mode"] in ("export", "repo"):
            imported = _import_xva(xapi, backup, sr, keep_macs, run, report)
        else:
            imported = _import_metadata(xapi, backup, ova_vm, by_id, sr, keep_macs, ctx, protect, report)
        vm = _the_vm(x, imported)
        markers.replace(x, "VM", vm, ctx, Role.VM)
        report(stage="fix-up", progress=1.0)
        disks = _adopt_devices(x, vm, ctx, m)
        _adopt_networks(x, vm, ctx, networks_before)
        ha = reapply_reset_fields(x, vm, m.get("skeleton", {}).get("ha"), ova_vm["snapshot"])
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        label = name or f"{plain(m['vm']['name'])} (restored {stamp})"
        x.VM.set_name_label(vm, label)
        if start:
            report(stage="start")
            xapi.call_async("VM.start", vm, False, False)
        result = {
            "run": run, "pool": xapi.pool.name, "vm": vm, "uuid": x.VM.get_uuid(vm), "name": label,
            "backup": backup["manifest_path"], "mode": backup["mode"], "source_vm": m["vm"],
            "macs": "kept" if keep_macs else "new", "mac_reason": mac_reason,
            "ha_reapplied": ha, "disks": disks, "started": bool(start),
            "power_state": x.VM.get_power_state(vm),
        }
        if not keep_markers:
            _finalise(x, vm, run, m)
        report(stage="done", progress=1.0)
        return result
    except BaseException:
        try:
            remove(xapi, run, protect=protect, extra_vms=imported)
        except Exception:  # the original failure is the one to report
            pass
        raise


def _already_restored(xapi, run: str) -> dict | None:
    """A VM an earlier delivery of this run finished (a redelivered task must not import twice)."""
    x = xapi.x
    for ref, rec in x.VM.get_all_records().items():
        other = rec.get("other_config", {})
        if other.get(RESTORE_RUN) == run and markers.RUN not in other:
            return {"run": run, "pool": xapi.pool.name, "vm": ref, "uuid": rec["uuid"], "name": rec["name_label"],
                    "power_state": rec["power_state"], "already": True}
    return None


def _mac_policy(xapi, m: dict, macs: str) -> tuple[bool, str]:
    if macs == "keep":
        return True, "asked to keep the original MACs"
    if macs == "new":
        return False, "asked for new MACs"
    try:
        xapi.x.VM.get_by_uuid(plain(m["vm"]["uuid"]))
    except XenAPI.Failure:
        return True, "the original VM is not in this pool"
    return False, "the original VM still exists in this pool (same MACs would clash on the network)"


def _target_sr(xapi, sr: str | None) -> str | None:
    """--sr, else the pool's shared_sr, else None (the pool's default SR)."""
    wanted = sr or xapi.pool.shared_sr
    return xapi.sr_by_name_or_uuid(wanted) if wanted else None


def _default_sr(xapi) -> str:
    x = xapi.x
    sr = x.pool.get_default_SR(x.pool.get_all()[0])
    if sr == NULL_REF:
        raise RestoreFailed(f"pool `{xapi.pool.name}` has no default SR; give --sr")
    return sr


def _put(xapi, handler: str, query: dict, body, run: str, report) -> list[str]:
    """PUT ``body`` (a file path or a RebuiltXva) to ``handler`` under a task; returns the imported
    VM refs; the pool's own reason (task error_info) when it fails."""
    size = os.path.getsize(body) if isinstance(body, str) else body.size
    result = transfer.upload(xapi, handler, query, body, label=f"tinabs restore {run}", run=run,
                             progress=lambda n: report(stage="import", bytes=n, total=size),
                             task_progress=lambda f: report(stage="import", progress=f))
    refs = result if isinstance(result, list) else [r for r in str(result).split(",") if r]
    if not refs:
        raise RestoreFailed("the import created no VM")
    return refs


def _import_xva(xapi, backup: dict, sr: str | None, keep_macs: bool, run: str, report) -> list[str]:
    query = {"restore": "true" if keep_macs else "false"}
    target = _target_sr(xapi, sr)
    if target:
        query["sr_id"] = target
    body = RebuiltXva(backup) if backup["mode"] == "repo" else backup["path"]
    return _put(xapi, "/import", query, body, run, report)


def _import_metadata(xapi, backup: dict, ova_vm: dict, by_id: dict, sr: str | None, keep_macs: bool,
                     ctx: dict, protect: set[str], report) -> list[str]:
    x = xapi.x
    m = backup["manifest"]
    kept_uuid = m["copied_vdis"][0]["uuid"]
    try:
        kept = x.VDI.get_by_uuid(kept_uuid)
    except XenAPI.Failure:
        raise RestoreFailed(f"the backup's system disk copy {kept_uuid} is no longer on the pool "
                            f"`{xapi.pool.name}` (backup SR {m.get('backup_sr', {}).get('name', '?')})") from None
    names = {d["userdevice"]: d.get("name") for d in m.get("skeleton", {}).get("disks", [])}
    target = _target_sr(xapi, sr) or _default_sr(xapi)
    vdi_map: dict[str, str] = {}
    for vbd_id in ova_vm["snapshot"].get("VBDs", []):
        vbd = by_id.get(vbd_id, {}).get("snapshot")
        if not vbd or vbd.get("VDI") in (None, NULL_REF) or vbd["VDI"] not in by_id:
            continue  # an empty CD drive
        vdi_rec = by_id[vbd["VDI"]]["snapshot"]
        device = vbd["userdevice"]
        role = f"{Role.DISK}:{device}"
        if vdi_rec.get("uuid") == kept_uuid:
            report(stage="copy" if sr else "clone", progress=0.0)
            if sr:  # a copy on the production SR; the kept copy is only read
                new = xapi.call_async_marked("VDI.copy", kept, xapi.sr_by_name_or_uuid(sr), run=ctx["run"],
                                             progress=lambda f: report(stage="copy", progress=f))
            else:   # a clone beside the kept copy: the kept copy is never attached or written
                new = xapi.call_async_marked("VDI.clone", kept, {}, run=ctx["run"])
            markers.replace(x, "VDI", new, ctx, role)
        elif vbd.get("type") == "CD":
            continue
        else:  # a data disk: recreated empty, as in every backup
            new = xapi.call_async("VDI.create", {
                "name_label": names.get(device) or vdi_rec.get("name_label", ""),
                "name_description": vdi_rec.get("name_description", ""), "SR": target,
                "virtual_size": str(vdi_rec["virtual_size"]), "type": vdi_rec.get("type", "user"),
                "sharable": is_true(vdi_rec.get("sharable")), "read_only": False,
                "other_config": {**markers.unmarked(vdi_rec.get("other_config", {})), **markers.markers(ctx, role)},
                "sm_config": {}, "xenstore_data": {}, "tags": []})
        vdi_map[f"vdi:{vdi_rec['uuid']}"] = x.VDI.get_uuid(new)
    query = {"restore": "true" if keep_macs else "false", **vdi_map}
    return _put(xapi, "/import_metadata", query, backup["path"], ctx["run"], report)


def _remove_orphan_vdis(xapi, run: str, protect: set[str]) -> list[str]:
    """Destroy the disks that tasks of a dead delivery made (clones, copies); return its VMs (imports)."""
    x = xapi.x
    vms = []
    for ref in xapi.orphans_of(run):
        try:
            x.VM.get_uuid(ref)
            vms.append(ref)
            continue
        except XenAPI.Failure:
            pass
        try:
            if x.VDI.get_uuid(ref) not in protect:
                x.VDI.destroy(ref)
        except XenAPI.Failure:  # gone already
            continue
    return vms


def _the_vm(x, refs: list[str]) -> str:
    vms = [r for r in refs if not x.VM.get_is_a_snapshot(r)]
    return (vms or refs)[0]


def _adopt_devices(x, vm: str, ctx: dict, m: dict) -> list[dict]:
    """Mark the VM's VBDs and disks with this run; give the disks the original's names."""
    names = {d["userdevice"]: d.get("name") for d in m.get("skeleton", {}).get("disks", [])}
    disks = []
    for vbd in x.VM.get_VBDs(vm):
        rec = x.VBD.get_record(vbd)
        markers.replace(x, "VBD", vbd, ctx, Role.VBD)
        if rec["VDI"] == NULL_REF:
            continue
        markers.replace(x, "VDI", rec["VDI"], ctx, f"{Role.DISK}:{rec['userdevice']}")
        if names.get(rec["userdevice"]):
            x.VDI.set_name_label(rec["VDI"], names[rec["userdevice"]])
        disks.append({"userdevice": rec["userdevice"], "uuid": x.VDI.get_uuid(rec["VDI"]),
                      "virtual_size": int(x.VDI.get_virtual_size(rec["VDI"])),
                      "SR": x.SR.get_name_label(x.VDI.get_SR(rec["VDI"]))})
    return sorted(disks, key=lambda d: d["userdevice"])


def _adopt_networks(x, vm: str, ctx: dict, before: set[str]) -> None:
    for vif in x.VM.get_VIFs(vm):
        net = x.VIF.get_network(vif)
        if net not in before:
            markers.replace(x, "network", net, ctx, Role.NETWORK)


def reapply_reset_fields(x, vm: str, ha: dict | None, ova_rec: dict) -> dict:
    """Set again what import resets (FACTS.md §4): order, start_delay, shutdown_delay, ha_always_run."""
    source = dict(ha or {})
    for key in ("order", "start_delay", "shutdown_delay", "ha_always_run", "ha_restart_priority"):
        source.setdefault(key, ova_rec.get(key))
    applied = {}
    for key in ("order", "start_delay", "shutdown_delay"):
        value = int(source.get(key) or 0)
        getattr(x.VM, f"set_{key}")(vm, str(value))
        applied[key] = value
    always = is_true(source.get("ha_always_run"))
    if always:  # deprecated setter: xapi makes it a restart-priority change
        x.VM.set_ha_always_run(vm, True)
        applied["ha_always_run"] = True
    priority = source.get("ha_restart_priority")
    if priority is not None and x.VM.get_ha_restart_priority(vm) != priority:
        x.VM.set_ha_restart_priority(vm, priority)
    applied["ha_restart_priority"] = x.VM.get_ha_restart_priority(vm)
    return applied


def _finalise(x, vm: str, run: str, m: dict) -> None:
    """The restore succeeded: its objects are the user's now, not tinabs litter (VM last)."""
    origin = plain(f"{m.get('pool')}/{m['vm']['uuid']}/{m.get('run')}")
    for cls in ("VBD", "VDI", "network"):
        for ref in markers.find(x, cls, run):
            getattr(x, cls).set_other_config(ref, markers.unmarked(getattr(x, cls).get_other_config(ref)))
    x.VM.set_other_config(vm, {**markers.unmarked(x.VM.get_other_config(vm)), RESTORE_RUN: run, RESTORED_FROM: origin})


# -- removal -------------------------------------------------------------------
def remove(xapi, run: str, protect: set[str] = frozenset(), extra_vms=()) -> list[str]:
    """Destroy every object of restore run ``run``: its VMs (shut down first) with their disks,
    VDIs, VBDs and networks by marker.  Never a VDI in ``protect`` (uuids) or marked keep by
    another run.  Idempotent; returns what this call destroyed."""
    x = xapi.x
    vms = list(dict.fromkeys([*markers.find(x, "VM", run), *extra_vms]))
    removed = run_objects.remove_run(x, run, vms=vms, keep=run_objects.KEEP_NONE, protect=protect, vm_disks=True)
    for cls in ("VIF", "VBD"):
        removed += run_objects.remove_marked(x, cls, run)
    for net in markers.find(x, "network", run):
        for vif in x.network.get_VIFs(net):  # VIFs of other VMs are never ours to move: stop
            raise RestoreFailed(f"network {net} of run {run} still has VIF {vif}")
        if run_objects.destroyed(x.network.destroy, net):
            removed.append(net)
    return removed


# -- entry points for tasks and commands -----------------------------------------
def _xapi_for(cfg, pool: str):
    from tinabs_tasks.xapi import connect
    from tinabs_tasks.xapi.port import Xapi
    return Xapi(connect.session_for(cfg.pool(pool)))


def run_restore(cfg, backup_path: str, pool: str, *, sr: str | None = None, name: str | None = None,
                macs: str = "auto", start: bool = False, run: str | None = None, report=None) -> dict:
    backup = load_backup(cfg.destination, backup_path, cfg.repository)  # this config's key, if repo mode
    check_pool(backup, pool)
    return restore(_xapi_for(cfg, pool), backup, sr=sr, name=name, macs=macs, start=start, run=run, report=report)
