"""Celery tasks for `tinabs bases`: ``tinabs.bases`` lists a pool's bases with their VMs,
``tinabs.bases_forget`` destroys a VM's bases (its next backup is then a full one).

Both run on the pool's queue, where the pool's credentials are; thin: the work is in
storage/bases_upkeep.py.  A pool that cannot be reached is an answer (``{"pool", "error"}``),
not a failed task, so the CLI says which pool and why.  Forgetting leaves alone a VM a backup
is running for (its VM lock is held by an active run): that run's end would make a new base.
"""
from __future__ import annotations

from tinabs_tasks.app import app
from tinabs_tasks.runs import keys
from tinabs_tasks.storage import bases_upkeep
from tinabs_tasks.storage.janitor import redis_is_active
from tinabs_tasks.tasks.services import jobs, redis, xapi as _xapi
from tinabs_tasks.xapi import connect
from tinabs_tasks.xapi.errors import RELOGIN_CODES, classify


def _error(pool: str, exc: Exception) -> dict:
    err = classify(exc, pool)
    if err.code in RELOGIN_CODES:
        connect.forget(pool)
    return {"pool": pool, "error": str(err)}


@app.task(name="tinabs.bases")
def list_bases(pool: str) -> dict:
    """Every base on the pool: ``{"pool", "bases": [...]}``, or ``{"pool", "error"}``."""
    try:
        return bases_upkeep.listing(_xapi(pool), pool)
    except Exception as exc:  # reported per pool by the CLI, never a traceback
        return _error(pool, exc)


def _running(pool: str):
    """``running(vm_uuid)``: the active run holding the VM's lock (plan's), else None."""
    is_active = redis_is_active(jobs())

    def running(vm_uuid: str) -> str | None:
        holder = redis().get(keys.lease(f"vm:{pool}:{vm_uuid}"))
        return holder if holder and is_active(holder) else None
    return running


@app.task(name="tinabs.bases_forget")
def forget(pool: str, vm: str, dry_run: bool = False) -> dict:
    """Destroy the bases of the VM ``vm`` (name or uuid) names on the pool, if it names one VM."""
    try:
        return bases_upkeep.forget(_xapi(pool), pool, vm, dry_run=dry_run, running=_running(pool))
    except Exception as exc:
        return {**_error(pool, exc), "wanted": vm, "dry_run": dry_run, "vms": [], "removed": []}
