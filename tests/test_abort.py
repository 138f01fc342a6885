"""Aborting a job (`tinabs abort`; the web console's Abort calls the same function).

Real workers, a private Redis and the simulator: a job of every VM of a pool is
aborted while one export is stalled inside the pool and the others wait for
their stages.  The stalled export's XAPI task is cancelled (not waited out),
the pending chains do no work, every run ends failed with the reason
"aborted", and compensation leaves nothing on the pool or in the destination.
"""
from __future__ import annotations

import json
import time

import pytest

from helpers.backup_checks import assert_clean
from helpers.deployment import Deployment

POOL = "pool-a"
SIM_ARGS = ("--pools", "1", "--vms-per-pool", "5", "--disk-mib", "4")
STALL_S = 120  # far longer than the test waits: only a cancelled task ends it in time


@pytest.fixture(scope="module")
def dep(redis_server, tmp_path_factory):
    d = Deployment(tmp_path_factory.mktemp("abort"), redis_server, SIM_ARGS)
    try:
        d.start_worker("a1", concurrency=2)
        yield d
    finally:
        d.stop()


def test_abort_cancels_the_running_export_stops_pending_chains_and_leaves_the_pool_clean(dep):
    # Given every export stalls inside the pool, and a job of every VM of the pool is running
    dep.sim.add_fault({"handler": "/export", "delay_s": STALL_S, "pool": POOL})
    before = set(dep.files())
    started = dep.cli("backup", "--all", "--pool", POOL, "--mode", "export", "--json", check=True)
    job = json.loads(started.stdout)["job"]
    dep.sim.wait_fired(timeout=90)
    # When the job is aborted
    began = time.monotonic()
    proc = dep.cli("abort", job, "--wait", "--timeout", "90", timeout=120)
    took = time.monotonic() - began
    # Then it ends, long before the stalled export would have: the export's XAPI task was cancelled
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert took < STALL_S / 2, took
    assert any("cancelled 1 XAPI task(s)" in w.log_path.read_text() for w in dep.workers)
    state = dep.status(job)
    assert state["done"] and not state["succeeded"]
    assert state["aborted"] and "(cli)" in state["aborted_by"]
    runs = state["runs"]
    assert len(runs) == 5
    # every run failed with the reason, the exporting one at export, the pending ones earlier
    assert all(r["state"] == "failed" and r["error"].startswith("aborted by ") for r in runs), runs
    assert all(r["compensation"] == "done" for r in runs), runs
    stages = {r["failed_stage"] for r in runs}
    assert "export" in stages and stages - {"export"}, stages
    # And nothing of the job is left on the pool or in the destination
    dep.sim.clear_faults()
    new = set(dep.files()) - before
    assert not new, sorted(new)
    assert_clean(dep, new)


def test_abort_of_an_unknown_or_ended_job_says_so(dep):
    proc = dep.cli("abort", "nosuchjob")
    assert proc.returncode == 2 and "no job 'nosuchjob'" in proc.stderr, proc.stderr
    code, job = dep.backup("--vm", "db-01", "--pool", POOL)
    assert code == 0, job
    proc = dep.cli("abort", job["id"])
    assert proc.returncode == 0 and "already ended; nothing to abort" in proc.stdout, proc.stdout
    assert not dep.status(job["id"]).get("aborted")


def test_a_run_that_finished_its_backup_keeps_it(dep):
    # Given a VM whose export is written and whose manifest is being written (the call for the
    # pool's version, slowed down in the pool): what is left is the cleanup stage
    dep.sim.clear_faults()
    dep.sim.add_fault({"method": "host.get_software_version", "delay_s": 3.0, "pool": POOL, "times": 1})
    before = set(dep.files())
    started = dep.cli("backup", "--vm", "db-01", "--pool", POOL, "--json", check=True)
    job = json.loads(started.stdout)["job"]
    dep.sim.wait_fired()
    # When the job is aborted then
    proc = dep.cli("abort", job, "--wait", "--timeout", "60", timeout=90)
    # Then the run still cleans up and its backup stays: one .xva and its manifest, nothing on the pool
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = dep.status(job)["runs"]
    assert run["state"] == "succeeded", run
    new = set(dep.files()) - before
    assert sorted(p.suffix for p in new) == [".json", ".xva"], sorted(new)
    assert_clean(dep, new)
