"""Celery tasks the web console asks workers for: what a pool holds, what a backup would take,
and verifying a backup.  They run on the pool's queue, on a worker that has the pool's
credentials and the destination, so the console itself needs only the broker (and the
destination, read-only, for the catalog).  Their results carry no secret: names, tags, sizes.

Each reuses what the backup itself uses: plan.select picks the VMs of a preview exactly as a job
would, export.xva_size estimates as the export stage does, verify.verify_backup checks as
`tinabs verify` does.
"""
from __future__ import annotations

from tinabs_tasks.storage import catalog
from tinabs_tasks.storage import verify
from tinabs_tasks.app import app
from tinabs_tasks.backup import selection as plan_stage
from tinabs_tasks.backup.export import xva_size
from tinabs_tasks.tasks.services import CFG, xapi as _xapi
from tinabs_tasks.xapi import connect
from tinabs_tasks.xapi.errors import RELOGIN_CODES, classify

#: an sr-copy backup's file holds only the VM's metadata: about this much
METADATA_BYTES = 64 << 10
NULL = "OpaqueRef:NULL"


def _error(pool: str, exc: Exception) -> str:
    err = classify(exc, pool)
    if err.code in RELOGIN_CODES:
        connect.forget(pool)
    return str(err)


@app.task(name="tinabs.inventory")
def inventory(pool: str) -> dict:
    """The pool's master, hosts and backupable VMs (by host, with tags and disk sizes); or why not."""
    try:
        return _inventory(_xapi(pool), pool)
    except Exception as exc:  # shown on the console as the pool's state, never a traceback
        return {"pool": pool, "reachable": False, "error": _error(pool, exc)}


def _inventory(xapi, pool: str) -> dict:
    x = xapi.x
    master = x.pool.get_master(next(iter(x.pool.get_all())))
    hosts = x.host.get_all_records()
    vbds, vdis = x.VBD.get_all_records(), x.VDI.get_all_records()
    vms = []
    for ref, rec in x.VM.get_all_records().items():
        if not plan_stage.backupable(rec):
            continue
        host = rec["resident_on"] if rec["resident_on"] != NULL else rec["affinity"]
        disks = _disks(rec, vbds, vdis)
        vms.append({"uuid": rec["uuid"], "name": rec["name_label"], "power_state": rec["power_state"],
                    "host": hosts[host]["name_label"] if host in hosts else None,
                    "running": rec["resident_on"] != NULL, "tags": list(rec["tags"]),
                    "vcpus": int(rec["VCPUs_max"]), "memory": int(rec["memory_static_max"]), "disks": disks,
                    "estimate": estimate(disks)})
    vms.sort(key=lambda v: (v["name"], v["uuid"]))
    version = hosts[master]["software_version"] if master in hosts else {}
    return {"pool": pool, "reachable": True, "master": hosts.get(master, {}).get("name_label"),
            "master_address": hosts.get(master, {}).get("address"),
            "version": " ".join(filter(None, (version.get("product_brand"), version.get("product_version")))),
            "hosts": sorted(({"name": h["name_label"], "address": h["address"], "enabled": h["enabled"],
                              "master": r == master} for r, h in hosts.items()), key=lambda h: h["name"]),
            "vms": vms}


def _disks(vm: dict, vbds: dict, vdis: dict) -> list[dict]:
    """The VM's disks: the system disk (userdevice 0, backed up) and the data disks (recreated empty)."""
    out = []
    for vbd in vm["VBDs"]:
        b = vbds.get(vbd)
        if not b or b["type"] != "Disk" or b["VDI"] not in vdis:
            continue
        d = vdis[b["VDI"]]
        out.append({"userdevice": b["userdevice"], "size": int(d["virtual_size"]),
                    "used": int(d["physical_utilisation"])})
    return sorted(out, key=lambda d: int(d["userdevice"]) if d["userdevice"].isdigit() else 99)


def estimate(disks: list[dict]) -> dict:
    """Bytes a backup of a VM with these disks moves: export mode writes an .xva of the system
    disk's data (the data disks are recreated empty); sr-copy copies the system disk to the
    backup SR and writes only metadata to the destination."""
    system = [d for d in disks if d["userdevice"] == "0"]
    data = [d for d in disks if d["userdevice"] != "0"]
    used = sum(min(d["used"], d["size"]) for d in system)
    return {"export": xva_size([(used, used)] + [(0, d["size"]) for d in data]) if system else 0,
            "sr_copy_destination": METADATA_BYTES, "sr_copy_backup_sr": used}


@app.task(name="tinabs.preview")
def preview(pool: str, selector: dict, mode: str) -> dict:
    """What a job with this selector would back up on the pool now, and about how many bytes."""
    try:
        xapi = _xapi(pool)
        chosen, notes = plan_stage.select(xapi, selector)
        inv = {v["uuid"]: v for v in _inventory(xapi, pool)["vms"]}
    except Exception as exc:
        return {"pool": pool, "reachable": False, "error": _error(pool, exc), "vms": [], "notes": []}
    vms = []
    sr_copy = mode == "sr-copy"  # export and repo modes stream the same XVA (repo: before dedup)
    for vm in chosen:
        est = inv.get(vm["uuid"], {}).get("estimate", {"export": 0, "sr_copy_destination": 0, "sr_copy_backup_sr": 0})
        vms.append({**vm, "host": inv.get(vm["uuid"], {}).get("host"),
                    "destination_bytes": est["sr_copy_destination"] if sr_copy else est["export"],
                    "backup_sr_bytes": est["sr_copy_backup_sr"] if sr_copy else 0})
    return {"pool": pool, "reachable": True, "vms": vms, "notes": notes}


@app.task(name="tinabs.verify_backup")
def verify_backup(pool: str | None, manifest_path: str) -> dict:
    """`tinabs verify BACKUP` on a worker: the verdict is recorded in the manifest, as there. ``pool``: the backup's, whose
    worker checks an sr-copy backup's disks (None: any worker)."""
    from tinabs_tasks.storage.copied_disks import pool_check
    path = catalog.resolve(CFG.destination, manifest_path)  # only a backup inside the destination
    return verify.verify_backup(path, record=True, pool_check=pool_check(CFG), repository=CFG.repository).as_dict()
