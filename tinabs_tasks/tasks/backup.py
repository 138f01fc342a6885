"""The backup tasks: ``tinabs.plan`` (pick a pool's VMs, start one run each), one task per stage
(tasks/engine.py, from the stage table) and ``tinabs.compensate`` (remove what a failed run made).

Every worker also sweeps for runs whose next message Redis lost (runs/sweep.py).
"""
from __future__ import annotations

import hashlib
import time

from celery.signals import worker_ready

from tinabs_tasks.app import app
from tinabs_tasks.backup import cleanup, selection, table
from tinabs_tasks.backup.errors import StageFailed
from tinabs_tasks.runs import abort, sweep
from tinabs_tasks.runs.record import RunRecord
from tinabs_tasks.runs.guard import wait_countdown
from tinabs_tasks.runs.retry_policy import Attempts, GiveUp, Relogin, Settings, WaitForPool, decide
from tinabs_tasks.runs.store import RunState
from tinabs_tasks.runs.vm_lock import skipped_note
from tinabs_tasks.storage import destination
from tinabs_tasks.tasks import services
from tinabs_tasks.tasks.engine import register_stage_tasks
from tinabs_tasks.xapi import connect
from tinabs_tasks.xapi.errors import classify

CFG = app.tinabs_config
TASKS = register_stage_tasks()


@app.task(name="tinabs.compensate", bind=True, acks_late=True, max_retries=None)
def compensate(self, ctx: dict, reason: str) -> dict:
    """Remove everything of the run (pool objects by marker, partial files), then mark it failed."""
    jobs = services.jobs()
    if jobs.run_state(ctx["run"]) == RunState.SUCCEEDED:
        # a stray or duplicated compensation must never delete a verified backup and its kept copy
        return {"run": ctx["run"], "removed": [], "files": [], "skipped": "the run succeeded"}
    record = RunRecord(services.redis(), ctx["run"], CFG.limits.lease_s)
    if not record.take():  # never while a copy of a stage still works on the run
        waits = ctx.get("lease_waits", 0)
        ctx["lease_waits"] = waits + 1
        raise self.retry(args=(ctx, reason), countdown=wait_countdown(waits), max_retries=None)
    try:
        removed = cleanup.remove_pool_objects(services.xapi(ctx["pool"]), ctx["run"], keep_kept=False)
        files = cleanup.remove_files(ctx, CFG.destination, CFG.repository.path if CFG.repository else None)
    except Exception as exc:
        raise _compensation_failed(self, ctx, reason, exc, jobs) from None
    finally:
        record.release()
    jobs.finish_run(ctx["run"], RunState.FAILED, ctx["job"], error=reason, compensation="done")
    services.run_ended(ctx)
    return {"run": ctx["run"], "removed": removed, "files": files}


def _compensation_failed(task, ctx: dict, reason: str, exc: BaseException, jobs):
    err = classify(exc, ctx["pool"])
    attempts = ctx.setdefault("failures", {}).get("compensate", 0)
    decision = decide(err, Attempts(attempts, ctx.get("relogins", 0), ctx.get("unreachable_since")),
                      Settings.of(CFG.retry, patience=2.0), time.time())  # leave nothing behind: twice as patient
    if decision.drop_session:
        connect.forget(ctx["pool"])
    if isinstance(decision, Relogin):
        ctx["relogins"] = ctx.get("relogins", 0) + 1
    elif isinstance(decision, WaitForPool):
        ctx["unreachable_since"] = decision.since
    elif not isinstance(decision, GiveUp):
        ctx["failures"]["compensate"] = attempts + 1
    if not isinstance(decision, GiveUp):
        return task.retry(args=(ctx, reason), countdown=decision.countdown, max_retries=None)
    jobs.finish_run(ctx["run"], RunState.FAILED, ctx["job"], error=f"{reason}; cleanup incomplete: {err}",
                    compensation="incomplete")
    services.run_ended(ctx)
    return StageFailed(f"compensation of run {ctx['run']} incomplete: {err} (the janitor will retry)")


