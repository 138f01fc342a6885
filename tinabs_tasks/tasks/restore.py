"""Celery tasks for restores: `tinabs.restore` and `tinabs.restore_test` (the health check).

Thin: they call ``restore.run_restore`` / ``restore_test.run_health_check`` on the
pool's queue (``tinabs.pool.<name>``), publish progress as a PROGRESS task
state, and return the result dict.  A restore removes what it made before it
raises (by its restore run id), so a retry starts clean: transient errors are
retried with the backup policy's backoff under the same run id; permanent ones
fail the task with a one-line reason (StageFailed).
"""
from __future__ import annotations

import time

from tinabs_tasks.restore import into_pool as restore
from tinabs_tasks.restore import health_check as restore_test
from tinabs_tasks.app import app
from tinabs_tasks.runs.lease import Heartbeat
from tinabs_tasks.runs.guard import Busy, StageGuard, wait_countdown
from tinabs_tasks.backup.errors import StageFailed
from tinabs_tasks.tasks.backup import CFG, MAX_RELOGINS, _redis, backoff
from tinabs_tasks.xapi import connect
from tinabs_tasks.xapi.errors import RELOGIN_CODES, UNREACHABLE, classify


def _reporter(task):
    def report(**fields):
        if getattr(task.request, "id", None):
            task.update_state(state="PROGRESS", meta=fields)
    return report


def _give_up_or_retry(task, exc: BaseException, pool: str, args: tuple, attempt: int, waits: dict):
    if isinstance(exc, (restore.BadBackup, restore.RestoreFailed)):
        return StageFailed(str(exc))
    err = classify(exc, pool)
    if err.code in RELOGIN_CODES:
        connect.forget(pool)
    if err.code == "SESSION_INVALID" and waits.get("relogins", 0) < MAX_RELOGINS:
        waits["relogins"] = waits.get("relogins", 0) + 1  # an expired session: log in again, not a retry
        return task.retry(args=(*args, attempt, waits), countdown=0, max_retries=None)
    if err.code == UNREACHABLE:
        since = waits.setdefault("unreachable_since", time.time())
        if time.time() - since < CFG.retry.unreachable_wait_s:
            return task.retry(args=(*args, attempt, waits), countdown=backoff(min(attempt, 8)), max_retries=None)
        return StageFailed(f"restore failed: {err} (unreachable for {time.time() - since:.0f}s)")
    if err.transient and attempt < CFG.retry.max_retries:
        return task.retry(args=(*args, attempt + 1, waits), countdown=backoff(attempt), max_retries=None)
    return StageFailed(f"restore failed: {err}")


@app.task(name="tinabs.restore", bind=True, acks_late=True, max_retries=None, priority=0,
          time_limit=CFG.limits.export_time_limit_s, soft_time_limit=max(1, CFG.limits.export_time_limit_s - 30))
def restore_task(self, pool: str, backup_path: str, options: dict, run: str, attempt: int = 0,
                 waits: dict | None = None) -> dict:
    """Restore the backup at ``backup_path`` (in the destination) into ``pool``.
    ``options``: sr, name, macs ("auto"|"keep"|"new"), start.

    One delivery at a time works on a restore run (the stage guard's lease): a copy Redis
    hands out again while the first still imports waits, then finds the restore done."""
    waits = dict(waits or {})
    args = (pool, backup_path, options, run)
    guard = StageGuard(_redis(), run, CFG.limits.lease_s)
    try:
        guard.acquire()
    except Busy:
        waits["lease"] = waits.get("lease", 0) + 1
        raise self.retry(args=(*args, attempt, waits), countdown=wait_countdown(waits["lease"] - 1),
                         max_retries=None) from None
    try:
        with Heartbeat([guard.lease.renew], CFG.limits.lease_s / 4):
            return restore.run_restore(CFG, backup_path, pool, run=run, report=_reporter(self), **options)
    except Exception as exc:
        raise _give_up_or_retry(self, exc, pool, args, attempt, waits) from None
    finally:
        guard.release()


@app.task(name="tinabs.restore_test", bind=True, acks_late=True, max_retries=None, priority=0,
          time_limit=CFG.limits.export_time_limit_s, soft_time_limit=max(1, CFG.limits.export_time_limit_s - 30))
def restore_test_task(self, pool: str, backup_path: str, sr: str) -> dict:
    """The restore test of one backup; returns the report (``ok`` False when the check failed)."""
    try:
        return restore_test.run_health_check(CFG, backup_path, pool, sr, report=_reporter(self))
    except restore.BadBackup as exc:
        raise StageFailed(str(exc)) from None


def send_restore(pool: str, backup_path: str, options: dict, run: str):
    return restore_task.apply_async((pool, backup_path, options, run), queue=CFG.pool(pool).queue)


def send_restore_test(pool: str, backup_path: str, sr: str):
    return restore_test_task.apply_async((pool, backup_path, sr), queue=CFG.pool(pool).queue)
