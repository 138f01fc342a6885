"""The config's [schedule], when its entries fire, and `tinabs schedule show`.

Given a config with schedules, when it is loaded, then every entry has what the file says and
its defaults (the daily weekday backup is on, at 01:30, every pool, the default mode), and each
mistake is one ConfigError line; the next runs are celery's own crontab read in the schedule's
time zone, daylight-saving changes included; the daily backup's tag is the weekday of its run in
that zone; and `tinabs schedule show` prints all of it, with or without a broker.
The runs of real beat processes are in test_schedules_beat.py.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from zoneinfo import ZoneInfo

import pytest

from tinabs_tasks.config import model as config
from tinabs_tasks.schedule.times import beat_schedule, daily_tag, next_runs
from tinabs_tasks.config.schedule import When

PARIS = ZoneInfo("Europe/Paris")
UTC = dt.timezone.utc
BASE = """
broker_url = "redis://127.0.0.1:1/0"
destination = "/srv/backups"
default_mode = "sr-copy"

[pools.prod-a]
master = "https://a.example"
username = "root"
password_env = "PROD_A_PASSWORD"
shared_sr = "nfs"

[pools.prod-b]
master = "https://b.example"
username = "root"
password_env = "PROD_B_PASSWORD"
shared_sr = "nfs"
"""
EXAMPLE = """
[schedule]
timezone = "Europe/Paris"

[schedule.daily]
at = "02:30"

[[schedule.backups]]
name = "weekly-all"
cron = "0 3 * * 6"
all = true
mode = "export"
pools = ["prod-b"]

[[schedule.backups]]
name = "web"
every = "90m"
vm = "web-01"

[[schedule.verify]]
name = "morning"
cron = "0 8 * * *"
since_h = 0

[schedule.janitor]
cron = "0 12 * * *"
enabled = false
"""


def _parse(schedule: str) -> config.Config:
    import tomllib
    return config.parse(tomllib.loads(BASE + textwrap.dedent(schedule)), "tinabs.toml")


def _utc(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


# -- the config ------------------------------------------------------------------------------------

def test_the_example_parses_with_its_defaults():
    sched = _parse(EXAMPLE).schedule
    assert sched.timezone == "Europe/Paris"
    daily, weekly, web = sched.backups
    assert (daily.beat_name, daily.when, daily.selector, daily.mode, daily.pools, daily.enabled) == \
        ("backup:daily", When(cron="30 2 * * *"), {"weekday": True}, "sr-copy", (), True)
    assert (weekly.when, weekly.selector, weekly.mode, weekly.pools) == \
        (When(cron="0 3 * * 6"), {"all": True}, "export", ("prod-b",))
    assert (web.when, web.selector, web.mode) == (When(every_s=5400), {"vm": "web-01"}, "sr-copy")
    names = [(e.name, e.task, e.enabled) for e in sched.entries()]
    assert names == [("backup:daily", "tinabs.scheduled_backup", True),
                     ("backup:weekly-all", "tinabs.scheduled_backup", True),
                     ("backup:web", "tinabs.scheduled_backup", True),
                     ("verify:morning", "tinabs.verify", True), ("janitor", "tinabs.janitor_all", False)]
    assert sched.upkeep[0].kwargs == {"since_h": None}  # 0 = every backup


def test_daily_is_on_by_default_at_0130_and_only_enabled_entries_reach_beat():
    sched = _parse('[schedule]\ntimezone = "UTC"\n').schedule
    assert [(b.beat_name, b.at, b.enabled) for b in sched.backups] == [("backup:daily", "01:30", True)]
    entries = beat_schedule(_parse(EXAMPLE).schedule)
    assert sorted(entries) == ["backup:daily", "backup:web", "backup:weekly-all", "verify:morning"]
    daily = entries["backup:daily"]
    assert (daily["task"], daily["args"]) == ("tinabs.scheduled_backup", ["backup:daily"])
    assert (sorted(daily["schedule"].hour), sorted(daily["schedule"].minute)) == ([2], [30])
    assert entries["verify:morning"]["kwargs"] == {"since_h": None}


_DUMP_APP = """
import json
from tinabs_tasks.app import app
app.loader.import_default_modules()
c = app.conf
print(json.dumps({"timezone": str(app.timezone), "scheduler": c.beat_scheduler, "prefix": c.redbeat_key_prefix,
                  "redis": c.get("redbeat_redis_url"), "loop": c.beat_max_loop_interval, "lock": c.redbeat_lock_timeout,
                  "entries": sorted(c.beat_schedule), "task": "tinabs.scheduled_backup" in app.tasks}))