def _send_stages(ctx: dict, start: int) -> str:
    """The run's stage ``start`` (and, by the engine, every one after it)."""
    names = table.stages_of(ctx["mode"])
    name = names[min(start, len(names) - 1)]
    services.send_stage(name, ctx)
    return name


@worker_ready.connect
def _sweep_for_stuck_runs(**_):
    """Every worker looks for runs whose next message Redis lost (one worker at a time)."""
    sweep.start_sweeping(services.redis(), CFG, _send_stages, services.send_compensate)


def run_id(job: str, pool: str, vm_uuid: str) -> str:
    return hashlib.sha1(f"{job}:{pool}:{vm_uuid}".encode()).hexdigest()[:12]


@app.task(name="tinabs.plan", bind=True, acks_late=True, max_retries=None)
def plan(self, job: str, pool: str, selector: dict, mode: str, attempt: int = 0,
         unreachable_since: float | None = None, full: str | None = None) -> list[str]:
    """Select the pool's VMs and start one run per VM (idempotent per run id)."""
    jobs = services.jobs()
    if jobs.aborted(job):
        jobs.pool_planned(job, [], [f"pool `{pool}`: nothing started: the job was {abort.reason(jobs, job)}"])
        return []
    try:
        vms, notes = selection.select(services.xapi(pool), selector)
    except Exception as exc:
        err = classify(exc, pool)
        connect.forget(pool)
        decision = decide(err, Attempts(attempt, 0, unreachable_since), Settings.of(CFG.retry), time.time())
        if isinstance(decision, WaitForPool):
            raise self.retry(args=(job, pool, selector, mode, attempt, decision.since), kwargs={"full": full},
                             countdown=decision.countdown, max_retries=None) from None
        if not isinstance(decision, GiveUp):
            raise self.retry(args=(job, pool, selector, mode, attempt + 1), kwargs={"full": full},
                             countdown=decision.countdown, max_retries=None) from None
        jobs.pool_planned(job, [], [f"pool `{pool}`: could not select VMs: {err}"], failed=True)
        return []
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    runs = [rid for vm in vms if (rid := _start_run(jobs, job, pool, mode, vm, stamp, notes, full))]
    if not vms:  # (a VM skipped because another run has it matched: that is in the notes)
        notes.append(f"pool `{pool}`: no VM matches {selection.describe(selector)}")
    jobs.pool_planned(job, runs, notes)
    return runs


def _start_run(jobs, job: str, pool: str, mode: str, vm: dict, stamp: str, notes: list[str],
               full: str | None = None) -> str | None:
    """Claim the VM and start its run; None when an earlier job's run still has the VM."""
    rid = run_id(job, pool, vm["uuid"])
    locks = services.vm_locks()
    holder = locks.acquire(pool, vm["uuid"], rid)
    if holder is not None and _ended_or_unknown(jobs, holder) and locks.take_over(pool, vm["uuid"], holder, rid):
        holder = None  # its run ended without releasing it (a crash at the very end)
    if holder is not None:  # an earlier job (last night's, still going) has this VM: never twice at once
        other = jobs.run(holder) or {}
        notes.append(skipped_note(vm["name"], other.get("job", "?"), holder, other.get("state", "state unknown")))
        return None
    ctx = {"job": job, "run": rid, "pool": pool, "mode": mode, "vm": vm, "stamp": stamp,
           "refs": {}, "timings": {}, "failures": {}}
    if full:  # who asked for full backups (incremental.choose says so in the run's record)
        ctx["full"] = full
    paths = destination.backup_paths(ctx, CFG.destination)
    # created once and claimed atomically: two deliveries of this plan never both start a run
    claimed, ctx["stamp"] = jobs.create_and_claim_run(rid, {"job": job, "pool": pool, "vm_uuid": vm["uuid"],
                                                            "vm_name": vm["name"], "mode": mode, "stamp": stamp,
                                                            "path": paths["data"] or paths["manifest"]})
    if claimed:
        try:
            services.send_stage(table.stages_of(mode)[0], ctx)
        except BaseException:
            jobs.unclaim_send(rid)
            locks.release(pool, vm["uuid"], rid)
            raise
    return rid


def _ended_or_unknown(jobs, run: str) -> bool:
    state = jobs.run_state(run)
    return state is None or state.terminal
