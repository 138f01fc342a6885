"""Per-pool limits on concurrent exports/copies: a Redis semaphore with leases.

A holder must renew its lease; a worker that dies stops renewing and its slot
frees itself when the lease expires, so a crash never wedges a pool (and the
set itself expires with its last lease, so nothing of it outlives the work).
Single-holder leases (``Lease``) guard one export so a redelivered copy of
the same task never writes the same file concurrently.
"""
from __future__ import annotations

import threading
import time
import uuid

from tinabs_tasks.runs import keys

#: a slot, as (token, expiry[, now, limit]): with ``now`` and ``limit`` it is an acquire (drop the
#: expired leases, then keep a slot already held or take a free one), without them a renewal (a
#: slot already held only); either moves the slot's expiry, and the set's
_SLOT = """
if ARGV[3] then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or (ARGV[4] and redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4])) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
  return 1
end
return 0
"""
_LEASE_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_LEASE_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class PoolSemaphore:
    def __init__(self, redis, pool: str, limit: int, lease_s: float):
        self.r, self.key, self.limit, self.lease_s = redis, keys.semaphore(pool), limit, lease_s
        self.wake_key = keys.semaphore_wake(pool)
        self._slot = redis.register_script(_SLOT)

    def try_acquire(self, token: str) -> bool:
        now = time.time()
        return bool(self._slot(keys=[self.key], args=[token, now + self.lease_s, now, self.limit]))

    def renew(self, token: str) -> bool:
        return bool(self._slot(keys=[self.key], args=[token, time.time() + self.lease_s]))

    def release(self, token: str) -> None:
        """Free the slot and wake one waiter at once (a waiter polls too, so a lost wake-up
        only costs it one poll interval)."""
        pipe = self.r.pipeline()
        pipe.zrem(self.key, token)
        pipe.rpush(self.wake_key, 1)
        pipe.ltrim(self.wake_key, -self.limit, -1)
        pipe.expire(self.wake_key, 60)
        pipe.execute()

    def wait_for_release(self, timeout_s: float) -> None:
        self.r.blpop([self.wake_key], timeout=max(0.01, timeout_s))

    def holders(self) -> int:
        self.r.zremrangebyscore(self.key, "-inf", time.time())
        return self.r.zcard(self.key)


class Lease:
    """A named lease held by one token at a time, expiring unless renewed."""

    def __init__(self, redis, name: str, lease_s: float, token: str | None = None):
        self.r, self.key, self.lease_s = redis, keys.lease(name), lease_s
        self.token = token or uuid.uuid4().hex
        self._renew = redis.register_script(_LEASE_RENEW)
        self._release = redis.register_script(_LEASE_RELEASE)

    def try_acquire(self) -> bool:
        return bool(self.r.set(self.key, self.token, nx=True, px=int(self.lease_s * 1000)))

    def renew(self) -> bool:
        return bool(self._renew(keys=[self.key], args=[self.token, int(self.lease_s * 1000)]))

    def release(self) -> None:
        self._release(keys=[self.key], args=[self.token])


class Heartbeat:
    """Calls ``renewals`` every ``interval_s`` in the background while a stage runs (its leases'
    renewals; abort.AbortWatch's look); stops on exit.  One returning False sets ``lost``."""

    def __init__(self, renewals, interval_s: float):
        self._renewals, self._interval = renewals, interval_s
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="tinabs-heartbeat", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self):
        while not self._stop.wait(self._interval):
            try:
                if not all(renew() for renew in self._renewals):
                    self.lost.set()
            except Exception:  # Redis blip: try again next beat; the lease outlives a few
                continue
