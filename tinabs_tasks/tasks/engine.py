"""The backup engine: one Celery Task base class that owns the protocol around every stage.

A stage task is only its stage (backup/table.py): ``StageTask.run`` does the rest, the same for
every stage, in this order:

1. ``RunRecord.begin``, one round trip: a late or duplicate copy is dropped or hands the recorded
   context on; a copy that finds another at work waits; an aborted job's pending stage gives the
   run to compensation; otherwise the run's lease is taken.
2. The stage works, with a heartbeat renewing the lease and an abort watch beside it.
3. ``RunRecord.finish``, one round trip: the stage and its context recorded, the lease let go.
4. The next stage of the mode is sent (or, after the last, the run ends: succeeded).

A failure goes to the one retry policy (runs/retry_policy.py); giving up hands the run to
``tinabs.compensate``, which removes what it made by marker.  Routing, priorities and time limits
are the app's (app.py), never a send site's.
"""
from __future__ import annotations

import contextlib
import os
import random
import socket
import time

from celery import Task
from celery.exceptions import Ignore

from tinabs_tasks.app import app
from tinabs_tasks.backup import table
from tinabs_tasks.backup.errors import StageFailed, WaitForSlot
from tinabs_tasks.runs import abort
from tinabs_tasks.runs.guard import wait_countdown
from tinabs_tasks.runs.lease import Heartbeat
from tinabs_tasks.runs.progress import Reporter
from tinabs_tasks.runs.record import RunRecord
from tinabs_tasks.runs.retry_policy import Attempts, GiveUp, Relogin, Settings, WaitForPool, decide
from tinabs_tasks.runs.store import RunState
from tinabs_tasks.storage.manifest import RESULT_FIELDS
from tinabs_tasks.tasks import services
from tinabs_tasks.xapi import connect
from tinabs_tasks.xapi.errors import classify

CFG = app.tinabs_config
SLOT_WAIT_S = (0.2, 0.5)  # come back soon: a transfer slot frees often, and waiting holds no worker


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"  # forked children: their own pid


