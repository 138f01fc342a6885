"""One run's record in Redis, and the few atomic steps the engine takes on it.

A run's state lives in one hash (``keys.run``): what `tinabs status` shows (state, stage, bytes,
error, paths), the last finished stage and the context it produced (``done``, ``ctx``), the lease
of whatever works on the run now (``lease``, ``lease_until``: one stage or its compensation at a
time) and when anything last touched it.  Every active run is also in one sorted set
(``keys.active_runs``) scored by that time, so the stuck-run sweep reads only the runs that have
been quiet for long (one ZRANGEBYSCORE), never every job.

Each step is one Lua script, one round trip, atomic:

* ``begin``: before a stage works (and whether an earlier delivery started it already).  A run that ended (or is being compensated) turns the copy
  away; a stage the run has moved past is dropped; a stage that finished already hands its
  recorded context on (its next stage may never have been sent); a lease held by another copy
  makes this one wait; an aborted job stops a stage that obeys aborts.  Otherwise the lease is
  taken, the VM's lock renewed, and the run marked running at this stage, in the same step.
* ``finish``: after a stage worked: its index and context recorded, the lease released.
* ``renew``: the heartbeat of a working stage (False once the lease is lost).
* ``release``: the lease let go without recording anything (a failure, a wait for a slot).

Redelivery makes every step run more than once: each is written so that doing it twice is doing
it once.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from tinabs_tasks.runs import keys

#: KEYS: run, job, vm lock, active index.  ARGV: index, token, lease ms, now ms, ttl s, obeys abort,
#: stage, worker, task id, vm lock ttl s, run id.
_BEGIN = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'gone'} end
if state == 'succeeded' or state == 'failed' or state == 'failing' then return {'ended'} end
local index = tonumber(ARGV[1])
local done = tonumber(redis.call('HGET', KEYS[1], 'done') or '-1')
if done > index then return {'late'} end
if done == index then return {'handoff', redis.call('HGET', KEYS[1], 'ctx') or ''} end
local now = tonumber(ARGV[4])
local holder = redis.call('HGET', KEYS[1], 'lease')
if holder and holder ~= '' and holder ~= ARGV[2] and tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0') > now then
  return {'busy'}
end
if ARGV[6] == '1' and redis.call('HEXISTS', KEYS[2], 'aborted') == 1 then return {'aborted'} end
local again = redis.call('HGET', KEYS[1], 'started') == ARGV[1] and 1 or 0
redis.call('HSET', KEYS[1], 'lease', ARGV[2], 'lease_until', now + tonumber(ARGV[3]), 'state', 'running', 'started', ARGV[1],
           'stage', ARGV[7], 'worker', ARGV[8], 'task_id', ARGV[9], 'bytes', 0, 'rate', 0, 'progress', 0,
           'touched', now / 1000)
if redis.call('TTL', KEYS[1]) == -1 then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
if redis.call('GET', KEYS[3]) == ARGV[11] then redis.call('EXPIRE', KEYS[3], ARGV[10]) end
redis.call('ZADD', KEYS[4], now / 1000, ARGV[11])
return {'work', again}
"""

#: KEYS: run, active index.  ARGV: index, token, ctx json, now ms, ttl s, run id
_FINISH = """
if not redis.call('HGET', KEYS[1], 'state') then return 0 end
local done = tonumber(redis.call('HGET', KEYS[1], 'done') or '-1')
if tonumber(ARGV[1]) > done then redis.call('HSET', KEYS[1], 'done', ARGV[1], 'ctx', ARGV[3]) end
if redis.call('HGET', KEYS[1], 'lease') == ARGV[2] then redis.call('HSET', KEYS[1], 'lease', '', 'lease_until', 0) end
redis.call('HSET', KEYS[1], 'touched', tonumber(ARGV[4]) / 1000)
if redis.call('TTL', KEYS[1]) == -1 then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
redis.call('ZADD', KEYS[2], 'XX', tonumber(ARGV[4]) / 1000, ARGV[6])
return 1
"""

