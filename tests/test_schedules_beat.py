"""Scheduled backups on real processes: two `celery -A tinabs_tasks beat` (RedBeat), a worker,
the simulator and a private Redis.

Given a config whose daily backup is due a little later, in a time zone where that moment is
another weekday than in UTC, and interval entries that tick every two seconds, when two beats
run at once (then the lock holder is SIGKILLed, then both are restarted with a changed config),
then: the daily job backs up exactly the VMs tagged with that weekday in the schedule's zone; the
standby sends nothing while the holder lives and takes over when it dies; every tick makes one
job, never two; the entry removed from the config stops firing and the new one fires; and a tick
delivered twice starts one job.
"""
from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from zoneinfo import ZoneInfo

import pytest
from celery import Celery

from helpers.beat_proc import BeatProc, Send
from helpers.deployment import Deployment
from helpers.pool_checks import RUN
from helpers.waiting import wait_for
from tinabs_tasks.runs import keys
from tinabs_tasks.runs.store import JobStore
from tinabs_tasks.schedule.times import WEEKDAYS

SIM_ARGS = ("--pools", "2", "--vms-per-pool", "8", "--disk-mib", "4")  # 8 VMs: every weekday tagged in each pool
LOCK_TIMEOUT_S = 3
TICK_S = 2
#: a tag no VM carries: the job of such a tick plans and ends at once, so ticks are cheap to count
NOMATCH = "no-vm-{}"


def _fire_time_and_zone() -> tuple[dt.datetime, ZoneInfo]:
    """The next whole UTC minute at least 20 s away (the worker and beats are up by then), and a
    zone where it is another weekday than in UTC: Kiritimati (UTC+14) from 10:00 UTC on, Pago Pago
    (UTC-11) before 11:00 UTC."""
    fire = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=80)).replace(second=0, microsecond=0)
    return fire, ZoneInfo("Pacific/Kiritimati" if fire.hour >= 10 else "Pacific/Pago_Pago")


def _schedule_toml(zone: ZoneInfo, at: str, entries: dict[str, str]) -> str:
    lines = ["", "[schedule]", f'timezone = "{zone.key}"', f"lock_timeout_s = {LOCK_TIMEOUT_S}",
             "", "[schedule.daily]", f'at = "{at}"', 'mode = "export"']
    for name, every in entries.items():
        lines += ["", "[[schedule.backups]]", f'name = "{name}"', f'every = "{every}"',
                  f'tag = "{NOMATCH.format(name)}"']
    return "\n".join(lines) + "\n"


class Run:
    """The deployment, its beats, and what the jobs in Redis say."""

    def __init__(self, dep: Deployment):
        self.dep, self.beats, self.base = dep, [], dep.config.read_text()
        self.store = JobStore(dep.redis)

    def configure(self, schedule: str) -> None:
        self.dep.config.write_text(self.base + schedule)

    def start_beat(self, name: str) -> BeatProc:
        beat = BeatProc(name, self.dep.env, self.dep.root).start()
        self.beats.append(beat)
        return beat

    def jobs(self, tag: str) -> list[dict]:
        found = [self.store.job(j) for j in self.store.recent_jobs(limit=10_000)]
        return sorted((j for j in found if j and j["selector"] == {"tag": tag}), key=lambda j: float(j["created"]))

    def created(self, entry: str) -> list[float]:
        return [float(j["created"]) for j in self.jobs(NOMATCH.format(entry))]

    def sends(self, entry: str) -> list[Send]:
        return sorted((s for b in self.beats for s in b.sends() if s.entry == f"backup:{entry}"), key=lambda s: s.at)

    def tick_jobs(self, entry: str) -> dict[str, str | None]:
        """The job each tick (task sent by a beat) of ``entry`` started, by task id."""
        ids = [s.task_id for s in self.sends(entry)]
        return dict(zip(ids, self.dep.redis.mget([keys.schedule_tick(i) for i in ids]))) if ids else {}


def _all_started(made: dict) -> dict | None:
    return made if None not in made.values() else None


def _one_job_per_tick(run: Run, entry: str) -> None:
    """No tick sent twice (by two beats), and each tick sent made one job, and no other job."""
    sends = run.sends(entry)
    gaps = [(b.at - a.at).total_seconds() for a, b in zip(sends, sends[1:])]
    assert sends and all(g > TICK_S / 2 for g in gaps), gaps  # sent twice: two sends ~0 s apart
    made = wait_for(lambda: _all_started(run.tick_jobs(entry)), 15, f"a job for each tick of {entry}")
    assert len(set(made.values())) == len(made)
    assert set(made.values()) == {j["id"] for j in run.jobs(NOMATCH.format(entry))}


def _backupable_with(state: dict, tag: str) -> set[tuple[str, str]]:
    return {(pool, rec["uuid"]) for pool, classes in state["pools"].items() for rec in classes["VM"].values()
            if tag in rec["tags"] and not (rec["is_a_template"] or rec["is_a_snapshot"] or rec["is_control_domain"]
                                           or rec["name_label"].startswith("[tinabs]") or RUN in rec["other_config"])}


@pytest.fixture
def run(redis_server, tmp_path):
    dep = Deployment(tmp_path, redis_server, SIM_ARGS)
    dep.redis.flushdb()  # a deployment per test, on the module's Redis: each starts from an empty DB
    r = Run(dep)
    try:
        yield r
    finally:
        for beat in r.beats:
            beat.stop()
        dep.stop()


