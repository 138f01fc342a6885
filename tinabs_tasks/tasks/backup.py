"""Thin Celery tasks: decode the context, call a stage, return the context.

Retry policy, routing and time limits are declared here once.  A stage that
fails transiently is retried with exponential backoff and jitter (its count
lives in the context, so waiting for a pool slot never uses it up); a stage
that gives up sends `tinabs.compensate` to its pool's queue, which removes
everything of the run by marker and then marks the run failed.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
import socket
import time

from celery import chain
from celery.signals import worker_ready
from celery.exceptions import Ignore

from tinabs_tasks.runs import abort
from tinabs_tasks.storage import destination
from tinabs_tasks.runs import metrics
from tinabs_tasks.runs import sweep as resume
from tinabs_tasks.app import app
from tinabs_tasks.runs.store import JobStore, RunState
from tinabs_tasks.runs.progress import Reporter
from tinabs_tasks.runs.redis_client import client
from tinabs_tasks.backup import cleanup
from tinabs_tasks.backup import copy
from tinabs_tasks.backup import disks
from tinabs_tasks.backup import export
from tinabs_tasks.backup import metadata
from tinabs_tasks.backup import selection as plan_stage
from tinabs_tasks.backup import skeleton
from tinabs_tasks.backup import snapshot
from tinabs_tasks.backup import vifs
from tinabs_tasks.backup.errors import StageFailed, WaitForSlot
from tinabs_tasks.runs.guard import Busy, StageGuard, wait_countdown
from tinabs_tasks.runs.vm_lock import VmLocks, chain_ttl_s, skipped_note
from tinabs_tasks.runs.slots import Slots
from tinabs_tasks.tasks.report import request_report
from tinabs_tasks.runs.lease import Heartbeat
from tinabs_tasks.xapi import connect
from tinabs_tasks.xapi.errors import RELOGIN_CODES, UNREACHABLE, classify
from tinabs_tasks.xapi.port import Xapi

CFG = app.tinabs_config
STAGES = {
    "export": ("snapshot", "skeleton", "disks", "vifs", "export", "cleanup"),
    "sr-copy": ("snapshot", "skeleton", "disks", "vifs", "copy", "metadata", "cleanup"),
}
SLOT_WAIT_S = (0.2, 0.5)  # come back soon: a transfer slot frees often, and waiting holds no worker
MAX_RELOGINS = 5  # per run: an expired session costs a quick restart of the stage, never a retry
#: how long a task rides out a Redis restart (its own state writes block and retry meanwhile)
REDIS_OUTAGE_S = 120.0


def _redis():
    return client(CFG.broker_url, outage_s=REDIS_OUTAGE_S)


def _vm_locks() -> VmLocks:
    return VmLocks(_redis(), chain_ttl_s(CFG.limits))


def _run_ended(ctx: dict) -> None:
    """Whatever the outcome: the stage guard's record goes, the VM is free for the next run."""
    _guard(ctx["run"]).forget()
    _vm_locks().release(ctx["pool"], ctx["vm"]["uuid"], ctx["run"])
    jobs = _jobs()  # its state is final by now: count it for `tinabs metrics` (once, however often we get here)
    metrics.count_run_end(_redis(), jobs.run(ctx["run"]))


def _jobs() -> JobStore:
    return JobStore(_redis(), CFG.limits.state_ttl_s, on_end=request_report)  # a job's end sends its report


def _xapi(pool: str) -> Xapi:
    return Xapi(connect.session_for(CFG.pool(pool)))


def _slots(pool: str) -> Slots:
    p = CFG.pool(pool)
    return Slots(_redis(), pool, p.max_concurrent_exports, CFG.limits.lease_s)


def backoff(failures: int) -> float:
    base = min(CFG.retry.backoff_max_s, CFG.retry.backoff_base_s * (2 ** failures))
    return base * random.uniform(0.5, 1.5)


#: stage name -> how to call it with (xapi, ctx, report)
CALLS = {
    "snapshot": snapshot.run,
    "skeleton": skeleton.run,
    "disks": disks.run,
    "vifs": vifs.run,
    "export": lambda x, c, r: export.run(x, c, r, _slots(c["pool"]), CFG.destination,
                                         CFG.limits.reserve_free_bytes),
    "copy": lambda x, c, r: copy.run(x, c, r, _slots(c["pool"])),
    "metadata": lambda x, c, r: metadata.run(x, c, r, _slots(c["pool"]), CFG.destination),
    "cleanup": cleanup.run,
}
LONG_STAGES = {"export", "copy", "metadata"}
#: Redis priority per task (0 is served first): depth-first through each chain
STAGE_PRIORITY = {"plan": 0, "compensate": 0, "cleanup": 1, "metadata": 2, "export": 2, "copy": 3, "vifs": 4,
                  "disks": 5, "skeleton": 6, "snapshot": 7}


