"""The Celery app and every Celery setting tinabs relies on, in one place: routing, priorities and
time limits included.

Invariants (tested): tasks are acknowledged late and re-queued if their worker
dies, a worker reserves one task at a time, and Redis' visibility timeout (set
in all three places Celery reads it) exceeds the longest hard time limit plus
the longest retry countdown, so a long export is never redelivered while its
worker is alive.

Routing: no send site names a queue.  ``route`` (the app's one router) sends every task that
belongs to a pool to ``tinabs.pool.<pool>`` (where that pool's credentials are), the rest to the
default queue ``tinabs``, and gives each its Redis priority (0 is served first: plan and
compensation, then later backup stages before earlier ones, so workers finish the chains they
started and exports begin early).  Time limits come from ``TimeLimits``, by task name.
"""
from __future__ import annotations

import logging

from celery import Celery
from kombu import Queue

from tinabs_tasks.config import model as config_mod
from tinabs_tasks.config.pools import queue_name
from tinabs_tasks.xapi.tls import insecure_warnings

log = logging.getLogger("tinabs")
DEFAULT_QUEUE = "tinabs"
VISIBILITY_MARGIN_S = 3600
#: tasks.backoff() jitters a countdown up to 1.5x backoff_max_s; a task waiting out that
#: countdown is reserved and unacked all along, so the timeout must cover the whole of it
RETRY_JITTER_MAX = 1.5
#: the shortest hold of kombu's redelivery lock: a look under load must not outlive it
RESTORE_LOCK_MIN_S = 3
#: about two minutes of retries, for publishing and for storing results
PUBLISH_RETRY = {"max_retries": 60, "interval_start": 0, "interval_step": 0.5, "interval_max": 2}


#: where a task's pool is in its arguments; tasks not named here are no one pool's (default queue)
_POOL_FIRST = ("tinabs.restore", "tinabs.restore_test", "tinabs.prune_vm", "tinabs.janitor", "tinabs.inventory",
               "tinabs.preview", "tinabs.verify_backup", "tinabs.bases", "tinabs.bases_forget")
#: tasks that are no backup stage: (priority, time limit kind)
_TASKS = {
    "tinabs.plan": (0, "stage"), "tinabs.compensate": (0, "stage"), "tinabs.restore": (0, "long"),
    "tinabs.restore_test": (0, "long"), "tinabs.scheduled_backup": (0, "stage"), "tinabs.inventory": (0, "ask"),
    "tinabs.preview": (0, "ask"), "tinabs.verify_backup": (0, "long"), "tinabs.prune_vm": (1, "stage"),
    "tinabs.prune": (1, "stage"), "tinabs.janitor": (1, "stage"), "tinabs.janitor_all": (1, "stage"),
    "tinabs.verify": (1, "long"), "tinabs.report": (1, "report"), "tinabs.repo_gc": (1, "long"),
    "tinabs.bases": (0, "ask"), "tinabs.bases_forget": (1, "stage"),
}
#: a console question nobody answers within this is shown as unanswered (the console waits less)
ASK_TIME_LIMIT_S = 60
#: a report channel times out within a few minutes; a delivery round fits in this
REPORT_TIME_LIMIT_S = 600


def pool_of(name: str, args, stage=None) -> str | None:
    """The pool a task belongs to, from its arguments (None: no one pool's); ``stage``: the task's
    row of the stage table, when it is a stage."""
    args = tuple(args or ())
    if name == "tinabs.plan":
        return args[1] if len(args) > 1 else None
    if name in _POOL_FIRST:
        return args[0] if args else None
    if name == "tinabs.compensate" or stage is not None:
        return args[0].get("pool") if args and isinstance(args[0], dict) else None
    return None


def _stage(name: str):
    """The backup stage a task name is (None for other tasks); the table is read only when a stage is."""
    if not name.startswith("tinabs.") or name in _TASKS:
        return None
    from tinabs_tasks.backup.table import STAGES  # only workers send stages: producers never load it
    return STAGES.get(name[len("tinabs."):])


def route(name, args, kwargs, options, task=None, **_):
    """The app's one router (``task_routes``): the queue and the priority of every task sent."""
    stage = _stage(name)
    pool = pool_of(name, args, stage)
    priority = stage.priority if stage is not None else _TASKS.get(name, (None,))[0]
    out = {"queue": queue_name(pool) if pool else DEFAULT_QUEUE}
    if priority is not None:
        out["priority"] = priority
    return out


class TimeLimits:
    """Every task's time limits (hard, and soft 30 s before), by name, as Celery annotations."""

    def __init__(self, cfg):
        self.limits = {"stage": cfg.limits.stage_time_limit_s, "long": cfg.limits.export_time_limit_s,
                       "ask": ASK_TIME_LIMIT_S, "report": REPORT_TIME_LIMIT_S}

    def kind(self, name: str) -> str | None:
        stage = _stage(name)
        if stage is not None:
            return "long" if stage.long else "stage"
        return _TASKS.get(name, (None, None))[1]

    def annotate_any(self):
        return None

    def annotate(self, task):
        kind = self.kind(task.name)
        if kind is None:
            return None
        hard = self.limits[kind]
        return {"time_limit": hard, "soft_time_limit": max(1, hard - (5 if kind == "ask" else 30))}


