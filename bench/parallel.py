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
ideal_s, efficiency_vs_ideal (target >= 0.85), and where each stage's time went in the parallel
run (bench/timeline.py: time queued, Redis round trips and time, XAPI calls, task polls and time,
sleeping between polls, the work itself), with ``redis_rt_per_stage`` and ``xapi_calls_per_chain``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

from tinabs_tasks.dev.localrun import free_port, private_redis, stop_all

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timeline  # noqa: E402

INSTRUMENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "instrument")

POOLS, VMS, HOSTS = 4, 8, 2
LATENCY_S = float(os.environ.get("BENCH_LATENCY_S", "0.3"))
BANDWIDTH_MBPS = float(os.environ.get("BENCH_BANDWIDTH_MBPS", "40"))
DISK_MIB = int(os.environ.get("BENCH_DISK_MIB", "64"))
WORKERS = 4
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "4"))  # I/O-bound tasks: more slots than cores
LIMIT = int(os.environ.get("BENCH_LIMIT", "2"))
TASK_WAIT = os.environ.get("BENCH_TASK_WAIT", "events")  # or "poll": how workers wait for XAPI tasks

SEQUENTIAL = r"""
import json, sys, time
from tinabs_tasks.config import model as config_mod
from tinabs_tasks.runs.store import JobStore
from tinabs_tasks.runs.progress import Reporter
from tinabs_tasks.runs.redis_client import client
from tinabs_tasks.backup import selection as plan
from tinabs_tasks.backup.table import STAGES, StageEnv
from tinabs_tasks.runs.slots import Slots
from tinabs_tasks.xapi.connect import PoolSession
from tinabs_tasks.xapi.port import Xapi


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
        env = StageEnv(xapi=xapi, report=report, slots=slots, destination=cfg.destination)
        times = {}
        for stage in ("snapshot", "skeleton", "disks", "vifs", "export", "cleanup"):
            began = time.perf_counter()
            ctx = STAGES[stage].run(env, ctx)
            times[stage] = time.perf_counter() - began
        out.append({"pool": name, "vm": vm["uuid"], "times": times, "export_host": export_host(xapi, vm)})
print(json.dumps(out))
"""


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
    # No export can start before some VM has done its first four stages, and the last one
    # is followed by a cleanup: both frame the pool and host bounds.
    before = min(sum(v for k, v in r["times"].items() if k not in ("export", "cleanup")) for r in records)
    after = min(r["times"]["cleanup"] for r in records)
    bounds = {
        "vm_chain": per_vm,
        "pool_limit": before + max(v / LIMIT for v in exports_by_pool.values()) + after,
        "host_bandwidth": before + max(exports_by_host.values()) + after,
        "worker_slots": sum(sum(r["times"].values()) for r in records) / (WORKERS * CONCURRENCY),
    }
    return max(bounds.values()), bounds


def cpu_busy_s() -> float:
    """Seconds of CPU the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [float(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (float(fields[11]) + float(fields[12])) / os.sysconf("SC_CLK_TCK")


def diagnose(job: dict) -> None:
    """Where the parallel run's time went, per run: stage work vs everything else."""
    t0 = min(float(r["queued"]) for r in job["runs"])
    for r in sorted(job["runs"], key=lambda r: float(r["finished"])):
        timings = json.loads(r["timings"]) if isinstance(r["timings"], str) else r["timings"]
        work = sum(timings.values())
        span = float(r["finished"]) - float(r["queued"])
        print(f"  {r['pool']} {r['vm_name']:<10} queued+{float(r['queued']) - t0:5.1f}s "
              f"done+{float(r['finished']) - t0:5.1f}s work {work:4.1f}s span {span:4.1f}s "
              f"retries {r.get('retries', 0)} " + " ".join(f"{k}={v:.2f}" for k, v in timings.items()))


