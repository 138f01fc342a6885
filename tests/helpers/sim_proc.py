"""Run `tinabs sim` as a real subprocess and talk to it like a client would."""
from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import XenAPI

READY_TIMEOUT = 20.0


class SimProc:
    def __init__(self, *args: str, prefix: list[str] | None = None):
        self.args = list(args)
        self.prefix = prefix or []  # e.g. `ip netns exec NS`: the simulator on a test host
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}
        self.startup_seconds = 0.0

    def start(self) -> "SimProc":
        began = time.monotonic()
        self.proc = subprocess.Popen([*self.prefix, sys.executable, "-m", "tinabs_tasks.cli", "sim", *self.args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=READY_TIMEOUT):
            self.stop()
            raise RuntimeError(f"simulator printed no ready line within {READY_TIMEOUT}s")
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()
            raise RuntimeError(f"simulator exited: {err}")
        self.info = json.loads(line)
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def pid(self) -> int:
        return self.proc.pid

    # -- pools ----------------------------------------------------------------
    @property
    def pools(self) -> list[dict]:
        return self.info["pools"]

    def pool(self, index_or_name=0) -> dict:
        if isinstance(index_or_name, int):
            return self.pools[index_or_name]
        return next(p for p in self.pools if p["name"] == index_or_name)

    def session(self, pool=0, url: str | None = None) -> XenAPI.Session:
        p = self.pool(pool)
        s = XenAPI.Session(url or p["master"])
        s.xenapi.login_with_password(p["username"], p["password"], "2.21", "tinabs-tests")
        return s

    # -- control API ----------------------------------------------------------
    @property
    def control(self) -> str:
        return self.info["control"]

    def control_call(self, method: str, path: str, body=None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.control + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def state(self) -> dict:
        return self.control_call("GET", "/sim/state")[1]

    def add_fault(self, spec) -> dict:
        status, body = self.control_call("POST", "/sim/faults", spec)
        assert status == 200, body
        return body

    def faults(self) -> list[dict]:
        """The active faults, each with its `fired` count (one of `times: N` is gone once used up)."""
        return self.control_call("GET", "/sim/faults")[1]["faults"]

    def wait_fired(self, timeout: float = 60) -> None:
        """Until every fault added has fired: the stage meeting it is inside that call now."""
        deadline = time.monotonic() + timeout
        while not all(f["fired"] for f in self.faults()):
            assert time.monotonic() < deadline, f"a fault never fired: {self.faults()}"
            time.sleep(0.05)

    def clear_faults(self) -> None:
        self.control_call("DELETE", "/sim/faults")

    def vdi_info(self, uuid: str, sha256: bool | None = None) -> dict:
        """pool, ref, digest, virtual_size, nonzero_bytes; sha256 too for disks up to 4 GiB
        (the simulator hashes bigger ones only when asked: ``sha256=True``; never: ``False``)."""
        query = {None: "", True: "?sha256=1", False: "?sha256=0"}[sha256]
        status, body = self.control_call("GET", f"/sim/vdi/{uuid}{query}")
        assert status == 200, body
        return body

    def rss_bytes(self) -> int:
        """The simulator process's resident memory (VmRSS of /proc/<pid>/status)."""
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc/<pid>/status")

    def vdi_bytes(self, uuid: str) -> bytes:
        with urllib.request.urlopen(f"{self.control}/sim/vdi/{uuid}/data", timeout=120) as resp:
            return resp.read()


def wait_task(xapi, task: str, timeout: float = 30.0) -> dict:
    """Poll a task until it leaves pending/cancelling; return its record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = xapi.task.get_record(task)
        if rec["status"] not in ("pending", "cancelling"):
            return rec
        time.sleep(0.02)
    raise AssertionError(f"task {task} still {rec['status']} after {timeout}s")