def _guard(run: str) -> StageGuard:
    return StageGuard(_redis(), run, CFG.limits.lease_s)


def _wait_for_lease(task, ctx: dict, *args):
    """Another copy works on this run now: come back later, without using up a retry."""
    waits = ctx.get("lease_waits", 0)
    ctx["lease_waits"] = waits + 1
    return task.retry(args=(ctx, *args), countdown=wait_countdown(waits), max_retries=None)


def run_stage(task, name: str, ctx: dict) -> dict:
    jobs = _jobs()
    run = ctx["run"]
    index = STAGES[ctx["mode"]].index(name)
    guard = _guard(run)
    _skip_if_ended(jobs, run)
    done, recorded = guard.progress()
    if done > index:
        raise Ignore()  # the chain has moved past this stage: a late copy
    if done == index:
        return recorded  # finished, but the next stage may never have been sent: hand it on
    try:
        guard.acquire()
    except Busy:
        raise _wait_for_lease(task, ctx) from None
    try:
        _skip_if_ended(jobs, run)  # again under the lease: the holder may just have finished
        done, recorded = guard.progress()
        if done > index:
            raise Ignore()
        if done == index:
            return recorded
        if _obeys_abort(name) and jobs.aborted(ctx["job"]):  # a pending stage of an aborted job: no work
            guard.release()
            raise _give_up(ctx, name, abort.reason(jobs, ctx["job"]), jobs)
        _vm_locks().renew(ctx["pool"], ctx["vm"]["uuid"], run)
        watch = abort.AbortWatch(jobs, ctx["job"], run, lambda: connect.PoolSession(CFG.pool(ctx["pool"]))) \
            if _obeys_abort(name) else contextlib.nullcontext()
        with Heartbeat([guard.lease.renew], CFG.limits.lease_s / 4), watch:
            ctx = _work(task, name, ctx, jobs, guard)
        guard.finished(index, ctx)
        return ctx
    finally:
        guard.release()


def _obeys_abort(stage: str) -> bool:
    """Every stage but cleanup: a run that reached cleanup holds a complete backup, and cleanup
    is itself what leaves the pool clean; aborting it would throw the backup away."""
    return stage != "cleanup"


def _skip_if_ended(jobs: JobStore, run: str) -> None:
    state = jobs.run_state(run)
    if state is not None and (state.terminal or state == RunState.FAILING):
        raise Ignore()  # a late copy of a run that already ended (or is being compensated): do nothing


def _work(task, name: str, ctx: dict, jobs: JobStore, guard: StageGuard) -> dict:
    run = ctx["run"]
    jobs.update_run(run, state=RunState.RUNNING.value, worker=f"{socket.gethostname()}:{os.getpid()}",
                    task_id=getattr(task.request, "id", None))
    report = Reporter(jobs, run, task)
    report.stage(name)
    began = time.monotonic()
    try:
        ctx = CALLS[name](_xapi(ctx["pool"]), ctx, report)
    except WaitForSlot as wait:
        jobs.update_run(run, state=RunState.QUEUED.value, stage=f"{name}: waiting ({wait})")
        raise task.retry(args=(ctx,), countdown=random.uniform(*SLOT_WAIT_S), max_retries=None)
    except Exception as exc:
        guard.release()  # compensation takes the run's lease: let it start at once
        raise _give_up_or_retry(task, name, ctx, exc, jobs) from None
    ctx.pop("unreachable_since", None)
    ctx.setdefault("timings", {})[name] = round(time.monotonic() - began, 3)
    return ctx


def _give_up_or_retry(task, name: str, ctx: dict, exc: BaseException, jobs: JobStore):
    if _obeys_abort(name) and jobs.aborted(ctx["job"]):  # (its XAPI task was cancelled, or it failed meanwhile)
        return _give_up(ctx, name, abort.reason(jobs, ctx["job"]), jobs)
    err = classify(exc, ctx["pool"])
    if err.code in RELOGIN_CODES:
        connect.forget(ctx["pool"])
    if err.code == "SESSION_INVALID" and ctx.get("relogins", 0) < MAX_RELOGINS:
        # the session expired (a transfer handler said so): log in again and go on; not a failure
        ctx["relogins"] = ctx.get("relogins", 0) + 1
        return task.retry(args=(ctx,), countdown=0, max_retries=None)
    if err.code == UNREACHABLE:
        # a pool that is down for a while (master reboot, network cut): wait for it, in time, not retries
        since = ctx.setdefault("unreachable_since", time.time())
        waited = time.time() - since
        if waited < CFG.retry.unreachable_wait_s:
            jobs.update_run(ctx["run"], state=RunState.RETRYING.value,
                            error=f"{err} (waiting for the pool: {waited:.0f}s of {CFG.retry.unreachable_wait_s:.0f}s)")
            return task.retry(args=(ctx,), countdown=backoff(ctx.get("failures", {}).get(name, 0)),
                              max_retries=None)
        reason = f"{name}: {err} (unreachable for {waited:.0f}s)"
        return _give_up(ctx, name, reason, jobs)
    failures = ctx.setdefault("failures", {}).get(name, 0)
    if err.transient and failures < CFG.retry.max_retries:
        ctx["failures"][name] = failures + 1
        jobs.update_run(ctx["run"], state=RunState.RETRYING.value, error=str(err), retries=failures + 1)
        return task.retry(args=(ctx,), countdown=backoff(failures), max_retries=None)
    reason = f"{name}: {err}"
    if err.transient:  # say why a retryable error still failed the run
        reason += f" (gave up after {failures} retries)"
    return _give_up(ctx, name, reason, jobs)


