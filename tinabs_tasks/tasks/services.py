"""What every task of a worker uses, built from the worker's config: Redis, the job store, the
pools' XAPI ports and transfer slots, and the end of a run."""
from __future__ import annotations

import functools

from tinabs_tasks.app import app
from tinabs_tasks.backup.table import StageEnv, task_name
from tinabs_tasks.runs import keys, metrics
from tinabs_tasks.runs.redis_client import client
from tinabs_tasks.runs.slots import Slots
from tinabs_tasks.runs.store import JobStore
from tinabs_tasks.runs.vm_lock import VmLocks, chain_ttl_s
from tinabs_tasks.xapi import connect
from tinabs_tasks.xapi.port import Xapi

CFG = app.tinabs_config
#: how long a task rides out a Redis restart (its own state writes block and retry meanwhile)
REDIS_OUTAGE_S = 120.0


def redis():
    return client(CFG.broker_url, outage_s=REDIS_OUTAGE_S)


@functools.cache
def jobs() -> JobStore:
    """One job store per process (it holds nothing but the cached client and its scripts)."""
    from tinabs_tasks.tasks.report import request_report  # a job's end sends its report
    return JobStore(redis(), CFG.limits.state_ttl_s, on_end=request_report)


def xapi(pool: str) -> Xapi:
    return Xapi(connect.session_for(CFG.pool(pool)))


def slots(pool: str) -> Slots:
    """The pool's transfer slots; a released slot sends the oldest parked transfer on."""
    return Slots(redis(), pool, CFG.pool(pool).max_concurrent_exports, CFG.limits.lease_s, send=send_stage)


def send_stage(stage: str, ctx: dict) -> None:
    """A run's stage, sent by name (the router picks its queue and priority); nobody reads its result."""
    app.send_task(task_name(stage), args=(ctx,), ignore_result=True)


def send_compensate(ctx: dict, reason: str) -> None:
    app.send_task("tinabs.compensate", args=(ctx, reason), ignore_result=True)


def parked_backstop_s() -> float:
    """When a parked transfer comes back by itself (should whoever would have sent it on die)."""
    return max(5.0, min(60.0, float(CFG.limits.lease_s)))


def stage_env(pool: str, report, again: bool = False) -> StageEnv:
    return StageEnv(xapi=xapi(pool), report=report, slots=slots(pool), destination=CFG.destination,
                    reserve_free_bytes=CFG.limits.reserve_free_bytes, again=again,
                    repository=CFG.repository, full_every=CFG.retention.full_every)


def vm_locks() -> VmLocks:
    return VmLocks(redis(), vm_lock_ttl_s())


def vm_lock_ttl_s() -> int:
    return chain_ttl_s(CFG.limits)


def vm_lock_key(ctx: dict) -> str:
    return keys.lease(f"vm:{ctx['pool']}:{ctx['vm']['uuid']}")


def run_ended(ctx: dict) -> None:
    """Whatever the outcome: the VM is free for the next run, and the run is counted (once)."""
    vm_locks().release(ctx["pool"], ctx["vm"]["uuid"], ctx["run"])
    metrics.count_run_end(redis(), jobs().run(ctx["run"]))
