"""A VM is backed up by one run at a time, whichever job or schedule started it.

A nightly job that is still going when the next schedule fires must not start
the same VM again.  ``plan`` takes the VM's lock for its run before sending the
chain; every stage renews it; the run's end (success or compensation)
releases it.  If a run is lost for good (its messages wiped with Redis), the
lock still expires: it outlives the longest possible chain, no more.
"""
from __future__ import annotations

from tinabs_tasks.runs.lease import Lease

#: how a job's notes say a VM was left to the run that has it (see ``skipped_note``)
SKIPPED = "skipped: still being backed up"


def skipped_note(vm_name: str, job: str, run: str, state: str) -> str:
    return f"`{vm_name}` {SKIPPED} by job {job} (run {run}, {state})"

_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


class VmLocks:
    """One ``limits.Lease`` per VM (``vm:<pool>:<uuid>``), its token the run that holds it."""

    def __init__(self, redis, ttl_s: int):
        self.r, self.ttl_s = redis, int(ttl_s)
        self._take_over = redis.register_script(_TAKE_OVER)

    def _lease(self, pool: str, vm_uuid: str, run: str) -> Lease:
        return Lease(self.r, f"vm:{pool}:{vm_uuid}", self.ttl_s, token=run)

    def acquire(self, pool: str, vm_uuid: str, run: str) -> str | None:
        """None when ``run`` holds the lock now (also when it held it already); else the holder."""
        lease = self._lease(pool, vm_uuid, run)
        if lease.try_acquire():
            return None
        holder = self.r.get(lease.key)
        if holder == run or holder is None and lease.try_acquire():
            return None
        return holder

    def take_over(self, pool: str, vm_uuid: str, old: str, run: str) -> bool:
        """The lock of a run that has ended (or that Redis no longer knows) passes to ``run``."""
        key = self._lease(pool, vm_uuid, run).key
        return bool(self._take_over(keys=[key], args=[old, run, self.ttl_s]))

    def renew(self, pool: str, vm_uuid: str, run: str) -> bool:
        return self._lease(pool, vm_uuid, run).renew()

    def release(self, pool: str, vm_uuid: str, run: str) -> None:
        self._lease(pool, vm_uuid, run).release()


def chain_ttl_s(limits) -> int:
    """Longer than any chain can take: each stage at its time limit, the transfers at theirs."""
    return int(limits.export_time_limit_s * 2 + limits.stage_time_limit_s * 6)
