"""The destination's free space is checked before a long export starts.

Given a destination that must keep more space free than the disk has (a real statvfs, a real
worker), when a VM is backed up, then the run fails at once with a message that says how much
is free and what to do, retries nothing, and leaves nothing on the pool or in the destination.
"""
from __future__ import annotations

from helpers.deployment import TEST_TUNING, Deployment
from helpers.pool_checks import litter

SIM_ARGS = ("--pools", "1", "--vms-per-pool", "3", "--disk-mib", "8")


def test_a_destination_without_room_fails_fast_and_cleanly(redis_server, tmp_path):
    tuning = TEST_TUNING.replace("[limits]\n", "[limits]\nreserve_free_bytes = 1000000000000000000\n")
    dep = Deployment(tmp_path, redis_server, SIM_ARGS, db=12, tuning=tuning)
    try:
        dep.redis.flushdb()
        dep.start_worker("w1")
        status, job = dep.backup("--vm", "db-01", "--pool", "pool-a")
        assert status == 1, job
        (run,) = job["runs"]
        assert run["state"] == "failed" and run["failed_stage"] == "export"
        assert "GB free" in run["error"] and "reserve_free_bytes" in run["error"], run["error"]
        assert "retries" not in run  # a full disk is not retried
        assert dep.files() == []
        assert litter(dep.sim.state()) == {}
    finally:
        dep.stop()


def test_the_size_estimate_is_never_below_the_real_backup(redis_server, tmp_path):
    """The estimate the check uses (computed from the backup VM's disks) covers what the export
    writes: a backup whose estimate is exactly the free space left still succeeds."""
    import shutil

    probe = Deployment(tmp_path / "probe", redis_server, SIM_ARGS, db=11)
    try:
        probe.redis.flushdb()
        probe.start_worker("w1")
        status, job = probe.backup("--vm", "db-01", "--pool", "pool-a")
        assert status == 0, job
        size = int(job["runs"][0]["size"])
    finally:
        probe.stop()
    # Keep all but 1.5x the real size + 8 MiB free: the estimate must fit in that, so it passes
    free = shutil.disk_usage(tmp_path).free
    reserve = free - int(size * 1.5) - (8 << 20)
    tuning = TEST_TUNING.replace("[limits]\n", f"[limits]\nreserve_free_bytes = {reserve}\n")
    dep = Deployment(tmp_path / "tight", redis_server, SIM_ARGS, db=11, tuning=tuning)
    try:
        dep.redis.flushdb()
        dep.start_worker("w1")
        status, job = dep.backup("--vm", "db-01", "--pool", "pool-a")
        assert status == 0, job["runs"][0].get("error")
    finally:
        dep.stop()
