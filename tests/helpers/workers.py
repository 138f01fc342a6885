"""Real Celery worker processes (`celery -A tinabs_tasks worker`) for end-to-end tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

READY_TIMEOUT = 30.0


class WorkerProc:
    def __init__(self, name: str, env: dict, logdir: Path, concurrency: int = 2, queues: list[str] | None = None,
                 loglevel: str = "info", argv: list[str] | None = None):
        self.name, self.env, self.concurrency, self.queues = name, env, concurrency, queues
        self.argv = argv  # a whole command line instead (`tinabs worker ...` on a test host), same readiness
        self.loglevel = loglevel
        self.log_path = Path(logdir) / f"worker-{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProc":
        argv = [sys.executable, "-m", "celery", "-A", "tinabs_tasks", "worker", "-l", self.loglevel,
                "-c", str(self.concurrency), "-n", f"{self.name}@%h", "--without-mingle", "--without-gossip"]
        if self.queues:
            argv += ["-Q", ",".join(self.queues)]
        argv = self.argv or argv
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited:\n{self.log_tail()}")
            if b" ready." in self.log_path.read_bytes():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"worker {self.name} not ready in {READY_TIMEOUT}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def child_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def kill(self) -> None:
        """SIGKILL the worker and its pool children, as a power cut would."""
        for pid in self.child_pids() + [self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "_log", None):
            self._log.close()
