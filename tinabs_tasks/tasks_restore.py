"""Celery tasks for restores: `tinabs.restore` and `tinabs.restore_test` (the health check).

Thin: they call ``restore.run_restore`` / ``restore_test.run_health_check`` on the
pool's queue (``tinabs.pool.<name>``), publish progress as a PROGRESS task
state, and return the result dict.  A restore removes what it made before it
raises (by its restore run id), so a retry starts clean: transient errors are
retried with the backup policy's backoff under the same run id; permanent ones
fail the task with a one-line reason (StageFailed).
"""
from __future__ import annotations

from . import restore, restore_test
from .app import app
from .stages.errors import StageFailed
from .tasks import CFG, backoff
from .xapi import connect
from .xapi.errors import RELOGIN_CODES, classify


def _reporter(task):
    def report(**fields):
        if getattr(task.request, "id", None):
            task.update_state(state="PROGRESS", meta=fields)
    return report


def _give_up_or_retry(task, exc: BaseException, pool: str, args: tuple, attempt: int):
    if isinstance(exc, (restore.BadBackup, restore.RestoreFailed)):
        return StageFailed(str(exc))
    err = classify(exc, pool)
    if err.code in RELOGIN_CODES:
        connect.forget(pool)
    if err.transient and attempt < CFG.retry.max_retries:
        return task.retry(args=(*args, attempt + 1), countdown=backoff(attempt), max_retries=None)
    return StageFailed(f"restore failed: {err}")


@app.task(name="tinabs.restore", bind=True, acks_late=True, max_retries=None, priority=0,
          time_limit=CFG.limits.export_time_limit_s, soft_time_limit=max(1, CFG.limits.export_time_limit_s - 30))
def restore_task(self, pool: str, backup_path: str, options: dict, run: str, attempt: int = 0) -> dict:
    """Restore the backup at ``backup_path`` (in the destination) into ``pool``.
    ``options``: sr, name, macs ("auto"|"keep"|"new"), start."""
    try:
        return restore.run_restore(CFG, backup_path, pool, run=run, report=_reporter(self), **options)
    except Exception as exc:
        raise _give_up_or_retry(self, exc, pool, (pool, backup_path, options, run), attempt) from None


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
