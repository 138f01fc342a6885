"""Every Redis key tinabs writes (besides Celery's own), in one place."""
from __future__ import annotations

PREFIX = "tinabs"
#: how long job/run state and results live (seconds): a week of history
STATE_TTL_S = 7 * 24 * 3600


def job(job_id: str) -> str:
    """Hash: selector, mode, pools, created, planned/expected pool counts, notes."""
    return f"{PREFIX}:job:{job_id}"


def job_runs(job_id: str) -> str:
    """Set of run ids (one per VM chain) of a job."""
    return f"{PREFIX}:job:{job_id}:runs"


def job_notes(job_id: str) -> str:
    """List of human-readable notes (duplicate names, plan errors)."""
    return f"{PREFIX}:job:{job_id}:notes"


def jobs_index() -> str:
    """Sorted set of job ids by creation time (for `tinabs status` without a job)."""
    return f"{PREFIX}:jobs"


def run(run_id: str) -> str:
    """Hash: job, pool, vm, stage, state, bytes, rate, error, paths, timings."""
    return f"{PREFIX}:run:{run_id}"


def semaphore(pool: str) -> str:
    """Sorted set of export/copy lease tokens by expiry time, per pool."""
    return f"{PREFIX}:sem:{pool}"


def semaphore_wake(pool: str) -> str:
    """List a released slot pushes to, so a waiting export starts at once."""
    return f"{PREFIX}:sem:{pool}:wake"


def lease(name: str) -> str:
    """A single-holder lease (e.g. the export of one run), value = holder token."""
    return f"{PREFIX}:lease:{name}"