def visibility_timeout(cfg: config_mod.Config) -> int:
    if cfg.limits.visibility_timeout_s:
        return cfg.limits.visibility_timeout_s
    longest = max(cfg.limits.export_time_limit_s, cfg.limits.stage_time_limit_s)
    return int(longest + cfg.retry.backoff_max_s * RETRY_JITTER_MAX + VISIBILITY_MARGIN_S)


def celery_settings(cfg: config_mod.Config) -> dict:
    vt = visibility_timeout(cfg)
    restore_interval = max(1, min(60, vt // 4))
    queues = [Queue(DEFAULT_QUEUE)] + [Queue(p.queue) for p in cfg.pools.values()]
    return {
        "broker_url": cfg.broker_url,
        "result_backend": cfg.result_backend,
        # Ten priority levels (0 first): later stages outrank earlier ones, so workers finish
        # chains they started before starting new ones, and exports begin early instead of
        # all at the end (see tasks.STAGE_PRIORITY).
        # kombu looks for expired unacknowledged messages every interval x throttle seconds (100 by
        # default): look every quarter of the timeout (at most a minute), so the work of a worker
        # that died resumes soon after its visibility timeout, not minutes later.
        # The look is done under a lock in Redis that kombu keeps for 5 minutes by default, and a
        # worker killed while holding it (a power cut) would stop every redelivery for that long:
        # the lock expires after one interval instead (the look itself takes milliseconds).
        "broker_transport_options": {"visibility_timeout": vt, "priority_steps": list(range(10)),
                                     "unacked_restore_interval": restore_interval,
                                     "unacked_restore_throttle": 1,
                                     "unacked_mutex_expire": max(RESTORE_LOCK_MIN_S, restore_interval)},
        "result_backend_transport_options": {"visibility_timeout": vt, "retry_policy": PUBLISH_RETRY},
        "visibility_timeout": vt,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_queues": queues,
        "task_default_queue": DEFAULT_QUEUE,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_expires": cfg.limits.state_ttl_s,
        "task_track_started": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_time_limit": cfg.limits.stage_time_limit_s,
        "task_soft_time_limit": max(1, cfg.limits.stage_time_limit_s - 30),
        "broker_connection_retry_on_startup": True,
        # Ride out a Redis restart: sending a chain's next stage (or a retry) waits for the broker
        # instead of failing a stage whose work is done.
        "task_publish_retry_policy": PUBLISH_RETRY,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_routes": (route,),
        "task_annotations": (TimeLimits(cfg),),
    }


# --- celery beat (issue 6, schedules): redbeat keeps the schedule and the active beat's lock in Redis
def beat_settings(cfg: config_mod.Config) -> dict:
    """Beat's entries come from the config's [schedule] (schedule_times.beat_schedule).  Every beat
    started takes its place in line for one lock in Redis; only its holder sends tasks, so two or
    more beats can run for availability and a tick is sent once.  Crontabs are read in
    [schedule] timezone, which becomes the app's time zone when there is one (tinabs' own times
    stay UTC; Celery's are timezone-aware either way)."""
    from tinabs_tasks.runs import keys
    from tinabs_tasks.schedule.times import beat_loop_interval, beat_schedule
    sched = cfg.schedule
    lock_timeout = sched.lock_timeout_s if sched else 60
    settings = {
        "beat_scheduler": "tinabs_tasks.schedule.beat_scheduler:Scheduler",  # redbeat, URL set in beat only
        "beat_schedule": beat_schedule(sched),
        "beat_max_loop_interval": beat_loop_interval(lock_timeout),  # also how often the lock is renewed
        "redbeat_redis_options": {},  # set, so redbeat does not read the broker's transport options
        "redbeat_key_prefix": keys.REDBEAT_PREFIX,
        "redbeat_lock_timeout": lock_timeout,
    }
    if sched and sched.timezone:
        settings["timezone"] = sched.timezone
    return settings


def make_app(cfg: config_mod.Config | None = None) -> Celery:
    cfg = cfg or config_mod.load()
    app = Celery("tinabs", include=[f"tinabs_tasks.tasks.{m}" for m in ("backup", "restore", "upkeep", "schedule",
                                                                        "console", "report", "bases")])
    app.conf.update(celery_settings(cfg))
    app.conf.update(beat_settings(cfg))
    app.tinabs_config = cfg
    for line in insecure_warnings(cfg.pools.values()):  # at every start of a worker
        log.warning("%s", line)
    return app


def _app_or_exit() -> Celery:
    # `celery -A tinabs_tasks worker` imports this module: without this, a config mistake
    # shows as Celery's "Unable to load celery application" and a long traceback
    try:
        return make_app()
    except config_mod.ConfigError as exc:
        raise SystemExit(f"tinabs: config error: {exc}") from None


app = _app_or_exit()
