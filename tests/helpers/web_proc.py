"""`tinabs web` as a real subprocess on a free port, its output kept in a log file."""
from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .redis_proc import free_port

PASSWORD = "correct horse battery staple"
READY_S = 30


class WebProc:
    def __init__(self, env: dict, logdir: Path, password: str = PASSWORD, extra_env: dict | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "TINABS_WEB_PASSWORD": password, **(extra_env or {})}
        self.log_path = Path(logdir) / f"web-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WebProc":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "web", "--listen",
                                      f"127.0.0.1:{self.port}"], env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tinabs web exited {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"tinabs web did not answer within {READY_S}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self._log.close()


@contextlib.contextmanager
def running_console(dep, **worker):
    """``dep`` (a Deployment) with one worker (``worker``: Deployment.start_worker's arguments) and
    `tinabs web` as ``dep.web``; on leaving, all of it stopped, the deployment's simulator too."""
    web = None
    try:
        dep.start_worker(**worker)
        web = dep.web = WebProc(dep.env, dep.root).start()
        yield dep
    finally:
        if web:
            web.stop()
        dep.stop()
