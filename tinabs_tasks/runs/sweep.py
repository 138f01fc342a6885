"""Runs whose next message was lost are sent on again: the stuck-run sweep.

Redis can lose a message that is in flight when it dies: a ``BRPOP`` it answered (and logged)
whose reply never reached the worker.  The run then waits forever: no stage holds its lease and
nothing touches its record.  Every worker's main process sweeps now and then (one worker at a
time, by lock): it reads, with one ZRANGEBYSCORE, the active runs nothing has touched for
``[limits] stuck_after_s`` (keys.active_runs, as rq's StartedJobRegistry.cleanup does), and a
started run among them whose lease nobody holds gets its next stage sent again from its record;
a run stuck while failing gets its compensation again.  Should the message only have been slow,
the copy is harmless: the run's record turns it away.
"""
from __future__ import annotations

import logging
import threading
import time

from tinabs_tasks.runs import keys
from tinabs_tasks.runs.record import lease_held, progress_of
from tinabs_tasks.runs.store import JobStore, RunState

log = logging.getLogger("tinabs")


def stuck_runs(redis, stuck_after_s: float, now: float | None = None) -> list[tuple[str, dict]]:
    """(run id, run record) of every active run that looks stuck; runs whose record is gone or
    ended leave the index."""
    now = time.time() if now is None else now
    quiet = redis.zrangebyscore(keys.active_runs(), "-inf", now - stuck_after_s)
    if not quiet:
        return []
    pipe = redis.pipeline(transaction=False)
    for rid in quiet:
        pipe.hgetall(keys.run(rid))
    found, gone = [], []
    for rid, rec in zip(quiet, pipe.execute()):
        if not rec or RunState(rec["state"]).terminal:
            gone.append(rid)
        elif not lease_held(rec, now):
            found.append((rid, rec))
    if gone:
        redis.zrem(keys.active_runs(), *gone)
    return found


def resume(redis, cfg, rid: str, rec: dict, send_stages, send_compensate) -> str | None:
    """Send the stuck run on; returns what was sent, or None for a run that never started (its
    first message waits in the queue, or the plan will send it)."""
    done, ctx = progress_of(rec)
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
