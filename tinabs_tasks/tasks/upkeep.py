"""Celery tasks for upkeep: retention (``tinabs.prune_vm`` / ``tinabs.prune``) and the janitor
(``tinabs.janitor`` / ``tinabs.janitor_all``).  Thin: the work is in retention.py and janitor.py.

Routing: ``prune_vm`` and ``janitor`` run on the pool's queue (they may destroy disks on that pool,
so they run where its credentials are); ``prune`` and ``janitor_all`` run on the default queue
and only fan out one pool task per VM / per pool.  Both fan-out tasks are meant for celery beat,
e.g. ``{"task": "tinabs.janitor_all", "schedule": 3600}``.  The janitor's file part (stale
``.partial`` files) is done by each pool's task for that pool's directory.
"""
from __future__ import annotations

from tinabs_tasks.storage import catalog
from tinabs_tasks.storage import janitor
from tinabs_tasks.app import app
from tinabs_tasks.runs.store import JobStore
from tinabs_tasks.runs.redis_client import client
from tinabs_tasks.xapi import connect
from tinabs_tasks.xapi.port import Xapi

CFG = app.tinabs_config


def _xapi(pool: str) -> Xapi:
    return Xapi(connect.session_for(CFG.pool(pool)))


def _is_active():
    return janitor.redis_is_active(JobStore(client(CFG.broker_url)))


@app.task(name="tinabs.prune_vm", acks_late=True)
def prune_vm(pool: str, vm_uuid: str, dry_run: bool = False) -> dict:
    """Apply [retention] to one VM's backups (after its backup succeeded, or from `tinabs prune`)."""
    return janitor.prune_vm(CFG.destination, pool, vm_uuid, CFG.retention, _xapi, dry_run=dry_run)


@app.task(name="tinabs.prune", acks_late=True)
def prune(dry_run: bool = False) -> list[list[str]]:
    """Send ``prune_vm`` for every VM with backups in the destination to its pool's queue."""
    sent = []
    for pool, vm_uuid in catalog.vm_groups(CFG.destination):
        if pool in CFG.pools:
            app.send_task("tinabs.prune_vm", args=(pool, vm_uuid, dry_run), ignore_result=True)
            sent.append([pool, vm_uuid])
    return sent


@app.task(name="tinabs.janitor", acks_late=True)
def janitor_task(pool: str, dry_run: bool = False, max_age_h: float | None = None) -> dict:
    """Remove one pool's litter of dead runs and its stale ``.partial`` files."""
    hours = CFG.janitor.max_age_h if max_age_h is None else float(max_age_h)
    return janitor.janitor_pool(_xapi(pool), CFG.destination, pool, _is_active(), hours * 3600, dry_run=dry_run)


@app.task(name="tinabs.janitor_all", acks_late=True)
def janitor_all(dry_run: bool = False) -> list[str]:
    """One ``tinabs.janitor`` per configured pool, each on its pool's queue (for celery beat)."""
    for name in CFG.pools:
        app.send_task("tinabs.janitor", args=(name, dry_run), ignore_result=True)
    return list(CFG.pools)


@app.task(name="tinabs.verify", acks_late=True)
def verify_task(since_h: float | None = 24.0, record: bool = True) -> dict:
    """Verify the backups made in the last ``since_h`` hours (all when None), recording each verdict;
    for beat, e.g. every morning after the nightly run.  Runs where the destination is mounted."""
    import datetime as dt

    from tinabs_tasks.storage.copied_disks import pool_check
    from tinabs_tasks.storage.verify import verify_backup
    cutoff = None if since_h is None else dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=since_h)
    check = pool_check(CFG)
    results = {}
    for backup in catalog.scan(CFG.destination, include_incomplete=True):
        if not backup.manifest_path or (cutoff and backup.created and backup.created < cutoff):
            continue
        report = verify_backup(backup.manifest_path, record=record, pool_check=check)
        results[backup.manifest_path] = {"ok": report.ok, "problems": report.problems}
    return {"verified": len(results), "failed": sum(not r["ok"] for r in results.values()), "results": results}
