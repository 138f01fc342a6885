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

Every faulted night is an incremental one: the module's first (good, full) night gives the VM
its base, and the VM's system disk drifts a little before each case, so the store stage reads
the VHD delta against the base (its fault is on ``/export_raw_vdi``).  The worker is also
killed in cleanup between promoting the night's base and destroying the old one.

After each good run: exactly one backup of the VM (one manifest, no data file, one index whose
rebuilt stream has the manifest's size, and sha256 or the backup it was built from), no index
without a manifest in the repository and nothing under a block's real name that does not open,
nothing of tinabs left on the pools but one base per VM, and `tinabs list` and `tinabs status`
agree.  The base rules after every case, failed or not: exactly one base per backed-up VM, its
backup in the repository, the disk that backup's index describes byte-identical to the base (a
base is never a wrong disk); a good night is incremental on the previous one, its index holds
the VM's disk of that night and its snapshot is the VM's base now.  Last, after the whole
matrix: one more night of every VM of the pool, and nothing of tinabs on any pool but one base
per backed-up VM.
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
from helpers.fault_matrix import drift_system_disk, kill_the_worker_of, start_backup
from helpers.persistent_redis import PersistentRedis
from helpers.pool_checks import backupable_vms, litter, tinabs_objects
from helpers.repo_checks import assert_bases_sound, assert_night_kept, assert_one_repo_backup, assert_repo_consistent
from helpers.repo_checks import pool_bases, repo_run_id
from test_redis_restart import TUNING as REDIS_RESTART_TUNING  # the same Redis-restart tuning

from tinabs_tasks.backup.modes import MODES
from tinabs_tasks.repo.index import list_backups

EVERY_STAGE = [pytest.param(stage, id=stage) for stage in MODES["repo"]]
#: where a delta of the VM's whole system disk (8.4 MB: four 2 MiB VHD blocks) is cut: past two blocks
DELTA_CUT = 5_000_000


@pytest.fixture(scope="module")
def deployment(redis_server, tmp_path_factory):
    with matrix_deployment(redis_server, tmp_path_factory, "matrix-repo", repository=True) as dep:
        # a good night first: the VM's base, so that every faulted night is an incremental one
        code, job = finish_backup(start_backup(dep, "repo"))
        (run,) = job["runs"]
        assert code == 0 and run["backup_kind"] == "full", job
        assert_bases_sound(dep)
        yield dep


@pytest.fixture
def dep(deployment):
    with fresh(deployment) as one:
        drift_system_disk(one)  # the night's delta against the base is not empty
        yield one


def _vm_base(dep) -> dict:
    """The VM's one base (after ``assert_bases_sound``)."""
    (base,) = [b for b in pool_bases(dep.sim.state()) if b["vm"] == _vm_uuid(dep)]
    return base


def _vm_uuid(dep) -> str:
    return next(v["uuid"] for v in backupable_vms(dep.sim.state(), POOL) if v["name_label"] == VM)


def _previous_night(before: set[Path]) -> dict:
    """The newest manifest of the VM among the files ``before`` the night: the night its base is from."""
    manifests = [json.loads(p.read_text()) for p in before if p.suffix == ".json"]
    return max((m for m in manifests if m["vm"]["name"] == VM and m["pool"] == POOL and m["mode"] == "repo"),
               key=lambda m: (m["created"], m["completed"]))


def _assert_settled(dep, code: int, job: dict, before: set[Path]) -> dict:
    """One good repo backup, nothing else anywhere, and the catalog and status agree; the night
    was incremental on the previous one and its snapshot is the VM's one base, the disk its index holds."""
    (run,) = job["runs"]
    assert code == 0 and run["state"] == "succeeded", run
    assert_one_repo_backup(dep, run)
    new = set(dep.files()) - before
    assert [p.name for p in new] == [Path(run["manifest"]).name], sorted(new)  # the manifest, nothing else
    assert litter(dep.sim.state()) == {}
    assert_repo_consistent(dep)
    assert_bases_sound(dep)
    manifest, _base = assert_night_kept(dep, run)
    previous = _previous_night(before)
    assert (manifest["backup_kind"], manifest.get("base_backup"), manifest.get("chain")) == \
        ("incremental", previous["backup_id"], previous["chain"] + 1), (manifest.get("full_reason"), previous)
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


def test_a_worker_killed_between_promoting_the_base_and_retiring_the_old_one(dep):
    # Given a pool slow to destroy the VM's base: cleanup's call once the night's base is promoted
    old = _vm_base(dep)
    dep.sim.add_fault({"method": "VDI.destroy", "arg": old["uuid"], "delay_s": 30.0, "pool": POOL, "times": 1})
    before = set(dep.files())
    proc = start_backup(dep, "repo")
    dep.sim.wait_fired()
    # When the worker is killed there, the VM having two bases: the night's and the old one
    run = current_run(dep)
    assert run["stage"].startswith("cleanup"), run
    both = sorted(b["backup"] for b in pool_bases(dep.sim.state()) if b["vm"] == old["vm"])
    assert both == sorted([old["backup"], f"{run['stamp']}-{run['id']}"]), both
    kill_the_worker_of(dep, run)
    # Then the redelivered cleanup destroys the old one (the pool's stalled call is still asleep):
    # one base, the night's
    code, job = finish_backup(proc)
    _assert_settled(dep, code, job, before)


