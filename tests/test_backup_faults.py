"""Failures end to end: XAPI faults injected in the simulator, real workers, the real CLI.

Given two simulated pools, two worker processes and the test retry policy
(max_retries = 3, backoff well under a second):
- a transient failure at any stage is retried and the job still ends with
  exactly one complete backup and nothing of tinabs left on the pools;
- a permanent failure fails that VM only, with a reason naming the stage and
  the XAPI code, and compensation removes everything the run made;
- a failure that never clears is given up after the configured retries;
- compensation can run again (even twice at once) without breaking anything,
  and never deletes a backup that succeeded.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers.backup_checks import assert_clean as _assert_clean
from helpers.backup_checks import assert_one_backup as _assert_one_backup
from helpers.backup_checks import files_of as _files_of
from helpers.backup_checks import pool_objects_of as _pool_objects_of
from helpers.backup_checks import run_id as _run_id
from helpers.pool_checks import litter

DEPLOYMENT_SIM_ARGS = ("--pools", "2", "--vms-per-pool", "4", "--disk-mib", "8")
POOL = "pool-a"
VM = "db-01"  # unique name in pool-a; a data disk, a CD drive and VIFs: every stage has work
MAX_RETRIES = 3  # tests/helpers/deployment.py TEST_TUNING

BACKEND_FULL = ["SR_BACKEND_FAILURE_44", "", "insufficient space"]
BUSY_VM = ["OTHER_OPERATION_IN_PROGRESS", "VM", "OpaqueRef:busy", "clean_shutdown"]
BUSY_VDI = ["OTHER_OPERATION_IN_PROGRESS", "VDI", "OpaqueRef:busy", "snapshot"]
SR_FULL = ["SR_FULL", "8388608", "0"]
DENIED = ["PERMISSION_DENIED", "the session's role lacks this permission"]
BAD_POWER = ["VM_BAD_POWER_STATE", "OpaqueRef:x", "halted", "running"]
BOTH = ("export", "sr-copy")


def _cases(stage, modes, fault, *extra):
    return [pytest.param(stage, mode, fault, *extra, id=f"{stage}-{fault.get('method') or fault['handler']}-{mode}")
            for mode in modes]


# stage -> the XAPI call it makes, failing once with an error xapi reports for a busy or blinking pool
TRANSIENT = [
    *_cases("snapshot", BOTH, {"method": "VDI.snapshot", "error": BACKEND_FULL}),
    *_cases("skeleton", BOTH, {"method": "VM.create", "error": ["TOO_MANY_PENDING_TASKS"]}),
    *_cases("disks", BOTH, {"method": "VDI.create", "error": BACKEND_FULL}),
    *_cases("disks", ("export",), {"method": "VDI.clone", "error": BUSY_VDI}),
    *_cases("vifs", BOTH, {"method": "VIF.create", "error": BUSY_VM}),
    *_cases("export", ("export",), {"handler": "/export", "drop_after_bytes": 100_000}),
    *_cases("copy", ("sr-copy",), {"method": "VDI.copy", "error": BACKEND_FULL}),
    *_cases("metadata", ("sr-copy",), {"handler": "/export_metadata", "drop_after_bytes": 1000}),
    *_cases("cleanup", BOTH, {"method": "VM.destroy", "error": BUSY_VM}),
    *_cases("cleanup", BOTH, {"method": "VDI.destroy", "error": ["VDI_IN_USE", "OpaqueRef:x", "destroy"]}),
]

# stage -> a failure retrying cannot fix, and the XAPI code the reason must name
PERMANENT = [
    *_cases("snapshot", ("export",), {"method": "VDI.snapshot", "error": ["HANDLE_INVALID", "VDI", "OpaqueRef:x"],
                                      "arg": f"{VM} system"}, "HANDLE_INVALID"),
    *_cases("skeleton", ("sr-copy",), {"method": "VM.create", "error": DENIED}, "PERMISSION_DENIED"),
    *_cases("disks", ("export",), {"method": "VDI.create", "error": SR_FULL}, "SR_FULL"),
    *_cases("disks", ("export",), {"method": "VDI.clone", "error": SR_FULL}, "SR_FULL"),
    *_cases("vifs", ("sr-copy",), {"method": "VIF.create", "error": DENIED}, "PERMISSION_DENIED"),
    *_cases("export", ("export",), {"handler": "/export", "error": BAD_POWER}, "VM_BAD_POWER_STATE"),
    *_cases("copy", ("sr-copy",), {"method": "VDI.copy", "error": SR_FULL}, "SR_FULL"),
    *_cases("metadata", ("sr-copy",), {"handler": "/export_metadata", "error": BAD_POWER}, "VM_BAD_POWER_STATE"),
    *_cases("cleanup", BOTH, {"method": "VM.destroy", "error": DENIED}, "PERMISSION_DENIED"),
]


@pytest.fixture
def dep(deployment):
    """The deployment, with no fault left behind by (or for) another test."""
    deployment.sim.clear_faults()
    yield deployment
    deployment.sim.clear_faults()


# -- helpers ------------------------------------------------------------------
# -- 1. transient faults are retried -------------------------------------------
@pytest.mark.parametrize("stage,mode,fault", TRANSIENT)
def test_transient_fault_at_each_stage_is_retried(dep, stage, mode, fault):
    # Given a fault that fails the stage's XAPI call once, with an error xapi calls transient
    dep.sim.add_fault({**fault, "pool": POOL, "times": 1})
    before = set(dep.files())
    # When one VM is backed up
    code, job = dep.backup("--vm", VM, "--pool", POOL, "--mode", mode, timeout=90)
    # Then the fault fired (times=1 faults are gone once used) and the stage was retried once
    assert dep.sim.faults() == [], "the fault never fired: the test would prove nothing"
    (run,) = job["runs"]
    assert code == 0 and run["state"] == "succeeded", run
    assert run["retries"] == "1", run
    # And there is exactly one backup of the VM, no partial file, and nothing left on the pools
    _assert_one_backup(dep, run)
    new = set(dep.files()) - before
    assert len(new) == 2, sorted(new)
    _assert_clean(dep, new)


# -- 2. permanent faults fail one VM only ---------------------------------------
@pytest.mark.parametrize("stage,mode,fault,code", PERMANENT)
def test_permanent_fault_at_each_stage_fails_that_vm_only(dep, stage, mode, fault, code):
    # Given a fault that fails the stage's XAPI call for one VM, with an error retrying cannot fix
    dep.sim.add_fault({**fault, "pool": POOL, "times": 1})
    before = set(dep.files())
    # When every VM of the pool is backed up
    status, job = dep.backup("--all", "--pool", POOL, "--mode", mode, timeout=120)
    assert dep.sim.faults() == [], "the fault never fired: the test would prove nothing"
    # Then the job fails (non-zero exit) with exactly one failed VM, the others backed up
    assert status != 0 and len(job["runs"]) >= 2
    failed = [r for r in job["runs"] if r["state"] != "succeeded"]
    assert len(failed) == 1, [(r["vm_name"], r["state"], r.get("error")) for r in job["runs"]]
    (bad,) = failed
    if "arg" in fault:
        assert bad["vm_name"] == VM
    for run in job["runs"]:
        if run is not bad:
            _assert_one_backup(dep, run)
    # And `tinabs status` says why: the stage, the XAPI code and what to do, with no retry
    shown = next(r for r in dep.status(job["id"])["runs"] if r["vm_uuid"] == bad["vm_uuid"])
    assert shown["state"] == "failed" and shown.get("compensation") == "done", shown
    assert shown["error"].startswith(f"{stage}: ") and code in shown["error"] and " — " in shown["error"], shown
    assert shown.get("failed_stage") == stage and "retries" not in shown, shown
    # And the failed VM has no file at all in the destination and nothing left on the pools, not even a copy
    assert _files_of(dep, bad) == []
    assert _pool_objects_of(dep, bad) == []
    new = set(dep.files()) - before
    assert len(new) == 2 * (len(job["runs"]) - 1), sorted(new)
    _assert_clean(dep, new)


@pytest.mark.parametrize("error,succeeds", [(BUSY_VDI, True), (DENIED, False)], ids=["transient", "permanent"])
def test_a_snapshot_that_could_not_be_marked_is_not_left_behind(dep, error, succeeds):
    # Given marking the new snapshot fails once: until marked it has only the system disk's name
    system = next(r for r in dep.sim.state()["pools"][POOL]["VDI"].values() if r["name_label"] == f"{VM} system")
    snapshots_before = len(system["snapshots"])
    dep.sim.add_fault({"method": "VDI.set_other_config", "arg": f"{VM} system", "error": error, "pool": POOL,
                       "times": 1})
    # When the VM is backed up
    status, job = dep.backup("--vm", VM, "--pool", POOL, "--mode", "export", timeout=90)
    assert dep.sim.faults() == [], "the fault never fired: the test would prove nothing"
    (run,) = job["runs"]
    assert (status == 0) == succeeds and run["state"] == ("succeeded" if succeeds else "failed"), run
    # Then no snapshot of the system disk is left behind, marked or not
    after = dep.sim.state()["pools"][POOL]["VDI"]
    system = next(r for r in after.values() if r["uuid"] == system["uuid"])
    assert len(system["snapshots"]) == snapshots_before, [after[s]["name_label"] for s in system["snapshots"]]
    assert litter(dep.sim.state()) == {}


# -- 3. retries are bounded ------------------------------------------------------
@pytest.mark.parametrize("stage,mode,fault", [
    pytest.param("vifs", "export", {"method": "VIF.create", "error": BUSY_VM}, id="vifs-busy"),
    pytest.param("export", "export", {"handler": "/export", "drop_after_bytes": 50_000}, id="export-cut"),
])
def test_a_fault_that_never_clears_fails_the_vm_after_the_configured_retries(dep, stage, mode, fault):
    # Given a transient-looking fault that never clears
    dep.sim.add_fault({**fault, "pool": POOL})
    before = set(dep.files())
    # When one VM is backed up
    status, job = dep.backup("--vm", VM, "--pool", POOL, "--mode", mode, timeout=90)
    # Then the stage ran once plus max_retries times, and no more
    (fault_state,) = dep.sim.faults()
    assert fault_state["fired"] == 1 + MAX_RETRIES
    # And the VM failed with the reason and the number of retries
    (run,) = job["runs"]
    assert status != 0 and run["state"] == "failed" and run["retries"] == str(MAX_RETRIES), run
    assert run["error"].startswith(f"{stage}: ") and f"after {MAX_RETRIES} retries" in run["error"], run
    # And compensation left nothing: no file (partial or not), nothing on the pools
    assert run.get("compensation") == "done", run
    new = set(dep.files()) - before
    assert new == set()
    _assert_clean(dep, new)
    # And no empty VM folder is left behind (a folder the failed export made holds nothing)
    assert [d for d in dep.dest.glob("*/*") if d.is_dir() and not any(d.iterdir())] == []


# -- 4. compensation is idempotent -------------------------------------------------
SEND_COMPENSATE = """
import json, sys
from tinabs_tasks.tasks.backup import CFG, compensate
ctx, reason, copies = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
sent = [compensate.apply_async((ctx, reason), queue=CFG.pool(ctx["pool"]).queue) for _ in range(copies)]
print(json.dumps([r.get(timeout=60) for r in sent]))  # raises if any copy failed
"""


def _compensate(dep, run: dict, copies: int) -> list[dict]:
    """Send `tinabs.compensate` for ``run`` as tinabs does, through the broker, to the real workers."""
    ctx = {"job": run["job"], "run": _run_id(run), "pool": run["pool"], "mode": run["mode"],
           "vm": {"uuid": run["vm_uuid"], "name": run["vm_name"]}, "stamp": run["stamp"],
           "refs": {}, "timings": {}, "failures": {}}
    proc = subprocess.run([sys.executable, "-c", SEND_COMPENSATE, json.dumps(ctx), "sent again by a test",
                           str(copies)], env=dep.env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, f"compensation failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


def _plant_crash_leftovers(dep, run: dict, count: int) -> None:
    """Objects of the run a worker crash left behind: found again by marker or by name only."""
    rid = _run_id(run)
    session = dep.sim.session(POOL)
    try:
        x = session.xenapi
        sr = x.SR.get_by_name_label("nfs-shared")[0]
        for i in range(count):
            marker = {"tinabs:run": rid} if i % 2 else {}
            x.VDI.create({"name_label": f"[tinabs] {run['vm_name']} leftover {i} {rid}", "name_description": "",
                          "SR": sr, "virtual_size": str(1 << 20), "type": "user", "sharable": False,
                          "read_only": False, "other_config": marker, "sm_config": {}, "xenstore_data": {},
                          "tags": []})
    finally:
        session.xenapi.session.logout()


def test_compensation_runs_again_safely_and_never_touches_a_good_backup(dep):
    # Given a VM whose sr-copy backup failed permanently late (after its copy was made) and was compensated
    dep.sim.add_fault({"handler": "/export_metadata", "error": BAD_POWER, "pool": POOL, "times": 1})
    status, job = dep.backup("--vm", VM, "--pool", POOL, "--mode", "sr-copy", timeout=90)
    (run,) = job["runs"]
    assert status != 0 and run["state"] == "failed" and run.get("compensation") == "done", run
    assert _pool_objects_of(dep, run) == [] and _files_of(dep, run) == []
    # And leftovers of that run appear, as a crash mid-compensation would leave them
    _plant_crash_leftovers(dep, run, 6)
    assert len(_pool_objects_of(dep, run)) == 6
    others = {cls: len(objs) for cls, objs in dep.sim.state()["pools"][POOL].items() if cls in ("VM", "VDI")}
    # When compensation for that run is sent again, twice at once, and then once more
    first = _compensate(dep, run, copies=2)
    again = _compensate(dep, run, copies=1)
    # Then every copy succeeds, the leftovers are gone (each removed by exactly one copy), nothing else touched
    assert sum(len(r["removed"]) for r in first) == 6 and again[0]["removed"] == []
    assert _pool_objects_of(dep, run) == [] and litter(dep.sim.state()) == {}
    now = {cls: len(objs) for cls, objs in dep.sim.state()["pools"][POOL].items() if cls in ("VM", "VDI")}
    assert now == {"VM": others["VM"], "VDI": others["VDI"] - 6}
    # And the run keeps its first, real reason
    shown = next(r for r in dep.status(job["id"])["runs"])
    assert shown["state"] == "failed" and shown["error"] == run["error"] and shown["error"].startswith("metadata: ")

    # Given a VM backed up successfully
    status, good_job = dep.backup("--vm", VM, "--pool", POOL, "--mode", "sr-copy", timeout=90)
    (good,) = good_job["runs"]
    assert status == 0
    _assert_one_backup(dep, good)
    # When a stray compensation for that run arrives
    (result,) = _compensate(dep, good, copies=1)
    # Then the backup, its manifest and its kept copy are untouched, and the run still succeeded
    assert result["removed"] == [] and result["files"] == []
    _assert_one_backup(dep, dep.status(good_job["id"])["runs"][0])
