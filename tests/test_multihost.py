"""Workers on two hosts, each pinned to the pool it can reach, and a host that dies.

Given three test hosts made as network namespaces: `svc` runs Redis and the simulator, with
pool-a's master on its link to host A and pool-b's on its link to host B; A and B reach only
their own link (no routes, no forwarding), so A cannot reach pool-b nor B pool-a.  On A,
`tinabs worker --pools pool-a` runs as node a@host-a (a UTS namespace gives each host its name);
on B, `tinabs worker --pools pool-b` as b@host-b.  The CLI runs in the root namespace.

When a job backs up every VM of both pools, then it succeeds, every run of pool-a records
host-a and a process of worker A, every run of pool-b host-b and a process of worker B, and each
worker's log shows every stage it ran, each for its own pool only.

When worker B is SIGKILLed and another job starts, then A finishes pool-a's VMs while pool-b's
work (its plan, hence its VMs' chains) waits in pool-b's queue: the job stays undone, with no
pool-b run.  When a replacement worker starts on B, then pool-b's VMs are backed up there and the
job succeeds.  Needs root and iproute2 (`ip netns`), which CI has.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import redis

from helpers.deployment import TEST_TUNING
from helpers.netns import Lab, LabError
from helpers.redis_proc import RedisProc
from helpers.sim_proc import SimProc
from helpers.waiting import wait_for
from helpers.workers import WorkerProc
from tinabs_tasks.runs.store import JobStore

PASSWORD = "multihost-redis-pw"
STAGES = {"snapshot", "skeleton", "disks", "vifs", "export", "cleanup"}
VMS_PER_POOL = 3
#: a succeeded stage as Celery logs it: the task's name, then its result (the run's context)
SUCCEEDED = re.compile(r"Task tinabs\.(\w+)\[[^\]]+\] succeeded in [\d.]+s: (.*)")


@pytest.fixture(scope="module")
def lab():
    try:
        lab = Lab()
        hosts = {name: lab.host(name) for name in ("svc", "a", "b")}
    except (LabError, FileNotFoundError) as exc:
        pytest.fail(f"the multi-host test makes network namespaces, which needs root and iproute2: {exc}",
                    pytrace=False)
    try:
        yield lab, hosts
    finally:
        lab.close()
        assert lab.leftovers() == []


@pytest.fixture(scope="module")
def site(lab, tmp_path_factory):
    """Redis and the simulator on `svc`; what each host's workers and the CLI need to reach them."""
    lab, hosts = lab
    root_to_svc = lab.link(None, hosts["svc"])[1]
    svc_a, addr_a = lab.link(hosts["svc"], hosts["a"])
    svc_b, addr_b = lab.link(hosts["svc"], hosts["b"])
    root = tmp_path_factory.mktemp("multihost")
    server = RedisProc(root / "redis", password=PASSWORD, host=root_to_svc, bind=[root_to_svc, svc_a, svc_b],
                       prefix=hosts["svc"].prefix())
    server.start()
    config, dest = root / "tinabs.toml", root / "dest"
    dest.mkdir()
    sim = SimProc("--pools", "2", "--vms-per-pool", str(VMS_PER_POOL), "--hosts-per-pool", "1", "--disk-mib", "1",
                  "--pool-address", f"{svc_a},{svc_b}", "--write-config", str(config), "--dest", str(dest),
                  prefix=hosts["svc"].prefix()).start()
    with open(config, "a") as fh:
        fh.write(TEST_TUNING)
    broker = {where: f"redis://:{PASSWORD}@{address}:{server.port}/0"
              for where, address in (("root", root_to_svc), ("a", svc_a), ("b", svc_b))}
    workers: list[WorkerProc] = []
    try:
        yield {"hosts": hosts, "root": root, "config": config, "broker": broker, "sim": sim, "workers": workers,
               "redis": redis.Redis.from_url(broker["root"], decode_responses=True)}
    finally:
        for worker in workers:
            worker.stop()
        sim.stop()
        server.stop()


def start_worker(site, host: str, pool: str, name: str) -> WorkerProc:
    """`tinabs worker --pools POOL` on test host HOST, as node NAME@host-HOST."""
    env = {"TINABS_CONFIG": str(site["config"]), "TINABS_BROKER_URL": site["broker"][host]}
    argv = [*site["hosts"][host].prefix(f"host-{host}"), sys.executable, "-m", "tinabs_tasks.cli", "worker",
            "--pools", pool, "--name", name, "--concurrency", "2"]
    worker = WorkerProc(name, {**os.environ, **env}, site["root"], argv=argv).start()
    site["workers"].append(worker)
    return worker


@pytest.fixture(scope="module")
def pinned(site) -> dict[str, WorkerProc]:
    """A worker on each host, pinned to the pool that host reaches."""
    return {"a": start_worker(site, "a", "pool-a", "a"), "b": start_worker(site, "b", "pool-b", "b")}


