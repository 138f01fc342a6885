"""The manifest beside each backup: what it is, where from, and how to check it."""
from __future__ import annotations

import datetime as dt
import os

from tinabs_tasks.storage import destination

FORMAT = 1
#: what a repo backup's manifest adds (backup/store.py), and its result carries
REPO_FIELDS = ("backup_id", "logical_bytes", "transferred_bytes", "stored_bytes", "new_blocks", "reused_blocks")
#: what an incremental-capable backup (repo, sr-copy) records of how it was taken: ``backup_kind``
#: "incremental" (a delta against its base: ``base_backup``, ``chain`` incrementals since the
#: last full) or "full" (with the ``full_reason``); the run record carries them too
KIND_FIELDS = ("backup_kind", "full_reason", "base_backup", "chain")
RESULT_FIELDS = REPO_FIELDS + KIND_FIELDS


def kind_fields(kind: dict) -> dict:
    """What a manifest records of how its backup was taken, from a stage's ``kind``: the
    KIND_FIELDS it has, and ``stray_bases`` when true (cleanup retires the VM's other bases)."""
    return {k: v for k, v in kind.items()
            if (k in KIND_FIELDS and v is not None) or (k == "stray_bases" and v)}


def earlier_result(ctx: dict, paths: dict) -> dict | None:
    """The result of an earlier attempt of this run that completed: its manifest exists."""
    done = destination.read_manifest(paths["manifest"])
    if not done or done.get("run") != ctx["run"]:
        return None
    result = {"path": paths["data"], "manifest": paths["manifest"], "size": done.get("size"),
              "sha256": done.get("sha256")}
    for key in RESULT_FIELDS:
        if key in done:
            result[key] = done[key]
    return result


def write(ctx: dict, paths: dict, *, size: int, sha256: str, transfer_s: float, xapi, extra: dict | None = None):
    payload = {
        "format": FORMAT, "vm": {"uuid": ctx["vm"]["uuid"], "name": ctx["vm"]["name"]},
        "pool": ctx["pool"], "job": ctx["job"], "run": ctx["run"], "mode": ctx["mode"],
        "file": os.path.basename(paths["data"]) if paths["data"] else None, "size": size, "sha256": sha256,
        "created": ctx["stamp"], "completed": dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
        "timings": {**ctx.get("timings", {}), "transfer": round(transfer_s, 3)},
        "skeleton": ctx.get("skeleton", {}),
        "pool_software": _software(xapi),
    }
    payload.update(extra or {})
    destination.write_json_atomic(paths["manifest"], payload)
    return payload


def _software(xapi) -> dict:
    x = xapi.x
    version = x.host.get_software_version(x.pool.get_master(x.pool.get_all()[0]))
    return {k: version.get(k, "") for k in ("product_brand", "product_version", "xapi")}
