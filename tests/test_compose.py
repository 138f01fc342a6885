"""deploy/docker-compose.yml: the documented deployment is protected and complete.

Given the compose file, its env file example, its config and the worker
Dockerfile, then: Redis requires a password (from the env file, never on a
command line) and keeps an append-only file on a volume; nothing but Flower is
published, on loopback, and Flower cannot start without basic auth; workers
and Flower reach Redis with the password; every file the compose file names
exists; every variable it needs is in env.example; the example config is valid
tinabs config and its pools' passwords come from env.example too; backups go
to a named volume at the config's destination.  Where `docker compose` or
`docker-compose` works here, it accepts the file.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tinabs_tasks import config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / "env.example"
CONFIG_PATH = "/etc/tinabs/tinabs.toml"
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert all(len(p) == 2 for p in pairs), pairs
    return {k.strip(): v.strip() for k, v in pairs}


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    return dict(item.split("=", 1) for item in env) if isinstance(env, list) else env


def _command(service: dict) -> str:
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else cmd


def _mounts(service: dict) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each short-syntax volume."""
    out = []
    for item in service.get("volumes", []):
        source, target, *mode = item.split(":")
        out.append((source, target, mode[0] if mode else "rw"))
    return out


def test_services_exist(compose):
    assert {"redis", "worker", "flower"} <= set(compose["services"])


def test_redis_requires_a_password_from_the_env_file(compose):
    redis = compose["services"]["redis"]
    command = _command(redis)
    # Given the Redis service, then it starts with requirepass, read from REDIS_PASSWORD in the environment,
    assert "requirepass" in command and "$$REDIS_PASSWORD" in command, command
    # written to a file (not passed as an argument: `ps` on the host shows arguments)
    assert "--requirepass" not in command and "> /tmp/auth.conf" in command and "redis-server /tmp/auth.conf" in command
    # and Compose refuses to start it without a password
    assert _environment(redis)["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?"), _environment(redis)


def test_redis_persists_its_data(compose):
    redis = compose["services"]["redis"]
    assert "--appendonly yes" in _command(redis)
    (source, target, _), = _mounts(redis)
    assert target == "/data" and source in compose["volumes"], (source, target)


def test_only_flower_is_published_and_on_loopback(compose):
    published = {name: s["ports"] for name, s in compose["services"].items() if s.get("ports")}
    assert set(published) == {"flower"}, published
    assert all(str(p).startswith("127.0.0.1:") for p in published["flower"]), published


def test_flower_requires_basic_auth(compose):
    flower = compose["services"]["flower"]
    command, env = _command(flower), _environment(flower)
    assert "flower" in command
    from_env = env.get("FLOWER_BASIC_AUTH", "").startswith("${FLOWER_BASIC_AUTH:?")
    assert from_env or re.search(r"--basic-auth=\$\{FLOWER_BASIC_AUTH:\?", command), (command, env)
    assert "FLOWER_UNAUTHENTICATED_API" not in env and "--auth" not in command


@pytest.mark.parametrize("name", ["worker", "flower"])
def test_workers_and_flower_log_in_to_redis(compose, name):
    env = _environment(compose["services"][name])
    url = env["TINABS_BROKER_URL"]
    assert re.fullmatch(r"rediss?://:\$\{REDIS_PASSWORD:\?[^}]*\}@redis:\d+/\d+", url), url
    assert env["TINABS_CONFIG"] == CONFIG_PATH


@pytest.mark.parametrize("name", ["worker", "flower"])
def test_one_config_file_mounted_read_only(compose, name):
    mounts = [m for m in _mounts(compose["services"][name]) if m[1] == CONFIG_PATH]
    assert len(mounts) == 1 and mounts[0][2] == "ro", mounts
    assert (DEPLOY / mounts[0][0]).is_file(), mounts


def test_backups_go_to_a_named_volume_at_the_destination(compose):
    cfg = tomllib.loads((DEPLOY / "tinabs.toml").read_text())
    targets = {target: source for source, target, _ in _mounts(compose["services"]["worker"])}
    assert targets.get(cfg["destination"]) in compose["volumes"], (targets, cfg["destination"])


def test_the_worker_gets_the_env_file_and_the_image_is_built_here(compose):
    worker = compose["services"]["worker"]
    assert worker["env_file"] in (".env", [".env"]), worker["env_file"]
    for name in ("worker", "flower"):
        build = compose["services"][name]["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert (context / build["dockerfile"]).is_file() and (context / "pyproject.toml").is_file(), build


def test_every_variable_is_in_env_example(compose, env_example):
    needed = set(VARIABLE.findall(COMPOSE.read_text()))
    names = {name for name, _ in needed}
    assert {"REDIS_PASSWORD", "FLOWER_BASIC_AUTH"} <= names
    assert names <= set(env_example), names - set(env_example)
    user, _, password = env_example["FLOWER_BASIC_AUTH"].partition(":")
    assert user and password and "," not in password


def test_example_config_is_valid_and_its_passwords_are_in_env_example(env_example, monkeypatch):
    # Given the environment the worker container gets, when tinabs loads the example config, then it is valid
    for name, value in env_example.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TINABS_BROKER_URL", f"redis://:{env_example['REDIS_PASSWORD']}@redis:6379/0")
    cfg = config.load(str(DEPLOY / "tinabs.toml"))
    assert cfg.broker_url.startswith("redis://:") and cfg.pools
    # And every pool's password resolves from it, with nothing secret in the file itself
    for pool in cfg.pools.values():
        assert pool.password_env in env_example, pool.password_source
        assert pool.resolve_password() == env_example[pool.password_env]
    assert "password =" not in (DEPLOY / "tinabs.toml").read_text()


def test_dockerfile_installs_the_project_and_runs_unprivileged():
    text = (ROOT / "workers" / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert any(line.startswith("RUN pip install /src") for line in lines)
    copied = [line.split()[1:-1] for line in lines if line.startswith("COPY ")]
    for sources in copied:  # everything it copies exists (relative to the build context: the repository)
        assert all((ROOT / s).exists() for s in sources), sources
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), users
    assert "celery" in lines[-1] and "worker" in lines[-1]


def _compose_tool() -> list[str] | None:
    """A compose CLI that can at least validate files (no Docker engine needed), or None."""
    candidates = [["docker", "compose"]] if shutil.which("docker") else []
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for tool in candidates:
        if subprocess.run([*tool, "version"], capture_output=True, timeout=60).returncode == 0:
            return tool
    return None


def test_compose_accepts_the_file(tmp_path, env_example):
    tool = _compose_tool()
    if tool is None:
        pytest.skip("neither `docker compose` nor `docker-compose` works here")
    # Given the deploy folder with .env made from env.example, as the README says
    project = tmp_path / "deploy"
    shutil.copytree(DEPLOY, project)
    (project / ".env").write_text(ENV_EXAMPLE.read_text())
    (tmp_path / "workers").symlink_to(ROOT / "workers")
    (tmp_path / "pyproject.toml").symlink_to(ROOT / "pyproject.toml")
    env = {k: v for k, v in os.environ.items() if k not in env_example}
    proc = subprocess.run([*tool, "config"], cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    url = resolved["services"]["worker"]["environment"]["TINABS_BROKER_URL"]
    assert url == f"redis://:{env_example['REDIS_PASSWORD']}@redis:6379/0"
    # And without a Redis password it refuses to run at all
    (project / ".env").write_text("\n".join(f"{k}={v}" for k, v in env_example.items() if k != "REDIS_PASSWORD"))
    refused = subprocess.run([*tool, "config"], cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "REDIS_PASSWORD" in refused.stderr, refused.stderr
