"""One large `tinabs backup --all` on a private deployment, measured and checked.

bench/load.py prints what this returns; tests/test_load.py runs it at a smaller
scale.  Everything is real: a private redis-server, the simulator, worker
processes and the `tinabs` CLI.  The run:

1. starts Redis, the simulator (zero latency) and the workers, and records
   Redis' memory and keys once they are idle;
2. backs up one VM alone (the baseline of the same run), then every VM;
3. checks that every VM has exactly one complete backup (two for the
   baseline's VM), that no `.partial` file and no tinabs object on any pool
   is left;
4. waits the state TTL plus a margin after the job and records Redis again:
   job and run state and Celery results must be gone, every key left must
   expire or be one of kombu's binding tables, and its memory outside client
   connections must be back near its idle start (see redis_usage.py).
"""
from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from .deployment import Deployment
from .pool_checks import backupable_vms, litter
from .redis_proc import RedisProc
from .redis_usage import MemorySampler, check_settled, redis_snapshot


@dataclass(frozen=True)
class LoadSpec:
    pools: int = 20
    vms_per_pool: int = 50
    workers: int = 3
    concurrency: int = 4
    disk_mib: int = 1
    state_ttl_s: int = 60
    settle_margin_s: float = 10.0
    timeout_s: float = 3600.0

    def sim_args(self) -> tuple[str, ...]:
        return ("--pools", str(self.pools), "--vms-per-pool", str(self.vms_per_pool),
                "--disk-mib", str(self.disk_mib), "--latency", "0")

    def tuning(self) -> str:
        return f"\n[limits]\nstate_ttl_s = {self.state_ttl_s}\n"


