"""What watches a running deployment, as real processes: a Celery event recorder and Flower."""
from __future__ import annotations

import base64
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .redis_proc import free_port

READY_TIMEOUT = 30.0

#: every event Celery sends (task-sent/received carry args and kwargs, task-failed the
#: exception and traceback), one JSON object a line; "ready" on stdout once the queue is bound
_RECORDER = r"""
import json, os, sys
from celery import Celery

app = Celery("recorder", broker=os.environ["RECORDER_BROKER"])
out = open(sys.argv[1], "a")


def record(event):
    out.write(json.dumps(event, default=repr) + "\n")
    out.flush()


class Recorder(app.events.Receiver):
    def on_consume_ready(self, *args, **kwargs):
        super().on_consume_ready(*args, **kwargs)
        print("ready", flush=True)


with app.connection_for_read() as conn:
    Recorder(conn, handlers={"*": record}, app=app).capture(limit=None, timeout=None, wakeup=True)
"""


def _stop(proc: subprocess.Popen | None) -> None:
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class EventRecorder:
    """A real `app.events.Receiver` in its own process, writing every event to ``path``."""

    def __init__(self, broker_url: str, path: Path):
        self.broker_url, self.path = broker_url, Path(path)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "EventRecorder":
        # the broker URL (it may carry a password) goes through the environment, not argv
        log_path = self.path.with_suffix(".log")
        with open(log_path, "ab") as log:  # its own messages; stdout carries only "ready"
            self.proc = subprocess.Popen([sys.executable, "-c", _RECORDER, str(self.path)], stdout=subprocess.PIPE,
                                         stderr=log, text=True, env={**os.environ, "RECORDER_BROKER": self.broker_url})
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            line = self.proc.stdout.readline() if sel.select(timeout=READY_TIMEOUT) else ""
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError(f"event recorder not ready in {READY_TIMEOUT}s: {line}\n"
                               f"{log_path.read_text(errors='replace')[-3000:]}")
        return self

    def events(self) -> list[dict]:
        if not self.path.exists():
            return []
        complete = self.path.read_text().split("\n")[:-1]  # the last piece may be a line still being written
        return [json.loads(line) for line in complete if line.strip()]

    def stop(self) -> None:
        _stop(self.proc)


class FlowerProc:
    """`celery -A tinabs_tasks flower` on a free loopback port, with basic auth from FLOWER_BASIC_AUTH
    (as deploy/docker-compose.yml starts it), its output in ``log_path``."""

    def __init__(self, env: dict, workdir: Path, user: str, password: str):
        self.port, self.user, self.password = free_port(), user, password
        self.env = {**env, "FLOWER_BASIC_AUTH": f"{user}:{password}"}
        self.workdir = Path(workdir)
        self.log_path = self.workdir / "flower.log"
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FlowerProc":
        argv = [sys.executable, "-m", "celery", "-A", "tinabs_tasks", "flower", "--address=127.0.0.1",
                f"--port={self.port}", "--persistent=False"]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=self.workdir)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"flower exited:\n{self.log_path.read_text(errors='replace')}")
            if self.get("/healthcheck", auth=False)[0] in (200, 401):
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"flower not up in {READY_TIMEOUT}s:\n{self.log_path.read_text(errors='replace')}")

    def get(self, path: str, auth: bool = True, password: str | None = None) -> tuple[int, bytes]:
        """(HTTP status, body), with basic auth (``password`` instead of the right one); 0: no answer yet."""
        req = urllib.request.Request(self.base + path)
        if auth:
            token = base64.b64encode(f"{self.user}:{password or self.password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except (urllib.error.URLError, ConnectionError):
            return 0, b""

    def stop(self) -> None:
        _stop(self.proc)
        if getattr(self, "_log", None):
            self._log.close()
