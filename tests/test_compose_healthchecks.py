"""The compose file's healthchecks, run against real processes started with its services' commands.

Given each service's command from deploy/docker-compose.yml (as Docker runs it, with loopback
addresses and free ports where the container would listen on its own), when its healthcheck
runs as Docker would run it (HOSTNAME set to the host name, as in a container), then it passes;
and once the process is gone (or, for Redis, with a wrong password) it fails.  So a healthcheck
cannot name a node, port or password source its service does not have.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml

from helpers.compose_check import interpolate
from helpers.redis_proc import RedisProc, free_port
from helpers.sim_proc import SimProc

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
POOLS = """
destination = "{dest}"

[pools.prod-a]
master = "https://prod-a.invalid"
username = "root"
password_env = "PROD_A_PASSWORD"
shared_sr = "nfs-shared"

[pools.prod-b]
master = "https://prod-b.invalid"
username = "root"
password_env = "PROD_B_PASSWORD"
shared_sr = "nfs-shared"
"""


def service(name: str) -> dict:
    """A service with ${...} filled in (values that do not matter here) and $$ turned into $."""
    return interpolate(COMPOSE["services"][name], {"REDIS_PASSWORD": "x", "FLOWER_BASIC_AUTH": "admin:x",
                                                   "TINABS_WEB_PASSWORD": "x" * 12})


def run_healthcheck(name: str, env: dict, replace: tuple[str, str] | None = None) -> int:
    test = service(name)["healthcheck"]["test"]
    argv = ["sh", "-c", test[1]] if test[0] == "CMD-SHELL" else test[1:]
    if replace:
        argv = [arg.replace(*replace) for arg in argv]
    argv = [sys.executable if arg == "python" else arg for arg in argv]
    argv = [str(Path(sys.executable).parent / "celery") if arg == "celery" else arg for arg in argv]
    env = {**env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(argv, env=env, capture_output=True, timeout=60).returncode


def command(name: str) -> list[str]:
    argv = list(service(name)["command"])
    # `tinabs` and `celery` are the image's console scripts; here, this venv's
    return [str(Path(sys.executable).parent / argv[0])] + argv[1:] if argv[0] in ("tinabs", "celery") else argv


class Started:
    def __init__(self, argv: list[str], env: dict, log: Path, ready: str):
        self.log, self._out = log, open(log, "wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 45
        while ready.encode() not in log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{argv} not ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


@pytest.fixture
def tinabs_env(redis_server, tmp_path):
    (tmp_path / "dest").mkdir()
    (tmp_path / "tinabs.toml").write_text(POOLS.format(dest=tmp_path / "dest"))
    url = redis_server.url
    redis.Redis.from_url(url).flushdb()  # the module's Redis: no earlier test's worker, beat or lock in it
    return {**os.environ, "TINABS_CONFIG": str(tmp_path / "tinabs.toml"), "TINABS_BROKER_URL": url,
            "HOSTNAME": socket.gethostname()}


def until(check, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return False


def test_redis_healthcheck_logs_in_with_the_password_from_the_environment(tmp_path):
    # Given Redis with a password, as the service runs it
    server = RedisProc(tmp_path, password="s3cret-redis")
    server.start()
    try:
        on_port = ("redis-cli", f"redis-cli -p {server.port}")  # the container's Redis is on the default port
        # Then the healthcheck passes with the password in REDIS_PASSWORD, and fails with a wrong one
        assert run_healthcheck("redis", {**os.environ, "REDIS_PASSWORD": "s3cret-redis"}, on_port) == 0
        assert run_healthcheck("redis", {**os.environ, "REDIS_PASSWORD": "wrong"}, on_port) != 0
    finally:
        server.stop()
    assert run_healthcheck("redis", {**os.environ, "REDIS_PASSWORD": "s3cret-redis"}, on_port) != 0


def test_worker_healthcheck_pings_the_worker_its_command_starts(tinabs_env, tmp_path):
    # Given the worker service's command (`tinabs worker ...`)
    worker = Started(command("worker"), tinabs_env, tmp_path / "worker.log", " ready.")
    try:
        # Then its healthcheck passes, and the worker takes every pool's queue and the default one
        assert until(lambda: run_healthcheck("worker", tinabs_env) == 0)
        node = f"tinabs@{socket.gethostname()}"
        inspect = subprocess.run([sys.executable, "-m", "celery", "-A", "tinabs_tasks", "inspect", "active_queues",
                                  "-d", node, "-j", "--timeout", "5"], env=tinabs_env, capture_output=True,
                                 text=True, timeout=60)
        replies = json.loads(inspect.stdout)
        assert sorted(q["name"] for q in replies[node]) == ["tinabs", "tinabs.pool.prod-a", "tinabs.pool.prod-b"]
    finally:
        worker.stop()
    # And once it is gone, the healthcheck fails
    assert run_healthcheck("worker", tinabs_env) != 0


def test_beat_healthcheck_pings_beat(tinabs_env, tmp_path):
    beat = Started(command("beat"), tinabs_env, tmp_path / "beat.log", "beat: Starting...")
    try:
        assert until(lambda: run_healthcheck("beat", tinabs_env) == 0), (tmp_path / "beat.log").read_text()
    finally:
        beat.stop()
    assert run_healthcheck("beat", tinabs_env) != 0


def test_flower_healthcheck_answers_without_credentials(tinabs_env, tmp_path):
    port = free_port()
    argv = [re.sub(r"^--address=.*", "--address=127.0.0.1", re.sub(r"^--port=\d+", f"--port={port}", a))
            for a in command("flower")]
    env = {**tinabs_env, "FLOWER_BASIC_AUTH": "admin:s3cret-flower"}
    flower = Started(argv, env, tmp_path / "flower.log", "Visit me at")
    at_port = (":5555/", f":{port}/")
    try:
        assert until(lambda: run_healthcheck("flower", env, at_port) == 0)
    finally:
        flower.stop()
    assert run_healthcheck("flower", env, at_port) != 0


def test_web_healthcheck_answers_without_a_login(tinabs_env, tmp_path):
    port = free_port()
    argv = [a.replace("0.0.0.0:8080", f"127.0.0.1:{port}") for a in command("web")]
    env = {**tinabs_env, "TINABS_WEB_PASSWORD": "s3cret-web-console"}
    web = Started(argv, env, tmp_path / "web.log", "Application startup complete")
    at_port = (":8080/", f":{port}/")
    try:
        assert run_healthcheck("web", env, at_port) == 0
    finally:
        web.stop()
    assert run_healthcheck("web", env, at_port) != 0


def _start_compose_sim(attempts: int = 5) -> tuple[SimProc, int]:
    """The compose file's simulator on free ports.  Its pools listen on the ports after
    `--port`, which another test process may take between free_port() and the bind: then
    the simulator says so and we try other ports."""
    argv = list(service("sim")["command"][2:])  # after `tinabs sim`
    argv[argv.index("--pool-address") + 1] = "127.0.0.1"
    argv[argv.index("--disk-mib") + 1] = "1"
    for _ in range(attempts):
        base = free_port()
        argv[argv.index("--port") + 1] = str(base)
        try:
            return SimProc(*argv).start(), base
        except RuntimeError as e:
            if "Address already in use" not in str(e):
                raise
            taken = e
    raise taken


def test_sim_healthcheck_asks_the_control_api(tmp_path):
    sim, base = _start_compose_sim()
    at_port = (":8100/", f":{base}/")
    try:
        assert run_healthcheck("sim", dict(os.environ), at_port) == 0
    finally:
        sim.stop()
    assert run_healthcheck("sim", dict(os.environ), at_port) != 0
