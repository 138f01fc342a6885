"""Job and run state in Redis: what `tinabs status` shows and the CLI waits on.

A *job* is one `tinabs backup` (or scheduled) invocation; a *run* is the
backup of one VM in it (one chain).  States are written by the tasks, read by
any host that reaches the broker, and expire: while a job runs its keys live
``keys.ACTIVE_HOLD_S`` (so a short TTL never drops a queued run from under a
running job), and once its last run has ended they all get the state TTL
(``[limits] state_ttl_s``, a week by default).  Every write leaves its key
with a TTL, even a late write that re-creates an expired key.
"""
from __future__ import annotations

import enum
import json
import time
import uuid

from tinabs_tasks.runs import keys


class RunState(str, enum.Enum):
    QUEUED = "queued"        #: chain sent, no stage started yet
    RUNNING = "running"      #: a stage is working
    RETRYING = "retrying"    #: a stage failed transiently and will run again
    FAILING = "failing"      #: gave up; compensation is removing what the run made
    SUCCEEDED = "succeeded"  #: backup complete and verified on disk
    FAILED = "failed"        #: gave up; compensation removed what the run made

    @property
    def terminal(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED)


def new_id() -> str:
    return uuid.uuid4().hex[:12]


#: give each key a TTL if it has none; never shorten or extend one it has
_KEEP_TTL = """
for _, key in ipairs(KEYS) do
  if redis.call('TTL', key) == -1 then redis.call('EXPIRE', key, ARGV[1]) end
end
"""

#: true for the first caller only, and never re-creates a job whose state has expired
_CLAIM_END = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HSETNX', KEYS[1], 'report_claimed', ARGV[1])
"""

#: never re-creates a job whose state has expired (it would have no TTL)
_ABORT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'aborted', ARGV[1]) == 1 then redis.call('HSET', KEYS[1], 'aborted_by', ARGV[2]) end
return 1
"""

#: KEYS: run, active runs.  ARGV: hold ttl, now, run id, job, then field/value pairs.  The run is
#: created once, and the sending of its first stage claimed once: {claimed 0/1, the run's stamp}
_CREATE_AND_CLAIM = """
if redis.call('HSETNX', KEYS[1], 'job', ARGV[4]) == 1 then
  for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  redis.call('HSET', KEYS[1], 'id', ARGV[3], 'state', 'queued', 'stage', 'queued', 'queued', ARGV[2], 'touched', ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[1])
end
if redis.call('TTL', KEYS[1]) == -1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {redis.call('HSETNX', KEYS[1], 'sent', 1), redis.call('HGET', KEYS[1], 'stamp') or ''}
"""

#: KEYS: run, active runs, job's ended set, job, job's runs.  ARGV: state, now, hold ttl, state ttl,
#: run id, then field/value pairs.  Terminal states are final (-1: it had ended already); else 1
#: when this was the job's last run to end, 0 otherwise.
_FINISH_RUN = """
local current = redis.call('HGET', KEYS[1], 'state')
if current == 'succeeded' or current == 'failed' then return -1 end
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finished', ARGV[2], 'touched', ARGV[2], 'lease', '', 'lease_until', 0)
redis.call('HDEL', KEYS[1], 'ctx')
if redis.call('TTL', KEYS[1]) == -1 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
redis.call('ZREM', KEYS[2], ARGV[5])
redis.call('SADD', KEYS[3], ARGV[5])
if redis.call('TTL', KEYS[3]) == -1 then redis.call('EXPIRE', KEYS[3], ARGV[3]) end
local planned = redis.call('HMGET', KEYS[4], 'pools_planned', 'pools_expected')
if not planned[1] or tonumber(planned[1]) < tonumber(planned[2]) then return 0 end
if redis.call('SCARD', KEYS[5]) > redis.call('SCARD', KEYS[3]) then return 0 end
return 1
"""


def _flat(fields: dict) -> list:
    out = []
    for k, v in fields.items():
        if v is not None:
            out += [k, json.dumps(v) if isinstance(v, (dict, list)) else v]
    return out


