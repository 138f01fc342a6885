"""redis-server as the documented deployment runs it: with an append-only file, restartable.

For tests that kill Redis (SIGKILL) mid-job and start it again on the same port and files, as
a crash and a restart of the broker would (test_redis_restart.py, test_fault_matrix_repo.py).
"""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from .redis_proc import HOST, find_redis_server, free_port, ping


class PersistentRedis:
    """redis-server with an fsync-always append-only file, restartable on the same port."""

    def __init__(self, workdir: Path):
        self.binary, self.host, self.port, self.dir = find_redis_server(), HOST, free_port(), Path(workdir)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", self.host, "--dir", str(self.dir),
                                      "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not ping(self.host, self.port):
            assert time.monotonic() < deadline and self.proc.poll() is None, "redis-server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
