"""What the producers (the CLI, beat's tasks, the web console) ask of workers, sent by task name.

A producer needs only the broker: it imports no worker code, and the app's router (app.py) sends
each task to its pool's queue.  Each function returns Celery's AsyncResult.
"""
from __future__ import annotations

#: for a command someone waits on: a few seconds of a broker's restart, not the two minutes a
#: backup's own messages wait (app.PUBLISH_RETRY); the command then says the broker is away
SHORT_RETRY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


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


def bases(pool: str, *, expires: float):
    """A pool's bases; the question expires with the asker's wait (nobody reads a later answer)."""
    return _send("tinabs.bases", pool, expires=expires, retry_policy=SHORT_RETRY)


def bases_forget(pool: str, vm: str, dry_run: bool, *, expires: float):
    """Destroy a VM's bases on a pool.  It expires with the asker's wait: a worker that comes back
    later must not destroy, for nobody, a base made since."""
    return _send("tinabs.bases_forget", pool, vm, dry_run, expires=expires, retry_policy=SHORT_RETRY)


def plan(job: str, pool: str, selector: dict, mode: str, full: str | None = None):
    if full is None:  # (as before: a worker that predates `full` takes it)
        return _send("tinabs.plan", job, pool, selector, mode)
    return _send("tinabs.plan", job, pool, selector, mode, kwargs={"full": full})


def ask(name: str, *args, expires: float, retry_policy: dict):
    """A question for a pool's workers (the console's inventory, preview, verify)."""
    return _send(name, *args, expires=expires, retry_policy=retry_policy)