def test_schedules_fire_once_per_tick_with_two_beats_and_follow_the_config(run):
    dep = run.dep
    fire, zone = _fire_time_and_zone()
    tag = WEEKDAYS[fire.astimezone(zone).weekday()]
    assert tag != WEEKDAYS[fire.weekday()]  # so a tag taken in UTC would be the wrong one
    at = fire.astimezone(zone).strftime("%H:%M")
    run.configure(_schedule_toml(zone, at, {"tick": f"{TICK_S}s", "gone": f"{TICK_S}s", "once": "1d"}))
    dep.start_worker("w1")

    # Given two beats at once: the first holds the lock, the second waits
    first = run.start_beat("b1")
    wait_for(lambda: first.holds_lock, 15, "the first beat's lock")
    second = run.start_beat("b2")
    wait_for(lambda: len(run.created("tick")) >= 3, 20, "three ticks")
    assert not second.holds_lock and second.sends() == [], second.log()

    # When the holder dies without a word, the standby takes over once the lock expires
    first.kill()
    killed = time.time()
    wait_for(lambda: second.holds_lock, LOCK_TIMEOUT_S + 10, "the standby's lock")
    wait_for(lambda: len([c for c in run.created("tick") if c > killed]) >= 2, 15, "ticks from the standby")

    # When the config changes (`gone` removed, `new` added) and workers and beats are restarted
    second.stop()
    for entry in ("tick", "gone"):  # every tick sent so far has reached the worker that knows it
        wait_for(lambda: _all_started(run.tick_jobs(entry)), 15, f"the last ticks of {entry}")
    dep.workers[0].stop()
    stopped = time.time()
    run.configure(_schedule_toml(zone, at, {"tick": f"{TICK_S}s", "new": f"{TICK_S}s", "once": "1d"}))
    dep.start_worker("w2")
    third, fourth = run.start_beat("b3"), run.start_beat("b4")
    assert not dep.redis.exists(keys.redbeat_entry("backup:gone"))  # gone from Redis as beat started
    assert "backup:gone" not in dep.redis.smembers(keys.redbeat_statics())
    wait_for(lambda: len(run.created("new")) >= 3, 20, "ticks of the new entry")

    # And a tick delivered twice (as Redis redelivers a task whose worker died) starts one job
    client = Celery(broker=dep.redis_url)
    tick_id = str(uuid.uuid4())
    for _ in range(2):
        client.send_task("tinabs.scheduled_backup", args=["backup:once"], task_id=tick_id, queue="tinabs")
        wait_for(lambda: len(run.jobs(NOMATCH.format("once"))) >= 1, 20, "the tick's task")
    worker_log = dep.workers[-1].log_path
    wait_for(lambda: worker_log.read_text().count(f"scheduled_backup[{tick_id}] succeeded") == 2, 20,
             "both copies done")
    # And an entry this worker's config no longer has starts nothing
    client.send_task("tinabs.scheduled_backup", args=["backup:gone"], queue="tinabs")
    refusal = "schedule `backup:gone` is not on in this worker's config"
    wait_for(lambda: refusal in worker_log.read_text(), 20, "the refusal")

    # Then the daily backup fires once, at its time in the zone, for that zone's weekday
    until_fire = (fire - dt.datetime.now(dt.timezone.utc)).total_seconds()
    daily = wait_for(lambda: run.jobs(tag), until_fire + 30, "the daily job")
    job = dep.wait_job(daily[0]["id"], timeout=120)
    expected = _backupable_with(dep.sim.state(), tag)
    assert expected and {(r["pool"], r["vm_uuid"]) for r in job["runs"]} == expected, (tag, job["runs"])
    assert job["succeeded"] and job["mode"] == "export" and job["pools"] == ["pool-a", "pool-b"], job
    assert abs(float(job["created"]) - fire.timestamp()) < 15, (job["created"], fire)

    holder, standby = (third, fourth) if third.holds_lock else (fourth, third)
    standby.stop()  # first: stopped second, it would take the lock over and send more
    holder.stop()
    assert holder.holds_lock and holder.sends() and not standby.holds_lock and standby.sends() == []
    # Then every tick sent made exactly one job, whichever beat sent it
    for entry in ("tick", "new", "gone"):
        _one_job_per_tick(run, entry)
    assert len(run.jobs(tag)) == 1 and len(run.jobs(NOMATCH.format("once"))) == 1
    # And the removed entry fired no more once its beat had stopped; the new one fired only after
    assert run.created("gone") and max(run.created("gone")) < stopped
    assert min(run.created("new")) > stopped

    # And `tinabs schedule show` says what ran
    shown = json.loads(dep.cli("schedule", "show", "--json", check=True).stdout)
    rows = {r["name"]: r for r in shown["schedules"]}
    assert rows["backup:daily"]["runs"] == 1 and rows["backup:daily"]["last_job"]["job"] == job["id"]
    assert rows["backup:daily"]["last_job"]["selector"] == {"tag": tag}
    assert rows["backup:new"]["runs"] == len(run.sends("new")) and "backup:gone" not in rows
    assert shown["beat"]["lock_ttl_s"] is None  # both beats stopped: nobody holds the lock
    assert all(r["loaded"] for r in rows.values()) and shown["stale"] == []
