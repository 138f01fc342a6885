"""What the fault matrix modules share (test_fault_matrix.py, and its repo-mode twin
test_fault_matrix_repo.py): the VM they back up, where each stage meets the pool, and how a
backup is started, followed and caught mid-stage."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time

from tinabs_tasks.backup.modes import MODES

from .deployment import FAULT_TUNING, Deployment
from .procs import finish
from .xapi_http import guest_write

POOL = "pool-a"
VM = "db-01"  # a data disk, a CD drive and VIFs: every stage has work
SIM_ARGS = ("--pools", "2", "--vms-per-pool", "4", "--disk-mib", "8")
#: a call each stage makes to the pool: where a fault meets the stage
STAGE_CALL = {
    "snapshot": {"method": "VDI.snapshot"},
    "skeleton": {"method": "VM.create"},
    "disks": {"method": "VDI.create"},
    "vifs": {"method": "VIF.create"},
    "export": {"handler": "/export"},
    # repo mode, an incremental night (the VM has a base): the VHD delta of the system disk
    # against its base, stored into the repository (a full night streams /export)
    "store": {"handler": "/export_raw_vdi"},
    "copy": {"method": "VDI.copy"},
    "metadata": {"handler": "/export_metadata"},
    "cleanup": {"method": "VM.destroy"},
}
assert all(stage in STAGE_CALL for stages in MODES.values() for stage in stages)


@contextlib.contextmanager
def matrix_deployment(redis_server, tmp_path_factory, name: str, *, repository: bool = False):
    """Simulator + the module's private Redis + 2 workers (+ a repository), a short visibility
    timeout and lease: the deployment of a fault-matrix module."""
    dep = Deployment(tmp_path_factory.mktemp(name), redis_server, SIM_ARGS, tuning=FAULT_TUNING,
                     repository=repository)
    try:
        for worker in ("m1", "m2"):
            dep.start_worker(worker)
        yield dep
    finally:
        dep.stop()


@contextlib.contextmanager
def fresh(deployment):
    """The deployment for one case: no fault injected, two workers running."""
    deployment.sim.clear_faults()
    keep_two_workers(deployment)
    yield deployment
    deployment.sim.clear_faults()


def keep_two_workers(dep) -> None:
    dep.workers = [w for w in dep.workers if w.proc.poll() is None]
    while len(dep.workers) < 2:
        dep.start_worker(f"m{time.monotonic_ns()}")


def start_backup(dep, mode: str, vm: str = VM) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "backup", "--vm", vm, "--pool", POOL,
                             "--mode", mode, "--wait", "--json"], env=dep.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish_backup(proc: subprocess.Popen, timeout: float = 150) -> tuple[int, dict]:
    code, out, err = finish(proc, "the job", timeout)
    try:
        return code, json.loads(out)
    except ValueError:
        raise AssertionError(f"no JSON from tinabs backup (exit {code}):\n{out}\n{err}") from None


def system_disk_uuid(dep, vm: str = VM, pool: str = POOL) -> str:
    """The uuid of the VDI at userdevice 0 of the VM named ``vm`` (its system disk)."""
    objects = dep.sim.state()["pools"][pool]
    (rec,) = [v for v in objects["VM"].values() if v["name_label"] == vm and not v["is_a_snapshot"]
              and not v["is_a_template"]]
    (vdi,) = [objects["VBD"][b]["VDI"] for b in rec["VBDs"]
              if objects["VBD"][b]["userdevice"] == "0" and objects["VBD"][b]["type"] == "Disk"]
    return objects["VDI"][vdi]["uuid"]


def drift_system_disk(dep, vm: str = VM, pool: str = POOL) -> str:
    """A little of a night's work on the VM's system disk (guest writes of bytes never written
    before, in two chunks), so that a delta against its base is not empty; its sha256 after."""
    uuid = system_disk_uuid(dep, vm, pool)
    before = dep.sim.vdi_info(uuid)["sha256"]
    stamp = b"night %d " % time.time_ns()
    for offset in ((1 << 20) + 4096, (5 << 20) + 512):
        guest_write(dep.sim, uuid, offset, stamp * 64)
    after = dep.sim.vdi_info(uuid)["sha256"]
    assert after != before, "the drift changed nothing: the night's delta would be empty"
    return after


def current_run(dep) -> dict:
    """The run of the newest job (a job of one VM)."""
    r = dep.redis
    job = r.zrevrange("tinabs:jobs", 0, 0)[0]
    (rid,) = r.smembers(f"tinabs:job:{job}:runs")
    return r.hgetall(f"tinabs:run:{rid}")


def kill_the_worker_of(dep, run: dict) -> None:
    """SIGKILL the worker doing ``run``'s stage (its PID as the run records it), with its parent
    worker, as a power cut would; a new worker takes its place."""
    pid = int(run["worker"].rsplit(":", 1)[1])
    (victim,) = [w for w in dep.workers if pid in w.child_pids() or pid == w.proc.pid]
    victim.kill()
    dep.workers.remove(victim)
    dep.start_worker(f"replacement{time.monotonic_ns()}")