def main() -> None:
    root = tempfile.mkdtemp(prefix="tinabs-parallel-")
    procs: list[subprocess.Popen] = []
    try:
        port = free_port()
        procs.append(private_redis(port, root))
        config = os.path.join(root, "tinabs.toml")
        sim = start([sys.executable, "-m", "tinabs_tasks.cli", "sim", "--pools", str(POOLS), "--vms-per-pool",
                     str(VMS), "--hosts-per-pool", str(HOSTS), "--disk-mib", str(DISK_MIB), "--latency",
                     str(LATENCY_S), "--host-bandwidth-mbps", str(BANDWIDTH_MBPS), "--write-config", config,
                     "--dest", os.path.join(root, "dest")], stdout=subprocess.PIPE, text=True)
        procs.append(sim)
        sim.stdout.readline()
        text = open(config).read().replace("max_concurrent_exports = 2", f"max_concurrent_exports = {LIMIT}\n"
                                                                            f'task_wait = "{TASK_WAIT}"')
        with open(config, "w") as fh:
            fh.write(text + "\n[limits]\nlease_s = 30\n")
        env = {**os.environ, "TINABS_CONFIG": config, "TINABS_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
        os.makedirs(os.path.join(root, "dest"), exist_ok=True)

        began = time.perf_counter()
        seq = json.loads(subprocess.run([sys.executable, "-c", SEQUENTIAL], env=env, check=True,
                                        capture_output=True, text=True).stdout)
        sequential_s = time.perf_counter() - began

        lines_file = os.path.join(root, "timeline.jsonl")
        worker_env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [INSTRUMENT, env.get("PYTHONPATH")])),
                      "TINABS_TIMELINE_FILE": lines_file}
        for i in range(WORKERS):
            log = os.path.join(root, f"worker{i}.log")
            procs.append(start([sys.executable, "-m", "celery", "-A", "tinabs_tasks", "worker", "-l", "info", "-c",
                                str(CONCURRENCY), "-n", f"bench{i}@%h", "--without-mingle", "--without-gossip"],
                               env=worker_env, stdout=open(log, "w"), stderr=subprocess.STDOUT))
            wait_ready(log, procs[-1])
        cpu_before, sim_before = cpu_busy_s(), process_cpu_s(sim.pid)
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "backup", "--all", "--wait", "--json"],
                              env=env, capture_output=True, text=True)
        parallel_s = time.perf_counter() - began
        cpu_used = cpu_busy_s() - cpu_before
        sim_used = process_cpu_s(sim.pid) - sim_before
        job = json.loads(done.stdout)
        if done.returncode != 0:
            sys.exit(f"parallel: the job failed:\n{done.stderr}\n{[r.get('error') for r in job['runs']]}")
        makespan_s = max(float(r["finished"]) for r in job["runs"]) - float(job["created"])
        ideal, bounds = ideal_makespan(seq)
        if os.environ.get("BENCH_DIAG"):
            diagnose(job)
        print(f"vms: {len(seq)}")
        print(f"sequential_s: {sequential_s:.1f}")
        print(f"parallel_cli_s: {parallel_s:.1f}")
        print(f"parallel_makespan_s: {makespan_s:.1f}")
        print(f"speedup_vs_sequential: {sequential_s / parallel_s:.1f}")
        for name, value in bounds.items():
            print(f"bound_{name}_s: {value:.1f}")
        print(f"ideal_s: {ideal:.1f}")
        print(f"efficiency_vs_ideal: {ideal / makespan_s:.2f}")
        print(f"parallel_cpu_utilisation: {cpu_used / (parallel_s * os.cpu_count()):.2f}")
        print(f"simulator_cpu_share: {sim_used / parallel_s:.2f}")
        stages = timeline.per_stage(timeline.read(lines_file))
        for name, value in timeline.chain_figures(stages, ("snapshot", "skeleton", "disks", "vifs", "export",
                                                           "cleanup")).items():
            print(f"{name}: {value:.1f}")
        print("timeline (per task, averages):\n" + timeline.table(stages))
    finally:
        stop_all(procs)
        if os.environ.get("BENCH_KEEP"):
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
