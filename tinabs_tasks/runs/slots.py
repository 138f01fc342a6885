"""The per-pool export/copy slot plus the run's single-writer lease, held together.

If the pool is at its limit, entering waits a moment, then the transfer *parks*: its stage and
context go into the pool's parked set and WaitForSlot is raised, so the task ends and its worker
serves other work (a waiting transfer that holds a worker starves the stages that feed the next
transfers).  Whoever releases a slot sends the oldest parked transfer on at once, so a freed slot
is taken within moments; the parked task also comes back by itself after a while, in case the
one that should have sent it died.  If another worker holds this run's lease (a redelivered
duplicate), WaitForSlot at once.  While held, a heartbeat renews both leases; a worker that dies
stops renewing and both expire.
"""
from __future__ import annotations

import contextlib
import json
import time

from tinabs_tasks.runs import keys
from tinabs_tasks.runs.lease import Heartbeat, Lease, PoolSemaphore


class WaitForSlot(Exception):
    """The pool's export/copy limit is reached, or another worker holds this run's lease:
    come back shortly. Not a failure, so it does not use up retries.  ``parked``: the transfer is
    in the pool's parked set, and a released slot sends it on (it need not come back soon)."""

    def __init__(self, message: str, parked: bool = False):
        super().__init__(message)
        self.parked = parked


SLOT_POLL_S = 0.25
PARKED_TTL_S = 24 * 3600


class Slots:
    """``send(stage, ctx)`` sends a parked transfer's stage again (the engine's send_stage)."""

    def __init__(self, redis, pool: str, limit: int, lease_s: float, wait_s: float = 0.25, send=None):
        self.redis, self.pool, self.limit, self.lease_s, self.wait_s = redis, pool, limit, lease_s, wait_s
        self.send = send
        self.parked_key = keys.semaphore_parked(pool)

    @contextlib.contextmanager
    def hold(self, run: str, what: str, park: tuple[str, dict] | None = None):
        """``park``: (stage, ctx) to park when the pool is at its limit (without it: come back soon)."""
        lease = Lease(self.redis, f"{what}:{run}", self.lease_s)
        if not lease.try_acquire():
            raise WaitForSlot(f"another worker is doing the {what} of run {run}")
        sem = PoolSemaphore(self.redis, self.pool, self.limit, self.lease_s)
        token = f"{what}:{run}"
        try:
            if not self._acquire(sem, token):
                raise WaitForSlot(f"pool {self.pool} is at its limit of {self.limit} concurrent transfers",
                                  parked=self._park(sem, park))
            try:
                with Heartbeat([lease.renew, lambda: sem.renew(token)], self.lease_s / 4) as beat:
                    yield beat
            finally:
                sem.release(token)
                self.send_parked()
        finally:
            lease.release()

    def _park(self, sem, park) -> bool:
        """Park the transfer; False (come back soon) if there is nothing to park, or a slot freed
        meanwhile (its releaser may have looked at the parked set before this one was in it)."""
        if park is None or self.send is None:
            return False
        stage, ctx = park
        pipe = self.redis.pipeline()
        pipe.zadd(self.parked_key, {json.dumps({"stage": stage, "ctx": ctx}, sort_keys=True): time.time()})
        pipe.expire(self.parked_key, PARKED_TTL_S)
        pipe.execute()
        return sem.holders() >= self.limit

    def send_parked(self) -> None:
        """Send the oldest parked transfer on (a copy that is no longer needed is turned away by its
        run's record)."""
        if self.send is None:
            return
        oldest = self.redis.zpopmin(self.parked_key)
        if oldest:
            entry = json.loads(oldest[0][0])
            self.send(entry["stage"], entry["ctx"])

    def _acquire(self, sem, token: str) -> bool:
        deadline = time.monotonic() + self.wait_s
        while not sem.try_acquire(token):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            sem.wait_for_release(min(left, SLOT_POLL_S))
        return True
