"""Celery tasks for upkeep: retention (``tinabs.prune_vm`` / ``tinabs.prune``), the janitor
(``tinabs.janitor`` / ``tinabs.janitor_all``) and the repository's GC (``tinabs.repo_gc``).  Thin:
the work is in retention.py, janitor.py and repo/gc.py.

Routing: ``prune_vm`` and ``janitor`` run on the pool's queue (they may destroy disks on that pool,
so they run where its credentials are); ``prune`` and ``janitor_all`` run on the default queue
and only fan out one pool task per VM / per pool.  Both fan-out tasks are meant for celery beat,
e.g. ``{"task": "tinabs.janitor_all", "schedule": 3600}``.  The janitor's file part (stale
``.partial`` files) is done by each pool's task for that pool's directory.

``repo_gc`` runs on the default queue, on any worker that has the repository mounted: it opens it
with that worker's own ``[repository]`` key (nothing secret travels in a task) and returns figures
only.  Beat sends it from ``[schedule.gc]``; a GC already running makes it a no-op, not a failure.
"""
from __future__ import annotations

import logging
import time

from tinabs_tasks.storage import catalog
from tinabs_tasks.storage import janitor
from tinabs_tasks.app import app
from tinabs_tasks.runs.store import JobStore
from tinabs_tasks.runs.redis_client import client
from tinabs_tasks.xapi import connect
from tinabs_tasks.xapi.port import Xapi

CFG = app.tinabs_config
log = logging.getLogger("tinabs")


def _xapi(pool: str) -> Xapi:
    return Xapi(connect.session_for(CFG.pool(pool)))


def _is_active():
    return janitor.redis_is_active(JobStore(client(CFG.broker_url)))


@app.task(name="tinabs.prune_vm", acks_late=True)
def prune_vm(pool: str, vm_uuid: str, dry_run: bool = False) -> dict:
    """Apply [retention] to one VM's backups (after its backup succeeded, or from `tinabs prune`)."""
    repository = CFG.repository.path if CFG.repository else None
    return janitor.prune_vm(CFG.destination, pool, vm_uuid, CFG.retention, _xapi, dry_run=dry_run,
                            repository=repository)


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


@app.task(name="tinabs.repo_gc", acks_late=True)
def repo_gc() -> dict:
    """Remove the repository's blocks no index references, unmarked for [repository] gc_grace_h
    (repo/gc.py); the result is counts and bytes.  A config or key problem fails the task with
    its one-line fix (RepoError)."""
    from tinabs_tasks.repo.configured import open_configured
    from tinabs_tasks.repo.gc import GcBusy, collect_garbage
    from tinabs_tasks.repo.index import all_referenced_block_ids
    repo = open_configured(CFG.repository)
    grace_s = CFG.repository.gc_grace_h * 3600
    began = time.monotonic()
    try:
        report = collect_garbage(repo, lambda: all_referenced_block_ids(repo), grace_s=grace_s)
    except GcBusy as exc:  # beat fired again while a long GC runs: that GC does the work
        log.info("repository GC skipped: %s", exc)
        return {"repository": repo.path, "skipped": str(exc)}
    out = {"repository": repo.path, "grace_s": grace_s, "start": report.start, "cutoff": report.cutoff,
           "duration_s": round(time.monotonic() - began, 3), "marked": report.marked,
           "missing_blocks": len(report.missing), "blocks_kept": report.blocks_kept, "bytes_kept": report.bytes_kept,
           "blocks_removed": report.blocks_removed, "bytes_freed": report.bytes_freed,
           "temps_removed": report.temps_removed, "restored": report.restored}
    log.info("repository GC of %s: %d block(s) removed, %d bytes freed, %d kept", repo.path,
             report.blocks_removed, report.bytes_freed, report.blocks_kept)
    if report.missing:  # GC does not cause this (it never sweeps a marked block): say what to do
        log.error("repository %s: %d block(s) referenced by backups are missing; run `tinabs repo check` to "
                  "see which backups are damaged", repo.path, len(report.missing))
    return out


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
        report = verify_backup(backup.manifest_path, record=record, pool_check=check, repository=CFG.repository)
        results[backup.manifest_path] = {"ok": report.ok, "problems": report.problems}
    return {"verified": len(results), "failed": sum(not r["ok"] for r in results.values()), "results": results}
