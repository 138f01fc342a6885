"""workers/*.service: the systemd units an operator installs on hosts without Docker.

Given the unit files, then: each parses; its ExecStart is a `tinabs` command line the real CLI
accepts and turns into the Celery worker (or beat) the unit promises, pinned to the instance's
pool; secrets come from an EnvironmentFile= and the pool's password from LoadCredential= under
the name `password_secret` looks for in $CREDENTIALS_DIRECTORY; beat gets no pool password; and
`systemd-analyze verify` accepts both units (with ExecStart pointed at this checkout's `tinabs`,
since verify checks that the binary exists).  Where systemd-analyze is missing the parse checks
still run; on CI it must be there (`make test` installs it).
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tinabs_tasks import cli
from tinabs_tasks.config import model as config
from tinabs_tasks.cli import beat as beat_command
from tinabs_tasks.cli import worker as worker_command

WORKERS = Path(__file__).resolve().parent.parent / "workers"
WORKER_UNIT = WORKERS / "tinabs-worker@.service"
BEAT_UNIT = WORKERS / "tinabs-beat.service"
INSTALLED_TINABS = "/opt/tinabs/bin/tinabs"


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """{section: [(key, value), ...]}, keys in order (systemd allows a key more than once)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, eq, value = line.partition("=")
        assert current is not None and eq and key.strip(), f"{path.name}:{number}: not Key=Value: {raw!r}"
        assert not value.rstrip().endswith("\\"), f"{path.name}:{number}: continuation lines are not expected"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def exec_argv(unit: dict, instance: str, env: dict[str, str]) -> list[str]:
    """ExecStart as systemd runs it: %i is the instance, $VAR splits into words (none when unset)."""
    (line,) = values(unit, "Service", "ExecStart")
    argv = []
    for word in shlex.split(line.replace("%i", instance)):
        argv += env.get(word[1:], "").split() if word.startswith("$") else [word]
    return argv


@pytest.fixture
def two_pools(monkeypatch, tmp_path):
    monkeypatch.setenv("TINABS_BROKER_URL", "redis://:pw@redis.example:6379/0")
    return config.parse({"destination": str(tmp_path), "pools": {
        name: {"master": f"https://{name}.example", "username": "root", "password_secret": name,
               "shared_sr": "nfs"} for name in ("pool-a", "pool-b")}})


@pytest.mark.parametrize("extra, concurrency, default_queue", [
    ({}, "4", False),
    ({"TINABS_WORKER_ARGS": "--concurrency 8 --with-default-queue"}, "8", True),
])
def test_the_worker_unit_starts_a_worker_pinned_to_its_instance_pool(two_pools, extra, concurrency, default_queue):
    unit = parse_unit(WORKER_UNIT)
    # When systemd starts tinabs-worker@pool-a (with or without the optional per-instance args)
    argv = exec_argv(unit, "pool-a", extra)
    assert argv[0] == INSTALLED_TINABS
    args = cli.build_parser().parse_args(argv[1:])
    line = worker_command.command_line(two_pools, args)
    # Then it is a Celery worker on pool-a's queue only (and the default queue when asked), named pool-a@host
    queues = line[line.index("-Q") + 1].split(",")
    assert queues == (["tinabs"] if default_queue else []) + ["tinabs.pool.pool-a"], line
    assert line[line.index("-n") + 1] == "pool-a@%h" and line[line.index("-c") + 1] == concurrency


def test_the_worker_unit_gets_secrets_from_files_and_the_pool_password_as_a_credential(two_pools, tmp_path,
                                                                                      monkeypatch):
    unit = parse_unit(WORKER_UNIT)
    assert "TINABS_CONFIG=/etc/tinabs/tinabs.toml" in values(unit, "Service", "Environment")
    files = values(unit, "Service", "EnvironmentFile")
    assert "/etc/tinabs/tinabs.env" in files  # required: no broker, no start
    (credential,) = values(unit, "Service", "LoadCredential")
    name, _, source = credential.partition(":")
    assert name == "%i" and source.startswith("/etc/tinabs/") and "%i" in source, credential
    assert values(unit, "Service", "User") and values(unit, "Service", "User") != ["root"]
    assert values(unit, "Service", "KillMode") == ["mixed"] and values(unit, "Service", "Restart") == ["always"]
    # And the credential systemd makes (named after the instance: the pool) is what password_secret reads
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / name.replace("%i", "pool-a")).write_text("the-pool-a-password\n")
    (creds / "pool-a").chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = config.parse({"destination": str(tmp_path), "pools": {"pool-a": {
        "master": "https://a.example", "username": "root", "password_secret": "pool-a", "shared_sr": "nfs"}}})
    assert cfg.pools["pool-a"].resolve_password() == "the-pool-a-password"


def test_the_beat_unit_starts_redbeat_and_gets_no_pool_password():
    unit = parse_unit(BEAT_UNIT)
    argv = exec_argv(unit, "", {})
    assert argv[0] == INSTALLED_TINABS
    line = beat_command.command_line(cli.build_parser().parse_args(argv[1:]))
    assert line[line.index("beat") + 1:line.index("beat") + 3] == ["-S", "tinabs_tasks.schedule.beat_scheduler:Scheduler"], line
    assert "/etc/tinabs/tinabs.env" in values(unit, "Service", "EnvironmentFile")
    assert values(unit, "Service", "LoadCredential") == []
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]


def test_systemd_analyze_verifies_the_units(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing on CI; `make test` installs it (scripts/ensure-test-tools.sh)")
        pytest.skip("systemd-analyze is not installed (`make tools` installs it); the units were parsed above")
    # Given the units with ExecStart pointed at this checkout's tinabs, and the template instantiated
    tinabs = Path(sys.executable).with_name("tinabs")
    assert tinabs.exists(), tinabs
    for unit in (WORKER_UNIT, BEAT_UNIT):
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED_TINABS, str(tinabs)))
    (tmp_path / "tinabs-worker@pool-a.service").symlink_to(tmp_path / WORKER_UNIT.name)
    # When systemd-analyze verifies them, then it accepts them without a single warning
    done = subprocess.run([tool, "verify", "--man=no", "./tinabs-worker@pool-a.service", "./tinabs-beat.service"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr.strip() == "" and done.stdout.strip() == "", done.stdout + done.stderr
