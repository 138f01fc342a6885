"""A run whose next message Redis lost is sent on again, and finishes with one backup.

Redis can lose a message in flight when it dies (a BRPOP it answered whose
reply never arrived).  Here the loss is made on purpose: the worker in the
middle of a stage is killed and its unacknowledged message is deleted from
Redis.  Nothing then works on that run, nothing touches it; the new worker's
stuck-run sweep ([limits] stuck_after_s, 4 s here) sends the stage again from
the stage guard's record, and the job ends.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from helpers.backup_checks import assert_clean, assert_one_backup
from helpers.deployment import Deployment

POOL = "pool-a"
SIM_ARGS = ("--pools", "1", "--vms-per-pool", "4", "--disk-mib", "8")
VM = "db-01"
TUNING = """
[retry]
max_retries = 3
backoff_base_s = 0.2
backoff_max_s = 1.0

[limits]
lease_s = 3
stuck_after_s = 4
"""


@pytest.fixture
def dep(redis_server, tmp_path):
    d = Deployment(tmp_path, redis_server, SIM_ARGS, tuning=TUNING)
    d.redis.flushdb()  # a deployment per test, on the module's Redis: each starts from an empty DB
    try:
        d.start_worker("s1", concurrency=1)
        yield d
    finally:
        d.stop()


def test_a_run_whose_next_message_was_lost_is_sent_on_and_finishes(dep):
    # Given a worker inside a VM's vifs stage (its XAPI call slowed down)
    dep.sim.add_fault({"method": "VIF.create", "delay_s": 3, "pool": POOL, "times": 1})
    before = set(dep.files())
    proc = subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "backup", "--vm", VM, "--pool", POOL,
                             "--mode", "export", "--wait", "--json"], env=dep.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while dep.sim.control_call("GET", "/sim/faults")[1]["faults"]:
        assert time.monotonic() < deadline and proc.poll() is None, "the vifs stage never started"
        time.sleep(0.02)
    # When the worker dies, and the stage's message is lost with it (Redis forgets the unacknowledged
    # message, as when it dies with a reply in flight): nothing will ever deliver it again
    (worker,) = dep.workers
    worker.kill()
    dep.workers.remove(worker)
    r = dep.redis
    assert r.hlen("unacked") == 1, r.hgetall("unacked")
    assert "tinabs.vifs" in next(iter(r.hvals("unacked")))
    r.delete("unacked", "unacked_index")
    dep.start_worker("s2", concurrency=1)
    # Then the sweep sends the run's vifs stage again and the job ends with one backup
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"{out}\n{err}"
    (run,) = json.loads(out)["runs"]
    assert run["state"] == "succeeded" and run.get("resumed") == "1", run
    assert_one_backup(dep, run)
    new = set(dep.files()) - before
    assert len(new) == 2, sorted(new)
    assert_clean(dep, new)
    assert "was stuck at 'vifs'" in dep.workers[0].log_path.read_text()
