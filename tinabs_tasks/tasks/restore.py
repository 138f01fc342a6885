"""Celery tasks for restores: `tinabs.restore` and `tinabs.restore_test` (the health check).

Thin: they call ``restore.run_restore`` / ``health_check.run_health_check`` on the pool's queue
(the app's router sends them there), publish progress as a PROGRESS task state, and return the
result dict.  A restore removes what it made before it raises (by its restore run id), so a retry
starts clean: what to do after a failure is the one retry policy's (runs/retry_policy.py), under
the same run id; a permanent failure fails the task with a one-line reason (StageFailed).
"""
from __future__ import annotations

import time

from tinabs_tasks.app import app
from tinabs_tasks.backup.errors import StageFailed
from tinabs_tasks.restore import health_check
from tinabs_tasks.restore import into_pool as restore
from tinabs_tasks.runs.guard import restore_lease, wait_countdown
from tinabs_tasks.runs.lease import Heartbeat
from tinabs_tasks.runs.retry_policy import Attempts, GiveUp, Relogin, Settings, WaitForPool, decide
from tinabs_tasks.tasks import services
from tinabs_tasks.xapi import connect
from tinabs_tasks.xapi.errors import classify

CFG = app.tinabs_config


def _reporter(task):
    def report(**fields):
        if getattr(task.request, "id", None):
            task.update_state(state="PROGRESS", meta=fields)
    return report


def _give_up_or_retry(task, exc: BaseException, pool: str, args: tuple, attempt: int, waits: dict):
    if isinstance(exc, (restore.BadBackup, restore.RestoreFailed)):
        return StageFailed(str(exc))
    err = classify(exc, pool)
    decision = decide(err, Attempts(attempt, waits.get("relogins", 0), waits.get("unreachable_since")),
                      Settings.of(CFG.retry), time.time())
    if decision.drop_session:
        connect.forget(pool)
    if isinstance(decision, GiveUp):
        return StageFailed(f"restore failed: {decision.reason}")
    if isinstance(decision, Relogin):  # an expired session: log in again, not a retry
        waits["relogins"] = waits.get("relogins", 0) + 1
    elif isinstance(decision, WaitForPool):
        waits["unreachable_since"] = decision.since
    else:
        attempt += 1
    return task.retry(args=(*args, attempt, waits), countdown=decision.countdown, max_retries=None)


@app.task(name="tinabs.restore", bind=True, acks_late=True, max_retries=None)
def restore_task(self, pool: str, backup_path: str, options: dict, run: str, attempt: int = 0,
                 waits: dict | None = None) -> dict:
    """Restore the backup at ``backup_path`` (in the destination) into ``pool``.
    ``options``: sr, name, macs ("auto"|"keep"|"new"), start.

    One delivery at a time works on a restore run (its lease): a copy Redis hands out again
    while the first still imports waits, then finds the restore done."""
    waits = dict(waits or {})
    args = (pool, backup_path, options, run)
    lease = restore_lease(services.redis(), run, CFG.limits.lease_s)
    if not lease.try_acquire():
        waits["lease"] = waits.get("lease", 0) + 1
        raise self.retry(args=(*args, attempt, waits), countdown=wait_countdown(waits["lease"] - 1),
                         max_retries=None)
    try:
        with Heartbeat([lease.renew], CFG.limits.lease_s / 4):
            return restore.run_restore(CFG, backup_path, pool, run=run, report=_reporter(self), **options)
    except Exception as exc:
        raise _give_up_or_retry(self, exc, pool, args, attempt, waits) from None
    finally:
        lease.release()


@app.task(name="tinabs.restore_test", bind=True, acks_late=True, max_retries=None)
def restore_test_task(self, pool: str, backup_path: str, sr: str) -> dict:
    """The restore test of one backup; returns the report (``ok`` False when the check failed)."""
    try:
        return health_check.run_health_check(CFG, backup_path, pool, sr, report=_reporter(self))
    except restore.BadBackup as exc:
        raise StageFailed(str(exc)) from None
