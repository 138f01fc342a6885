"""Load: 20 pools x 50 VMs (1,000 chains) in one `tinabs backup --all` on a few workers.

The simulator runs with zero latency and 1 MiB system disks, so what is
measured is tinabs' own overhead per chain: Celery, Redis, XAPI calls and
writing the files.  The baseline of the same run is a job of one VM alone on
the same deployment:

* `one_at_a_time_est_s` is its time times the VMs (a loop over `tinabs backup --vm`);
* `ideal_s` is the larger of two lower bounds: all the CPU the run's processes
  used, spread over every core (`bound_cpu_s`), and every chain as long as the
  one-VM job's chain alone, on all worker slots (`bound_slots_s`);
  `efficiency_vs_ideal` is ideal_s / load_wall_s.  The machine is shared:
  `cpu_cores_not_this_run` is what other processes took meanwhile.

The run fails (exit 1, after the figures) unless every chain succeeded, no
tinabs object is left on a pool, no `.partial` file is left, every VM has one
backup, and after the state TTL Redis holds no job state or task result and
is back near its idle memory.  The driver is tests/helpers/load_run.py, which
tests/test_load.py runs at a smaller scale.

Knobs: BENCH_POOLS (20), BENCH_VMS (50), BENCH_WORKERS (3), BENCH_CONCURRENCY
(4), BENCH_DISK_MIB (1), BENCH_STATE_TTL_S (60; the semaphores' wake lists
expire after a fixed 60 s, so with 60 every key with a TTL is gone after
settling), BENCH_KEEP=1 keeps the working directory.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers.load_run import LoadSpec, run_load  # noqa: E402


def spec_from_env() -> LoadSpec:
    env = os.environ.get
    return LoadSpec(pools=int(env("BENCH_POOLS", "20")), vms_per_pool=int(env("BENCH_VMS", "50")),
                    workers=int(env("BENCH_WORKERS", "3")), concurrency=int(env("BENCH_CONCURRENCY", "4")),
                    disk_mib=int(env("BENCH_DISK_MIB", "1")), state_ttl_s=int(env("BENCH_STATE_TTL_S", "60")))


def show(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def main() -> None:
    root = tempfile.mkdtemp(prefix="tinabs-load-")
    try:
        result = run_load(spec_from_env(), Path(root))
    finally:
        if os.environ.get("BENCH_KEEP"):
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    for name, value in result.figures.items():
        print(f"{name}: {show(value)}")
    left = [f"{key} (ttl {ttl})" for key, ttl in result.keys_after[:40]]
    more = f" and {len(result.keys_after) - 40} more" if len(result.keys_after) > 40 else ""
    print(f"redis_keys_after_list: {', '.join(left) or 'none'}{more}")
    if result.problems:
        sys.exit("load: FAILED:\n  " + "\n  ".join(result.problems))


if __name__ == "__main__":
    main()
