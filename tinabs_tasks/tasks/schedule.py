"""The task beat sends for a scheduled backup: ``tinabs.scheduled_backup(entry name)``.

Only the entry's name travels: the worker reads the entry (selector, mode, pools) from its own
config, finds the daily entry's weekday tag in the schedule's time zone, and starts the job
through jobstart.start_job, exactly as `tinabs backup` does (so the per-VM lock applies: a VM
still being backed up by an earlier tick is left to it).  The other scheduled tasks
(``tinabs.verify``, ``tinabs.janitor_all``, ``tinabs.prune``) are the upkeep tasks themselves.
"""
from __future__ import annotations

import datetime as dt
import json
import time

from tinabs_tasks.runs import keys
from tinabs_tasks.app import app
from tinabs_tasks.runs.store import JobStore
from tinabs_tasks.runs.jobstart import check_pools, start_job
from tinabs_tasks.runs.redis_client import client
from tinabs_tasks.schedule.times import daily_tag

CFG = app.tinabs_config
#: ride out a Redis restart as the backup tasks do
REDIS_OUTAGE_S = 120.0


class UnknownSchedule(Exception):
    """Beat sent an entry this worker's config does not have (or has turned off)."""


@app.task(name="tinabs.scheduled_backup", bind=True, acks_late=True)
def scheduled_backup(self, entry_name: str) -> dict:
    """Start the job of one schedule tick; a redelivered tick re-sends the same job's plans."""
    sched = CFG.schedule
    entry = sched.backup(entry_name) if sched else None
    if entry is None or not entry.enabled:
        raise UnknownSchedule(f"schedule `{entry_name}` is not on in this worker's config ({CFG.path}); "
                              "restart the workers, then beat, after changing [schedule]")
    now = dt.datetime.now(sched.tz)
    selector = {"tag": daily_tag(entry.at, now)} if entry.selector.get("weekday") else dict(entry.selector)
    pools = check_pools(CFG, entry.pools)
    redis = client(CFG.broker_url, outage_s=REDIS_OUTAGE_S)
    store = JobStore(redis, CFG.limits.state_ttl_s)
    once = keys.schedule_tick(self.request.id) if self.request.id else None
    job = start_job(CFG, store, selector, entry.mode if entry.mode_given else None, pools, once_key=once,
                    full=f"schedule {entry.name}" if entry.full else None)
    last = {"job": job, "selector": selector, "mode": entry.mode, "pools": pools, "started": time.time()}
    redis.set(keys.schedule_last(entry_name), json.dumps(last), ex=CFG.limits.state_ttl_s)
    return last
