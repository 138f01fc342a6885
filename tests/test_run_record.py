"""A run's record (runs/record.py) against a real redis-server: the Lua steps the engine takes on a
run's hash, and what each leaves there.

``begin`` before a stage works (gone, ended, late, handoff, busy, aborted, or work: the lease
taken, the run marked running, the VM's lock renewed, the run in the active index), ``finish``
after (done and ctx recorded, never backwards; its own lease let go), ``renew`` and ``release``
(by the lease's holder only), ``take`` (compensation's lease), ``progress`` and ``lease_held``.
Runs are created as the plan creates them (``JobStore.create_and_claim_run``) in the module's own
private Redis; leases are made short only where their expiry is the point.
"""
from __future__ import annotations

import json
import time

import pytest
import redis

from tinabs_tasks.runs import keys
from tinabs_tasks.runs.record import Begun, RunRecord, lease_held
from tinabs_tasks.runs.store import JobStore, RunState

POOL = "pool-a"
VM_UUID = "0f6c1a52-vm"
RUN = "run000000001"
OTHER_RUN = "run000000002"
VM_LOCK = keys.lease(f"vm:{POOL}:{VM_UUID}")
LEASE_S = 30.0
SHORT_LEASE_S = 0.05


@pytest.fixture
def r(redis_server):
    """A client of the module's Redis as the workers have it (str replies), on an empty DB."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def store(r):
    return JobStore(r)


@pytest.fixture
def job(store):
    """A job with one queued run (RUN) of one VM, as the plan leaves them."""
    job_id = store.create_job({"tags": ["Mon"]}, "export", [POOL])
    claimed, _stamp = store.create_and_claim_run(RUN, {"job": job_id, "pool": POOL, "vm_uuid": VM_UUID,
                                                      "vm_name": "web-01", "mode": "export", "stamp": "20260101T000000Z"})
    assert claimed
    return job_id


def record(r, run: str = RUN, lease_s: float = LEASE_S, **kw) -> RunRecord:
    return RunRecord(r, run, lease_s, **kw)


def begin(rec: RunRecord, job: str, index: int = 0, stage: str = "snapshot", *, obeys_abort: bool = True,
          worker: str = "w1@host", task_id: str | None = "task-1", vm_lock_ttl_s: int = 3600) -> Begun:
    return rec.begin(index, stage, job=job, vm_lock_key=VM_LOCK, vm_lock_ttl_s=vm_lock_ttl_s,
                     obeys_abort=obeys_abort, worker=worker, task_id=task_id)


def run_hash(r, run: str = RUN) -> dict:
    return r.hgetall(keys.run(run))


def now_ms() -> int:
    return int(time.time() * 1000)


# -- begin: the copies turned away -----------------------------------------------------------------
def test_begin_on_a_run_without_a_record_is_gone_and_creates_nothing(r):
    # Given no record for the run (never planned, or its state expired)
    rec = record(r)
    # When a stage begins on it
    begun = begin(rec, "job-x")
    # Then it is gone, and Redis still holds no record, no active entry and no lease for it
    assert begun == Begun("gone")
    assert not r.exists(keys.run(RUN))
    assert r.zscore(keys.active_runs(), RUN) is None


@pytest.mark.parametrize("state", [RunState.SUCCEEDED, RunState.FAILED, RunState.FAILING])
def test_begin_on_a_run_that_ended_or_is_being_compensated_is_ended(r, store, job, state):
    # Given a run that succeeded, failed, or is failing (compensation removes what it made)
    if state == RunState.FAILING:
        store.update_run(RUN, state=state.value)
    else:
        store.finish_run(RUN, state, job)
    before = run_hash(r)
    # When a late copy of a stage begins on it
    begun = begin(record(r), job, index=3, stage="export")
    # Then it is turned away, and the record is as it was (no lease, no state, no stage)
    assert begun == Begun("ended")
    assert run_hash(r) == before


def test_begin_of_a_stage_the_run_moved_past_is_late(r, job):
    # Given a run whose stage 2 finished
    rec = record(r)
    assert begin(rec, job, index=2, stage="disks").outcome == "work"
    rec.finish(2, {"step": 2})
    before = run_hash(r)
    # When a copy of its stage 1 begins
    begun = begin(record(r), job, index=1, stage="skeleton")
    # Then it is late, and touches nothing
    assert begun == Begun("late")
    assert run_hash(r) == before


def test_begin_of_a_stage_that_finished_already_hands_its_recorded_context_on(r, job):
    # Given a run whose stage 1 finished with a context
    rec = record(r)
    assert begin(rec, job, index=1, stage="skeleton").outcome == "work"
    ctx = {"run": RUN, "vm": {"uuid": VM_UUID}, "snapshot": "OpaqueRef:s1", "sizes": [1, 2]}
    rec.finish(1, ctx)
    before = run_hash(r)
    # When another delivery of stage 1 begins (its next stage may never have been sent)
    begun = begin(record(r), job, index=1, stage="skeleton", worker="w2@host")
    # Then it is handed the recorded context, and takes no lease
    assert begun == Begun("handoff", ctx)
    assert run_hash(r) == before


def test_begin_while_another_copy_holds_a_live_lease_is_busy(r, job):
    # Given a stage at work under one delivery's lease
    first = record(r)
    assert begin(first, job).outcome == "work"
    before = run_hash(r)
    # When a duplicate delivery of the same stage (or the next one) begins
    second = record(r)
    # Then it is busy, and the first delivery's lease, worker and task stay
    assert begin(second, job, worker="w2@host", task_id="task-2") == Begun("busy")
    assert begin(second, job, index=1, stage="skeleton") == Begun("busy")
    assert run_hash(r) == before
    assert run_hash(r)["lease"] == first.token


def test_a_lease_that_expired_is_taken_over(r, job):
    # Given a delivery that began with a short lease and died (stopped renewing)
    dead = record(r, lease_s=SHORT_LEASE_S)
    assert begin(dead, job).outcome == "work"
    time.sleep(SHORT_LEASE_S * 3)
    # When another delivery of the stage begins
    alive = record(r)
    begun = begin(alive, job, worker="w2@host", task_id="task-2")
    # Then it works under its own lease (the dead one's renewals and releases no longer count)
    assert begun.outcome == "work"
    rec = run_hash(r)
    assert (rec["lease"], rec["worker"], rec["task_id"]) == (alive.token, "w2@host", "task-2")
    assert not dead.renew()
    dead.release()
    assert run_hash(r)["lease"] == alive.token


def test_an_aborted_job_stops_only_a_stage_that_obeys_aborts(r, store, job):
    # Given a job whose abort was asked for
    assert store.abort(job, "alice")
    assert r.hexists(keys.job(job), "aborted")
    before = run_hash(r)
    # When a stage that obeys aborts begins
    begun = begin(record(r), job, obeys_abort=True)
    # Then it is aborted, and takes no lease
    assert begun == Begun("aborted")
    assert run_hash(r) == before
    # When cleanup (which does not obey aborts: the backup is complete) begins
    rec = record(r)
    # Then it works
    assert begin(rec, job, index=5, stage="cleanup", obeys_abort=False).outcome == "work"
    assert run_hash(r)["lease"] == rec.token


def test_a_job_that_was_not_aborted_does_not_stop_a_stage(r, job):
    assert begin(record(r), job, obeys_abort=True).outcome == "work"


# -- begin: work -------------------------------------------------------------------------------------
def test_begin_work_takes_the_lease_and_marks_the_run_running_at_its_stage(r, store, job):
    # Given a queued run, with progress figures left by an earlier stage
    store.update_run(RUN, bytes=123, rate=45, progress=0.5)
    rec = record(r)
    time.sleep(0.02)  # so that begin's touch is later than the plan's and the update's
    t0 = now_ms()
    # When its stage 3 begins
    begun = begin(rec, job, index=3, stage="vifs", worker="w1@host", task_id="task-9")
    t1 = now_ms()
    # Then this delivery works, under its lease for lease_s
    assert begun == Begun("work", None, again=False)
    h = run_hash(r)
    assert h["lease"] == rec.token
    assert t0 + LEASE_S * 1000 <= float(h["lease_until"]) <= t1 + LEASE_S * 1000
    # and the run is running at that stage, on that worker and task, its figures reset
    assert (h["state"], h["stage"], h["started"], h["worker"], h["task_id"]) == \
        ("running", "vifs", "3", "w1@host", "task-9")
    assert (h["bytes"], h["rate"], h["progress"]) == ("0", "0", "0")
    assert t0 / 1000 <= float(h["touched"]) <= t1 / 1000
    # and the run is in the active index, scored by that time
    assert t0 / 1000 <= r.zscore(keys.active_runs(), RUN) <= t1 / 1000
    # and what the plan wrote is kept
    assert (h["job"], h["pool"], h["vm_uuid"], h["mode"]) == (job, POOL, VM_UUID, "export")
    assert lease_held(h)


def test_begin_work_without_a_task_id_records_an_empty_one(r, job):
    assert begin(record(r), job, task_id=None).outcome == "work"
    assert run_hash(r)["task_id"] == ""


def test_begin_work_renews_the_vm_lock_only_when_the_run_holds_it(r, job):
    # Given the VM's lock held by this run, about to expire
    r.set(VM_LOCK, RUN, ex=5)
    # When a stage begins
    assert begin(record(r), job, vm_lock_ttl_s=3600).outcome == "work"
    # Then the lock is this run's for the chain's TTL again
    assert r.get(VM_LOCK) == RUN
    assert 3590 < r.ttl(VM_LOCK) <= 3600


def test_begin_work_leaves_another_runs_vm_lock_alone(r, job):
    # Given the VM's lock held by another run
    r.set(VM_LOCK, OTHER_RUN, ex=5)
    # When a stage of this run begins
    assert begin(record(r), job, vm_lock_ttl_s=3600).outcome == "work"
    # Then the other run's lock is neither taken nor prolonged
    assert r.get(VM_LOCK) == OTHER_RUN
    assert r.ttl(VM_LOCK) <= 5


def test_begin_work_creates_no_vm_lock(r, job):
    # Given no lock on the VM (it expired)
    # When a stage begins
    assert begin(record(r), job).outcome == "work"
    # Then begin does not take one (the plan does, with VmLocks)
    assert not r.exists(VM_LOCK)


def test_begin_work_gives_a_record_without_ttl_one_and_keeps_an_existing_ttl(r, job):
    # Given a record that lost its TTL (written by something that set none)
    r.persist(keys.run(RUN))
    # When a stage begins
    assert begin(record(r, ttl_s=1234), job).outcome == "work"
    # Then the record gets the record's TTL
    assert 1230 <= r.ttl(keys.run(RUN)) <= 1234
    # and a later begin does not change a TTL it has
    r.expire(keys.run(RUN), 99)
    rec = record(r, ttl_s=5000)
    assert begin(rec, job, index=0).outcome == "busy"  # the first delivery's lease is live
    r.hset(keys.run(RUN), mapping={"lease": "", "lease_until": 0})
    assert begin(rec, job).outcome == "work"
    assert r.ttl(keys.run(RUN)) <= 99


def test_again_is_false_on_a_stages_first_begin_and_true_on_a_second(r, job):
    # Given a run whose stage 0 begins for the first time
    first = record(r)
    assert begin(first, job) == Begun("work", None, again=False)
    # When that delivery dies (its lease let go, or expired) and another delivery of stage 0 begins
    first.release()
    second = record(r)
    # Then the stage is begun again: an earlier delivery may have left work behind
    assert begin(second, job, worker="w2@host") == Begun("work", None, again=True)
    # and the same delivery beginning once more (its lease is its own) is again too
    assert begin(second, job, worker="w2@host") == Begun("work", None, again=True)
    # When stage 0 finishes and stage 1 begins
    second.finish(0, {"step": 0})
    third = record(r)
    # Then stage 1's first begin is not again
    assert begin(third, job, index=1, stage="skeleton") == Begun("work", None, again=False)


# -- finish ----------------------------------------------------------------------------------------
def test_finish_records_the_stage_and_its_context_and_lets_its_lease_go(r, job):
    # Given a stage at work
    rec = record(r)
    assert begin(rec, job, index=2, stage="disks").outcome == "work"
    time.sleep(0.02)  # so that the finish's touch is later than the begin's
    t0 = now_ms()
    # When it finishes with a context
    rec.finish(2, {"disks": ["OpaqueRef:d1"], "n": 1})
    t1 = now_ms()
    # Then the record holds the stage's index and its context, and no lease
    h = run_hash(r)
    assert (h["done"], json.loads(h["ctx"])) == ("2", {"disks": ["OpaqueRef:d1"], "n": 1})
    assert (h["lease"], h["lease_until"]) == ("", "0")
    assert not lease_held(h)
    assert rec.progress() == (2, {"disks": ["OpaqueRef:d1"], "n": 1})
    # and it was touched then, in the record and in the active index
    assert t0 / 1000 <= float(h["touched"]) <= t1 / 1000
    assert t0 / 1000 <= r.zscore(keys.active_runs(), RUN) <= t1 / 1000


def test_finish_never_goes_backwards(r, job):
    # Given a run whose stage 3 finished
    rec = record(r)
    assert begin(rec, job, index=3, stage="vifs").outcome == "work"
    rec.finish(3, {"step": 3})
    # When a late copy of stage 1 finishes (it began before stage 3 did)
    late = record(r)
    late.finish(1, {"step": 1})
    # Then done and ctx stay those of stage 3; the same stage finishing twice changes nothing
    assert record(r).progress() == (3, {"step": 3})
    rec.finish(3, {"step": "3 again"})
    assert record(r).progress() == (3, {"step": 3})


def test_finish_by_another_delivery_leaves_the_working_ones_lease(r, job):
    # Given a stage at work under one delivery's lease
    working = record(r)
    assert begin(working, job, index=1, stage="skeleton").outcome == "work"
    lease_until = run_hash(r)["lease_until"]
    # When a copy whose lease expired and was taken over finishes stage 0
    stale = record(r)
    stale.finish(0, {"step": 0})
    # Then its stage is recorded (it is done), but the working delivery's lease stays
    h = run_hash(r)
    assert h["done"] == "0"
    assert (h["lease"], h["lease_until"]) == (working.token, lease_until)


def test_finish_on_a_run_without_a_record_creates_nothing(r):
    # Given no record for the run (its state expired)
    # When a late stage finishes
    record(r).finish(4, {"late": True})
    # Then no record is made (it would have no TTL), and the active index is not fed
    assert not r.exists(keys.run(RUN))
    assert r.zscore(keys.active_runs(), RUN) is None


def test_finish_after_the_run_ended_does_not_put_it_back_in_the_active_index(r, store, job):
    # Given a stage at work on a run that then ended (out of the active index)
    rec = record(r)
    assert begin(rec, job).outcome == "work"
    store.finish_run(RUN, RunState.FAILED, job, error="gave up")
    assert r.zscore(keys.active_runs(), RUN) is None
    # When the stage finishes late
    rec.finish(0, {"step": 0})
    # Then the run stays out of the active index
    assert r.zscore(keys.active_runs(), RUN) is None


# -- renew, release --------------------------------------------------------------------------------
def test_renew_is_for_the_lease_holder_only(r, job):
    # Given a stage at work under a lease
    holder = record(r, lease_s=2.0)
    assert begin(holder, job).outcome == "work"
    until = float(run_hash(r)["lease_until"])
    # When another delivery renews
    # Then it is refused, and the lease is unchanged
    assert not record(r).renew()
    assert (run_hash(r)["lease"], float(run_hash(r)["lease_until"])) == (holder.token, until)
    # When the holder renews (later)
    time.sleep(0.02)
    t0 = now_ms()
    assert holder.renew()
    # Then its lease runs lease_s from now
    assert float(run_hash(r)["lease_until"]) >= t0 + 2000 > until
    # and once let go, it cannot be renewed
    holder.release()
    assert not holder.renew()
    assert run_hash(r)["lease"] == ""


def test_release_is_for_the_lease_holder_only(r, job):
    # Given a stage at work under a lease
    holder = record(r)
    assert begin(holder, job).outcome == "work"
    before = run_hash(r)
    # When another delivery releases
    record(r).release()
    # Then the lease stays
    assert run_hash(r) == before
    # When the holder releases (a failure, a wait for a slot)
    holder.release()
    # Then the lease is free, and nothing else changes (no done, no ctx)
    after = run_hash(r)
    assert (after["lease"], after["lease_until"]) == ("", "0")
    assert "done" not in after and "ctx" not in after
    assert {k: v for k, v in after.items() if k not in ("lease", "lease_until")} == \
        {k: v for k, v in before.items() if k not in ("lease", "lease_until")}
    # and another delivery may begin
    assert begin(record(r), job).outcome == "work"


# -- take (compensation) ---------------------------------------------------------------------------
def test_take_is_refused_on_a_run_without_a_record(r):
    assert not record(r).take()
    assert not r.exists(keys.run(RUN))


def test_take_gets_a_free_lease_and_holds_off_the_stages(r, store, job):
    # Given a run nobody works on
    comp = record(r)
    t0 = now_ms()
    # When compensation takes it
    assert comp.take()
    # Then it holds the lease for lease_s
    h = run_hash(r)
    assert h["lease"] == comp.token
    assert float(h["lease_until"]) >= t0 + LEASE_S * 1000
    # and a stage copy that begins now is busy
    assert begin(record(r), job) == Begun("busy")
    # and compensation may take its own lease again (a retry of the same delivery)
    assert comp.take()


def test_take_waits_for_a_stage_at_work_and_takes_over_an_expired_lease(r, job):
    # Given a stage at work under a live lease
    stage = record(r, lease_s=SHORT_LEASE_S)
    assert begin(stage, job).outcome == "work"
    # When compensation asks for the run
    comp = record(r)
    # Then it is refused while the lease is live
    assert not comp.take()
    assert run_hash(r)["lease"] == stage.token
    # and granted once it expired
    time.sleep(SHORT_LEASE_S * 3)
    assert comp.take()
    assert run_hash(r)["lease"] == comp.token
    assert not stage.renew()


def test_take_works_on_a_failing_run(r, store, job):
    # Given a run that gave up (compensation's own state)
    store.update_run(RUN, state=RunState.FAILING.value)
    # Then compensation takes its lease, and stage copies are turned away
    comp = record(r)
    assert comp.take()
    assert begin(record(r), job) == Begun("ended")
    comp.release()
    assert run_hash(r)["lease"] == ""


# -- progress, lease_held --------------------------------------------------------------------------
def test_progress_of_a_run_with_no_finished_stage(r, job):
    assert record(r).progress() == (-1, None)
    assert record(r, run="no-such-run").progress() == (-1, None)


@pytest.mark.parametrize("rec,now,held", [
    ({}, 100.0, False),
    ({"lease": "", "lease_until": "200000"}, 100.0, False),
    ({"lease": "tok", "lease_until": "0"}, 100.0, False),
    ({"lease": "tok"}, 100.0, False),
    ({"lease": "tok", "lease_until": "99999"}, 100.0, False),
    ({"lease": "tok", "lease_until": "100000"}, 100.0, False),
    ({"lease": "tok", "lease_until": "100001"}, 100.0, True),
    ({"lease": "tok", "lease_until": 200000}, 100.0, True),
], ids=["no-lease", "empty-token", "released", "no-until", "expired", "expires-now", "live", "live-int"])
def test_lease_held(rec, now, held):
    """lease_until is in milliseconds, now in seconds."""
    assert lease_held(rec, now) is held


def test_lease_held_defaults_to_now(r, job):
    rec = record(r, lease_s=SHORT_LEASE_S)
    assert begin(rec, job).outcome == "work"
    assert lease_held(run_hash(r))
    time.sleep(SHORT_LEASE_S * 3)
    assert not lease_held(run_hash(r))
