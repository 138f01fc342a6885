"""Progress a user and a monitoring tool can see while a backup runs, and the per-pool export limit.

Given a pool whose hosts stream exports at 8 MB/s (so a 64 MiB export takes
seconds), when a VM is backed up, then `tinabs status` shows the run in its
export stage with growing bytes and a rate, Celery's own monitoring shows a
`tinabs.export` task for that VM without the pool password, and `tinabs backup
--wait` ends with a readable summary.  With max_concurrent_exports = 1, at
most one export runs on the pool at any moment, and the job still completes.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from helpers import toml_write
from helpers.deployment import Deployment
from helpers.redis_proc import private_redis
from helpers.waiting import wait_for

DEPLOYMENT_SIM_ARGS = ("--pools", "1", "--vms-per-pool", "3", "--disk-mib", "64", "--host-bandwidth-mbps", "8")
MiB = 1 << 20
LIMIT_SIM_ARGS = ("--pools", "1", "--vms-per-pool", "3", "--disk-mib", "24", "--host-bandwidth-mbps", "8")


def _password(dep) -> str:
    path = toml_write.read(dep.config)["pools"]["pool-a"]["password_file"]
    password = Path(path).read_text().strip()
    assert password
    return password


def _unique_vm(dep) -> dict:
    vms = [r for r in dep.sim.state()["pools"]["pool-a"]["VM"].values()
           if not (r["is_a_template"] or r["is_a_snapshot"] or r["is_control_domain"])]
    names = [r["name_label"] for r in vms]
    return next(r for r in vms if names.count(r["name_label"]) == 1)


def _fill_system_disk(dep, vm: dict) -> int:
    """A guest write into every MiB of the system disk: no chunk is skipped as zero, so the
    export streams the whole disk (about 8 s at 8 MB/s), long enough to watch."""
    pool = dep.sim.state()["pools"]["pool-a"]
    vbd = next(pool["VBD"][b] for b in vm["VBDs"] if pool["VBD"][b]["userdevice"] == "0")
    uuid = pool["VDI"][vbd["VDI"]]["uuid"]
    size = int(dep.sim.vdi_info(uuid)["virtual_size"])
    for offset in range(512, size, MiB):
        status, body = dep.sim.control_call("POST", f"/sim/vdi/{uuid}/write", {"offset": offset, "hex": "5a"})
        assert status == 200, body
    return size


def _exporting(dep, job_id: str):
    (run,) = dep.status(job_id)["runs"] or [None]
    if run and run["state"] == "running" and run.get("stage") == "export" and int(run.get("bytes") or 0) > 0:
        return run
    return None


def test_progress_is_visible_while_exporting(deployment):
    dep = deployment
    vm = _unique_vm(dep)
    # Given a VM whose 64 MiB system disk holds data in every MiB
    assert _fill_system_disk(dep, vm) == 64 * MiB
    # And a backup of it, started without waiting
    started = dep.cli("backup", "--vm", vm["name_label"], "--pool", "pool-a", "--json", check=True)
    job_id = json.loads(started.stdout)["job"]
    # When its export is under way
    first = wait_for(lambda: _exporting(dep, job_id), 60, "the export stage with bytes")
    # Then Celery's monitoring lists the running `tinabs.export` task for this VM, without the password
    # (checked first: it is the slowest look, and the export lasts only seconds)
    inspect = subprocess.run([sys.executable, "-m", "celery", "-A", "tinabs_tasks", "inspect", "active", "--json",
                              "--timeout", "2"], env=dep.env, capture_output=True, text=True, timeout=60)
    assert inspect.returncode == 0, inspect.stdout + inspect.stderr
    active = [t for worker in json.loads(inspect.stdout).values() for t in worker]
    exports = [t for t in active if t["name"] == "tinabs.export"]
    assert len(exports) == 1, active
    args = json.dumps(exports[0]["args"])
    assert "pool-a" in args and vm["uuid"] in args
    assert _password(dep) not in inspect.stdout
    # And `tinabs status --json` shows it in stage export, with bytes growing and a rate
    later = wait_for(lambda: (r := _exporting(dep, job_id)) and int(r["bytes"]) > int(first["bytes"]) and r,
                      20, "more bytes")
    assert later["vm_uuid"] == vm["uuid"] and later["pool"] == "pool-a"
    assert int(later["rate"]) > 0
    assert int(later["rate"]) < 50e6, "the host streams at 8 MB/s: the rate must be about that, not absurd"
    # And the human `tinabs status JOB` prints a table row for it
    human = dep.cli("status", job_id, check=False)
    assert "Traceback" not in human.stderr
    rows = [line for line in human.stdout.splitlines() if line.startswith("pool-a") and vm["name_label"] in line]
    assert len(rows) == 1, human.stdout
    assert re.search(r"\brunning\s+export\b", rows[0]) and re.search(r"\d+(\.\d+)? [KMG]B/s", rows[0]), rows[0]
    # And the job then completes
    job = dep.wait_job(job_id, timeout=90)
    assert job["succeeded"], job["runs"]


def _config_with_limit(dep: Deployment, limit: int) -> None:
    data = toml_write.read(dep.config)
    data["pools"]["pool-a"]["max_concurrent_exports"] = limit
    toml_write.write(dep.config, data)


class ExportSampler(threading.Thread):
    """Counts, every ~50 ms, the pool's VMs whose current_operations include an export."""

    def __init__(self, sim, pool: str = "pool-a"):
        super().__init__(daemon=True)
        self.sim, self.pool = sim, pool
        self.samples: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            vms = self.sim.state()["pools"][self.pool]["VM"].values()
            self.samples.append(sum("export" in vm["current_operations"].values() for vm in vms))
            self.stop.wait(0.05)


@pytest.fixture
def own_redis(tmp_path):
    """A Redis for this test alone: the module's deployment still runs on the module's, and
    nothing stale may hold a slot."""
    with private_redis(tmp_path / "redis") as server:
        yield server


def test_per_pool_export_limit(own_redis, tmp_path):
    # Given a deployment whose pool allows one export at a time, with 2 workers x 2 processes
    dep = Deployment(tmp_path, own_redis, LIMIT_SIM_ARGS)
    sampler = ExportSampler(dep.sim)
    try:
        _config_with_limit(dep, 1)
        for name in ("l1", "l2"):
            dep.start_worker(name)
        # When its 3 VMs are backed up at once, with the human `--wait` output
        sampler.start()
        proc = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "backup", "--all", "--wait",
                               "--timeout", "100"], env=dep.env, capture_output=True, text=True, timeout=120)
        sampler.stop.set()
        sampler.join(timeout=10)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # Then at most one export ran on the pool at any sampled moment, and exports did run
        assert max(sampler.samples) == 1, sampler.samples
        assert sum(1 for n in sampler.samples if n) >= 10, "too few samples saw an export to mean anything"
        # And the job completed: every VM succeeded
        job_id = re.match(r"job (\w+):", proc.stdout).group(1)
        job = dep.status(job_id)
        assert job["succeeded"] and len(job["runs"]) == 3, job["runs"]
        # And the human summary has a row per VM with its state and the path of its backup
        for run in job["runs"]:
            rows = [line for line in proc.stdout.splitlines() if line.endswith(run["path"])]
            assert len(rows) == 1, proc.stdout
            assert run["vm_name"] in rows[0] and re.search(r"\bsucceeded\b", rows[0]), rows[0]
            assert Path(run["path"]).is_file()
        assert "(3/3 succeeded)" in proc.stdout
    finally:
        sampler.stop.set()
        dep.stop()