class JobStore:
    def __init__(self, redis, ttl_s: int = keys.STATE_TTL_S, on_end=None):
        self.r = redis
        #: called with the job id once per job, by whoever claims its end first (the workers
        #: send `tinabs.report` from it; see tasks_report.py)
        self.on_end = on_end
        self._claim_end = redis.register_script(_CLAIM_END)
        self.ttl_s = int(ttl_s)
        self.hold_s = max(self.ttl_s, keys.ACTIVE_HOLD_S)
        self._keep_ttl = redis.register_script(_KEEP_TTL)
        self._create_and_claim = redis.register_script(_CREATE_AND_CLAIM)
        self._finish_run = redis.register_script(_FINISH_RUN)

    # -- jobs -----------------------------------------------------------------
    def create_job(self, selector: dict, mode: str, pools: list[str]) -> str:
        job_id = new_id()
        now = time.time()
        pipe = self.r.pipeline()
        pipe.hset(keys.job(job_id), mapping={
            "id": job_id, "selector": json.dumps(selector), "mode": mode, "pools": json.dumps(pools),
            "created": now, "pools_expected": len(pools), "pools_planned": 0})
        pipe.expire(keys.job(job_id), self.hold_s)
        pipe.zadd(keys.jobs_index(), {job_id: now})
        # a backstop: no job's state outlives this (each job's end also drops entries of gone jobs)
        pipe.zremrangebyscore(keys.jobs_index(), "-inf", now - self.hold_s - self.ttl_s)
        pipe.expire(keys.jobs_index(), self.hold_s)
        pipe.execute()
        return job_id

    def pool_planned(self, job_id: str, run_ids: list[str], notes: list[str], failed: bool = False) -> None:
        pipe = self.r.pipeline()
        if failed:
            pipe.hincrby(keys.job(job_id), "plan_errors", 1)
        if run_ids:
            pipe.sadd(keys.job_runs(job_id), *run_ids)
        if notes:
            pipe.rpush(keys.job_notes(job_id), *notes)
        pipe.hincrby(keys.job(job_id), "pools_planned", 1)
        self._keep_ttl(keys=[keys.job(job_id), keys.job_runs(job_id), keys.job_notes(job_id)],
                       args=[self.hold_s], client=pipe)
        pipe.execute()
        self._expire_if_ended(job_id)  # every run may have ended before the last pool was planned

    def _expire_if_ended(self, job_id: str) -> None:
        """Once every pool is planned and every run has ended, the job's state gets the state TTL."""
        pipe = self.r.pipeline()  # one transaction: a consistent view of the three counts
        pipe.hmget(keys.job(job_id), "pools_planned", "pools_expected")
        pipe.scard(keys.job_runs(job_id))
        pipe.scard(keys.job_ended(job_id))
        (planned, expected), total, ended = pipe.execute()
        if planned is None or int(planned) < int(expected) or ended < total:
            return
        run_ids = self.r.smembers(keys.job_runs(job_id))
        pipe = self.r.pipeline(transaction=False)
        for key in (keys.job(job_id), keys.job_runs(job_id), keys.job_notes(job_id), keys.job_ended(job_id),
                    *(keys.run(r) for r in run_ids)):
            pipe.expire(key, self.ttl_s)
        pipe.execute()
        self.r.transaction(self._tidy_index, keys.jobs_index())
        # ended: however many callers see it (two runs ending at once, a redelivered task), one claims it
        if self.on_end is not None and self._claim_end(keys=[keys.job(job_id)], args=[int(time.time())]):
            self.on_end(job_id)

    def _tidy_index(self, watched) -> None:
        """The index lists only jobs whose state still exists, and expires with the last of them.
        Runs under WATCH: a job created meanwhile makes Redis refuse it and redis-py run it again."""
        ids = watched.zrange(keys.jobs_index(), 0, -1)
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.ttl(keys.job(job_id))
        ttls = pipe.execute()
        gone = [j for j, t in zip(ids, ttls) if t == -2]
        live = [self.hold_s if t == -1 else t for t in ttls if t != -2]
        watched.multi()
        if gone:
            watched.zrem(keys.jobs_index(), *gone)
        if live:
            watched.expire(keys.jobs_index(), max(live))

    def job(self, job_id: str) -> dict | None:
        data = self.r.hgetall(keys.job(job_id))
        if not data:
            return None
        pipe = self.r.pipeline(transaction=False)  # one round trip: `--wait` reads every run 5 times a second
        for run_id in self.r.smembers(keys.job_runs(job_id)):
            pipe.hgetall(keys.run(run_id))
        runs = [r for r in pipe.execute() if r]
        data["runs"] = sorted(runs, key=lambda r: (r.get("pool", ""), r.get("vm_name", ""), r.get("vm_uuid", "")))
        data["notes"] = self.r.lrange(keys.job_notes(job_id), 0, -1)
        data["selector"] = json.loads(data["selector"])
        data["pools"] = json.loads(data["pools"])
        data["planned"] = int(data["pools_planned"]) >= int(data["pools_expected"])
        data["done"] = data["planned"] and all(RunState(r["state"]).terminal for r in runs)
        data["plan_errors"] = int(data.get("plan_errors", 0))
        data["succeeded"] = (data["done"] and bool(runs) and not data["plan_errors"]
                             and all(r["state"] == RunState.SUCCEEDED for r in runs))
        return data

    def recent_jobs(self, limit: int = 10) -> list[str]:
        return list(self.r.zrevrange(keys.jobs_index(), 0, limit - 1))

    def abort(self, job_id: str, by: str) -> bool:
        """Mark the job aborted (abort.py says what that does); False if there is no such job.
        Only the first request counts; the job's state keeps its TTL."""
        return bool(self.r.eval(_ABORT, 1, keys.job(job_id), time.time(), by))

    def aborted(self, job_id: str) -> bool:
        return bool(self.r.hexists(keys.job(job_id), "aborted"))

    def aborted_by(self, job_id: str) -> str:
        return self.r.hget(keys.job(job_id), "aborted_by") or ""

    # -- runs -----------------------------------------------------------------
    def create_run(self, run_id: str, fields: dict) -> bool:
        """Register a run once; False if it already exists (a re-planned pool)."""
        pipe = self.r.pipeline()
        pipe.hsetnx(keys.run(run_id), "job", fields["job"])
        self._keep_ttl(keys=[keys.run(run_id)], args=[self.hold_s], client=pipe)
        created, _ = pipe.execute()
        if not created:
            return False
        self.r.hset(keys.run(run_id), mapping={**fields, "id": run_id, "state": RunState.QUEUED.value,
                                               "stage": "queued", "queued": time.time()})
        return True

    def create_and_claim_run(self, run_id: str, fields: dict) -> tuple[bool, str]:
        """Register a run once (a re-planned pool finds it) and claim the sending of its first stage,
        in one step: (True exactly once per run, the stamp the run was created with)."""
        claimed, stamp = self._create_and_claim(
            keys=[keys.run(run_id), keys.active_runs()],
            args=[self.hold_s, time.time(), run_id, fields["job"], *_flat({k: v for k, v in fields.items() if k != "job"})])
        return bool(claimed), stamp or fields.get("stamp", "")

    def unclaim_send(self, run_id: str) -> None:
        self.r.hdel(keys.run(run_id), "sent")

    def update_run(self, run_id: str, **fields) -> None:
        clean = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in fields.items()
                 if v is not None}
        if clean:
            clean["touched"] = time.time()  # the stuck-run sweep (resume.py) looks at this
            pipe = self.r.pipeline(transaction=False)
            pipe.hset(keys.run(run_id), mapping=clean)
            pipe.zadd(keys.active_runs(), {run_id: clean["touched"]}, xx=True)
            # a late copy of a stage may write after the run's state expired: that must expire too
            self._keep_ttl(keys=[keys.run(run_id)], args=[self.ttl_s], client=pipe)
            pipe.execute()

    def finish_run(self, run_id: str, state: RunState, job_id: str | None = None, **fields) -> None:
        """The run ends, in one step: its state (final: a late retry or duplicate cannot overwrite
        it), its lease let go, out of the active runs, into its job's ended runs.  The job's own
        end (its TTLs, its report) follows when this was its last run."""
        job_id = job_id or self.r.hget(keys.run(run_id), "job")
        if not job_id:
            return
        last = self._finish_run(keys=[keys.run(run_id), keys.active_runs(), keys.job_ended(job_id), keys.job(job_id),
                                      keys.job_runs(job_id)],
                                args=[state.value, time.time(), self.hold_s, self.ttl_s, run_id, *_flat(fields)])
        if last == 1:
            self._expire_if_ended(job_id)

    def run(self, run_id: str) -> dict | None:
        data = self.r.hgetall(keys.run(run_id))
        return data or None

    def run_state(self, run_id: str) -> RunState | None:
        value = self.r.hget(keys.run(run_id), "state")
        return RunState(value) if value else None
