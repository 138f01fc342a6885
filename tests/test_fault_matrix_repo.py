"""The fault matrix's repo-mode column: each fault of test_fault_matrix.py at every stage of repo mode.

With real workers, a real Redis, the simulator and an encrypted repository, at each stage of
repo mode (snapshot, skeleton, disks, vifs, store, cleanup):

- the pool's sessions expire just as the stage calls the pool: a new login, no retry used up;
- the pool goes away (connection refused, open connections reset) while the stage talks to it,
  then comes back: the run waits for it and succeeds;
- the worker doing the stage is killed with SIGKILL (and its parent: a power cut) and a new
  worker is started: the stage's message is redelivered and the chain completes.

And for the store stage: a worker killed after the index is saved and before the manifest is
written leaves a backup the redelivered store completes; a store that outlives the visibility
timeout runs once; a stream cut
on every attempt fails the run for good, leaving no index and no manifest (its blocks are
orphans for GC); the Redis server killed and restarted mid-store loses nothing.

After each good run: exactly one backup of the VM (one manifest, no data file, one index whose
rebuilt stream has the manifest's size and sha256), no index without a manifest in the
repository and nothing under a block's real name that does not open, nothing of tinabs left
on the pools, and `tinabs list` and `tinabs status` agree.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.deployment import VISIBILITY_S, Deployment
from helpers.fault_matrix import POOL, STAGE_CALL, VM, current_run, finish_backup, fresh, matrix_deployment
from helpers.fault_matrix import kill_the_worker_of, start_backup
from helpers.persistent_redis import PersistentRedis
from helpers.pool_checks import litter
from helpers.repo_checks import assert_one_repo_backup, assert_repo_consistent, repo_run_id
from test_redis_restart import TUNING as REDIS_RESTART_TUNING  # the same Redis-restart tuning

from tinabs_tasks.backup.modes import MODES
from tinabs_tasks.repo.index import list_backups

EVERY_STAGE = [pytest.param(stage, id=stage) for stage in MODES["repo"]]


@pytest.fixture(scope="module")
def deployment(redis_server, tmp_path_factory):
    with matrix_deployment(redis_server, tmp_path_factory, "matrix-repo", repository=True) as dep:
        yield dep


@pytest.fixture
def dep(deployment):
    with fresh(deployment) as one:
        yield one


def _assert_settled(dep, code: int, job: dict, before: set[Path]) -> dict:
    """One good repo backup, nothing else anywhere, and the catalog and status agree."""
    (run,) = job["runs"]
    assert code == 0 and run["state"] == "succeeded", run
    assert_one_repo_backup(dep, run)
    new = set(dep.files()) - before
    assert [p.name for p in new] == [Path(run["manifest"]).name], sorted(new)  # the manifest, nothing else
    assert litter(dep.sim.state()) == {}
    assert_repo_consistent(dep)
    listed = json.loads(dep.cli("list", "--pool", POOL, "--vm", VM, "--json", check=True).stdout)
    mine = [b for b in listed if b["run"] == repo_run_id(run)]
    assert len(mine) == 1 and mine[0]["status"] == "complete", mine
    assert (mine[0]["backup_id"], mine[0]["stored_bytes"]) == (run["backup_id"], int(run["stored_bytes"])), mine
    status = dep.status(job["id"])
    assert status["done"] and [r["state"] for r in status["runs"]] == ["succeeded"], status
    return run


@pytest.mark.parametrize("stage", EVERY_STAGE)
def test_sessions_expiring_at_a_stage_cost_a_login_not_a_retry(dep, stage):
    dep.sim.add_fault({**STAGE_CALL[stage], "expire_sessions": True, "pool": POOL, "times": 1})
    before = set(dep.files())
    code, job = finish_backup(start_backup(dep, "repo"))
    assert dep.sim.faults() == [], "the sessions never expired: the test would prove nothing"
    run = _assert_settled(dep, code, job, before)
    assert "retries" not in run, run


@pytest.mark.parametrize("stage", EVERY_STAGE)
def test_a_pool_unreachable_during_a_stage_is_waited_for(dep, stage):
    dep.sim.add_fault({**STAGE_CALL[stage], "delay_s": 1.0, "pool": POOL, "times": 1})
    before = set(dep.files())
    proc = start_backup(dep, "repo")
    dep.sim.wait_fired()
    status, _ = dep.sim.control_call("POST", f"/sim/pools/{POOL}/offline", {"seconds": 4})
    assert status == 200
    code, job = finish_backup(proc)
    _assert_settled(dep, code, job, before)


@pytest.mark.parametrize("stage", EVERY_STAGE)
def test_a_worker_killed_mid_stage_is_replaced_and_the_chain_completes(dep, stage):
    dep.sim.add_fault({**STAGE_CALL[stage], "delay_s": 2.0, "pool": POOL, "times": 1})
    before = set(dep.files())
    proc = start_backup(dep, "repo")
    dep.sim.wait_fired()
    run = current_run(dep)
    assert run["stage"].startswith(stage), run
    kill_the_worker_of(dep, run)
    code, job = finish_backup(proc)
    _assert_settled(dep, code, job, before)


def test_a_worker_killed_between_the_index_and_the_manifest_finishes_the_backup(dep):
    # Given the manifest's write is slow (its one call to the pool, after the index is saved)
    dep.sim.add_fault({"method": "host.get_software_version", "delay_s": 2.0, "pool": POOL, "times": 1})
    before = set(dep.files())
    proc = start_backup(dep, "repo")
    dep.sim.wait_fired()
    # When the worker is killed there: its index is in the repository, its manifest is not
    run = current_run(dep)
    assert run["stage"].startswith("store"), run
    bid = f"{run['stamp']}-{run['id']}"
    assert bid in list_backups(dep.open_repo()) and set(dep.files()) == before
    kill_the_worker_of(dep, run)
    # Then the redelivered store finds the index, writes the manifest, and the backup is whole
    code, job = finish_backup(proc)
    settled = _assert_settled(dep, code, job, before)
    assert settled["backup_id"] == bid


def test_a_store_slower_than_the_visibility_timeout_runs_once(dep):
    # Given the export stream takes longer to start than the broker's visibility timeout, so Redis
    # hands the store's message to the other worker while the first still works on it
    dep.sim.add_fault({**STAGE_CALL["store"], "delay_s": VISIBILITY_S * 2 + 2, "pool": POOL})
    before = set(dep.files())
    logs_from = {w.name: w.log_path.stat().st_size for w in dep.workers}
    code, job = finish_backup(start_backup(dep, "repo"), timeout=180)
    # Then the stream was asked for once, and there is one backup, one index
    (fault,) = dep.sim.faults()
    assert fault["fired"] == 1, fault
    _assert_settled(dep, code, job, before)
    # And the redelivery really happened
    received = []
    for w in dep.workers:
        with open(w.log_path, "rb") as fh:
            fh.seek(logs_from.get(w.name, 0))
            received += re.findall(r"Task tinabs\.store\[([0-9a-f-]+)\] received", fh.read().decode(errors="replace"))
    assert any(received.count(task) >= 2 for task in received), received


def test_a_stream_cut_on_every_attempt_fails_the_run_and_leaves_no_index(dep):
    # Given a VM whose disk changed everywhere since earlier tests stored it (so its blocks are new)
    status, _ = dep.sim.control_call("POST", "/sim/drift", {"fraction": 1.0, "seed": time.time_ns(), "pool": POOL})
    assert status == 200
    # And a pool that cuts every export stream after 5.5 MB of its 6.3 (changed blocks stored by then)
    dep.sim.add_fault({**STAGE_CALL["store"], "drop_after_bytes": 5_500_000, "pool": POOL})
    before_files = set(dep.files())
    blocks_before = _block_files(dep)
    code, job = finish_backup(start_backup(dep, "repo"), timeout=180)
    # Then the run fails at the store stage once its retries are spent, and compensation ran
    (run,) = job["runs"]
    assert code == 1 and run["state"] == "failed" and run["failed_stage"] == "store", run
    assert int(run["retries"]) >= 1 and run.get("compensation") == "done", run
    (fault,) = dep.sim.faults()
    assert fault["fired"] >= 2, fault
    # And it left no manifest and no index, nothing on the pool; what it stored are orphan blocks
    assert set(dep.files()) == before_files
    assert litter(dep.sim.state()) == {}
    assert_repo_consistent(dep)
    assert _block_files(dep) > blocks_before, "no block was stored before the cut: the test would prove little"


def _block_files(dep) -> set[str]:
    return {p.name for p in (Path(dep.repo_path) / "blocks").rglob("*") if p.is_file()}




def test_a_redis_restart_mid_store_loses_nothing_and_duplicates_nothing(tmp_path):
    server = PersistentRedis(tmp_path / "redis")
    server.dir.mkdir()
    server.start()
    dep = Deployment(tmp_path / "deploy", server, ("--pools", "1", "--vms-per-pool", "3", "--disk-mib", "8"),
                     tuning=REDIS_RESTART_TUNING, repository=True)
    try:
        dep.start_worker("r1")
        dep.start_worker("r2")
        # Given a repo job over 3 VMs whose streams start slowly, so stores are mid-way when Redis goes
        dep.sim.add_fault({"handler": "/export", "delay_s": 1.5, "pool": POOL})
        waiting = subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "backup", "--all", "--pool", POOL,
                                    "--mode", "repo", "--wait", "--json"], env=dep.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        dep.sim.wait_fired()
        # When Redis dies (SIGKILL) and comes back two seconds later from its append-only file
        server.kill()
        time.sleep(2)
        server.start()
        code, job = finish_backup(waiting, timeout=240)
        # Then every VM has exactly one repo backup, and the repository holds nothing else indexed
        assert code == 0 and len(job["runs"]) == 3, job
        for run in job["runs"]:
            assert_one_repo_backup(dep, run)
        assert len(dep.files()) == 3
        assert_repo_consistent(dep)
        assert litter(dep.sim.state()) == {}
        logs = "".join(w.log_path.read_text(errors="replace") for w in dep.workers)
        assert "Connection to broker lost" in logs or "Cannot connect to redis" in logs, logs[-3000:]
    finally:
        dep.stop()
        server.stop()