def test_a_stream_cut_on_every_attempt_fails_the_run_and_leaves_no_index(dep):
    # Given a VM whose disk changed everywhere since earlier tests stored it (so its blocks are new)
    status, _ = dep.sim.control_call("POST", "/sim/drift", {"fraction": 1.0, "seed": time.time_ns(), "pool": POOL})
    assert status == 200
    base = _vm_base(dep)
    # And a pool that cuts every delta of the system disk past its second VHD block (their changed
    # chunks stored by then), and every full export stream after 5.5 MB of its 6.3 (the store
    # stage's last attempts, once DELTA_ATTEMPTS deltas failed, back up in full)
    dep.sim.add_fault({**STAGE_CALL["store"], "drop_after_bytes": DELTA_CUT, "pool": POOL})
    dep.sim.add_fault({"handler": "/export", "drop_after_bytes": 5_500_000, "pool": POOL})
    before_files = set(dep.files())
    blocks_before = _block_files(dep)
    code, job = finish_backup(start_backup(dep, "repo"), timeout=180)
    # Then the run fails at the store stage once its retries are spent, and compensation ran
    (run,) = job["runs"]
    assert code == 1 and run["state"] == "failed" and run["failed_stage"] == "store", run
    assert int(run["retries"]) >= 1 and run.get("compensation") == "done", run
    delta, export = dep.sim.faults()
    assert delta["fired"] >= 2 and export["fired"] >= 1, (delta, export)
    # And it left no manifest and no index, nothing on the pool; what it stored are orphan blocks
    assert set(dep.files()) == before_files
    assert litter(dep.sim.state()) == {}
    assert_repo_consistent(dep)
    assert _block_files(dep) > blocks_before, "no block was stored before the cut: the test would prove little"
    # And the VM's base is the one it had, still the disk of its backup: the next night builds on it
    assert_bases_sound(dep)
    assert _vm_base(dep) == base


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
        # Given 3 VMs backed up once in repo mode (each has its base), whose system disks then drift
        code, job = dep.backup("--all", "--pool", POOL, "--mode", "repo")
        assert code == 0 and len(job["runs"]) == 3, job
        first = {vm: base["backup"] for vm, base in assert_bases_sound(dep).items()}
        status, drifted = dep.sim.control_call("POST", "/sim/drift", {"fraction": 0.5, "seed": 11, "pool": POOL})
        assert status == 200 and len(drifted["vdis"]) == 3, drifted
        before = set(dep.files())
        # And a repo job over them whose deltas start slowly, so stores are mid-way when Redis goes
        dep.sim.add_fault({**STAGE_CALL["store"], "delay_s": 1.5, "pool": POOL})
        waiting = subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "backup", "--all", "--pool", POOL,
                                    "--mode", "repo", "--wait", "--json"], env=dep.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        dep.sim.wait_fired()
        # When Redis dies (SIGKILL) and comes back two seconds later from its append-only file
        server.kill()
        time.sleep(2)
        server.start()
        code, job = finish_backup(waiting, timeout=240)
        # Then every VM has exactly one repo backup of the night, and the repository holds nothing else indexed
        assert code == 0 and len(job["runs"]) == 3, job
        for run in job["runs"]:
            assert_one_repo_backup(dep, run)
        assert len(set(dep.files()) - before) == 3 and len(dep.files()) == 6
        assert_repo_consistent(dep)
        assert litter(dep.sim.state()) == {}
        # And each VM has one base: that night's snapshot, the disk its backup holds; each night
        # says how it was taken (incremental, or full and why)
        assert_bases_sound(dep)
        for run in job["runs"]:
            manifest, _base = assert_night_kept(dep, run)
            assert manifest["backup_kind"] == "full" or manifest["base_backup"] == first[run["vm_uuid"]], manifest
        logs = "".join(w.log_path.read_text(errors="replace") for w in dep.workers)
        assert "Connection to broker lost" in logs or "Cannot connect to redis" in logs, logs[-3000:]
    finally:
        dep.stop()
        server.stop()


def test_after_the_whole_matrix_a_night_of_every_vm_leaves_one_base_each_and_nothing_else(dep):
    """Last: Xen Orchestra's most common complaint is leftover snapshots."""
    # Given the whole matrix run on the VM (whose disk drifted since: the `dep` fixture)
    before = set(dep.files())
    # When every VM of the pool is backed up in repo mode
    code, job = dep.backup("--all", "--pool", POOL, "--mode", "repo")
    assert code == 0, job
    vms = {v["uuid"]: v["name_label"] for v in backupable_vms(dep.sim.state(), POOL)}
    assert sorted(r["vm_uuid"] for r in job["runs"]) == sorted(vms), job
    # Then the matrix's VM is backed up incrementally on its last night, every other VM in full
    # (its first backup) saying so; each night's index holds its disk, its snapshot is the VM's base
    previous = _previous_night(before)
    for run in job["runs"]:
        assert_one_repo_backup(dep, run)
        manifest, _base = assert_night_kept(dep, run)
        if vms[run["vm_uuid"]] == VM:
            assert (manifest["backup_kind"], manifest.get("base_backup")) == ("incremental", previous["backup_id"]), \
                manifest.get("full_reason")
        else:
            assert manifest["backup_kind"] == "full" and "first backup" in manifest["full_reason"], manifest
    assert_repo_consistent(dep)
    # And on every pool nothing of tinabs but one base per backed-up VM
    assert sorted(assert_bases_sound(dep)) == sorted(vms)
    objects = tinabs_objects(dep.sim.state())
    assert list(objects) == ["VDI"], {cls: [rec.get("name_label") for _p, _r, rec in found]
                                      for cls, found in objects.items()}
    roles = sorted((rec["other_config"].get("tinabs:role"), rec["other_config"].get("tinabs:vm"))
                   for _pool, _ref, rec in objects["VDI"])
    assert roles == sorted(("base", vm) for vm in vms), roles
