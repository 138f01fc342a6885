"""What the producers (the CLI, beat's tasks, the web console) ask of workers, sent by task name.

A producer needs only the broker: it imports no worker code, and the app's router (app.py) sends
each task to its pool's queue.  Each function returns Celery's AsyncResult.
"""
from __future__ import annotations


def _send(name: str, *args, **options):
    from tinabs_tasks.app import app  # the app needs the config: built when first asked for
    return app.send_task(name, args=args, **options)


def restore(pool: str, backup_path: str, options: dict, run: str):
    return _send("tinabs.restore", pool, backup_path, options, run)


def restore_test(pool: str, backup_path: str, sr: str):
    return _send("tinabs.restore_test", pool, backup_path, sr)


def janitor(pool: str, dry_run: bool, max_age_h: float | None):
    return _send("tinabs.janitor", pool, dry_run, max_age_h)


def prune_vm(pool: str, vm_uuid: str, dry_run: bool):
    return _send("tinabs.prune_vm", pool, vm_uuid, dry_run)


def plan(job: str, pool: str, selector: dict, mode: str):
    return _send("tinabs.plan", job, pool, selector, mode)


def ask(name: str, *args, expires: float, retry_policy: dict):
    """A question for a pool's workers (the console's inventory, preview, verify)."""
    return _send(name, *args, expires=expires, retry_policy=retry_policy)
