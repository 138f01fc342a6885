"""Benchmark: XAPI calls per backup chain, waiting for XAPI tasks by polling vs by events.

One simulated pool whose VMs have 2 GiB system disks (512 MiB of data each), 0.3 s per slow
operation and 100 MB/s per host, backed up in export mode twice in the same run, on the same
simulator and the same worker processes' code: first with ``task_wait = "poll"`` (every wait polls
``task.get_record``, as tinabs did before issue 12), then with ``task_wait = "events"`` (one
``event.from`` connection per pool per worker process tells every waiter when its task ends).

Prints ``name: value`` lines: ``xapi_calls_per_chain_poll``, ``xapi_calls_per_chain_events``,
``xapi_calls_ratio_poll_vs_events`` (target >= 3), the same for task polls, both jobs' wall times,
and the calls by method in each mode.  Calls are counted by bench/instrument/sitecustomize.py
inside the workers, over each task while it runs (the event watcher's own long polls included:
they are counted in whichever task is running when they are sent, and the ones sent while no task
runs are counted apart, from the simulator's side, as ``event_from_calls``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict

from tinabs_tasks.dev.localrun import free_port, private_redis, stop_all

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timeline  # noqa: E402

INSTRUMENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "instrument")
VMS = int(os.environ.get("BENCH_VMS", "4"))
DISK_MIB = int(os.environ.get("BENCH_DISK_MIB", "2048"))
LATENCY_S = float(os.environ.get("BENCH_LATENCY_S", "0.3"))
BANDWIDTH_MBPS = float(os.environ.get("BENCH_BANDWIDTH_MBPS", "100"))
CONCURRENCY = 2
CHAIN = ("snapshot", "skeleton", "disks", "vifs", "export", "cleanup")


def wait_ready(path: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"xapi_calls: a worker exited:\n{open(path).read()[-3000:]}")
        if " ready." in open(path, errors="replace").read():
            return
        time.sleep(0.1)
    sys.exit("xapi_calls: worker not ready")


def one_job(root: str, base_config: str, env: dict, mode: str) -> dict:
    """Workers configured with ``task_wait = mode``, one `tinabs backup --all --wait`; its figures."""
    config = os.path.join(root, f"tinabs-{mode}.toml")
    text = open(base_config).read().replace("max_concurrent_exports = 2",
                                            f'max_concurrent_exports = 2\ntask_wait = "{mode}"')
    with open(config, "w") as fh:
        fh.write(text)
    lines_file = os.path.join(root, f"timeline-{mode}.jsonl")
    env = {**env, "TINABS_CONFIG": config}
    worker_env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [INSTRUMENT, env.get("PYTHONPATH")])),
                  "TINABS_TIMELINE_FILE": lines_file}
    log = os.path.join(root, f"worker-{mode}.log")
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tinabs_tasks", "worker", "-l", "info", "-c",
                               str(CONCURRENCY), "-n", f"bench-{mode}@%h", "--without-mingle", "--without-gossip"],
                              env=worker_env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        wait_ready(log, worker)
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "backup", "--all", "--mode", "export",
                               "--wait", "--json"], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - began
    finally:
        stop_all([worker])
    job = json.loads(done.stdout) if done.stdout.strip() else {}
    if done.returncode != 0:
        sys.exit(f"xapi_calls: the {mode} job failed:\n{done.stderr}\n{[r.get('error') for r in job.get('runs', [])]}")
    lines = timeline.read(lines_file)
    chains = {line["run"] for line in lines if line.get("run") and line["task"].split(".", 1)[-1] in CHAIN}
    methods: Counter = Counter()
    per_chain = defaultdict(int)
    for line in lines:
        if line.get("run") in chains:
            methods.update(line.get("xapi_methods", {}))
            per_chain[line["run"]] += line["xapi_calls"]
    stages = timeline.per_stage(lines)
    figures = timeline.chain_figures(stages, CHAIN)
    return {"wall_s": wall, "chains": len(chains), "figures": figures,
            "methods": {m: n / len(chains) for m, n in methods.most_common()},
            "per_chain": sorted(per_chain.values()), "table": timeline.table(stages)}


def main() -> None:
    root = tempfile.mkdtemp(prefix="tinabs-xapi-calls-")
    procs: list[subprocess.Popen] = []
    try:
        port = free_port()
        procs.append(private_redis(port, root))
        config = os.path.join(root, "tinabs.toml")
        sim = subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "sim", "--pools", "1", "--vms-per-pool",
                                str(VMS), "--hosts-per-pool", "1", "--disk-mib", str(DISK_MIB), "--latency",
                                str(LATENCY_S), "--host-bandwidth-mbps", str(BANDWIDTH_MBPS), "--write-config",
                                config, "--dest", os.path.join(root, "dest")], stdout=subprocess.PIPE, text=True)
        procs.append(sim)
        sim.stdout.readline()
        os.makedirs(os.path.join(root, "dest"), exist_ok=True)
        env = {**os.environ, "TINABS_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
        results = {mode: one_job(root, config, env, mode) for mode in ("poll", "events")}
        for mode, r in results.items():
            print(f"chains_{mode}: {r['chains']}")
            print(f"job_wall_s_{mode}: {r['wall_s']:.1f}")
            print(f"xapi_calls_per_chain_{mode}: {r['figures']['xapi_calls_per_chain']:.1f}")
            print(f"task_polls_per_chain_{mode}: {r['figures']['task_polls_per_chain']:.1f}")
        poll, events = (results[m]["figures"] for m in ("poll", "events"))
        print(f"xapi_calls_ratio_poll_vs_events: {poll['xapi_calls_per_chain'] / events['xapi_calls_per_chain']:.2f}")
        for mode, r in results.items():
            print(f"calls by method per chain ({mode}):")
            for method, n in r["methods"].items():
                print(f"  {method}: {n:.1f}")
            if os.environ.get("BENCH_DIAG"):
                print(f"timeline ({mode}):\n{r['table']}\nper chain: {r['per_chain']}")
    finally:
        stop_all(procs)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
