"""The Redis server restarted in the middle of a job: the job still ends, with one backup per VM.

tinabs keeps its job state and Celery keeps its queues in Redis, so the
documented deployment runs Redis with persistence (append-only file); this
test does the same with its own redis-server, kills it with SIGKILL while
the chains are mid-way (transfers running and queued), and starts it again
on the same port and files.  Workers reconnect by themselves; their own
state writes wait for Redis instead of failing a stage.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from helpers.backup_checks import assert_clean, assert_one_backup
from helpers.deployment import Deployment
from helpers.persistent_redis import PersistentRedis

POOL = "pool-a"
SIM_ARGS = ("--pools", "1", "--vms-per-pool", "5", "--disk-mib", "8")
TUNING = """
[retry]
max_retries = 3
backoff_base_s = 0.2
backoff_max_s = 1.0

[limits]
lease_s = 5
visibility_timeout_s = 10
stuck_after_s = 6
"""


@pytest.fixture
def setup(tmp_path):
    server = PersistentRedis(tmp_path / "redis")
    server.dir.mkdir()
    server.start()
    dep = Deployment(tmp_path / "deploy", server, SIM_ARGS, db=0, tuning=TUNING)
    try:
        dep.start_worker("r1")
        dep.start_worker("r2")
        yield dep, server
    finally:
        dep.stop()
        server.stop()


def _job_state(dep, job: str, timeout: float) -> dict:
    """`tinabs status` until the job is done, riding out the moments Redis is away."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        proc = dep.cli("status", job, "--json")
        if proc.returncode == 0:
            last = json.loads(proc.stdout)
            if last["done"]:
                return last
        time.sleep(0.5)
    raise AssertionError(f"job {job} reached no terminal state in {timeout}s: {last}")


def test_a_redis_restart_mid_job_loses_nothing_and_duplicates_nothing(setup):
    dep, server = setup
    # Given a job over 5 VMs whose transfers are slowed, so it is mid-way when Redis goes
    dep.sim.add_fault({"handler": "/export", "delay_s": 1.5, "pool": POOL})
    before = set(dep.files())
    waiting = subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "backup", "--all", "--pool", POOL,
                                "--mode", "export", "--wait", "--json"], env=dep.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    dep.sim.wait_fired()  # an export started
    # When the Redis server dies (SIGKILL) and comes back two seconds later from its append-only file
    server.kill()
    time.sleep(2)
    server.start()
    # Then `tinabs backup --wait` rode out the outage and saw the job end
    out, err = waiting.communicate(timeout=240)
    assert waiting.returncode == 0, f"exit {waiting.returncode}\n{out}\n{err}"
    job = json.loads(out)["id"]
    # Then the job ends with every VM backed up exactly once, nothing partial, nothing left on the pool
    state = _job_state(dep, job, timeout=240)
    assert len(state["runs"]) == 5
    assert [r["state"] for r in state["runs"]] == ["succeeded"] * 5, [(r["vm_name"], r["state"], r.get("error"))
                                                                        for r in state["runs"]]
    for run in state["runs"]:
        assert_one_backup(dep, run)
    new = set(dep.files()) - before
    assert len(new) == 10, sorted(new)
    assert_clean(dep, new)
    # And the catalog agrees: five complete backups, one per VM
    listed = json.loads(dep.cli("list", "--pool", POOL, "--json", check=True).stdout)
    assert sorted(b["run"] for b in listed) == sorted(Path(r["path"]).name.split(".")[0].split("-")[1]
                                                      for r in state["runs"])
    assert {b["status"] for b in listed} == {"complete"}
    # And the workers really lost Redis (the restart was not a no-op)
    logs = "".join(w.log_path.read_text(errors="replace") for w in dep.workers)
    assert "Connection to broker lost" in logs or "Cannot connect to redis" in logs, logs[-3000:]
    assert redis.Redis(host=server.host, port=server.port).ping()
