"""`tinabs schedule show [--json] [--count N] [--from TIME] [--offline]`: what beat runs, and when.

Every schedule of the config's [schedule], on or off: what it does, when (in the schedule's time
zone), its next runs (computed from the config with celery's crontab, as beat computes them),
and, from Redis, whether a beat holds the lock, when each entry last fired and which job the
last scheduled backup started.  The broker is optional: without it the config's part is shown.
"""
from __future__ import annotations

import datetime as dt
import json
import sys

from tinabs_tasks.runs import keys
from tinabs_tasks.schedule.times import daily_tag, next_runs
from tinabs_tasks.config.schedule import BackupSchedule, Entry, ScheduleConfig
from tinabs_tasks.cli.common import UserError, job_store, load_config, printable

MAX_COUNT = 10


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="schedule_command", required=True)
    show = sub.add_parser("show", help="list the schedules and their next run times")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument("--count", type=int, default=3, help=f"next runs per schedule (1-{MAX_COUNT}, default 3)")
    show.add_argument("--from", dest="start", metavar="TIME",
                      help="the runs after TIME instead of now (ISO 8601; without an offset, in the schedule's "
                           "time zone), e.g. 2026-10-24T12:00")
    show.add_argument("--offline", action="store_true", help="do not ask Redis for beat's state and the last runs")


def run(args) -> int:
    if not 1 <= args.count <= MAX_COUNT:
        raise UserError(f"--count must be between 1 and {MAX_COUNT}")
    cfg = load_config(args)
    sched = cfg.schedule
    if sched is None or not sched.entries():
        if args.json:
            print(json.dumps({"timezone": None, "schedules": [], "beat": None}))
        else:
            print(f"no schedules: {cfg.path} has no [schedule] table (see README, Schedules)")
        return 0
    start = _start(args.start, sched)
    beat, problem = ({}, "not asked (--offline)") if args.offline else _beat_state(cfg, sched)
    rows = [_row(e, sched, start, args.count, beat) for e in sched.entries()]
    stale = sorted(set(beat.get("loaded", ())) - {e.name for e in sched.entries() if e.enabled})
    if args.json:
        said = {k: beat[k] for k in ("lock_ttl_s", "loaded")} if beat else None  # each entry's part is in its row
        print(json.dumps({"timezone": sched.timezone, "from": start.isoformat(), "beat": said,
                          "broker": problem or "ok", "schedules": rows, "stale": stale}, indent=2))
        return 0
    if problem and not args.offline:
        print(f"tinabs: {problem} (showing the config only)", file=sys.stderr)
    print(render(sched, rows, beat, stale))
    return 0


def _start(text: str | None, sched: ScheduleConfig) -> dt.datetime:
    if text is None:
        return dt.datetime.now(sched.tz)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--from {text!r} is not an ISO 8601 time such as 2026-10-24T12:00") from None
    return (when if when.tzinfo else when.replace(tzinfo=sched.tz)).astimezone(sched.tz)


def _beat_state(cfg, sched: ScheduleConfig) -> tuple[dict, str | None]:
    """What Redis says: the lock, the entries beat loaded, each entry's last run (redbeat's meta)."""
    from redbeat.decoder import RedBeatJSONDecoder
    try:
        r = job_store(cfg).r
    except UserError as exc:
        return {}, str(exc)
    names = [e.name for e in sched.entries()]
    pipe = r.pipeline(transaction=False)
    pipe.pttl(keys.redbeat_lock())
    pipe.smembers(keys.redbeat_statics())
    for name in names:
        pipe.hget(keys.redbeat_entry(name), "meta")
        pipe.get(keys.schedule_last(name))
    lock_ms, loaded, *rest = pipe.execute()
    entries = {}
    for name, meta, last_job in zip(names, rest[::2], rest[1::2]):
        meta = json.loads(meta, cls=RedBeatJSONDecoder) if meta else {}
        entries[name] = {"last_run_at": meta.get("last_run_at"), "runs": meta.get("total_run_count"),
                         "last_job": json.loads(last_job) if last_job else None}
    return {"lock_ttl_s": round(lock_ms / 1000, 1) if lock_ms and lock_ms > 0 else None,
            "loaded": sorted(loaded), "entries": entries}, None


def _row(entry: Entry, sched: ScheduleConfig, start: dt.datetime, count: int, beat: dict) -> dict:
    backup = sched.backup(entry.name)
    seen = beat.get("entries", {}).get(entry.name, {})
    last = seen.get("last_run_at")
    row = {"name": entry.name, "task": entry.task, "what": entry.what, "enabled": entry.enabled,
           "when": _when_text(entry, backup), "cron": entry.when.cron, "every_s": entry.when.every_s,
           "next": [], "last_run_at": last.astimezone(sched.tz).isoformat() if last else None,
           "runs": seen.get("runs"), "last_job": seen.get("last_job"),
           "loaded": entry.name in beat["loaded"] if "loaded" in beat else None}
    if entry.enabled and (entry.when.cron or last):  # an interval counts from its last run
        runs = next_runs(entry.when, sched.tz, start if entry.when.cron else last, count)
        row["next"] = [t.isoformat() for t in runs]
        if backup and backup.at:
            row["next_tags"] = [daily_tag(backup.at, t) for t in runs]
    return row


def _when_text(entry: Entry, backup: BackupSchedule | None) -> str:
    if backup and backup.at:
        return f"every day at {backup.at} ({entry.when.describe()})"
    return entry.when.describe()


def render(sched: ScheduleConfig, rows: list[dict], beat: dict, stale: list[str]) -> str:
    lines = [f"Schedules, in time zone {sched.timezone} (`celery -A tinabs_tasks beat` runs them)"]
    if "lock_ttl_s" in beat:
        lines.append("beat: active (it holds the lock)" if beat["lock_ttl_s"] else
                     "beat: NOT RUNNING — no beat holds the lock; start `celery -A tinabs_tasks beat`")
    for row in rows:
        lines += ["", f"{row['name']}  {'on' if row['enabled'] else 'off (enabled = false)'}",
                  f"  {printable(row['what'])}", f"  when  {row['when']}"]
        tags = row.get("next_tags") or [None] * len(row["next"])
        nexts = [_clock(t, row, sched) + (f" (tag {tag})" if tag else "") for t, tag in zip(row["next"], tags)]
        if row["enabled"]:
            lines.append("  next  " + ("; ".join(nexts) or "counted from when beat loads it (not yet)"))
        if row["runs"]:  # redbeat's last_run_at is its load time until the entry first fires
            job = row["last_job"]
            extra = f", job {job['job']} ({json.dumps(job['selector'])})" if job else ""
            lines.append(f"  last  {_clock(row['last_run_at'], row, sched)}{extra} ({row['runs']} run(s))")
        if row["enabled"] and row["loaded"] is False:
            lines.append("  beat has not loaded it: restart beat (and the workers first) to start it")
    if stale:
        lines += ["", f"in Redis but no longer on in the config: {', '.join(stale)} (removed when beat restarts)"]
    return "\n".join(lines)


def _clock(iso: str, row: dict, sched: ScheduleConfig) -> str:
    fmt = "%a %Y-%m-%d %H:%M" + (":%S" if row["every_s"] else "") + " %Z"
    return dt.datetime.fromisoformat(iso).astimezone(sched.tz).strftime(fmt)
