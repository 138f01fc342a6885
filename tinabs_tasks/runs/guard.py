"""One execution of a run's stages at a time, and a finished stage never again.

Redis redelivers a task whose worker died, and also one that outlives the
broker's visibility timeout while its worker is alive; a chain link can be
sent twice when a worker dies between sending it and acknowledging its own
message.  Every stage task (and compensation) therefore passes this guard:

* it works only while holding the run's lease, renewed by a heartbeat, so two
  copies never work on one run at once: a copy that finds the lease taken
  waits (retries later) and asks again;
* a finished stage is recorded with the context it produced.  A copy of a
  stage that finished hands that context on, because the next stage may
  never have been sent; a copy of a stage the chain has already moved past
  drops out.  Each next stage passes the same guard, so a second chain link
  is harmless.
"""
from __future__ import annotations

import json

from tinabs_tasks.runs import keys
from tinabs_tasks.runs.lease import Lease

#: how long a copy waits before asking again: doubles per wait, so a copy of a
#: six-hour export polls rarely, and a busy compensation starts within a second
WAIT_FIRST_S = 0.5
WAIT_MAX_S = 30.0


class Busy(Exception):
    """Another copy holds the run's lease."""


class StageGuard:
    def __init__(self, redis, run: str, lease_s: float, ttl_s: int = keys.ACTIVE_HOLD_S):
        self.r, self.ttl_s = redis, ttl_s
        self.key = keys.run_progress(run)
        self.lease = Lease(redis, keys.run_lease_name(run), lease_s)

    def progress(self) -> tuple[int, dict | None]:
        """(index of the last finished stage or -1, the context it produced)."""
        done, ctx = self.r.hmget(self.key, "done", "ctx")
        return (int(done) if done is not None else -1), (json.loads(ctx) if ctx else None)

    def finished(self, index: int, ctx: dict) -> None:
        pipe = self.r.pipeline()
        pipe.hset(self.key, mapping={"done": index, "ctx": json.dumps(ctx)})
        pipe.expire(self.key, self.ttl_s)
        pipe.execute()

    def forget(self) -> None:
        """The run has ended: its run state (kept longer) turns every later copy away."""
        self.r.delete(self.key)

    def acquire(self) -> None:
        if not self.lease.try_acquire():
            raise Busy()

    def release(self) -> None:
        self.lease.release()


def wait_countdown(waits: int) -> float:
    return min(WAIT_MAX_S, WAIT_FIRST_S * (2 ** waits))
