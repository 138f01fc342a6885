"""Redis with a password, and Redis over TLS, for Celery and for tinabs' own state.

Given a private redis-server that requires a password (one with URL-special
characters, percent-encoded in the URL), when a backup runs through it with a
real worker, then it succeeds, and the password is in no worker log (Celery's
banner masks it), no CLI output and no check-config line.  Given a wrong or a
missing password, then every broker-facing command says so in one line,
without a traceback.  Given a redis-server that speaks only TLS, when a backup
runs over ``rediss://`` with ``ssl_cert_reqs=required`` and the CA, then it
succeeds; a plaintext client and a client trusting another CA are refused.
"""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse

import pytest
import redis

from helpers.deployment import Deployment
from helpers.redis_proc import RedisProc, find_redis_server, tls_supported
from helpers.workers import WorkerProc
from test_tls import make_certs

PASSWORD = "tinabs p@ss:w/rd%+Zq8"  # every character a URL gives a meaning to
SIM_ARGS = ("--pools", "1", "--vms-per-pool", "2", "--disk-mib", "4")
DB = 2


def _deployment(root, server: RedisProc, db: int = DB) -> Deployment:
    dep = Deployment(root, server, SIM_ARGS, db=db)
    dep.redis_url = server.url_for(db)  # the Deployment's own URL has no password or TLS
    dep.env["TINABS_BROKER_URL"] = dep.redis_url
    return dep


@pytest.fixture(scope="module")
def auth_dep(tmp_path_factory):
    root = tmp_path_factory.mktemp("redis-auth")
    server = RedisProc(root / "redis", binary=find_redis_server(), password=PASSWORD)
    server.start()
    dep = None
    try:
        dep = _deployment(root, server)
        dep.workers.append(WorkerProc("w1", dep.env, root, concurrency=2, loglevel="debug").start())
        yield dep
    finally:
        if dep:
            dep.stop()
        server.stop()


def _cli(dep, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", *args], env={**dep.env, **env},
                          capture_output=True, text=True, timeout=180)


def _no_password(text: str) -> None:
    for form in (PASSWORD, urllib.parse.quote(PASSWORD, safe=""), urllib.parse.quote(PASSWORD)):
        assert form not in text, text[-2000:]


def test_backup_through_redis_with_a_password(auth_dep):
    dep = auth_dep
    # Given a Redis that refuses clients without the password
    port = dep.redis_server.port
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port, db=DB).set("tinabs:probe", "x")
    assert "%40" in dep.redis_url and "%2F" in dep.redis_url  # the URL carries it percent-encoded
    # When a backup runs through it
    backup = _cli(dep, "backup", "--all", "--wait", "--json", "--timeout", "120")
    # Then every VM is backed up, and the job's state is in that Redis
    assert backup.returncode == 0, backup.stdout + backup.stderr
    job = json.loads(backup.stdout)
    assert len(job["runs"]) == 2 and {r["state"] for r in job["runs"]} == {"succeeded"}, job["runs"]
    assert dep.redis.keys(f"*{job['id']}*"), "the job's state is not in the password-protected Redis"
    # And check-config reaches the broker
    check = _cli(dep, "check-config")
    assert check.returncode == 0 and "  broker: reachable" in check.stdout.splitlines(), check.stdout
    # And the password is printed nowhere: not in CLI output, nor in the worker's log (banner masked)
    status = _cli(dep, "status", job["id"])
    for proc in (backup, check, status):
        _no_password(proc.stdout + proc.stderr)
    log = dep.workers[0].log_path.read_text(errors="replace")
    assert f"redis://:**@127.0.0.1:{port}/{DB}" in log, log[:3000]  # the banner, masked
    assert "DEBUG" in log and "tinabs.snapshot" in log
    _no_password(log)


WRONG = ("not-the-password", ["refused the login", "invalid username-password pair",
                              "check the password in broker_url (or TINABS_BROKER_URL)"])