#: KEYS: run.  ARGV: token, lease ms, now ms
_RENEW = """
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'lease_until', tonumber(ARGV[3]) + tonumber(ARGV[2]))
return 1
"""

#: KEYS: run.  ARGV: token
_RELEASE = """
if redis.call('HGET', KEYS[1], 'lease') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'lease', '', 'lease_until', 0)
  return 1
end
return 0
"""

#: KEYS: run.  ARGV: token, lease ms, now ms.  Compensation's lease: any copy but a stage at work.
_TAKE = """
if not redis.call('HGET', KEYS[1], 'state') then return 0 end
local holder = redis.call('HGET', KEYS[1], 'lease')
local now = tonumber(ARGV[3])
if holder and holder ~= '' and holder ~= ARGV[1] and tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0') > now then
  return 0
end
redis.call('HSET', KEYS[1], 'lease', ARGV[1], 'lease_until', now + tonumber(ARGV[2]))
return 1
"""


@dataclass(frozen=True)
class Begun:
    """What ``begin`` found: ``work`` (the lease is ours), ``handoff`` (done already: ``ctx`` is
    what it produced), ``busy`` (another copy works), ``aborted``, ``late``, ``ended`` or ``gone``.
    ``again``: with ``work``, an earlier delivery started this stage (it may have left work behind)."""
    outcome: str
    ctx: dict | None = None
    again: bool = False


def _ms() -> int:
    return int(time.time() * 1000)


class RunRecord:
    """The atomic steps on one run's record; ``token`` identifies this delivery's lease."""

    def __init__(self, redis, run: str, lease_s: float, ttl_s: int = keys.ACTIVE_HOLD_S):
        self.r, self.run, self.ttl_s = redis, run, int(ttl_s)
        self.lease_ms = int(lease_s * 1000)
        self.key = keys.run(run)
        self.token = uuid.uuid4().hex
        self._begin = redis.register_script(_BEGIN)
        self._finish = redis.register_script(_FINISH)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._take = redis.register_script(_TAKE)

    def begin(self, index: int, stage: str, *, job: str, vm_lock_key: str, vm_lock_ttl_s: int,
              obeys_abort: bool, worker: str, task_id: str | None) -> Begun:
        reply = self._begin(keys=[self.key, keys.job(job), vm_lock_key, keys.active_runs()],
                            args=[index, self.token, self.lease_ms, _ms(), self.ttl_s, int(obeys_abort), stage,
                                  worker, task_id or "", vm_lock_ttl_s, self.run])
        outcome = reply[0]
        ctx = json.loads(reply[1]) if outcome == "handoff" and len(reply) > 1 and reply[1] else None
        return Begun(outcome, ctx, again=outcome == "work" and len(reply) > 1 and reply[1] == 1)

    def finish(self, index: int, ctx: dict) -> None:
        self._finish(keys=[self.key, keys.active_runs()],
                     args=[index, self.token, json.dumps(ctx), _ms(), self.ttl_s, self.run])

    def renew(self) -> bool:
        return bool(self._renew(keys=[self.key], args=[self.token, self.lease_ms, _ms()]))

    def release(self) -> None:
        self._release(keys=[self.key], args=[self.token])

    def take(self) -> bool:
        """The lease for compensation: False while another delivery holds it."""
        return bool(self._take(keys=[self.key], args=[self.token, self.lease_ms, _ms()]))

    def progress(self) -> tuple[int, dict | None]:
        """(index of the last finished stage or -1, the context it produced)."""
        done, ctx = self.r.hmget(self.key, "done", "ctx")
        return progress_of({"done": done, "ctx": ctx})


def progress_of(rec: dict) -> tuple[int, dict | None]:
    """(index of the last finished stage or -1, the context it produced) of a run's record."""
    done, ctx = rec.get("done"), rec.get("ctx")
    return (int(done) if done not in (None, "") else -1), (json.loads(ctx) if ctx else None)


def lease_held(rec: dict, now: float | None = None) -> bool:
    """Whether a run's record (its hash) shows a lease that has not expired."""
    now = time.time() if now is None else now
    return bool(rec.get("lease")) and float(rec.get("lease_until") or 0) / 1000 > now