def _give_up(ctx: dict, name: str, reason: str, jobs: JobStore) -> StageFailed:
    jobs.update_run(ctx["run"], state=RunState.FAILING.value, error=reason, failed_stage=name)
    ctx.pop("unreachable_since", None)
    compensate.apply_async((ctx, reason), queue=CFG.pool(ctx["pool"]).queue)
    return StageFailed(reason)


def _stage_task(name: str):
    limit = CFG.limits.export_time_limit_s if name in LONG_STAGES else CFG.limits.stage_time_limit_s

    def stage_task(self, ctx: dict) -> dict:
        ctx = run_stage(self, name, ctx)
        if name == "cleanup":
            _jobs().finish_run(ctx["run"], RunState.SUCCEEDED, stage="done", **_result_fields(ctx))
            _run_ended(ctx)
            if CFG.retention.active and CFG.retention.after_backup:  # per VM, after each good backup
                app.send_task("tinabs.prune_vm", args=(ctx["pool"], ctx["vm"]["uuid"]),
                              queue=CFG.pool(ctx["pool"]).queue)
        return ctx

    stage_task.__name__ = stage_task.__qualname__ = f"{name}_task"
    return app.task(name=f"tinabs.{name}", bind=True, acks_late=True, max_retries=None,
                    priority=STAGE_PRIORITY[name], time_limit=limit,
                    soft_time_limit=max(1, limit - 30))(stage_task)


def _result_fields(ctx: dict) -> dict:
    result = ctx.get("result", {})
    return {"path": result.get("path"), "manifest": result.get("manifest"), "size": result.get("size"),
            "sha256": result.get("sha256"), "estimated_size": result.get("estimated_size"),
            "timings": ctx.get("timings", {})}


TASKS = {name: _stage_task(name) for name in CALLS}


@app.task(name="tinabs.compensate", bind=True, acks_late=True, max_retries=None, priority=0,
          time_limit=CFG.limits.stage_time_limit_s)
def compensate(self, ctx: dict, reason: str) -> dict:
    """Remove everything of the run (pool objects by marker, partial files), then mark it failed."""
    jobs = _jobs()
    if jobs.run_state(ctx["run"]) == RunState.SUCCEEDED:
        # a stray or duplicated compensation must never delete a verified backup and its kept copy
        return {"run": ctx["run"], "removed": [], "files": [], "skipped": "the run succeeded"}
    guard = _guard(ctx["run"])
    try:
        guard.acquire()  # never while a copy of a stage still works on the run
    except Busy:
        raise _wait_for_lease(self, ctx, reason) from None
    try:
        removed = cleanup.remove_pool_objects(_xapi(ctx["pool"]), ctx["run"], keep_kept=False)
        files = cleanup.remove_files(ctx, CFG.destination)
    except Exception as exc:
        guard.release()
        raise _compensation_failed(self, ctx, reason, exc, jobs) from None
    finally:
        guard.release()
    jobs.finish_run(ctx["run"], RunState.FAILED, error=reason, compensation="done")
    _run_ended(ctx)
    return {"run": ctx["run"], "removed": removed, "files": files}


def _compensation_failed(task, ctx: dict, reason: str, exc: BaseException, jobs: JobStore):
    err = classify(exc, ctx["pool"])
    if err.code in RELOGIN_CODES:
        connect.forget(ctx["pool"])
    attempts = ctx.setdefault("failures", {}).get("compensate", 0)
    if err.code == UNREACHABLE:  # leave nothing behind: wait for the pool twice as long as a stage would
        since = ctx.setdefault("unreachable_since", time.time())
        if time.time() - since < 2 * CFG.retry.unreachable_wait_s:
            return task.retry(args=(ctx, reason), countdown=backoff(attempts), max_retries=None)
    elif err.transient and attempts < CFG.retry.max_retries * 2:
        ctx["failures"]["compensate"] = attempts + 1
        return task.retry(args=(ctx, reason), countdown=backoff(attempts), max_retries=None)
    jobs.finish_run(ctx["run"], RunState.FAILED, error=f"{reason}; cleanup incomplete: {err}",
                    compensation="incomplete")
    _run_ended(ctx)
    return StageFailed(f"compensation of run {ctx['run']} incomplete: {err} (the janitor will retry)")


