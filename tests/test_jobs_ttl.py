"""Job and run state expire: held while the job runs, the state TTL once it has ended.

Against a real Redis (the module's private redis-server), through JobStore as
the tasks and the CLI use it.
"""
from __future__ import annotations

import time

import pytest
import redis

from tinabs_tasks.runs import keys
from tinabs_tasks.runs.store import JobStore, RunState

TTL_S = 30


@pytest.fixture
def r(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


def job_keys(job: str, runs: list[str]) -> list[str]:
    return [keys.job(job), keys.job_runs(job), keys.job_ended(job), *(keys.run(x) for x in runs)]


def start_job(store: JobStore, pools: list[str], runs_by_pool: dict[str, list[str]]) -> str:
    job = store.create_job({"all": True}, "export", pools)
    for pool, runs in runs_by_pool.items():
        for run in runs:
            assert store.create_run(run, {"job": job, "pool": pool, "vm_uuid": run, "vm_name": run})
    return job


def test_state_is_held_while_the_job_runs_and_gets_the_ttl_when_it_ends(r):
    store = JobStore(r, TTL_S)
    a, b = f"a{time.time_ns()}", f"b{time.time_ns()}"
    job = start_job(store, ["p1", "p2"], {"p1": [a], "p2": [b]})
    store.pool_planned(job, [a], ["a note"])
    # When one run ends while a pool is still to be planned, and then the other pool is planned
    store.finish_run(a, RunState.SUCCEEDED)
    store.pool_planned(job, [b], [])
    # Then nothing of the job has the short TTL yet: b is still queued
    assert all(r.ttl(k) > TTL_S for k in job_keys(job, [a, b]) + [keys.job_notes(job)])
    # When the last run ends
    store.finish_run(b, RunState.FAILED, error="boom")
    # Then every key of the job, its runs and the index expire within the TTL
    for key in job_keys(job, [a, b]) + [keys.job_notes(job), keys.jobs_index()]:
        assert 0 < r.ttl(key) <= TTL_S, key
    assert store.job(job)["done"]


def test_a_job_whose_runs_end_before_its_last_pool_is_planned_gets_the_ttl_at_that_plan(r):
    store = JobStore(r, TTL_S)
    a = f"a{time.time_ns()}"
    job = start_job(store, ["p1", "p2"], {"p1": [a]})
    store.pool_planned(job, [a], [])
    store.finish_run(a, RunState.SUCCEEDED)
    assert r.ttl(keys.job(job)) > TTL_S
    # When the last pool is planned with no VM
    store.pool_planned(job, [], ["pool `p2`: no VM matches"])
    assert all(0 < r.ttl(k) <= TTL_S for k in job_keys(job, [a]) + [keys.job_notes(job)])


def test_a_late_write_to_expired_state_expires_too(r):
    store = JobStore(r, TTL_S)
    # Given a run whose state is gone (expired), when a late copy of a stage writes to it
    run = f"gone{time.time_ns()}"
    store.update_run(run, state=RunState.RUNNING.value, stage="export")
    # Then the re-created key expires within the TTL instead of living forever
    assert 0 < r.ttl(keys.run(run)) <= TTL_S


def test_the_index_drops_jobs_whose_state_expired_and_expires_with_the_last(r):
    short = JobStore(r, 1)
    old_run, new_run = f"o{time.time_ns()}", f"n{time.time_ns()}"
    old = start_job(short, ["p1"], {"p1": [old_run]})
    short.pool_planned(old, [old_run], [])
    short.finish_run(old_run, RunState.SUCCEEDED)
    time.sleep(2.1)  # the old job's state expires
    new = start_job(short, ["p1"], {"p1": [new_run]})
    assert old in r.zrange(keys.jobs_index(), 0, -1)  # listed until a job ends and tidies the index
    short.pool_planned(new, [new_run], [])
    short.finish_run(new_run, RunState.SUCCEEDED)
    listed = r.zrange(keys.jobs_index(), 0, -1)
    assert old not in listed and new in listed
    assert 0 < r.ttl(keys.jobs_index()) <= max(r.ttl(keys.job(j)) for j in listed)
