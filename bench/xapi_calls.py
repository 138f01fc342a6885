"""Benchmark: XAPI calls per backup chain, waiting for XAPI tasks by polling vs by events.

One simulated pool whose VMs have 2 GiB system disks (512 MiB of data each), 0.3 s per slow
operation and 100 MB/s per host, backed up in export mode twice in the same run, on the same
simulator and the same worker processes' code: first with ``task_wait = "poll"`` (every wait polls
``task.get_record``, as tinabs did before issue 12), then with ``task_wait = "events"`` (one
``event.from`` connection per pool per worker process tells every waiter when its task ends).

The same again in sr-copy mode, whose VDI.copy of the system disk (100 MB/s) is the one long XAPI
task of a chain.  Prints ``name: value`` lines: ``xapi_calls_per_chain_poll``,
``xapi_calls_per_chain_events``, ``xapi_calls_ratio_poll_vs_events`` (the issue's target: >= 3),
``task_wait_calls_*`` (the calls spent learning that tasks ended: polls, or event.from), both
jobs' wall times, the same with an ``srcopy_`` prefix, and the calls by method in each run.
Calls are counted by bench/instrument/sitecustomize.py inside the workers, over each task while it
runs; the event watcher's long polls are among them (a watcher calls only while a stage of its
process waits for a task).
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
SRCOPY_CHAIN = ("snapshot", "skeleton", "disks", "vifs", "copy", "metadata", "cleanup")
COPY_MBPS = float(os.environ.get("BENCH_COPY_MBPS", "100"))


def wait_ready(path: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"xapi_calls: a worker exited:\n{open(path).read()[-3000:]}")
        if " ready." in open(path, errors="replace").read():
            return
        time.sleep(0.1)
    sys.exit("xapi_calls: worker not ready")


def one_job(root: str, base_config: str, env: dict, mode: str, backup_mode: str = "export") -> dict:
    """Workers configured with ``task_wait = mode``, one `tinabs backup --all --wait`; its figures."""
    config = os.path.join(root, f"tinabs-{mode}-{backup_mode}.toml")
    text = open(base_config).read().replace("max_concurrent_exports = 2",
                                            f'max_concurrent_exports = 2\ntask_wait = "{mode}"')
    with open(config, "w") as fh:
        fh.write(text)
    lines_file = os.path.join(root, f"timeline-{mode}-{backup_mode}.jsonl")
    env = {**env, "TINABS_CONFIG": config}
    worker_env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [INSTRUMENT, env.get("PYTHONPATH")])),
                  "TINABS_TIMELINE_FILE": lines_file}
    log = os.path.join(root, f"worker-{mode}-{backup_mode}.log")
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tinabs_tasks", "worker", "-l", "info", "-c",
                               str(CONCURRENCY), "-n", f"bench-{mode}@%h", "--without-mingle", "--without-gossip"],
                              env=worker_env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        wait_ready(log, worker)
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "backup", "--all", "--mode", backup_mode,
                               "--wait", "--json"], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - began
    finally:
        stop_all([worker])
    job = json.loads(done.stdout) if done.stdout.strip() else {}
    if done.returncode != 0:
        sys.exit(f"xapi_calls: the {mode} job failed:\n{done.stderr}\n{[r.get('error') for r in job.get('runs', [])]}")
    lines = timeline.read(lines_file)
    chain = CHAIN if backup_mode == "export" else SRCOPY_CHAIN
    chains = {line["run"] for line in lines if line.get("run") and line["task"].split(".", 1)[-1] in chain}
    methods: Counter = Counter()
    per_chain = defaultdict(int)
    for line in lines:
        if line.get("run") in chains:
            methods.update(line.get("xapi_methods", {}))
            per_chain[line["run"]] += line["xapi_calls"]
    stages = timeline.per_stage(lines)
    figures = timeline.chain_figures(stages, chain)
    return {"wall_s": wall, "chains": len(chains), "figures": figures,
            "methods": {m: n / len(chains) for m, n in methods.most_common()},
            "per_chain": sorted(per_chain.values()), "table": timeline.table(stages)}


def wait_calls(result: dict) -> float:
    """Calls spent learning that XAPI tasks ended: task.get_* polls, or event.from long polls."""
    return sum(n for m, n in result["methods"].items() if m.startswith("task.get_") or m == "event.from")


def main() -> None:
    root = tempfile.mkdtemp(prefix="tinabs-xapi-calls-")
    procs: list[subprocess.Popen] = []
    try:
        port = free_port()
        procs.append(private_redis(port, root))
        config = os.path.join(root, "tinabs.toml")
        sim = subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "sim", "--pools", "1", "--vms-per-pool",
                                str(VMS), "--hosts-per-pool", "1", "--disk-mib", str(DISK_MIB), "--latency",
                                str(LATENCY_S), "--host-bandwidth-mbps", str(BANDWIDTH_MBPS), "--copy-bandwidth-mbps",
                                str(COPY_MBPS), "--write-config",
                                config, "--dest", os.path.join(root, "dest")], stdout=subprocess.PIPE, text=True)
        procs.append(sim)
        sim.stdout.readline()
        os.makedirs(os.path.join(root, "dest"), exist_ok=True)
        env = {**os.environ, "TINABS_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
        results = {mode: one_job(root, config, env, mode) for mode in ("poll", "events")}
        copies = {mode: one_job(root, config, env, mode, "sr-copy") for mode in ("poll", "events")}
        for label, runs in (("", results), ("srcopy_", copies)):
            for mode, r in runs.items():
                print(f"{label}chains_{mode}: {r['chains']}")
                print(f"{label}job_wall_s_{mode}: {r['wall_s']:.1f}")
                print(f"{label}xapi_calls_per_chain_{mode}: {r['figures']['xapi_calls_per_chain']:.1f}")
                print(f"{label}task_polls_per_chain_{mode}: {r['figures']['task_polls_per_chain']:.1f}")
                print(f"{label}task_wait_calls_per_chain_{mode}: {wait_calls(r):.1f}")
            poll, events = (runs[m] for m in ("poll", "events"))
            print(f"{label}xapi_calls_ratio_poll_vs_events: "
                  f"{poll['figures']['xapi_calls_per_chain'] / events['figures']['xapi_calls_per_chain']:.2f}")
            print(f"{label}task_wait_calls_ratio_poll_vs_events: {wait_calls(poll) / wait_calls(events):.2f}")
        for label, runs in (("export", results), ("sr-copy", copies)):
            for mode, r in runs.items():
                print(f"calls by method per chain ({label}, {mode}):")
                for method, n in r["methods"].items():
                    print(f"  {method}: {n:.1f}")
                if os.environ.get("BENCH_DIAG"):
                    print(f"timeline ({label}, {mode}):\n{r['table']}\nper chain: {r['per_chain']}")
    finally:
        stop_all(procs)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