def build_chain(ctx: dict, start: int = 0):
    """The run's chain from stage ``start`` on (0: the whole chain)."""
    queue = CFG.pool(ctx["pool"]).queue
    names = STAGES[ctx["mode"]][min(start, len(STAGES[ctx["mode"]]) - 1):]
    first = TASKS[names[0]].s(ctx).set(queue=queue)
    return chain(first, *(TASKS[n].s().set(queue=queue) for n in names[1:]))


def _send_stages(ctx: dict, start: int) -> str:
    build_chain(ctx, start).apply_async()
    return STAGES[ctx["mode"]][min(start, len(STAGES[ctx["mode"]]) - 1)]


def _send_compensate(ctx: dict, reason: str) -> None:
    compensate.apply_async((ctx, reason), queue=CFG.pool(ctx["pool"]).queue)


@worker_ready.connect
def _sweep_for_stuck_runs(**_):
    """Every worker looks for runs whose next message Redis lost (one worker at a time)."""
    resume.start_sweeping(_redis(), CFG, _send_stages, _send_compensate)


def _ended_or_unknown(jobs: JobStore, run: str) -> bool:
    state = jobs.run_state(run)
    return state is None or state.terminal


def run_id(job: str, pool: str, vm_uuid: str) -> str:
    return hashlib.sha1(f"{job}:{pool}:{vm_uuid}".encode()).hexdigest()[:12]


@app.task(name="tinabs.plan", bind=True, acks_late=True, max_retries=None, priority=0,
          time_limit=CFG.limits.stage_time_limit_s)
def plan(self, job: str, pool: str, selector: dict, mode: str, attempt: int = 0,
         unreachable_since: float | None = None) -> list[str]:
    """Select the pool's VMs and fan out one chain per VM (idempotent per run id)."""
    jobs = _jobs()
    if jobs.aborted(job):
        jobs.pool_planned(job, [], [f"pool `{pool}`: nothing started: the job was {abort.reason(jobs, job)}"])
        return []
    try:
        vms, notes = plan_stage.select(_xapi(pool), selector)
    except Exception as exc:
        err = classify(exc, pool)
        connect.forget(pool)
        if err.code == UNREACHABLE:
            since = unreachable_since or time.time()
            if time.time() - since < CFG.retry.unreachable_wait_s:
                raise self.retry(args=(job, pool, selector, mode, attempt, since),
                                 countdown=backoff(min(attempt, 8)), max_retries=None) from None
        elif err.transient and attempt < CFG.retry.max_retries:
            raise self.retry(args=(job, pool, selector, mode, attempt + 1), countdown=backoff(attempt),
                             max_retries=None) from None
        jobs.pool_planned(job, [], [f"pool `{pool}`: could not select VMs: {err}"], failed=True)
        return []
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    runs = []
    locks = _vm_locks()
    for vm in vms:
        rid = run_id(job, pool, vm["uuid"])
        holder = locks.acquire(pool, vm["uuid"], rid)
        if holder is not None and _ended_or_unknown(jobs, holder) and locks.take_over(pool, vm["uuid"], holder, rid):
            holder = None  # its run ended without releasing it (a crash at the very end)
        if holder is not None:  # an earlier job (last night's, still going) has this VM: never twice at once
            other = jobs.run(holder) or {}
            notes.append(skipped_note(vm["name"], other.get("job", "?"), holder, other.get("state", "state unknown")))
            continue
        ctx = {"job": job, "run": rid, "pool": pool, "mode": mode, "vm": vm, "stamp": stamp,
               "refs": {}, "timings": {}, "failures": {}}
        paths = destination.backup_paths(ctx, CFG.destination)
        jobs.create_run(rid, {"job": job, "pool": pool, "vm_uuid": vm["uuid"], "vm_name": vm["name"],
                              "mode": mode, "stamp": stamp, "path": paths["data"]})
        # Claimed atomically: two deliveries of this plan never both send a run's chain.
        if jobs.claim_send(rid):
            ctx["stamp"] = jobs.run(rid)["stamp"]
            try:
                build_chain(ctx).apply_async()
            except BaseException:
                jobs.unclaim_send(rid)
                locks.release(pool, vm["uuid"], rid)
                raise
        runs.append(rid)
    if not vms:  # (a VM skipped because another run has it matched: that is in the notes)
        notes.append(f"pool `{pool}`: no VM matches {plan_stage.describe(selector)}")
    jobs.pool_planned(job, runs, notes)
    return runs