MISSING = ("", ["requires a password", "redis://:PASSWORD@host:port/db"])


@pytest.mark.parametrize("command, password, fragments", [
    (("backup", "--all", "--wait"), *WRONG), (("status",), *WRONG), (("backup", "--all"), *MISSING),
], ids=["backup-wrong", "status-wrong", "backup-missing"])
def test_wrong_or_missing_password_is_one_clear_line(auth_dep, command, password, fragments):
    dep = auth_dep
    url = dep.redis_server.url_for(DB, password=password)  # "": no password at all
    # When a broker-facing command runs with that URL
    proc = _cli(dep, *command, TINABS_BROKER_URL=url)
    # Then it exits 2 with one line saying what to fix, no traceback, no password
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("tinabs: the broker at redis://") and f"127.0.0.1:{dep.redis_server.port}" in line
    assert all(f in line for f in fragments), line
    assert "not-the-password" not in line
    _no_password(line)


def test_check_config_reports_a_wrong_broker_password(auth_dep):
    dep = auth_dep
    proc = _cli(dep, "check-config", TINABS_BROKER_URL=dep.redis_server.url_for(DB, password="nope-Xy7"))
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("  broker:")]
    assert len(lines) == 1 and "refused the login" in lines[0] and "redis://***@127.0.0.1" in lines[0], lines
    assert "nope-Xy7" not in proc.stdout + proc.stderr
    _no_password(proc.stdout + proc.stderr)


# -- TLS -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_dep(tmp_path_factory):
    binary = find_redis_server()
    if not tls_supported(binary):
        pytest.skip(f"{binary} was built without TLS (it refuses --tls-port)")
    root = tmp_path_factory.mktemp("redis-tls")
    certs = make_certs(root / "certs")
    server = RedisProc(root / "redis", binary=binary, password=PASSWORD,
                       tls={"cert": certs["cert"], "key": certs["key"], "ca": certs["ca"]})
    server.start()
    dep = None
    try:
        dep = _deployment(root, server, db=0)
        dep.certs = certs
        dep.workers.append(WorkerProc("w1", dep.env, root, concurrency=2).start())
        yield dep
    finally:
        if dep:
            dep.stop()
        server.stop()


def test_backup_over_tls(tls_dep):
    dep = tls_dep
    port = dep.redis_server.port
    assert dep.redis_url.startswith("rediss://") and "ssl_cert_reqs=required" in dep.redis_url
    # Given a Redis that speaks only TLS: a plaintext client gets nowhere
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, socket_timeout=3).ping()
    # When a backup runs over rediss:// (Celery's broker and result backend, and tinabs' own client)
    backup = _cli(dep, "backup", "--all", "--wait", "--json", "--timeout", "120")
    # Then it succeeds
    assert backup.returncode == 0, backup.stdout + backup.stderr
    job = json.loads(backup.stdout)
    assert len(job["runs"]) == 2 and {r["state"] for r in job["runs"]} == {"succeeded"}, job["runs"]
    log = dep.workers[0].log_path.read_text(errors="replace")
    assert f"rediss://:**@127.0.0.1:{port}/0" in log, log[:3000]
    _no_password(log + backup.stdout + backup.stderr)


def test_tls_with_an_untrusted_ca_is_one_clear_line(tls_dep, tmp_path):
    dep = tls_dep
    # Given a URL trusting a CA that did not sign the server's certificate
    other = make_certs(tmp_path / "other")
    url = dep.redis_url.replace(urllib.parse.quote(dep.certs["ca"], safe=""), urllib.parse.quote(other["ca"], safe=""))
    assert url != dep.redis_url
    # When a command needs the broker, then it says it cannot reach it, and why, in one line
    proc = _cli(dep, "status", TINABS_BROKER_URL=url)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "cannot reach the broker at rediss://***@127.0.0.1" in line and "certificate verify failed" in line, line
    _no_password(line)
