"""A whole tinabs deployment for end-to-end tests: simulator, private Redis, config,
real worker processes and the real `tinabs` CLI, all as separate processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import redis

from tinabs_tasks.repo import keys
from tinabs_tasks.repo.layout import init_repository, open_repository

from .sim_proc import SimProc
from .workers import WorkerProc

#: test-speed retry policy: same logic, shorter waits
TEST_TUNING = """
[retry]
max_retries = 3
backoff_base_s = 0.2
backoff_max_s = 1.0

[limits]
lease_s = 10
"""

#: for fault tests: a short visibility timeout and lease, so a killed worker's stage is handed
#: out again within seconds, and a pool that stays away is given up on after 30 s
VISIBILITY_S = 6
FAULT_TUNING = f"""
[retry]
max_retries = 3
backoff_base_s = 0.2
backoff_max_s = 1.0
unreachable_wait_s = 30

[limits]
lease_s = 3
visibility_timeout_s = {VISIBILITY_S}
"""


class Deployment:
    """Runs against ``redis_server``'s DB 0 (a test module's own server) unless ``db`` says otherwise."""

    def __init__(self, root: Path, redis_server, sim_args: tuple[str, ...], db: int = 0, tuning: str = TEST_TUNING,
                 repository: bool = False):
        self.root = Path(root)
        self.dest = self.root / "dest"
        self.dest.mkdir(parents=True, exist_ok=True)
        self.config = self.root / "tinabs.toml"
        self.redis_url = f"redis://{redis_server.host}:{redis_server.port}/{db}"
        self.redis_server = redis_server
        self.sim = SimProc(*sim_args, "--write-config", str(self.config), "--dest", str(self.dest)).start()
        with open(self.config, "a") as fh:
            fh.write(tuning)
        self.repo_path = self.root / "repo"
        self.repo_key_file = self.root / "repo.key"
        if repository:
            self.add_repository()
        self.env = {**os.environ, "TINABS_CONFIG": str(self.config), "TINABS_BROKER_URL": self.redis_url}
        self.workers: list[WorkerProc] = []

    def add_repository(self) -> None:
        """An encrypted repository at ``repo_path`` (its key in ``repo_key_file``), in the config."""
        key = keys.generate_key_file(str(self.repo_key_file))
        init_repository(str(self.repo_path), key=key)
        with open(self.config, "a") as fh:
            fh.write(f'\n[repository]\npath = "{self.repo_path}"\nkey_file = "{self.repo_key_file}"\n'
                     "store_threads = 2\n")

    def open_repo(self):
        """The deployment's repository, opened with its key (for checks)."""
        return open_repository(str(self.repo_path), keys.read_key_file(str(self.repo_key_file)))

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def start_worker(self, name: str, concurrency: int = 2, queues: list[str] | None = None) -> WorkerProc:
        worker = WorkerProc(name, self.env, self.root, concurrency, queues).start()
        self.workers.append(worker)
        return worker

    def cli(self, *args: str, timeout: float = 180, check: bool = False) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"tinabs {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def backup(self, *args: str, timeout: float = 180) -> tuple[int, dict]:
        """`tinabs backup ... --wait --json`: (exit status, job state)."""
        proc = self.cli("backup", *args, "--wait", "--json", timeout=timeout)
        try:
            return proc.returncode, json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(f"no JSON from tinabs backup (exit {proc.returncode}):\n{proc.stdout}\n"
                                 f"{proc.stderr}") from None

    def status(self, job: str) -> dict:
        return json.loads(self.cli("status", job, "--json").stdout)

    def wait_job(self, job: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.status(job)
            if state["done"]:
                return state
            time.sleep(0.3)
        raise AssertionError(f"job {job} not done after {timeout}s: {self.status(job)}")

    def files(self) -> list[Path]:
        return sorted(p for p in self.dest.rglob("*") if p.is_file())

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.sim.stop()
