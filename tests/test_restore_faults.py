"""The fault matrix for restore: each fault, for a backup of each mode, on real workers.

A restore is one task (`tinabs.restore`) that imports the backup (``/import``
for an export backup, ``/import_metadata`` after cloning the kept copy for an
sr-copy backup).  Whatever happens, it ends with exactly one restored VM and
nothing else of tinabs on the pool, or with a clear failure and nothing at all.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from helpers.deployment import FAULT_TUNING, VISIBILITY_S, Deployment
from helpers.procs import finish
from helpers.pool_checks import litter

POOL = "pool-a"
VM = "db-01"
SIM_ARGS = ("--pools", "1", "--vms-per-pool", "4", "--disk-mib", "8")
HANDLER = {"export": "/import", "sr-copy": "/import_metadata"}
MODES = ("export", "sr-copy")


@pytest.fixture(scope="module")
def deployment(redis_server, tmp_path_factory):
    dep = Deployment(tmp_path_factory.mktemp("restore-matrix"), redis_server, SIM_ARGS, tuning=FAULT_TUNING)
    try:
        dep.start_worker("rm1")
        dep.start_worker("rm2")
        yield dep
    finally:
        dep.stop()


@pytest.fixture(scope="module")
def backups(deployment) -> dict[str, str]:
    """One backup of the VM per mode: mode -> data file."""
    out = {}
    for mode in MODES:
        code, job = deployment.backup("--vm", VM, "--pool", POOL, "--mode", mode)
        assert code == 0, job
        out[mode] = job["runs"][0]["path"]
    return out


@pytest.fixture
def dep(deployment):
    deployment.sim.clear_faults()
    deployment.workers = [w for w in deployment.workers if w.proc.poll() is None]
    while len(deployment.workers) < 2:
        deployment.start_worker(f"rm{time.monotonic_ns()}")
    yield deployment
    deployment.sim.clear_faults()


def _vms(dep) -> dict[str, dict]:
    return {v["uuid"]: v for v in dep.sim.state()["pools"][POOL]["VM"].values()}


def _start_restore(dep, path: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "restore", path, "--pool", POOL, "--json"],
                            env=dep.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout: float = 150) -> tuple[int, str, str]:
    return finish(proc, "the restore", timeout)


def _assert_one_restored(dep, before: dict, code: int, out: str, err: str) -> dict:
    assert code == 0, f"exit {code}\n{out}\n{err}"
    result = json.loads(out)
    new = set(_vms(dep)) - set(before)
    assert new == {result["uuid"]}, [(_vms(dep)[u]["name_label"]) for u in new]
    assert _vms(dep)[result["uuid"]]["name_label"].startswith(f"{VM} (restored ")
    assert litter(dep.sim.state()) == {}
    return result


def _assert_failed_clean(dep, before: dict, code: int, err: str, reason: str) -> None:
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tinabs: restore failed: ") and reason in last, last
    assert "Traceback" not in err
    assert set(_vms(dep)) == set(before)
    assert litter(dep.sim.state()) == {}


# -- 1-4: XAPI errors, cut transfers, expired sessions ----------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("effect", [
    pytest.param({"error": ["SR_BACKEND_FAILURE_44", "", "insufficient space"]}, id="transient"),
    pytest.param({"drop_after_bytes": 2000}, id="cut"),
    pytest.param({"expire_sessions": True}, id="session-expired"),
])
def test_a_restore_rides_out_a_passing_fault(dep, backups, mode, effect):
    # Given the import fails once (a transient error, a connection cut mid-upload, an expired session)
    dep.sim.add_fault({"handler": HANDLER[mode], **effect, "pool": POOL, "times": 1})
    before = _vms(dep)
    # When the backup is restored
    code, out, err = _finish(_start_restore(dep, backups[mode]))
    # Then the fault fired and there is exactly one restored VM, nothing else
    assert dep.sim.faults() == [], "the fault never fired"
    _assert_one_restored(dep, before, code, out, err)


@pytest.mark.parametrize("mode", MODES)
def test_a_restore_that_cannot_succeed_fails_clearly_and_leaves_nothing(dep, backups, mode):
    dep.sim.add_fault({"handler": HANDLER[mode], "error": ["SR_FULL", "8388608", "0"], "pool": POOL})
    before = _vms(dep)
    code, _out, err = _finish(_start_restore(dep, backups[mode]))
    _assert_failed_clean(dep, before, code, err, "SR_FULL")


# -- 5: the worker dies mid-import -----------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_a_worker_killed_mid_restore_is_replaced_and_one_vm_is_restored(dep, backups, mode):
    # Given the import takes 2 s, so the worker can be caught inside it
    dep.sim.add_fault({"handler": HANDLER[mode], "delay_s": 2.0, "pool": POOL, "times": 1})
    before = _vms(dep)
    proc = _start_restore(dep, backups[mode])
    dep.sim.wait_fired()
    # When every worker process is killed with SIGKILL (the restore runs on one of them) and a new one starts
    for worker in list(dep.workers):
        worker.kill()
        dep.workers.remove(worker)
    dep.start_worker(f"rm{time.monotonic_ns()}")
    # Then the restore's message comes back after the visibility timeout, and one VM is restored
    code, out, err = _finish(proc)
    _assert_one_restored(dep, before, code, out, err)


# -- 7: the pool goes away for a while ----------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_a_pool_unreachable_mid_restore_is_waited_for(dep, backups, mode):
    dep.sim.add_fault({"handler": HANDLER[mode], "delay_s": 1.0, "pool": POOL, "times": 1})
    before = _vms(dep)
    proc = _start_restore(dep, backups[mode])
    dep.sim.wait_fired()
    assert dep.sim.control_call("POST", f"/sim/pools/{POOL}/offline", {"seconds": 4})[0] == 200
    code, out, err = _finish(proc)
    _assert_one_restored(dep, before, code, out, err)


# -- 8: slower than the visibility timeout -----------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_a_restore_slower_than_the_visibility_timeout_imports_once(dep, backups, mode):
    dep.sim.add_fault({"handler": HANDLER[mode], "delay_s": VISIBILITY_S * 2 + 2, "pool": POOL})
    before = _vms(dep)
    logs_from = {w.name: w.log_path.stat().st_size for w in dep.workers}
    code, out, err = _finish(_start_restore(dep, backups[mode]), timeout=180)
    (fault,) = dep.sim.faults()
    assert fault["fired"] == 1, fault  # one import, though Redis handed the task out again
    _assert_one_restored(dep, before, code, out, err)
    received = []
    for w in dep.workers:
        with open(w.log_path, "rb") as fh:
            fh.seek(logs_from.get(w.name, 0))
            received += re.findall(r"Task tinabs\.restore\[([0-9a-f-]+)\] received", fh.read().decode(errors="replace"))
    assert any(received.count(task) >= 2 for task in received), received
