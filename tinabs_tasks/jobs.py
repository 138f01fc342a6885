"""Job and run state in Redis: what `tinabs status` shows and the CLI waits on.

A *job* is one `tinabs backup` (or scheduled) invocation; a *run* is the
backup of one VM in it (one chain).  States are written by the tasks, read by
any host that reaches the broker, and expire after a week.
"""
from __future__ import annotations

import enum
import json
import time
import uuid

from . import keys


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


class JobStore:
    def __init__(self, redis):
        self.r = redis

    # -- jobs -----------------------------------------------------------------
    def create_job(self, selector: dict, mode: str, pools: list[str]) -> str:
        job_id = new_id()
        now = time.time()
        pipe = self.r.pipeline()
        pipe.hset(keys.job(job_id), mapping={
            "id": job_id, "selector": json.dumps(selector), "mode": mode, "pools": json.dumps(pools),
            "created": now, "pools_expected": len(pools), "pools_planned": 0})
        pipe.expire(keys.job(job_id), keys.STATE_TTL_S)
        pipe.zadd(keys.jobs_index(), {job_id: now})
        pipe.execute()
        return job_id

    def pool_planned(self, job_id: str, run_ids: list[str], notes: list[str], failed: bool = False) -> None:
        pipe = self.r.pipeline()
        if failed:
            pipe.hincrby(keys.job(job_id), "plan_errors", 1)
        if run_ids:
            pipe.sadd(keys.job_runs(job_id), *run_ids)
            pipe.expire(keys.job_runs(job_id), keys.STATE_TTL_S)
        if notes:
            pipe.rpush(keys.job_notes(job_id), *notes)
            pipe.expire(keys.job_notes(job_id), keys.STATE_TTL_S)
        pipe.hincrby(keys.job(job_id), "pools_planned", 1)
        pipe.execute()

    def job(self, job_id: str) -> dict | None:
        data = self.r.hgetall(keys.job(job_id))
        if not data:
            return None
        runs = [self.run(r) for r in sorted(self.r.smembers(keys.job_runs(job_id)))]
        runs = [r for r in runs if r]
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

    # -- runs -----------------------------------------------------------------
    def create_run(self, run_id: str, fields: dict) -> bool:
        """Register a run once; False if it already exists (a re-planned pool)."""
        if not self.r.hsetnx(keys.run(run_id), "job", fields["job"]):
            return False
        pipe = self.r.pipeline()
        pipe.hset(keys.run(run_id), mapping={**fields, "id": run_id, "state": RunState.QUEUED.value,
                                             "stage": "queued", "queued": time.time()})
        pipe.expire(keys.run(run_id), keys.STATE_TTL_S)
        pipe.execute()
        return True

    def claim_send(self, run_id: str) -> bool:
        """True exactly once per run: whoever gets it sends the run's chain."""
        return bool(self.r.hsetnx(keys.run(run_id), "sent", 1))

    def unclaim_send(self, run_id: str) -> None:
        self.r.hdel(keys.run(run_id), "sent")

    def update_run(self, run_id: str, **fields) -> None:
        clean = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in fields.items()
                 if v is not None}
        if clean:
            self.r.hset(keys.run(run_id), mapping=clean)

    def finish_run(self, run_id: str, state: RunState, **fields) -> None:
        """Terminal states are final: a late retry or duplicate cannot overwrite them."""
        current = self.r.hget(keys.run(run_id), "state")
        if current and RunState(current).terminal:
            return
        self.update_run(run_id, state=state.value, finished=time.time(), **fields)

    def run(self, run_id: str) -> dict | None:
        data = self.r.hgetall(keys.run(run_id))
        return data or None

    def run_state(self, run_id: str) -> RunState | None:
        value = self.r.hget(keys.run(run_id), "state")
        return RunState(value) if value else None
