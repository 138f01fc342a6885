"""`tinabs worker` and `tinabs beat`: from arguments to the Celery command line they exec.

Given a config with pools, when `tinabs worker` is given pools, a concurrency, a name and extra
Celery options, then the command line takes exactly those pools' queues (the default queue only
when serving every pool, or when asked), names the node NAME@%h, carries the recommended flags,
and refuses options that would contradict its own; an unknown pool is one line, exit 2.  When it
really runs, it *becomes* the Celery worker (same PID: systemd's and Docker's signals reach
Celery) consuming just those queues.  The multi-host test (test_multihost.py) uses it for real.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tinabs_tasks import cli
from tinabs_tasks.config import model as config
from tinabs_tasks.cli import beat as beat_command
from tinabs_tasks.cli import worker as worker_command
from tinabs_tasks.cli.common import UserError

CONFIG = """
broker_url = "{broker}"
destination = "{dest}"
{pools}
"""
POOL = """
[pools.{name}]
master = "https://{name}.invalid"
username = "root"
password_env = "NO_SUCH_PASSWORD"
shared_sr = "nfs-shared"
"""
PREFIX = [sys.executable, "-m", "celery", "-A", "tinabs_tasks"]


@pytest.fixture
def config_file(tmp_path, redis_server):
    path = tmp_path / "tinabs.toml"
    pools = "".join(POOL.format(name=n) for n in ("prod-a", "prod-b", "dr-1"))
    path.write_text(CONFIG.format(broker=redis_server.url, dest=tmp_path, pools=pools))
    return path


@pytest.fixture
def cfg(config_file, monkeypatch):
    monkeypatch.delenv("TINABS_BROKER_URL", raising=False)
    return config.load(str(config_file))


def line(cfg, *argv: str) -> list[str]:
    args = cli.build_parser().parse_args(["worker", *argv])
    return worker_command.command_line(cfg, args)


def option(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_without_pools_it_serves_every_pool_and_the_default_queue(cfg):
    cmd = line(cfg)
    assert cmd[:len(PREFIX) + 1] == PREFIX + ["worker"]
    assert option(cmd, "-Q") == "tinabs,tinabs.pool.dr-1,tinabs.pool.prod-a,tinabs.pool.prod-b"
    assert option(cmd, "-n") == "tinabs@%h"
    assert option(cmd, "-c") == str(worker_command.DEFAULT_CONCURRENCY)
    assert cmd[-4:] == ["-l", "info", "--without-gossip", "--without-mingle"]


def test_pools_pin_it_to_their_queues_in_the_order_given(cfg):
    cmd = line(cfg, "--pools", "prod-b, prod-a,prod-b", "--concurrency", "3")
    assert option(cmd, "-Q") == "tinabs.pool.prod-b,tinabs.pool.prod-a"  # no default queue, no duplicate
    assert option(cmd, "-n") == "prod-b+prod-a@%h" and option(cmd, "-c") == "3"


def test_a_pinned_worker_takes_the_default_queue_only_when_asked(cfg):
    assert option(line(cfg, "--pools", "dr-1", "--with-default-queue"), "-Q") == "tinabs,tinabs.pool.dr-1"
    with pytest.raises(UserError, match="--with-default-queue goes with --pools"):
        line(cfg, "--with-default-queue")


@pytest.mark.parametrize("name, node", [("a", "a@%h"), ("site2@backup-01", "site2@backup-01")])
def test_the_name_becomes_the_node_name(cfg, name, node):
    assert option(line(cfg, "--pools", "prod-a", "--name", name), "-n") == node


def test_celery_options_after_the_double_dash_are_passed_on(cfg):
    cmd = line(cfg, "--pools", "prod-a", "--", "--max-tasks-per-child", "100", "-l", "debug")
    assert cmd[-4:] == ["--max-tasks-per-child", "100", "-l", "debug"]  # Celery takes the last -l


@pytest.mark.parametrize("extra, instead", [
    (["-Q", "x"], "--pools"), (["--queues=x"], "--pools"), (["-X", "tinabs"], "--pools"),
    (["-c4"], "--concurrency"), (["--concurrency", "9"], "--concurrency"),
    (["-n", "x@y"], "--name"), (["--hostname=x@y"], "--name"), (["-A", "other"], "tinabs sets it"),
])
def test_options_it_sets_itself_are_refused_after_the_double_dash(cfg, extra, instead):
    with pytest.raises(UserError, match=instead):
        line(cfg, "--", *extra)


@pytest.mark.parametrize("argv", [["--pools", "a,,b"], ["--pools", ""], ["--concurrency", "0"],
                                  ["--concurrency", "many"]])
def test_malformed_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["worker", *argv])
    assert exited.value.code == 2 and "tinabs worker: error: argument" in capsys.readouterr().err


def test_beat_wraps_the_redbeat_command_line():
    args = cli.build_parser().parse_args(["beat", "--", "--max-interval", "30"])
    assert beat_command.command_line(args) == PREFIX + [
        "beat", "-S", "tinabs_tasks.schedule.beat_scheduler:Scheduler", "-n", "celerybeat@%h", "-l", "info", "--enable-remote-control",
        "--max-interval", "30"]
    with pytest.raises(UserError, match="tinabs beat sets it"):
        beat_command.command_line(argparse.Namespace(name="celerybeat", celery_args=["-S", "other.Scheduler"]))


def test_the_default_queue_is_the_apps(config_file, monkeypatch):
    monkeypatch.setenv("TINABS_CONFIG", str(config_file))
    from tinabs_tasks import app
    assert worker_command.DEFAULT_QUEUE == app.DEFAULT_QUEUE


def run_tinabs(config_file, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TINABS_BROKER_URL"}
    return subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "--config", str(config_file), *argv],
                          env=env, capture_output=True, text=True, timeout=60)


def test_an_unknown_pool_is_one_line_and_exit_2(config_file):
    done = run_tinabs(config_file, "worker", "--pools", "prod-a,prod-c")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "tinabs: unknown pool `prod-c`; configured pools: dr-1, prod-a, prod-b\n"


def test_print_shows_the_command_line_and_starts_nothing(config_file):
    done = run_tinabs(config_file, "worker", "--pools", "prod-a", "-c", "2", "--print")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == PREFIX + ["worker", "-Q", "tinabs.pool.prod-a", "-c", "2", "-n", "prod-a@%h",
                                            "-l", "info", "--without-gossip", "--without-mingle"]


def test_it_becomes_the_celery_worker_on_its_pools_queues(config_file, tmp_path):
    # Given `tinabs worker --pools prod-a,dr-1` started as systemd or Docker would start it
    env = {k: v for k, v in os.environ.items() if k != "TINABS_BROKER_URL"}
    env["TINABS_CONFIG"] = str(config_file)
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "worker", "--pools", "prod-a,dr-1",
                                 "-c", "1", "--name", "pinned"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 45
        while b" ready." not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        node = f"pinned@{socket.gethostname()}"
        def inspect(what: str) -> dict:
            done = subprocess.run(PREFIX + ["inspect", what, "-d", node, "-j", "--timeout", "5"], env=env,
                                  capture_output=True, text=True, timeout=60)
            return json.loads(done.stdout)[node]
        stats, queues = inspect("stats"), inspect("active_queues")
        # Then the process started *is* the Celery worker (exec), consuming only those pools' queues
        assert stats["pid"] == proc.pid
        assert sorted(q["name"] for q in queues) == ["tinabs.pool.dr-1", "tinabs.pool.prod-a"]
    finally:
        proc.send_signal(signal.SIGTERM)  # to the worker itself: its warm shutdown
        assert proc.wait(timeout=30) == 0
