"""The destination's free space is checked before a long export starts.

Given a destination that must keep more space free than the disk has (a real statvfs, a real
worker), when a VM is backed up, then the run fails at once with a message that says how much
is free and what to do, retries nothing, and leaves nothing on the pool or in the destination.
"""
from __future__ import annotations

import os
import re

from helpers.deployment import TEST_TUNING, Deployment
from helpers.pool_checks import litter
from helpers.small_fs import tmpfs

SIM_ARGS = ("--pools", "1", "--vms-per-pool", "3", "--disk-mib", "8")


def test_a_destination_without_room_fails_fast_and_cleanly(redis_server, tmp_path):
    tuning = TEST_TUNING.replace("[limits]\n", "[limits]\nreserve_free_bytes = 1000000000000000000\n")
    dep = Deployment(tmp_path, redis_server, SIM_ARGS, tuning=tuning)
    try:
        dep.redis.flushdb()  # another test of this module may have used the module's Redis
        dep.start_worker("w1")
        status, job = dep.backup("--vm", "db-01", "--pool", "pool-a")
        assert status == 1, job
        (run,) = job["runs"]
        assert run["state"] == "failed" and run["failed_stage"] == "export"
        assert " free (keeping " in run["error"] and "reserve_free_bytes" in run["error"], run["error"]
        assert "retries" not in run  # a full disk is not retried
        assert dep.files() == []
        assert litter(dep.sim.state()) == {}
    finally:
        dep.stop()


def test_the_size_estimate_is_never_below_the_real_backup(redis_server, tmp_path):
    """The estimate the free-space check uses (computed from the backup VM's disks before the
    export starts) covers what the export then writes, without being wildly above it.  (Compared
    directly: the file system's free space moves while other tests write, so a test that set the
    reserve to just fit would fail for reasons that have nothing to do with the estimate.)"""
    dep = Deployment(tmp_path / "probe", redis_server, SIM_ARGS)
    try:
        dep.redis.flushdb()  # another test of this module may have used the module's Redis
        dep.start_worker("w1")
        status, job = dep.backup("--vm", "db-01", "--pool", "pool-a")
        assert status == 0, job
        (run,) = job["runs"]
        size, estimate = int(run["size"]), int(run["estimated_size"])
    finally:
        dep.stop()
    assert size == os.path.getsize(run["path"])
    assert size <= estimate <= int(size * 1.5) + (8 << 20), (size, estimate)


def test_a_small_destination_says_its_figures_in_units_that_show_them(redis_server, tmp_path):
    """A destination with a few MB free, and a backup of a few MB: the message gives both in MB,
    never "0.0 GB free ... needs about 0.0 GB"."""
    dep = Deployment(tmp_path, redis_server, SIM_ARGS)
    try:
        with tmpfs(dep.dest, 2):
            dep.redis.flushdb()
            dep.start_worker("w1")
            status, job = dep.backup("--vm", "db-01", "--pool", "pool-a")
            assert status == 1, job
            (run,) = job["runs"]
            error = run["error"]
            assert run["failed_stage"] == "export" and "0.0 GB" not in error, error
            assert re.search(r"has \d+\.\d MB free \(keeping 0 B in reserve\) but this backup needs about "
                             r"\d+\.\d MB", error), error
            assert dep.files() == [] and litter(dep.sim.state()) == {}
            dep.stop()
    finally:
        dep.stop()
