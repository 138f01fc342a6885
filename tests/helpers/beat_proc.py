"""Real `celery -A tinabs_tasks beat` processes (RedBeat) for end-to-end tests."""
from __future__ import annotations

import datetime as dt
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

READY_TIMEOUT = 30.0
#: RedBeat logs these: the lock (info), each send (info) and the task id it sent (debug, just after)
ACQUIRED = "beat: Acquired lock"
SENDING = re.compile(r"^\[([\d-]+ [\d:]+,\d+): INFO/MainProcess\] Scheduler: Sending due task (\S+) ")
SENT_ID = re.compile(r"Scheduler: \S+ sent\. id->(\S+)$")


@dataclass(frozen=True)
class Send:
    at: dt.datetime  # the beat host's local time, for intervals between sends
    entry: str
    task_id: str


class BeatProc:
    def __init__(self, name: str, env: dict, logdir: Path):
        self.name, self.env = name, env
        self.log_path = Path(logdir) / f"beat-{name}.log"
        self.cwd = Path(logdir)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "BeatProc":
        """Started once beat has loaded its schedule into Redis (it may still wait for the lock)."""
        argv = [sys.executable, "-m", "celery", "-A", "tinabs_tasks", "beat", "-S", "tinabs_tasks.schedule.beat_scheduler:Scheduler",
                "-l", "debug"]
        self._log = open(self.log_path, "ab")
        self._offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"beat {self.name} exited:\n{self.log()}")
            if "beat: Starting..." in self.log():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"beat {self.name} did not start in {READY_TIMEOUT}s:\n{self.log()}")

    def log(self) -> str:
        """This start's log."""
        with open(self.log_path, "rb") as fh:
            fh.seek(self._offset)
            return fh.read().decode(errors="replace")

    @property
    def holds_lock(self) -> bool:
        return ACQUIRED in self.log()

    def sends(self) -> list[Send]:
        """Every task this beat has sent: when, which entry, the task's id."""
        found, pending = [], None
        for line in self.log().splitlines():
            sending, sent = SENDING.match(line), SENT_ID.search(line)
            if sending:
                pending = (dt.datetime.strptime(sending[1], "%Y-%m-%d %H:%M:%S,%f"), sending[2])
            elif sent and pending:
                found.append(Send(pending[0], pending[1], sent[1]))
                pending = None
        return found

    def kill(self) -> None:
        """SIGKILL, as a power cut would: the lock is not released, it expires."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None) and not self._log.closed:
            self._log.close()
