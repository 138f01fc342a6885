"""When the config's schedules fire: celery's own crontab, read in the schedule's time zone.

Beat runs ``celery.schedules.crontab`` with the app's ``timezone`` set to ``[schedule] timezone``
(app.py); ``next_runs`` asks the same crontab code, so ``tinabs schedule show`` says what beat
will do, daylight-saving changes included: a time that does not exist on the day clocks go
forward runs an hour later (02:30 -> 03:30), a time that happens twice when they go back runs
once (the first time).
"""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from tinabs_tasks.config.schedule import ScheduleConfig, When

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
#: a daily backup that reaches a worker up to this much before its time (two hosts' clocks a
#: little apart) is still that day's; one that waited in the queue for hours is still the day it fired
EARLY_GRACE = dt.timedelta(minutes=10)


def celery_schedule(when: When):
    """The celery schedule beat keeps in Redis for ``when``."""
    from celery.schedules import crontab, schedule
    if when.cron:
        minute, hour, dom, month, dow = when.cron.split()
        return crontab(minute, hour, day_of_month=dom, month_of_year=month, day_of_week=dow)
    return schedule(run_every=dt.timedelta(seconds=when.every_s))


def next_runs(when: When, tz: ZoneInfo, after: dt.datetime, count: int = 3) -> list[dt.datetime]:
    """The next ``count`` times ``when`` fires after ``after`` (aware), in ``tz``.  For an interval,
    ``after`` is its last run: beat counts from there."""
    if when.every_s:
        step, start = dt.timedelta(seconds=when.every_s), after.astimezone(dt.timezone.utc)
        return [(start + step * (i + 1)).astimezone(tz) for i in range(count)]  # elapsed time, via UTC
    cron = celery_schedule(when)
    runs, last = [], after.astimezone(tz)
    for _ in range(count):
        start, delta, _now = cron.remaining_delta(last, tz=tz)
        # celery adds the delta in wall-clock time; via UTC the result gets the right offset
        last = (start + delta).astimezone(dt.timezone.utc).astimezone(tz)
        runs.append(last)
    return runs


def daily_tag(at: str, now: dt.datetime) -> str:
    """The weekday tag a daily backup at ``at`` ("HH:MM") is for, when it runs at ``now`` (aware, in
    the schedule's time zone): the weekday of its latest ``at`` (with EARLY_GRACE)."""
    ref = now + EARLY_GRACE
    hour, minute = (int(x) for x in at.split(":"))
    day = ref.date() if ref.time() >= dt.time(hour, minute) else ref.date() - dt.timedelta(days=1)
    return WEEKDAYS[day.weekday()]


def beat_schedule(sched: ScheduleConfig | None) -> dict:
    """celery's ``beat_schedule`` for the enabled entries; redbeat copies it into Redis when beat
    starts and deletes the entries a previous start had that this one has not."""
    if sched is None:
        return {}
    return {e.name: {"task": e.task, "schedule": celery_schedule(e.when), "args": list(e.args),
                     "kwargs": dict(e.kwargs)}
            for e in sched.entries() if e.enabled}


def beat_loop_interval(lock_timeout_s: int) -> float:
    """How often beat wakes up (and renews its lock): well inside the lock's lifetime."""
    return max(1.0, min(5.0, lock_timeout_s / 3))
