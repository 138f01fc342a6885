"""The per-pool export/copy slot plus the run's single-writer lease, held together.

Entering waits for nothing: if the pool is at its limit, or another worker
holds this run's lease (a redelivered duplicate), WaitForSlot is raised and
the task comes back shortly.  While held, a heartbeat renews both leases; a
worker that dies stops renewing and both expire.
"""
from __future__ import annotations

import contextlib

from ..limits import Heartbeat, Lease, PoolSemaphore
from .errors import WaitForSlot


class Slots:
    def __init__(self, redis, pool: str, limit: int, lease_s: float):
        self.redis, self.pool, self.limit, self.lease_s = redis, pool, limit, lease_s

    @contextlib.contextmanager
    def hold(self, run: str, what: str):
        lease = Lease(self.redis, f"{what}:{run}", self.lease_s)
        if not lease.try_acquire():
            raise WaitForSlot(f"another worker is doing the {what} of run {run}")
        sem = PoolSemaphore(self.redis, self.pool, self.limit, self.lease_s)
        token = f"{what}:{run}"
        try:
            if not sem.try_acquire(token):
                raise WaitForSlot(f"pool {self.pool} is at its limit of {self.limit} concurrent transfers")
            try:
                with Heartbeat([lease.renew, lambda: sem.renew(token)], self.lease_s / 4) as beat:
                    yield beat
            finally:
                sem.release(token)
        finally:
            lease.release()
