"""The fault matrix: at every stage of both modes, what happens in real data centres.

Transient and permanent XAPI errors and cut transfers per stage are in
test_backup_faults.py, and repo mode's column of this matrix in test_fault_matrix_repo.py.
This module, with real workers, a real Redis and the simulator, covers the rest, each at
every stage of both modes:

- the pool's sessions expire just as the stage calls the pool: a new login, no retry used up;
- the pool goes away (connection refused, open connections reset) while the
  stage talks to it, then comes back: the run waits for it and succeeds;
- the worker doing the stage is killed with SIGKILL (the whole worker, as a
  power cut) and a new worker is started: the stage's message is redelivered
  after the (short, test) visibility timeout and the chain completes;
- a stage that outlives the visibility timeout while its worker is alive is
  redelivered, but never runs twice at once and never makes two files.

After each: exactly one backup of the VM, no partial file, nothing of tinabs
left on the pools, `tinabs list` and `tinabs status` agree with the files, and
the job is done.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.backup_checks import assert_clean, assert_one_backup, run_id
from helpers.deployment import VISIBILITY_S
from helpers.fault_matrix import POOL, STAGE_CALL, VM, current_run as _current_run, fresh, matrix_deployment
from helpers.fault_matrix import finish_backup as _finish
from helpers.fault_matrix import kill_the_worker_of, start_backup as _start_backup

STAGES = {
    "export": ("snapshot", "skeleton", "disks", "vifs", "export", "cleanup"),
    "sr-copy": ("snapshot", "skeleton", "disks", "vifs", "copy", "metadata", "cleanup"),
}
EVERY_STAGE = [pytest.param(stage, mode, id=f"{stage}-{mode}") for mode in STAGES for stage in STAGES[mode]]


@pytest.fixture(scope="module")
def deployment(redis_server, tmp_path_factory):
    with matrix_deployment(redis_server, tmp_path_factory, "matrix") as dep:
        yield dep


@pytest.fixture
def dep(deployment):
    with fresh(deployment) as one:
        yield one


# -- helpers ----------------------------------------------------------------------
def _assert_settled(dep, code: int, job: dict, before: set[Path]) -> dict:
    """One good backup, nothing else anywhere, and the catalog and status agree with the files."""
    (run,) = job["runs"]
    assert code == 0 and run["state"] == "succeeded", run
    assert_one_backup(dep, run)
    new = set(dep.files()) - before
    assert len(new) == 2, sorted(new)
    assert_clean(dep, new)
    listed = json.loads(dep.cli("list", "--pool", POOL, "--vm", VM, "--json", check=True).stdout)
    mine = [b for b in listed if b["run"] == run_id(run)]
    assert len(mine) == 1 and mine[0]["path"] == run["path"] and mine[0]["status"] == "complete", mine
    status = dep.status(job["id"])
    assert status["done"] and [r["state"] for r in status["runs"]] == ["succeeded"], status
    return run


# -- sessions expire mid-chain ---------------------------------------------------------
@pytest.mark.parametrize("stage,mode", EVERY_STAGE)
def test_sessions_expiring_at_a_stage_cost_a_login_not_a_retry(dep, stage, mode):
    # Given the pool's sessions expire just as the stage makes its call
    dep.sim.add_fault({**STAGE_CALL[stage], "expire_sessions": True, "pool": POOL, "times": 1})
    before = set(dep.files())
    # When the VM is backed up
    code, job = _finish(_start_backup(dep, mode))
    # Then the fault fired, the run logged in again and succeeded without using a retry
    assert dep.sim.faults() == [], "the sessions never expired: the test would prove nothing"
    run = _assert_settled(dep, code, job, before)
    assert "retries" not in run, run


# -- the pool goes away for a while ------------------------------------------------------
@pytest.mark.parametrize("stage,mode", EVERY_STAGE)
def test_a_pool_unreachable_during_a_stage_is_waited_for(dep, stage, mode):
    # Given the stage's call to the pool is slow, so the outage starts while the stage talks to the pool
    dep.sim.add_fault({**STAGE_CALL[stage], "delay_s": 1.0, "pool": POOL, "times": 1})
    before = set(dep.files())
    proc = _start_backup(dep, mode)
    dep.sim.wait_fired()
    # When the pool refuses connections (and resets open ones) for 4 seconds, longer than all the retries
    status, _ = dep.sim.control_call("POST", f"/sim/pools/{POOL}/offline", {"seconds": 4})
    assert status == 200
    code, job = _finish(proc)
    # Then the run waited for the pool and made exactly one backup, leaving nothing behind
    _assert_settled(dep, code, job, before)


def test_a_pool_unreachable_for_too_long_fails_the_vm_and_cleans_up_when_back(dep):
    # Given a pool that goes away mid-chain for longer than a stage waits (30 s in this config)...
    dep.sim.add_fault({"method": "VIF.create", "delay_s": 0.5, "pool": POOL, "times": 1})
    before = set(dep.files())
    proc = _start_backup(dep, "sr-copy")
    dep.sim.wait_fired()
    dep.sim.control_call("POST", f"/sim/pools/{POOL}/offline", {"seconds": 36})
    # ...but not longer than compensation waits (twice that)
    code, job = _finish(proc, timeout=180)
    # Then the VM failed, saying the pool did not answer, and compensation removed everything once it was back
    (run,) = job["runs"]
    assert code != 0 and run["state"] == "failed" and run.get("compensation") == "done", run
    assert "not answering" in run["error"] and "unreachable for" in run["error"], run["error"]
    assert set(dep.files()) == before
    assert_clean(dep, set())


# -- the worker dies mid-stage -------------------------------------------------------------
@pytest.mark.parametrize("stage,mode", EVERY_STAGE)
def test_a_worker_killed_mid_stage_is_replaced_and_the_chain_completes(dep, stage, mode):
    # Given the stage's call to the pool takes 2 s, so the worker can be caught inside it
    dep.sim.add_fault({**STAGE_CALL[stage], "delay_s": 2.0, "pool": POOL, "times": 1})
    before = set(dep.files())
    proc = _start_backup(dep, mode)
    dep.sim.wait_fired()
    # When the worker process doing the stage (its PID as the run records it) is killed with SIGKILL,
    # together with its parent worker, as a power cut would, and a new worker is started
    run = _current_run(dep)
    assert run["stage"].startswith(stage), run
    kill_the_worker_of(dep, run)
    # Then the stage's message comes back after the visibility timeout and the chain completes
    code, job = _finish(proc)
    _assert_settled(dep, code, job, before)


def test_a_worker_killed_holding_the_redelivery_lock_stalls_nothing_for_long(dep):
    # Given a worker killed mid-stage just as it looked for messages to hand out again, so the
    # lock kombu takes for that look stays in Redis as the dead worker set it
    lock_s = int(subprocess.run([sys.executable, "-c", "from tinabs_tasks.app import app; print("
                                 "app.conf.broker_transport_options['unacked_mutex_expire'])"],
                                env=dep.env, capture_output=True, text=True, check=True).stdout)
    dep.sim.add_fault({**STAGE_CALL["disks"], "delay_s": 2.0, "pool": POOL, "times": 1})
    before = set(dep.files())
    proc = _start_backup(dep, "export")
    dep.sim.wait_fired()
    pid = int(_current_run(dep)["worker"].rsplit(":", 1)[1])
    (victim,) = [w for w in dep.workers if pid in w.child_pids() or pid == w.proc.pid]
    victim.kill()
    dep.workers.remove(victim)
    dep.redis.set("unacked_mutex", "dead-worker", ex=lock_s)
    dep.start_worker(f"replacement{time.monotonic_ns()}")
    # Then the lock lapses soon and the stage is handed out again: the chain completes (kombu's
    # own 5-minute lock would outlast this wait)
    code, job = _finish(proc, timeout=90)
    _assert_settled(dep, code, job, before)


# -- a slow stage outlives the visibility timeout ---------------------------------------------
@pytest.mark.parametrize("stage,mode", [pytest.param("export", "export", id="export"),
                                        pytest.param("copy", "sr-copy", id="copy"),
                                        pytest.param("snapshot", "export", id="snapshot"),
                                        pytest.param("cleanup", "sr-copy", id="cleanup")])
def test_a_stage_slower_than_the_visibility_timeout_runs_once(dep, stage, mode):
    # Given the stage's call takes longer than the broker's visibility timeout, so Redis hands the
    # stage's message to the other worker while the first still works on it
    slow = VISIBILITY_S * 2 + 2
    dep.sim.add_fault({**STAGE_CALL[stage], "delay_s": slow, "pool": POOL})  # fires on every call
    before = set(dep.files())
    logs_from = {w.name: w.log_path.stat().st_size for w in dep.workers}
    proc = _start_backup(dep, mode)
    code, job = _finish(proc, timeout=180)
    # Then the call was made once: no second copy of the stage ran, at the same time or after
    (fault,) = dep.sim.faults()
    assert fault["fired"] == 1, fault
    # And there is one backup, no second file, nothing left
    _assert_settled(dep, code, job, before)
    # And the redelivery really happened: the stage's message was received again while it ran
    received = []
    for w in dep.workers:
        with open(w.log_path, "rb") as fh:
            fh.seek(logs_from.get(w.name, 0))
            received += re.findall(rf"Task tinabs\.{stage}\[([0-9a-f-]+)\] received", fh.read().decode(errors="replace"))
    assert any(received.count(task) >= 2 for task in received), received
