"""Every Redis key tinabs writes (besides Celery's own), in one place."""
from __future__ import annotations

PREFIX = "tinabs"
#: how long a job's state lives after the job ends, unless the config says ([limits] state_ttl_s)
STATE_TTL_S = 7 * 24 * 3600
#: how long a job's state lives while the job runs (at least): a job that never ends (its
#: tasks lost with a wiped queue) still goes away, and a short state_ttl_s never expires a
#: running job's state under it
ACTIVE_HOLD_S = 7 * 24 * 3600


def job(job_id: str) -> str:
    """Hash: selector, mode, pools, created, planned/expected pool counts, notes; ``aborted`` and
    ``aborted_by`` once an abort was asked for (abort.py); once the job has ended,
    ``report_claimed`` (set once: who sends the report) and ``report`` (reports.py)."""
    return f"{PREFIX}:job:{job_id}"


def job_runs(job_id: str) -> str:
    """Set of run ids (one per VM chain) of a job."""
    return f"{PREFIX}:job:{job_id}:runs"


def job_notes(job_id: str) -> str:
    """List of human-readable notes (duplicate names, plan errors)."""
    return f"{PREFIX}:job:{job_id}:notes"


def job_ended(job_id: str) -> str:
    """Set of the job's run ids that reached a terminal state (the job ends when all have)."""
    return f"{PREFIX}:job:{job_id}:ended"


def jobs_index() -> str:
    """Sorted set of job ids by creation time (for `tinabs status` without a job).  Each job's
    end drops the entries whose state has expired and lets the set expire with the last of
    them; a job's creation trims entries older than any job's state can live."""
    return f"{PREFIX}:jobs"


def run(run_id: str) -> str:
    """Hash: the run's record (runs/record.py): job, pool, vm, stage, state, bytes, rate, error,
    paths, timings; ``done`` and ``ctx`` (the last finished stage and the context it produced);
    ``lease`` and ``lease_until`` (who works on it now); ``touched``.  Like every key of a job, it
    lives ACTIVE_HOLD_S while the job runs and the state TTL once it has ended."""
    return f"{PREFIX}:run:{run_id}"


def semaphore(pool: str) -> str:
    """Sorted set of export/copy lease tokens by expiry time, per pool; the set expires with
    its latest lease (an acquire or renewal moves its expiry)."""
    return f"{PREFIX}:sem:{pool}"


def semaphore_wake(pool: str) -> str:
    """List a released slot pushes to, so a waiting export starts at once (expires 60 s after
    the last release)."""
    return f"{PREFIX}:sem:{pool}:wake"


def semaphore_parked(pool: str) -> str:
    """Sorted set of the transfers waiting for one of the pool's slots, by when they asked: each
    member is JSON {stage, ctx}; a released slot sends the oldest on (runs/slots.py).  Expires a
    day after the last transfer parked in it."""
    return f"{PREFIX}:sem:{pool}:parked"


def lease(name: str) -> str:
    """A single-holder lease (the export of one run, a run's stage guard, a VM's lock
    ``vm:<pool>:<uuid>``), value = holder token; expires unless its holder renews it."""
    return f"{PREFIX}:lease:{name}"


def active_runs() -> str:
    """Sorted set of the runs that have not ended, by when their record was last touched: the
    stuck-run sweep reads only the quiet ones (runs/sweep.py).  A run leaves it when it ends."""
    return f"{PREFIX}:runs:active"


def run_lease_name(run_id: str) -> str:
    """Lease name held by a restore run while one delivery works on it (a backup run's lease is in
    its own record, runs/record.py)."""
    return f"run:{run_id}"


# -- tinabs' own figures for Prometheus (tinabs_tasks/metrics.py) ------------------------------
#: how long a pool's or a VM's figures live after the last run that touched them: counters must
#: outlast any scrape gap, and a VM's last success must stay visible (an alert) long after it
#: stopped being backed up; only a VM gone for over a year drops out
METRICS_TTL_S = 400 * 24 * 3600


def metrics_pools() -> str:
    """Set of the pool names that have figures."""
    return f"{PREFIX}:metrics:pools"


def metrics_pool(pool: str) -> str:
    """Hash of a pool's counters: `backups_succeeded`, `backups_failed`, `bytes_exported`."""
    return f"{PREFIX}:metrics:pool:{pool}"


def metrics_vms(pool: str) -> str:
    """Set of the uuids of a pool's VMs that have figures."""
    return f"{PREFIX}:metrics:pool:{pool}:vms"


def metrics_vm(pool: str, vm_uuid: str) -> str:
    """Hash: name, last_result, last_end, and of the last success: last_success (time), last_size,
    last_seconds (time spent in its stages)."""
    return f"{PREFIX}:metrics:vm:{pool}:{vm_uuid}"


def web_action(task_id: str) -> str:
    """Hash: a verify or restore the web console sent (kind, backup, pool, by, created); its
    result is the Celery task's.  Expires with job state ([limits] state_ttl_s)."""
    return f"{PREFIX}:web:action:{task_id}"


#: celery-redbeat's keys (``redbeat_key_prefix``): ``<prefix><entry name>`` per schedule entry
#: (hash: definition, meta with last_run_at), ``<prefix>:schedule`` (sorted set of entries by next
#: run), ``<prefix>:statics`` (the entry names the config gave at beat's last start) and
#: ``<prefix>:lock`` (the active beat's lock)
REDBEAT_PREFIX = f"{PREFIX}:redbeat:"


def redbeat_lock() -> str:
    return f"{REDBEAT_PREFIX}:lock"


def redbeat_statics() -> str:
    return f"{REDBEAT_PREFIX}:statics"


def redbeat_entry(name: str) -> str:
    return f"{REDBEAT_PREFIX}{name}"


def schedule_tick(task_id: str) -> str:
    """The job one scheduled tick started (value = job id), so a redelivered tick starts no second job."""
    return f"{PREFIX}:schedule:tick:{task_id}"


def schedule_last(name: str) -> str:
    """JSON of the last job a schedule entry started: job, selector, started (for `tinabs schedule show`)."""
    return f"{PREFIX}:schedule:last:{name}"


def sweep_lock() -> str:
    """Held by the one worker sweeping for stuck runs (resume.py) at a time."""
    return f"{PREFIX}:sweep"
