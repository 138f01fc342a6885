"""``make demo``: the real job on the simulator, start to finish, then tidy up.

Starts a private Redis, the XAPI simulator (2 pools) with a generated config,
one Celery worker, and runs ``tinabs backup --tag <today> --wait`` with its
live progress; prints where the backups are.  Then the same VMs go into a
repository (``tinabs repo init``, two nights of ``--mode repo``, ``tinabs repo
stats``): the second night is incremental, reads only what changed on the pools and stores
almost nothing; ``tinabs bases`` lists the snapshots kept on the pools for that.  Stops
everything it started.
Everything lives under ./demo-out (backups, repository and its key are kept there for a look).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tinabs_tasks.dev.localrun import free_port, private_redis, stop_all

OUT = Path("demo-out").resolve()


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "backups").mkdir(parents=True)
    started: list[subprocess.Popen] = []
    try:
        port = free_port()
        try:
            started.append(private_redis(port, str(OUT)))
        except RuntimeError as exc:
            sys.exit(f"demo: {exc}")
        config = OUT / "tinabs.toml"
        sim = subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "sim", "--pools", "2", "--vms-per-pool", "8",
                                "--disk-mib", "64", "--write-config", str(config), "--dest", str(OUT / "backups")],
                               stdout=subprocess.PIPE, text=True)
        started.append(sim)
        info = json.loads(sim.stdout.readline())
        print(f"simulator: {', '.join(p['name'] + ' at ' + p['master'] for p in info['pools'])}")
        with open(config, "a") as fh:  # before the worker starts: it reads its config once
            fh.write(f'\n[repository]\npath = "{OUT / "repo"}"\nkey_file = "{OUT / "repo.key"}"\n')
        env = {**os.environ, "TINABS_CONFIG": str(config), "TINABS_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
        log = open(OUT / "worker.log", "w")
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tinabs_tasks", "worker", "-l", "info",
                                   "-c", "2", "-n", "demo@%h"], env=env, stdout=log, stderr=subprocess.STDOUT)
        started.append(worker)
        _wait_for(OUT / "worker.log", " ready.", worker)
        print(f"worker: ready (log in {OUT / 'worker.log'})")
        today = dt.date.today().strftime("%a")
        print(f"\n$ tinabs backup --tag {today} --wait")
        status = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "backup", "--tag", today, "--wait"],
                                env=env).returncode
        backups = sorted(p for p in (OUT / "backups").rglob("*") if p.is_file() and not p.name.endswith(".json"))
        print(f"\n{len(backups)} backups in {OUT / 'backups'}:")
        for path in backups:
            print(f"  {path.relative_to(OUT)}  ({path.stat().st_size / 1e6:.1f} MB, manifest beside it)")
        for argv in (["repo", "init"], ["backup", "--tag", today, "--mode", "repo", "--wait"],
                     ["backup", "--tag", today, "--mode", "repo", "--wait"], ["repo", "stats"], ["bases"]):
            if status:  # a step failed: its output says why; the rest would only repeat it
                break
            print(f"\n$ tinabs {' '.join(argv)}", flush=True)
            status = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", *argv], env=env).returncode
        return status
    finally:
        stop_all(started)


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None or text in path.read_text(errors="replace"):
            if proc.poll() is not None:
                sys.exit(f"demo: the worker exited; see {path}")
            return
        time.sleep(0.1)
    sys.exit(f"demo: the worker did not start in {timeout:.0f}s; see {path}")


if __name__ == "__main__":
    sys.exit(main())
