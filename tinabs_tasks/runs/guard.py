"""A copy that finds its run busy comes back later: how long it waits, and the restore run's lease.

Redis redelivers a task whose worker died, and also one that outlives the broker's visibility
timeout while its worker is alive.  A backup run's copies meet in its record (runs/record.py);
a restore run has no record, so one delivery at a time holds its lease (``restore_lease``), and a
copy that finds it taken waits, doubling its wait each time.
"""
from __future__ import annotations

from tinabs_tasks.runs import keys
from tinabs_tasks.runs.lease import Lease

#: how long a copy waits before asking again: doubles per wait, so a copy of a
#: six-hour export polls rarely, and a busy compensation starts within a second
WAIT_FIRST_S = 0.5
WAIT_MAX_S = 30.0


def wait_countdown(waits: int) -> float:
    return min(WAIT_MAX_S, WAIT_FIRST_S * (2 ** waits))


def restore_lease(redis, run: str, lease_s: float) -> Lease:
    """The lease one delivery of restore run ``run`` holds while it works."""
    return Lease(redis, keys.run_lease_name(run), lease_s)