def tinabs(site, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "TINABS_CONFIG": str(site["config"]), "TINABS_BROKER_URL": site["broker"]["root"]}
    return subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", *argv], env=env, capture_output=True,
                          text=True, timeout=timeout)


def stages_by_pool(worker: WorkerProc) -> dict[str, set[str]]:
    """{pool: stages} of every stage the worker's log shows succeeding."""
    seen: dict[str, set[str]] = {}
    for stage, result in SUCCEEDED.findall(worker.log_path.read_text(errors="replace")):
        pool = re.search(r"'pool': '([^']+)'", result)
        if pool:
            seen.setdefault(pool.group(1), set()).add(stage)
    return seen


def ran_on(run: dict, worker: WorkerProc, hostname: str) -> bool:
    host, _, pid = run["worker"].partition(":")
    return host == hostname and int(pid) in worker.child_pids()


def reachable(site, host: str, url: str) -> tuple[bool, str]:
    address, port = url.split("//")[1].split(":")
    done = site["hosts"][host].run(sys.executable, "-c", "import socket, sys; "
                                   f"socket.create_connection(({address!r}, {port}), timeout=3)")
    return done.returncode == 0, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""


def test_each_pools_chains_run_only_on_the_worker_of_the_host_that_reaches_it(site, pinned):
    pools = {p["name"]: p["master"] for p in site["sim"].pools}
    # Given hosts that reach only their own pool, and a worker on each pinned to that pool
    assert reachable(site, "a", pools["pool-a"])[0] and reachable(site, "b", pools["pool-b"])[0]
    for host, other in (("a", "pool-b"), ("b", "pool-a")):
        ok, error = reachable(site, host, pools[other])
        assert not ok and "Network is unreachable" in error, (host, other, error)
    worker_a, worker_b = pinned["a"], pinned["b"]
    # When a job backs up every VM of both pools
    done = tinabs(site, "backup", "--all", "--wait", "--json")
    job = json.loads(done.stdout)
    # Then it succeeds, pool-a's runs on host A's worker, pool-b's on host B's
    assert done.returncode == 0 and job["succeeded"], done.stdout + done.stderr
    runs = {pool: [r for r in job["runs"] if r["pool"] == pool] for pool in pools}
    assert [len(runs[p]) for p in pools] == [VMS_PER_POOL, VMS_PER_POOL]
    assert all(ran_on(r, worker_a, "host-a") for r in runs["pool-a"]), runs["pool-a"]
    assert all(ran_on(r, worker_b, "host-b") for r in runs["pool-b"]), runs["pool-b"]
    # And every stage of each pool ran on that pool's worker, and nothing of the other pool did
    assert stages_by_pool(worker_a) == {"pool-a": STAGES}
    assert stages_by_pool(worker_b) == {"pool-b": STAGES}


def test_a_dead_hosts_pool_waits_for_a_replacement_worker(site, pinned):
    worker_a, worker_b = pinned["a"], pinned["b"]
    store = JobStore(site["redis"])
    # Given host B's worker killed (SIGKILL: a power cut), with host A's still running
    worker_b.kill()
    # When a job over both pools starts
    started = tinabs(site, "backup", "--all", "--json")
    assert started.returncode == 0, started.stderr
    job_id = json.loads(started.stdout)["job"]
    # Then A backs up pool-a's VMs ...
    def succeeded(pool: str) -> int:
        return sum(r["pool"] == pool and r["state"] == "succeeded" for r in store.job(job_id)["runs"])
    wait_for(lambda: succeeded("pool-a") == VMS_PER_POOL, 60, "pool-a's VMs backed up")
    time.sleep(2)  # and a little longer: nothing moves for pool-b
    # ... while pool-b's plan waits in pool-b's queue: no pool-b run exists, the job is not done
    job = store.job(job_id)
    assert not job["done"] and int(job["pools_planned"]) == 1, job
    assert [r["pool"] for r in job["runs"]] == ["pool-a"] * VMS_PER_POOL
    waiting = sum(site["redis"].llen(key) for key in site["redis"].scan_iter("tinabs.pool.pool-b*"))
    assert waiting == 1, waiting
    # When a replacement worker starts on host B
    worker_b2 = start_worker(site, "b", "pool-b", "b2")
    # Then pool-b's VMs are backed up there and the job succeeds
    wait_for(lambda: store.job(job_id)["done"], 90, "the job done")
    job = store.job(job_id)
    assert job["succeeded"], job
    runs_b = [r for r in job["runs"] if r["pool"] == "pool-b"]
    assert len(runs_b) == VMS_PER_POOL and all(ran_on(r, worker_b2, "host-b") for r in runs_b), runs_b
    assert stages_by_pool(worker_b2) == {"pool-b": STAGES}
    assert set(stages_by_pool(worker_a)) == {"pool-a"}  # A took none of pool-b's work meanwhile
    status = json.loads(tinabs(site, "status", job_id, "--json").stdout)
    assert status["done"] and status["succeeded"]