class StageTask(Task):
    """Base of every stage task: ``stage`` is its row of the stage table."""

    stage: table.Stage
    acks_late = True
    max_retries = None
    ignore_result = True  # nothing reads a stage's result: state is in the run record, Flower reads events
    track_started = False

    def run(self, ctx: dict) -> dict:
        stage, run = self.stage, ctx["run"]
        index = table.index_of(ctx["mode"], stage.name)
        record = RunRecord(services.redis(), run, CFG.limits.lease_s)
        begun = record.begin(index, stage.name, job=ctx["job"], vm_lock_key=services.vm_lock_key(ctx),
                             vm_lock_ttl_s=services.vm_lock_ttl_s(), obeys_abort=stage.obeys_abort,
                             worker=worker_id(), task_id=getattr(self.request, "id", None))
        if begun.outcome in ("late", "ended", "gone"):
            raise Ignore()  # a late copy: the run moved on, ended, or is being compensated
        if begun.outcome == "handoff":  # finished, but its next stage may never have been sent
            return self.after(begun.ctx)
        if begun.outcome == "busy":  # another copy works on this run now: come back later
            waits = ctx.get("lease_waits", 0)
            ctx["lease_waits"] = waits + 1
            raise self.retry(args=(ctx,), countdown=wait_countdown(waits), max_retries=None)
        if begun.outcome == "aborted":
            raise give_up(ctx, stage.name, abort.reason(services.jobs(), ctx["job"]))
        ctx = self.work(record, ctx, begun.again)
        record.finish(index, ctx)
        return self.after(ctx)

    def work(self, record: RunRecord, ctx: dict, again: bool) -> dict:
        stage = self.stage
        report = Reporter(services.jobs(), ctx["run"], self, stage=stage.name)
        began = time.monotonic()
        watch = abort.AbortWatch(services.jobs(), ctx["job"], ctx["run"],
                                 lambda: connect.PoolSession(CFG.pool(ctx["pool"]))) \
            if stage.obeys_abort else contextlib.nullcontext()
        try:
            with Heartbeat([record.renew], CFG.limits.lease_s / 4), watch:
                ctx = stage.run(services.stage_env(ctx["pool"], report, again), ctx)
        except WaitForSlot as wait:
            record.release()
            services.jobs().update_run(ctx["run"], state=RunState.QUEUED.value, stage=f"{stage.name}: waiting ({wait})")
            # parked: a released slot sends it on; this copy only comes back should that never happen
            countdown = services.parked_backstop_s() if wait.parked else random.uniform(*SLOT_WAIT_S)
            raise self.retry(args=(ctx,), countdown=countdown, max_retries=None)
        except Exception as exc:
            record.release()  # compensation takes the run's lease: let it start at once
            raise self.failed(ctx, exc) from None
        ctx.pop("unreachable_since", None)
        ctx.setdefault("timings", {})[stage.name] = round(time.monotonic() - began, 3)
        return ctx

    def failed(self, ctx: dict, exc: BaseException):
        """What the retry policy says about ``exc``, carried out: the exception to raise."""
        name, jobs = self.stage.name, services.jobs()
        if self.stage.obeys_abort and jobs.aborted(ctx["job"]):  # its XAPI task was cancelled, or it failed meanwhile
            return give_up(ctx, name, abort.reason(jobs, ctx["job"]))
        err = classify(exc, ctx["pool"])
        failures = ctx.setdefault("failures", {}).get(name, 0)
        attempts = Attempts(failures, ctx.get("relogins", 0), ctx.get("unreachable_since"))
        decision = decide(err, attempts, Settings.of(CFG.retry), time.time())
        if decision.drop_session:
            connect.forget(ctx["pool"])
        if isinstance(decision, Relogin):  # the session expired: log in again and go on; not a failure
            ctx["relogins"] = ctx.get("relogins", 0) + 1
            return self.retry(args=(ctx,), countdown=decision.countdown, max_retries=None)
        if isinstance(decision, WaitForPool):  # a pool down for a while: wait for it, in time, not retries
            ctx["unreachable_since"] = decision.since
            jobs.update_run(ctx["run"], state=RunState.RETRYING.value, error=decision.reason)
            return self.retry(args=(ctx,), countdown=decision.countdown, max_retries=None)
        if isinstance(decision, GiveUp):
            return give_up(ctx, name, f"{name}: {decision.reason}")
        ctx["failures"][name] = failures + 1
        jobs.update_run(ctx["run"], state=RunState.RETRYING.value, error=decision.reason, retries=failures + 1)
        return self.retry(args=(ctx,), countdown=decision.countdown, max_retries=None)

    def after(self, ctx: dict) -> dict:
        """Send the run's next stage, or end the run after its last; what the task returns (for
        Flower and the worker's log: which run, pool and VM; never the whole context)."""
        following = None if self.stage.ends_run else table.next_stage(ctx["mode"], self.stage.name)
        if following is not None:
            services.send_stage(following, ctx)
        else:
            end_run(ctx)
        return {"run": ctx["run"], "pool": ctx["pool"], "vm": ctx["vm"]["name"], "stage": self.stage.name,
                "next": following or "done"}


def end_run(ctx: dict) -> None:
    """The run succeeded: its state final, its VM free, counted once, retention applied."""
    jobs = services.jobs()
    jobs.finish_run(ctx["run"], RunState.SUCCEEDED, ctx["job"], stage="done", **result_fields(ctx))
    services.run_ended(ctx)
    if CFG.retention.active and CFG.retention.after_backup:  # per VM, after each good backup
        app.send_task("tinabs.prune_vm", args=(ctx["pool"], ctx["vm"]["uuid"]), ignore_result=True)


def result_fields(ctx: dict) -> dict:
    result = ctx.get("result", {})
    return {"path": result.get("path"), "manifest": result.get("manifest"), "size": result.get("size"),
            "sha256": result.get("sha256"), "estimated_size": result.get("estimated_size"),
            "timings": ctx.get("timings", {}),
            **{k: result[k] for k in RESULT_FIELDS if result.get(k) is not None}}


def give_up(ctx: dict, stage: str, reason: str) -> StageFailed:
    """Hand the run to compensation; the exception the stage task ends with."""
    services.jobs().update_run(ctx["run"], state=RunState.FAILING.value, error=reason, failed_stage=stage)
    ctx.pop("unreachable_since", None)
    services.send_compensate(ctx, reason)
    return StageFailed(reason)


def register_stage_tasks() -> dict[str, Task]:
    """One task per stage of the table, named ``tinabs.<stage>``."""
    tasks = {}
    for stage in table.STAGES.values():
        cls = type(f"{stage.name.title()}Task", (StageTask,), {"name": table.task_name(stage.name), "stage": stage})
        tasks[stage.name] = app.register_task(cls())
    return tasks

