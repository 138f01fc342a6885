"""Thin Celery tasks: decode the context, call a stage, return the context.

Retry policy, routing and time limits are declared here once.  A stage that
fails transiently is retried with exponential backoff and jitter (its count
lives in the context, so waiting for a pool slot never uses it up); a stage
that gives up sends `tinabs.compensate` to its pool's queue, which removes
everything of the run by marker and then marks the run failed.
"""
from __future__ import annotations

import hashlib
import os
import random
import socket
import time

from celery import chain
from celery.exceptions import Ignore

from . import destination
from .app import app
from .jobs import JobStore, RunState
from .progress import Reporter
from .redis_client import client
from .stages import cleanup, copy, disks, export, metadata, plan as plan_stage, skeleton, snapshot, vifs
from .stages.errors import StageFailed, WaitForSlot
from .stages.slots import Slots
from .xapi import connect
from .xapi.errors import RELOGIN_CODES, classify
from .xapi.port import Xapi

CFG = app.tinabs_config
STAGES = {
    "export": ("snapshot", "skeleton", "disks", "vifs", "export", "cleanup"),
    "sr-copy": ("snapshot", "skeleton", "disks", "vifs", "copy", "metadata", "cleanup"),
}
SLOT_WAIT_S = (0.2, 0.5)  # come back soon: a transfer slot frees often, and waiting holds no worker


def _jobs() -> JobStore:
    return JobStore(client(CFG.broker_url))


def _xapi(pool: str) -> Xapi:
    return Xapi(connect.session_for(CFG.pool(pool)))


def _slots(pool: str) -> Slots:
    p = CFG.pool(pool)
    return Slots(client(CFG.broker_url), pool, p.max_concurrent_exports, CFG.limits.lease_s)


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


def run_stage(task, name: str, ctx: dict) -> dict:
    jobs = _jobs()
    run = ctx["run"]
    state = jobs.run_state(run)
    if state is not None and (state.terminal or state == RunState.FAILING):
        raise Ignore()  # a late duplicate of a run that already ended: do nothing
    jobs.update_run(run, state=RunState.RUNNING.value, worker=f"{socket.gethostname()}:{os.getpid()}")
    report = Reporter(jobs, run, task)
    report.stage(name)
    began = time.monotonic()
    try:
        ctx = CALLS[name](_xapi(ctx["pool"]), ctx, report)
    except WaitForSlot as wait:
        jobs.update_run(run, state=RunState.QUEUED.value, stage=f"{name}: waiting ({wait})")
        raise task.retry(args=(ctx,), countdown=random.uniform(*SLOT_WAIT_S), max_retries=None)
    except Exception as exc:
        raise _give_up_or_retry(task, name, ctx, exc, jobs) from None
    ctx.setdefault("timings", {})[name] = round(time.monotonic() - began, 3)
    return ctx


def _give_up_or_retry(task, name: str, ctx: dict, exc: BaseException, jobs: JobStore):
    err = classify(exc, ctx["pool"])
    if err.code in RELOGIN_CODES:
        connect.forget(ctx["pool"])
    failures = ctx.setdefault("failures", {}).get(name, 0)
    if err.transient and failures < CFG.retry.max_retries:
        ctx["failures"][name] = failures + 1
        jobs.update_run(ctx["run"], state=RunState.RETRYING.value, error=str(err), retries=failures + 1)
        return task.retry(args=(ctx,), countdown=backoff(failures), max_retries=None)
    reason = f"{name}: {err}"
    if err.transient:  # say why a retryable error still failed the run
        reason += f" (gave up after {failures} retries)"
    jobs.update_run(ctx["run"], state=RunState.FAILING.value, error=reason, failed_stage=name)
    compensate.apply_async((ctx, reason), queue=CFG.pool(ctx["pool"]).queue)
    return StageFailed(reason)


def _stage_task(name: str):
    limit = CFG.limits.export_time_limit_s if name in LONG_STAGES else CFG.limits.stage_time_limit_s

    def stage_task(self, ctx: dict) -> dict:
        ctx = run_stage(self, name, ctx)
        if name == "cleanup":
            _jobs().finish_run(ctx["run"], RunState.SUCCEEDED, stage="done", **_result_fields(ctx))
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
            "sha256": result.get("sha256"), "timings": ctx.get("timings", {})}


TASKS = {name: _stage_task(name) for name in CALLS}


@app.task(name="tinabs.compensate", bind=True, acks_late=True, max_retries=None, priority=0,
          time_limit=CFG.limits.stage_time_limit_s)
def compensate(self, ctx: dict, reason: str) -> dict:
    """Remove everything of the run (pool objects by marker, partial files), then mark it failed."""
    jobs = _jobs()
    if jobs.run_state(ctx["run"]) == RunState.SUCCEEDED:
        # a stray or duplicated compensation must never delete a verified backup and its kept copy
        return {"run": ctx["run"], "removed": [], "files": [], "skipped": "the run succeeded"}
    try:
        removed = cleanup.remove_pool_objects(_xapi(ctx["pool"]), ctx["run"], keep_kept=False)
        files = cleanup.remove_files(ctx, CFG.destination)
    except Exception as exc:
        err = classify(exc, ctx["pool"])
        if err.code in RELOGIN_CODES:
            connect.forget(ctx["pool"])
        attempts = ctx.setdefault("failures", {}).get("compensate", 0)
        if err.transient and attempts < CFG.retry.max_retries * 2:
            ctx["failures"]["compensate"] = attempts + 1
            raise self.retry(args=(ctx, reason), countdown=backoff(attempts), max_retries=None) from None
        jobs.finish_run(ctx["run"], RunState.FAILED, error=f"{reason}; cleanup incomplete: {err}",
                        compensation="incomplete")
        raise StageFailed(f"compensation of run {ctx['run']} incomplete: {err}") from None
    jobs.finish_run(ctx["run"], RunState.FAILED, error=reason, compensation="done")
    return {"run": ctx["run"], "removed": removed, "files": files}


def build_chain(ctx: dict):
    queue = CFG.pool(ctx["pool"]).queue
    names = STAGES[ctx["mode"]]
    first = TASKS[names[0]].s(ctx).set(queue=queue)
    return chain(first, *(TASKS[n].s().set(queue=queue) for n in names[1:]))


def run_id(job: str, pool: str, vm_uuid: str) -> str:
    return hashlib.sha1(f"{job}:{pool}:{vm_uuid}".encode()).hexdigest()[:12]


@app.task(name="tinabs.plan", bind=True, acks_late=True, max_retries=None, priority=0,
          time_limit=CFG.limits.stage_time_limit_s)
def plan(self, job: str, pool: str, selector: dict, mode: str, attempt: int = 0) -> list[str]:
    """Select the pool's VMs and fan out one chain per VM (idempotent per run id)."""
    jobs = _jobs()
    try:
        vms, notes = plan_stage.select(_xapi(pool), selector)
    except Exception as exc:
        err = classify(exc, pool)
        connect.forget(pool)
        if err.transient and attempt < CFG.retry.max_retries:
            raise self.retry(args=(job, pool, selector, mode, attempt + 1), countdown=backoff(attempt),
                             max_retries=None) from None
        jobs.pool_planned(job, [], [f"pool `{pool}`: could not select VMs: {err}"], failed=True)
        return []
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    runs = []
    for vm in vms:
        rid = run_id(job, pool, vm["uuid"])
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
                raise
        runs.append(rid)
    if not vms:
        notes.append(f"pool `{pool}`: no VM matches {plan_stage.describe(selector)}")
    jobs.pool_planned(job, runs, notes)
    return runs
