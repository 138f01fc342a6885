"""The per-pool export/copy slot plus the run's single-writer lease, held together.

If the pool is at its limit, entering waits a little (a slot often frees
within a second) and then raises WaitForSlot, so the task comes back later
instead of holding a worker that other pools' work could use.  If another
worker holds this run's lease (a redelivered duplicate), WaitForSlot at once.  While held, a heartbeat renews both leases; a
worker that dies stops renewing and both expire.
"""
from __future__ import annotations

import contextlib
import time

from tinabs_tasks.runs.lease import Heartbeat, Lease, PoolSemaphore


class WaitForSlot(Exception):
    """The pool's export/copy limit is reached, or another worker holds this run's lease:
    come back shortly. Not a failure, so it does not use up retries."""


SLOT_POLL_S = 0.25


class Slots:
    def __init__(self, redis, pool: str, limit: int, lease_s: float, wait_s: float = 1.0):
        self.redis, self.pool, self.limit, self.lease_s, self.wait_s = redis, pool, limit, lease_s, wait_s

    @contextlib.contextmanager
    def hold(self, run: str, what: str):
        lease = Lease(self.redis, f"{what}:{run}", self.lease_s)
        if not lease.try_acquire():
            raise WaitForSlot(f"another worker is doing the {what} of run {run}")
        sem = PoolSemaphore(self.redis, self.pool, self.limit, self.lease_s)
        token = f"{what}:{run}"
        try:
            if not self._acquire(sem, token):
                raise WaitForSlot(f"pool {self.pool} is at its limit of {self.limit} concurrent transfers")
            try:
                with Heartbeat([lease.renew, lambda: sem.renew(token)], self.lease_s / 4) as beat:
                    yield beat
            finally:
                sem.release(token)
        finally:
            lease.release()

    def _acquire(self, sem, token: str) -> bool:
        deadline = time.monotonic() + self.wait_s
        while not sem.try_acquire(token):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            sem.wait_for_release(min(left, SLOT_POLL_S))
        return True