@dataclass
class LoadResult:
    figures: dict = field(default_factory=dict)  #: name -> value, in print order
    problems: list[str] = field(default_factory=list)
    keys_after: list[tuple[str, int]] = field(default_factory=list)  #: (key, TTL) left after settling


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a live process; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (float(fields[11]) + float(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    with open("/proc/stat") as fh:
        fields = [float(x) for x in fh.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU used by each part of the deployment inside the `with` block."""

    def __init__(self, dep: Deployment, r: redis.Redis):
        self.dep, self.r = dep, r

    def _read(self) -> dict[str, float]:
        cpu = self.r.info("cpu")
        workers = sum(proc_cpu_s(pid) for w in self.dep.workers for pid in [w.proc.pid, *w.child_pids()])
        return {"machine": machine_busy_s(), "redis": cpu["used_cpu_user"] + cpu["used_cpu_sys"],
                "simulator": proc_cpu_s(self.dep.sim.pid), "workers": workers,
                # children reaped meanwhile: the CLI (and the pgreps of child_pids, a few ms)
                "cli": sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])}

    def __enter__(self):
        self.began = self._read()
        return self

    def __exit__(self, *exc):
        end = self._read()
        self.used = {k: end[k] - self.began[k] for k in end}


def backup(dep: Deployment, spec: LoadSpec, *args: str) -> tuple[float, int, dict]:
    began = time.perf_counter()
    rc, job = dep.backup(*args, "--timeout", str(spec.timeout_s), timeout=spec.timeout_s + 120)
    return time.perf_counter() - began, rc, job


def run_timings(run: dict) -> dict:
    t = run.get("timings") or {}
    return json.loads(t) if isinstance(t, str) else t


def check_job(name: str, rc: int, job: dict, expected: set[tuple[str, str]]) -> list[str]:
    problems = []
    if rc != 0:
        problems.append(f"{name}: `tinabs backup` exited {rc} (done={job.get('done')})")
    got = {(r.get("pool"), r.get("vm_uuid")) for r in job["runs"]}
    if got != expected:
        problems.append(f"{name}: {len(got)} runs for {len(expected)} VMs; missing {sorted(expected - got)[:5]}, "
                        f"unexpected {sorted(got - expected)[:5]}")
    bad = [r for r in job["runs"] if r["state"] != "succeeded"]
    if bad:
        problems.append(f"{name}: {len(bad)} runs did not succeed, e.g. "
                        + "; ".join(f"{r.get('pool')}/{r.get('vm_name')}: {r['state']} {r.get('error', '')}"
                                    for r in bad[:5]))
    return problems


def check_destination(dest: Path, expected: dict[tuple[str, str], int]) -> list[str]:
    """Exactly the expected number of complete backups (data file + manifest) per VM, nothing partial."""
    problems = []
    partial = sorted(str(p.relative_to(dest)) for p in dest.rglob("*.partial"))
    if partial:
        problems.append(f"{len(partial)} .partial files left in the destination, e.g. {partial[:3]}")
    found: dict[tuple[str, str], int] = {}
    for manifest in dest.glob("*/*/*.json"):
        pool, vm_dir = manifest.parent.parent.name, manifest.parent.name
        if not manifest.with_suffix(".xva").is_file():
            problems.append(f"manifest without its data file: {manifest.relative_to(dest)}")
        key = (pool, vm_dir.rsplit("--", 1)[-1])
        found[key] = found.get(key, 0) + 1
    stray = sorted(str(p.relative_to(dest)) for p in dest.rglob("*")
                   if p.is_file() and not p.name.endswith((".json", ".xva", ".partial")))
    if stray:
        problems.append(f"{len(stray)} stray files in the destination, e.g. {stray[:3]}")
    data_files = sum(1 for _ in dest.glob("*/*/*.xva"))
    if data_files != sum(found.values()):
        problems.append(f"{data_files} data files but {sum(found.values())} manifests")
    wrong = {k: (found.get(k, 0), n) for k, n in expected.items() if found.get(k, 0) != n}
    wrong.update({k: (n, 0) for k, n in found.items() if k not in expected})
    if wrong:
        problems.append(f"{len(wrong)} VMs with the wrong number of backups (found, expected), e.g. "
                        f"{sorted(wrong.items())[:5]}")
    return problems


def run_load(spec: LoadSpec, root: Path) -> LoadResult:
    root = Path(root)
    server = RedisProc(root / "redis")
    server.start()
    dep = None
    try:
        dep = Deployment(root / "deploy", server, spec.sim_args(), db=0, tuning=spec.tuning())
        for i in range(spec.workers):
            dep.start_worker(f"load{i + 1}", concurrency=spec.concurrency)
        return _measure(dep, spec)
    finally:
        if dep is not None:
            dep.stop()
        server.stop()


def _measure(dep: Deployment, spec: LoadSpec) -> LoadResult:
    out, r = LoadResult(), dep.redis
    state = dep.sim.state()
    vms = {(pool, vm["uuid"]) for pool in state["pools"] for vm in backupable_vms(state, pool)}
    tiny_vm = min(vms)
    out.figures.update(pools=spec.pools, vms_per_pool=spec.vms_per_pool, chains=len(vms), workers=spec.workers,
                       concurrency=spec.concurrency, disk_mib=spec.disk_mib, state_ttl_s=spec.state_ttl_s)
    before = redis_snapshot(r)
    with MemorySampler(dep.redis_url) as sampler:
        tiny_s, rc, tiny = backup(dep, spec, "--vm", tiny_vm[1], "--pool", tiny_vm[0])
        out.problems += check_job("one-VM job", rc, tiny, {tiny_vm})
        with CpuMeter(dep, r) as cpu:
            wall_s, rc, job = backup(dep, spec, "--all")
        job_end = time.monotonic()
        peak_info, peak_sampled, peak_keys = r.info("memory")["used_memory_peak"], sampler.peak_bytes, sampler.peak_keys
        at_end = redis_snapshot(r)  # what the job holds for state_ttl_s (all of it if the TTL outlasts the job)
        out.problems += check_job("load job", rc, job, vms) + _check_leftovers(dep, vms, tiny_vm)
        time.sleep(max(0.0, job_end + spec.state_ttl_s + spec.settle_margin_s - time.monotonic()))
        settle_s = time.monotonic() - job_end
        after = redis_snapshot(r)
    out.problems += check_settled(before, after, vms=len(vms), pools=spec.pools)
    out.keys_after = sorted(after["keys"].items())
    _job_figures(out.figures, spec, (tiny_s, tiny), (wall_s, job), cpu.used)
    out.figures.update(worker_log_counts(dep))
    out.figures.update(redis_used_memory_peak_sampled_MB=peak_sampled / 1e6,
                       redis_used_memory_peak_info_MB=peak_info / 1e6, redis_keys_peak=peak_keys,
                       redis_memory_samples=sampler.samples, settle_s=settle_s)
    _redis_figures(out.figures, before, at_end, after)
    return out


def _redis_figures(f: dict, before: dict, at_end: dict, after: dict) -> None:
    f.update(redis_at_job_end_without_clients_MB=at_end["without_clients"] / 1e6,
             redis_keys_at_job_end=len(at_end["keys"]),
             redis_at_job_end_by_kind=", ".join(f"{k}={n} keys/{at_end['kind_bytes'][k] / 1e6:.2f} MB"
                                                for k, n in sorted(at_end["kinds"].items())))
    for when, snap in (("before", before), ("after", after)):
        f.update({f"redis_used_memory_{when}_MB": snap["used_memory"] / 1e6,
                  f"redis_without_clients_{when}_MB": snap["without_clients"] / 1e6,
                  f"redis_command_stats_{when}_MB": snap["command_stats"] / 1e6,
                  f"redis_clients_{when}": snap["clients"],
                  f"redis_client_memory_{when}_MB": snap["client_bytes"] / 1e6,
                  f"redis_keys_{when}": len(snap["keys"])})
    f.update(redis_keys_after_without_ttl=sum(1 for t in after["keys"].values() if t == -1),
             redis_keys_after_by_kind=",".join(f"{k}={n}" for k, n in sorted(after["kinds"].items())) or "none")


def _check_leftovers(dep: Deployment, vms: set, tiny_vm: tuple[str, str]) -> list[str]:
    problems = []
    left = litter(dep.sim.state())
    if left:
        problems.append(f"tinabs objects left on the pools: "
                        + "; ".join(f"{cls}: {len(objs)} e.g. {objs[:3]}" for cls, objs in left.items()))
    expected = {vm: 2 if vm == tiny_vm else 1 for vm in vms}  # the one-VM job backed this one up too
    return problems + check_destination(dep.dest, expected)


def worker_log_counts(dep: Deployment) -> dict:
    """Tasks the workers received and retried (a wait for a pool's transfer slot is a retry),
    over both jobs, from their logs."""
    text = "".join(w.log_path.read_text(errors="replace") for w in dep.workers)
    return {"tasks_received": text.count("] received"), "task_retries": text.count("] retry: ")}


def _job_figures(f: dict, spec: LoadSpec, tiny: tuple[float, dict], load: tuple[float, dict], cpu: dict) -> None:
    """Throughput, and the ideal of the same run: the larger of two lower bounds,
    * CPU: all the CPU this run's processes used, on every core of the machine;
    * slots: every chain as long as the one-VM job's chain alone, on all worker slots."""
    (tiny_s, tiny_job), (wall_s, job) = tiny, load
    runs, parts = job["runs"], ("workers", "simulator", "redis", "cli")
    finished = [float(r["finished"]) for r in runs if r.get("finished")]
    tiny_chain_s = sum(sum(run_timings(r).values()) for r in tiny_job["runs"])
    bounds = {"cpu": sum(cpu[p] for p in parts) / os.cpu_count(),
              "slots": len(runs) * tiny_chain_s / (spec.workers * spec.concurrency)}
    f.update(succeeded=sum(r["state"] == "succeeded" for r in runs),
             not_succeeded=sum(r["state"] != "succeeded" for r in runs),
             tiny_job_s=tiny_s, tiny_chain_work_s=tiny_chain_s, load_wall_s=wall_s,
             load_makespan_s=(max(finished) - float(job["created"])) if finished else float("nan"),
             chains_per_min=len(runs) / wall_s * 60,
             one_at_a_time_est_s=len(runs) * tiny_s, speedup_vs_one_at_a_time_est=len(runs) * tiny_s / wall_s,
             stage_work_s=sum(sum(run_timings(r).values()) for r in runs),
             cpu_s_per_chain=sum(cpu[p] for p in parts) / len(runs),
             bound_cpu_s=bounds["cpu"], bound_slots_s=bounds["slots"], ideal_s=max(bounds.values()),
             efficiency_vs_ideal=max(bounds.values()) / wall_s,
             machine_cpu_utilisation=cpu["machine"] / (wall_s * os.cpu_count()))
    for part in parts:
        f[f"cpu_cores_{part}"] = cpu[part] / wall_s
    # the machine is shared: what other processes used meanwhile
    f["cpu_cores_not_this_run"] = (cpu["machine"] - sum(cpu[p] for p in parts)) / wall_s
