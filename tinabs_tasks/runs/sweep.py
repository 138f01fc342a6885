"""Runs whose next message was lost are sent on again.

Redis can lose a message that is in flight when it dies: a ``BRPOP`` it
answered (and logged) whose reply never reached the worker.  The run then
waits forever: no stage holds its lease and nothing touches its state.  Every
worker's main process sweeps now and then (one worker at a time, by lock):
a started run that is not over, whose lease nobody holds and that nothing has
touched for ``[limits] stuck_after_s``, gets its next stage sent again from
the stage guard's record; a run stuck while failing gets its compensation
again.  Should the message only have been slow, the copy is harmless: the
stage guard turns it away.
"""
from __future__ import annotations

import logging
import threading
import time

from tinabs_tasks.runs import keys
from tinabs_tasks.runs.store import JobStore, RunState
from tinabs_tasks.runs.guard import StageGuard

log = logging.getLogger("tinabs")


def stuck_runs(redis, stuck_after_s: float, now: float | None = None) -> list[tuple[str, dict]]:
    """(run id, run record) of every run that looks stuck, in every job Redis still knows."""
    now = time.time() if now is None else now
    found = []
    for job_id in redis.zrange(keys.jobs_index(), 0, -1):
        for rid in redis.sdiff(keys.job_runs(job_id), keys.job_ended(job_id)):
            rec = redis.hgetall(keys.run(rid))
            if not rec or RunState(rec["state"]).terminal:
                continue
            touched = float(rec.get("touched") or rec.get("queued") or now)
            if now - touched < stuck_after_s or redis.exists(keys.lease(keys.run_lease_name(rid))):
                continue
            found.append((rid, rec))
    return found


def resume(redis, cfg, rid: str, rec: dict, send_stages, send_compensate) -> str | None:
    """Send the stuck run on; returns what was sent, or None for a run that never started (its
    first message waits in the queue, or the plan will send it)."""
    done, ctx = StageGuard(redis, rid, cfg.limits.lease_s).progress()
    if rec["state"] == RunState.FAILING.value and ctx is not None:
        send_compensate(ctx, rec.get("error") or "failed")
        return "compensate"
    if ctx is None:
        return None
    sent = send_stages(ctx, done + 1)
    JobStore(redis, cfg.limits.state_ttl_s).update_run(rid, resumed=int(rec.get("resumed", 0)) + 1)
    return sent


def sweep(redis, cfg, send_stages, send_compensate) -> list[str]:
    """One sweep, if no other worker is sweeping; returns the runs sent on."""
    interval = sweep_interval(cfg)
    if not redis.set(keys.sweep_lock(), "1", nx=True, ex=max(1, int(interval))):
        return []
    resumed = []
    for rid, rec in stuck_runs(redis, cfg.limits.stuck_after_s):
        what = resume(redis, cfg, rid, rec, send_stages, send_compensate)
        if what:
            log.warning("run %s (%s/%s) was stuck at %r with nothing working on it: sent %s again",
                        rid, rec.get("pool"), rec.get("vm_name"), rec.get("stage"), what)
            resumed.append(rid)
    return resumed


def sweep_interval(cfg) -> float:
    return max(1.0, min(60.0, cfg.limits.stuck_after_s / 3))


def start_sweeping(redis, cfg, send_stages, send_compensate) -> threading.Thread:
    """A daemon thread in the worker's main process; a failed sweep (Redis away) waits for the next."""
    def loop():
        while True:
            time.sleep(sweep_interval(cfg))
            try:
                sweep(redis, cfg, send_stages, send_compensate)
            except Exception as exc:  # Redis restarting: the next sweep will do
                log.info("stuck-run sweep skipped: %s", exc)
    thread = threading.Thread(target=loop, name="tinabs-stuck-sweep", daemon=True)
    thread.start()
    return thread