"""


def _app_settings(tmp_path, schedule: str) -> dict:
    """The Celery app's settings as `celery -A tinabs_tasks beat` gets them (a fresh process)."""
    path = tmp_path / "app.toml"
    path.write_text(BASE + textwrap.dedent(schedule))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TINABS_")}, "TINABS_CONFIG": str(path)}
    proc = subprocess.run([sys.executable, "-c", _DUMP_APP], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_app_runs_beat_with_redbeat_in_the_schedules_time_zone(tmp_path):
    s = _app_settings(tmp_path, EXAMPLE)
    assert (s["timezone"], s["scheduler"], s["prefix"], s["redis"]) == \
        ("Europe/Paris", "tinabs_tasks.schedule.beat_scheduler:Scheduler", "tinabs:redbeat:", None)
    # (redbeat's URL is set inside beat only: in the app's settings, Flower would show its password)
    assert s["entries"] == ["backup:daily", "backup:web", "backup:weekly-all", "verify:morning"] and s["task"]
    assert (s["lock"], s["loop"]) == (60, 5.0)  # the lock is renewed every few seconds, long before it expires


def test_no_schedule_table_schedules_nothing_and_keeps_the_app_in_utc(tmp_path):
    assert _parse("").schedule is None
    s = _app_settings(tmp_path, "")
    assert (s["timezone"], s["entries"]) == ("UTC", [])


def test_timezone_is_needed_only_when_something_is_on():
    off = _parse("[schedule.daily]\nenabled = false\n").schedule
    assert off.timezone is None and not any(e.enabled for e in off.entries())


@pytest.mark.parametrize("schedule, fragments", [
    ("[schedule]\n", ["[schedule]", "timezone is required", "Europe/Paris"]),
    ('[schedule]\ntimezone = "Europe/Pariss"\n', ["'Europe/Pariss' is not a known time zone"]),
    ('[schedule]\ntimezone = "../etc/passwd"\n', ["not a known time zone"]),
    ('[schedule]\ntimezone = "UTC"\n[schedule.daily]\nat = "1:30pm"\n', ["[schedule.daily]", '"HH:MM"', "1:30pm"]),
    ('[schedule]\ntimezone = "UTC"\n[schedule.daily]\nat = "24:00"\n', ['"HH:MM"']),
    ('[schedule]\ntimezone = "UTC"\n[schedule.daily]\npools = ["prod-c"]\n',
     ["unknown pool(s) prod-c", "configured pools: prod-a, prod-b"]),
    ('[schedule]\ntimezone = "UTC"\n[schedule.daily]\nmode = "copy"\n', ["mode must be one of export, sr-copy"]),
    ('[schedule]\ntimezone = "UTC"\n[[schedule.backups]]\nname = "w"\ncron = "0 3 * *"\nall = true\n',
     ['[[schedule.backups]] "w"', "cron must have 5 fields"]),
    ('[schedule]\ntimezone = "UTC"\n[[schedule.backups]]\nname = "w"\ncron = "61 3 * * *"\nall = true\n',
     ["cron '61 3 * * *' is not valid"]),
    ('[schedule]\ntimezone = "UTC"\n[[schedule.backups]]\nname = "w"\ncron = "0 3 1 * 6"\nall = true\n',
     ["restricts both the day of month and the day of week"]),
    ('[schedule]\ntimezone = "UTC"\n[[schedule.backups]]\nname = "w"\ncron = "0 3 * * *"\nevery = "1h"\nall = true\n',
     ["give either cron", "or every"]),
    ('[schedule]\ntimezone = "UTC"\n[[schedule.backups]]\nname = "w"\nall = true\n', ["give either cron"]),
    ('[schedule]\ntimezone = "UTC"\n[[schedule.backups]]\nname = "w"\nevery = "5"\nall = true\n',
     ['every must look like "30s"']),
    ('[schedule]\ntimezone = "UTC"\n[[schedule.backups]]\nname = "w"\nevery = "1h"\n',
     ["exactly one of tag", "found none"]),
    ('[schedule]\ntimezone = "UTC"\n[[schedule.backups]]\nname = "w"\nevery = "1h"\ntag = "Mon"\nvm = "x"\n',
     ["found tag, vm"]),
    ('[schedule]\ntimezone = "UTC"\n[[schedule.backups]]\nname = "w"\nevery = "1h"\nall = false\n',
     ["`all` must be true"]),
    ('[schedule]\ntimezone = "UTC"\n[[schedule.backups]]\nname = "w"\nevery = "1h"\ntag = " "\n',
     ["`tag` must be a non-empty string"]),
    ('[schedule]\ntimezone = "UTC"\n[[schedule.backups]]\nevery = "1h"\nall = true\n', ["#1", "name is required"]),
    ('[schedule]\ntimezone = "UTC"\n[[schedule.backups]]\nname = "daily"\nevery = "1h"\nall = true\n',
     ["`daily` is taken"]),
    ('[schedule]\ntimezone = "UTC"\n[[schedule.backups]]\nname = "w"\nevery = "1h"\nall = true\n'
     '[[schedule.backups]]\nname = "w"\nevery = "2h"\nall = true\n', ["two schedules are named `backup:w`"]),
    ('[schedule]\ntimezone = "UTC"\n[[schedule.backups]]\nname = "w"\nevery = "1h"\nall = true\nkeep_last = 3\n',
     ["retention is per VM"]),
    ('[schedule]\ntimezone = "UTC"\n[[schedule.backups]]\nname = "w"\nevery = "1h"\nall = true\nqueue = "x"\n',
     ["unknown key(s) queue"]),
    ('[schedule]\ntimezone = "UTC"\nlock_timeout_s = 1\n', ["lock_timeout_s must be a whole number of seconds >= 3"]),
    ('[schedule]\ntimezone = "UTC"\n[[schedule.verify]]\nname = "v"\ncron = "0 8 * * *"\nsince_h = -1\n',
     ["since_h must be a number of hours >= 0"]),
    ('[schedule]\ntimezone = "UTC"\n[schedule.janitor]\nevery = "1h"\nmax_age_h = 3\n',
     ["[schedule.janitor]", "max_age_h"]),
    ('[schedule]\ntimezone = "UTC"\nbackups = 3\n', ["`backups` must be an array of tables"]),
])
def test_each_mistake_is_one_clear_line(schedule, fragments):
    with pytest.raises(config.ConfigError) as err:
        _parse(schedule)
    message = str(err.value)
    assert "\n" not in message and message.startswith("tinabs.toml: "), message
    for fragment in fragments:
        assert fragment in message, message


# -- when they fire --------------------------------------------------------------------------------

def test_daily_runs_across_both_daylight_saving_changes():
    daily = When(cron="30 2 * * *")
    spring = next_runs(daily, PARIS, dt.datetime(2026, 3, 27, 12, tzinfo=PARIS), 4)
    # 02:30 does not exist on 29 March (02:00 -> 03:00): it runs once, an hour later, then at 02:30 CEST
    assert [t.astimezone(UTC) for t in spring] == [_utc(2026, 3, 28, 1, 30), _utc(2026, 3, 29, 1, 30),
                                                   _utc(2026, 3, 30, 0, 30), _utc(2026, 3, 31, 0, 30)]
    assert [t.strftime("%H:%M %Z") for t in spring] == ["02:30 CET", "03:30 CEST", "02:30 CEST", "02:30 CEST"]
    autumn = next_runs(daily, PARIS, dt.datetime(2026, 10, 24, 12, tzinfo=PARIS), 3)
    # 02:30 happens twice on 25 October (03:00 -> 02:00): it runs once, the first time
    assert [t.astimezone(UTC) for t in autumn] == [_utc(2026, 10, 25, 0, 30), _utc(2026, 10, 26, 1, 30),
                                                   _utc(2026, 10, 27, 1, 30)]


def test_a_weekly_cron_keeps_its_local_time_across_the_change():
    runs = next_runs(When(cron="0 3 * * 6"), PARIS, dt.datetime(2026, 3, 23, tzinfo=PARIS), 3)
    assert [t.astimezone(UTC) for t in runs] == [_utc(2026, 3, 28, 2), _utc(2026, 4, 4, 1), _utc(2026, 4, 11, 1)]
    assert {(t.strftime("%a %H:%M")) for t in runs} == {"Sat 03:00"}


def test_an_interval_counts_from_its_last_run():
    last = dt.datetime(2026, 3, 29, 1, 59, 30, tzinfo=PARIS)
    runs = next_runs(When(every_s=30), PARIS, last, 2)
    assert [t.astimezone(UTC) for t in runs] == [_utc(2026, 3, 29, 1), _utc(2026, 3, 29, 1, 0, 30)]
    assert runs[0].strftime("%H:%M %Z") == "03:00 CEST"  # elapsed time, not wall time


def test_the_daily_tag_is_the_weekday_in_the_schedules_time_zone():
    # Monday 00:30 in Paris is still Sunday in UTC: the Monday VMs are backed up
    monday_0030 = dt.datetime(2026, 3, 30, 0, 30, 1, tzinfo=PARIS)
    assert monday_0030.astimezone(UTC).strftime("%a") == "Sun"
    assert daily_tag("00:30", monday_0030) == "Mon"
    # a tick that waited in the queue for hours is still for the day it fired
    assert daily_tag("23:50", dt.datetime(2026, 3, 31, 5, 0, tzinfo=PARIS)) == "Mon"
    # one that reaches a worker whose clock is a little behind beat's is too
    assert daily_tag("00:05", dt.datetime(2026, 3, 29, 23, 58, tzinfo=PARIS)) == "Mon"
    assert daily_tag("01:30", dt.datetime(2026, 3, 30, 1, 29, 57, tzinfo=PARIS)) == "Mon"
    assert daily_tag("01:30", dt.datetime(2026, 3, 30, 1, 10, tzinfo=PARIS)) == "Sun"


# -- tinabs schedule show --------------------------------------------------------------------------

def _show(tmp_path, schedule: str, *args: str, broker: str | None = None) -> subprocess.CompletedProcess:
    path = tmp_path / "tinabs.toml"
    path.write_text(BASE + textwrap.dedent(schedule))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINABS_")}
    if broker:
        env["TINABS_BROKER_URL"] = broker
    return subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "--config", str(path), "schedule", "show", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_show_lists_every_schedule_with_its_next_runs(tmp_path):
    proc = _show(tmp_path, EXAMPLE, "--from", "2026-03-27T12:00", "--offline")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Schedules, in time zone Europe/Paris" in out
    assert ("backup:daily  on\n"
            "  back up the VMs tagged with the day's weekday (Mon..Sun) on every pool (sr-copy)\n"
            "  when  every day at 02:30 (cron \"30 2 * * *\")\n"
            "  next  Sat 2026-03-28 02:30 CET (tag Sat); Sun 2026-03-29 03:30 CEST (tag Sun); "
            "Mon 2026-03-30 02:30 CEST (tag Mon)\n") in out
    assert ("backup:weekly-all  on\n  back up every VM on prod-b (export)\n  when  cron \"0 3 * * 6\"\n"
            "  next  Sat 2026-03-28 03:00 CET; Sat 2026-04-04 03:00 CEST; Sat 2026-04-11 03:00 CEST\n") in out
    assert "backup:web  on\n  back up the VM web-01 on every pool (sr-copy)\n  when  every 90m\n" in out
    assert "verify:morning  on\n  verify every backup\n" in out
    assert "janitor  off (enabled = false)" in out
    assert proc.stderr == ""


def test_show_json_and_count(tmp_path):
    proc = _show(tmp_path, EXAMPLE, "--from", "2026-10-24T12:00+02:00", "--offline", "--count", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    rows = {r["name"]: r for r in data["schedules"]}
    assert data["timezone"] == "Europe/Paris" and data["broker"] == "not asked (--offline)"
    assert rows["backup:daily"]["next"] == ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    assert rows["backup:daily"]["next_tags"] == ["Sun", "Mon"]
    assert rows["verify:morning"]["next"] == ["2026-10-25T08:00:00+01:00", "2026-10-26T08:00:00+01:00"]
    assert rows["janitor"]["next"] == [] and rows["janitor"]["enabled"] is False


def test_show_without_a_broker_shows_the_config_and_says_so(tmp_path):
    proc = _show(tmp_path, EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    assert "backup:daily  on" in proc.stdout and "beat:" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the broker at redis://127.0.0.1:1/0" in lines[0], proc.stderr
    assert "showing the config only" in lines[0]


def test_show_says_when_no_beat_runs_or_has_loaded_the_schedule(tmp_path, redis_server):
    # Given a reachable Redis in which no beat has ever run
    proc = _show(tmp_path, EXAMPLE, broker=redis_server.url)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "beat: NOT RUNNING — no beat holds the lock; start `celery -A tinabs_tasks beat`" in proc.stdout
    # Then each entry that is on says beat has not loaded it; the one that is off does not
    assert proc.stdout.count("beat has not loaded it: restart beat") == 4, proc.stdout
    data = json.loads(_show(tmp_path, EXAMPLE, "--json", broker=redis_server.url).stdout)
    assert data["broker"] == "ok" and data["beat"] == {"lock_ttl_s": None, "loaded": []}
    assert {r["name"]: r["loaded"] for r in data["schedules"]}["janitor"] is False


def test_show_without_schedules(tmp_path):
    proc = _show(tmp_path, "")
    assert proc.returncode == 0 and "has no [schedule] table" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("schedule, args, fragment", [
    (EXAMPLE, ("--count", "0"), "tinabs: --count must be between 1 and 10"),
    (EXAMPLE, ("--from", "tomorrow"), "tinabs: --from 'tomorrow' is not an ISO 8601 time"),
    ("[schedule]\n", (), "tinabs: config error: "),
])
def test_show_usage_and_config_errors(tmp_path, schedule, args, fragment):
    proc = _show(tmp_path, schedule, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(fragment), proc.stderr
