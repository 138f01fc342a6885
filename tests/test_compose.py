"""deploy/docker-compose.yml: the documented deployment is protected and complete.

Given the compose file, its env file example, its config and the worker
Dockerfile, then: Redis requires a password (from the env file, never on a
command line) and keeps an append-only file on a volume; nothing but Flower is
published, on loopback, and Flower cannot start without basic auth; workers
and Flower reach Redis with the password; every file the compose file names
exists; every variable it needs is in env.example; the example config is valid
tinabs config and its pools' passwords come from env.example too; backups go
to a named volume at the config's destination.

And (issue 6): every service the README names exists, in its code blocks and in
any table of services; every command and healthcheck names a `tinabs`
subcommand, Celery command, Python module or file that exists (and a module
the image gets from the project's dependencies); each healthcheck asks the node
name its service's command gives; every service has a healthcheck and a restart
policy; the worker scales (no fixed name, no host port); beat gets no pool
passwords; the try-out profile runs the simulator that deploy/tinabs-sim.toml
describes (checked against a real simulator with `tinabs check-config`).

Compose accepts the file: `docker compose config` or `docker-compose config`
(`make test` installs Debian's docker-compose; no Docker engine is needed).
Where neither is installed, test_compose_accepts_the_file falls back to
helpers/compose_check.py (Compose's interpolation and a strict check of the
keys and shapes used here), which is weaker than Compose's own schema; the
structural check also runs where the tool is present.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from helpers.compose_check import InterpolationError, interpolate, structural_problems
from helpers.sim_proc import SimProc
from tinabs_tasks import cli
from tinabs_tasks.config import model as config
from tinabs_tasks.cli import worker as worker_command
from tinabs_tasks.repo import keys
from tinabs_tasks.repo.layout import init_repository

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / "env.example"
CONFIG_PATH = "/etc/tinabs/tinabs.toml"
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?][^}]*)?\}")
README = ROOT / "README.md"
#: services that run the tinabs image (everything but Redis)
TINABS_SERVICES = ("worker", "beat", "flower", "web", "sim")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert all(len(p) == 2 for p in pairs), pairs
    return {k.strip(): v.strip() for k, v in pairs}


@pytest.fixture(scope="module")
def resolved(compose, env_example) -> dict:
    """The compose file as Compose runs it with a .env made from env.example."""
    return interpolate(compose, env_example)


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


def test_only_flower_and_the_web_console_are_published_and_on_loopback(compose):
    published = {name: s["ports"] for name, s in compose["services"].items() if s.get("ports")}
    assert set(published) == {"flower", "web"}, published
    assert all(str(p).startswith("127.0.0.1:") for ports in published.values() for p in ports), published


def test_the_web_console_needs_its_password_and_gets_no_pool_password(compose, resolved, example_cfg):
    web = compose["services"]["web"]
    env = _environment(web)
    assert env["TINABS_WEB_PASSWORD"].startswith("${TINABS_WEB_PASSWORD:?"), env
    assert "env_file" not in web and "secrets" not in web
    assert not {p.password_env for p in example_cfg.pools.values()} & set(env), env
    # it reads the catalog from the workers' backups volume, and cannot write it
    cfg = tomllib.loads((DEPLOY / "tinabs.toml").read_text())
    mounts = {target: (source, mode) for source, target, mode in _mounts(resolved["services"]["web"])}
    worker = {target: source for source, target, _ in _mounts(resolved["services"]["worker"])}
    assert mounts[cfg["destination"]] == (worker[cfg["destination"]], "ro"), mounts
    assert example_cfg.web.flower_url.startswith("http://127.0.0.1:5555"), example_cfg.web


def test_flower_requires_basic_auth(compose):
    flower = compose["services"]["flower"]
    command, env = _command(flower), _environment(flower)
    assert "flower" in command
    from_env = env.get("FLOWER_BASIC_AUTH", "").startswith("${FLOWER_BASIC_AUTH:?")
    assert from_env or re.search(r"--basic-auth=\$\{FLOWER_BASIC_AUTH:\?", command), (command, env)
    assert "FLOWER_UNAUTHENTICATED_API" not in env and "--auth" not in command


@pytest.mark.parametrize("name", ["worker", "beat", "flower", "web"])
def test_workers_and_flower_log_in_to_redis(compose, name):
    env = _environment(compose["services"][name])
    url = env["TINABS_BROKER_URL"]
    assert re.fullmatch(r"rediss?://:\$\{REDIS_PASSWORD:\?[^}]*\}@redis:\d+/\d+", url), url
    assert env["TINABS_CONFIG"] == CONFIG_PATH


@pytest.mark.parametrize("name", ["worker", "beat", "flower", "web"])
def test_one_config_file_mounted_read_only(resolved, name):
    mounts = [m for m in _mounts(resolved["services"][name]) if m[1] == CONFIG_PATH]
    assert len(mounts) == 1 and mounts[0][2] == "ro", mounts
    assert (DEPLOY / mounts[0][0]).resolve() == DEPLOY / "tinabs.toml", mounts


def test_the_config_file_is_chosen_in_the_env_file(compose, env_example):
    # Given TINABS_CONFIG_FILE in .env, every tinabs service mounts that file (the try-out's, say)
    tryout = interpolate(compose, {**env_example, "TINABS_CONFIG_FILE": "./tinabs-sim.toml"})
    for name in ("worker", "beat", "flower", "web"):
        sources = [m[0] for m in _mounts(tryout["services"][name]) if m[1] == CONFIG_PATH]
        assert sources == ["./tinabs-sim.toml"], (name, sources)


def test_backups_go_to_a_named_volume_at_the_destination(resolved):
    cfg = tomllib.loads((DEPLOY / "tinabs.toml").read_text())
    targets = {target: source for source, target, _ in _mounts(resolved["services"]["worker"])}
    assert targets.get(cfg["destination"]) in resolved["volumes"], (targets, cfg["destination"])


def test_the_worker_gets_the_env_file_and_the_image_is_built_here(compose):
    worker = compose["services"]["worker"]
    assert worker["env_file"] in (".env", [".env"]), worker["env_file"]
    for name in TINABS_SERVICES:
        build = compose["services"][name]["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert (context / build["dockerfile"]).is_file() and (context / "pyproject.toml").is_file(), build


def test_every_variable_is_in_env_example(compose, env_example):
    used = set(VARIABLE.findall(COMPOSE.read_text()))
    # a variable with a default (${X:-default}) is optional: env.example shows it, perhaps commented out
    names = {name for name, modifier in used if not modifier.lstrip(":").startswith("-")}
    optional = {name for name, _ in used} - names
    assert {"REDIS_PASSWORD", "FLOWER_BASIC_AUTH", "TINABS_WEB_PASSWORD"} <= names
    assert names <= set(env_example), names - set(env_example)
    assert all(re.search(rf"^#? ?{name}=", ENV_EXAMPLE.read_text(), re.M) for name in optional), optional
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


# -- the services the README names -----------------------------------------------------------
#: `docker compose` options that take a value, before the subcommand
GLOBAL_VALUE_OPTIONS = {"-f", "--file", "-p", "--project-name", "--profile", "--env-file",
                        "--project-directory", "--ansi", "--progress", "--parallel"}
#: subcommand -> (its options that take a value, how many positionals name services: None = all)
SUBCOMMANDS = {
    "up": ({"-t", "--timeout", "--scale", "--exit-code-from", "--attach", "--no-attach", "--pull",
            "--wait-timeout"}, None),
    "create": ({"--scale", "--pull"}, None),
    "run": ({"-e", "--env", "-u", "--user", "-w", "--workdir", "--name", "--entrypoint", "-p", "--publish",
             "-v", "--volume", "-l", "--label", "--pull"}, 1),
    "exec": ({"-e", "--env", "-u", "--user", "-w", "--workdir", "--index"}, 1),
    "logs": ({"--tail", "-n", "--since", "--until", "--index"}, None),
    "restart": ({"-t", "--timeout"}, None), "stop": ({"-t", "--timeout"}, None), "start": (set(), None),
    "ps": ({"--format", "--filter", "--status"}, None), "build": ({"--build-arg", "--progress"}, None),
    "pull": (set(), None), "rm": (set(), None), "kill": ({"-s", "--signal"}, None), "top": (set(), None),
    "pause": (set(), None), "unpause": (set(), None), "port": ({"--protocol", "--index"}, 1),
    "events": (set(), None), "images": (set(), None),
}
#: options whose value names a service (`--scale worker=3`)
SERVICE_OPTIONS = {"--scale", "--exit-code-from", "--attach", "--no-attach"}


def services_named(args: list[str]) -> set[str]:
    """The services one `docker compose ARGS` command line names."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 1 if "=" in args[i] or args[i] not in GLOBAL_VALUE_OPTIONS else 2
    if i >= len(args) or args[i] not in SUBCOMMANDS:
        return set()
    value_options, count = SUBCOMMANDS[args[i]]
    names: set[str] = set()
    positionals, rest = 0, iter(args[i + 1:])
    for arg in rest:
        if arg.startswith("-"):
            option, eq, value = arg.partition("=")
            if option in value_options and not eq:
                value = next(rest, "")
            if option in SERVICE_OPTIONS:
                names.add(value.split("=")[0])
            continue
        if count is not None and positionals == count:
            break  # the command run in the service
        positionals += 1
        names.add(arg)
    return names


def readme_services(text: str) -> set[str]:
    """Services named by `docker compose` commands in code blocks and in tables headed `service`."""
    names: set[str] = set()
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M):
        for line in block.splitlines():
            for call in re.findall(r"\b(?:docker compose|docker-compose)\s+(.*)", line):
                names |= services_named(shlex.split(call, comments=True))
    header = None
    for line in text.splitlines():
        if not line.lstrip().startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells[0].strip("`* ").lower()
        elif header == "service" and not set(cells[0]) <= set("-: "):
            names |= set(re.findall(r"`([^`]+)`", cells[0]))
    return names


def test_the_readme_service_finder_reads_commands_and_tables():
    text = ("```sh\ndocker compose up -d --build --scale worker=3\n"
            "docker compose --profile tryout run --rm -e A=1 sim tinabs sim --pools 2\n"
            "$ docker-compose logs -f beat flower   # follow them\n"
            "docker compose -f x.yml exec redis redis-cli ping\n```\n\n"
            "| Service | what |\n|---|---|\n| `extra` | a service |\n\n| key | value |\n|---|---|\n| `not-a-service` | |\n")
    assert readme_services(text) == {"worker", "sim", "beat", "flower", "redis", "extra"}


def test_every_service_the_readme_names_exists(compose):
    named = readme_services(README.read_text())
    assert named, "README.md names no compose service: its deployment commands went missing"
    assert named <= set(compose["services"]), f"README.md names services the compose file lacks: " \
                                              f"{sorted(named - set(compose['services']))}"


# -- commands, healthchecks and what they refer to --------------------------------------------
@pytest.fixture
def example_cfg(env_example, monkeypatch):
    for name, value in env_example.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TINABS_BROKER_URL", f"redis://:{env_example['REDIS_PASSWORD']}@redis:6379/0")
    return config.load(str(DEPLOY / "tinabs.toml"))


def celery_line(service: dict, cfg) -> list[str]:
    """The celery command line a service runs (`tinabs worker` and `tinabs beat` expanded)."""
    argv = service["command"]
    if argv[0] != "tinabs":
        return argv
    from tinabs_tasks.cli import beat as beat_command
    args = cli.build_parser().parse_args(argv[1:])
    if args.command == "worker":
        return worker_command.command_line(cfg, args)
    assert args.command == "beat", argv
    return beat_command.command_line(args)


def project_dependencies() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}


def test_every_command_is_a_tinabs_or_celery_command(compose):
    celery_commands = {"worker", "beat", "inspect", "flower"} | {
        e.name for e in importlib.metadata.entry_points(group="celery.commands")}
    for name in TINABS_SERVICES:
        argv = compose["services"][name]["command"]
        assert isinstance(argv, list), (name, argv)  # exec form: no shell between Docker and the process
        if argv[0] == "tinabs":
            args = cli.build_parser().parse_args(argv[1:])  # a usage error exits: the test fails
            assert args.command in cli.COMMANDS, argv
        else:
            assert argv[:3] == ["celery", "-A", "tinabs_tasks"] and argv[3] in celery_commands, argv


def test_the_image_has_every_module_the_commands_name(compose, example_cfg):
    deps = project_dependencies()
    for name in ("worker", "beat", "flower"):
        line = celery_line(compose["services"][name], example_cfg)
        modules = [line[line.index("-A") + 1]] + ([line[line.index("-S") + 1]] if "-S" in line else [])
        for dotted in modules:
            top = dotted.split(".")[0]
            assert importlib.util.find_spec(top), (name, dotted)
            if top != "tinabs_tasks":  # the image installs the project's dependencies, nothing else
                dists = importlib.metadata.packages_distributions()[top]
                assert {d.lower() for d in dists} & deps, f"{dotted} ({dists}) is not in pyproject's dependencies"
        subcommand = line[line.index("tinabs_tasks") + 1]
        provider = {e.name: e.dist.name for e in importlib.metadata.entry_points(group="celery.commands")}
        assert provider.get(subcommand, "celery").lower() in deps, (name, subcommand)
    assert "tinabs" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", ["worker", "beat"])
def test_the_healthcheck_pings_the_node_its_command_starts(resolved, example_cfg, name):
    line = celery_line(resolved["services"][name], example_cfg)
    node = line[line.index("-n") + 1]
    assert node.endswith("@%h"), node  # one name per container: --scale gives each its own
    kind, shell = resolved["services"][name]["healthcheck"]["test"]
    words = shlex.split(shell)
    assert kind == "CMD-SHELL" and words[:5] == ["celery", "-A", "tinabs_tasks", "inspect", "ping"], words
    assert words[words.index("-d") + 1] == node.replace("%h", "$HOSTNAME")


@pytest.mark.parametrize("name", ["flower", "web", "sim"])
def test_python_healthchecks_compile(compose, name):
    kind, program, flag, code = compose["services"][name]["healthcheck"]["test"]
    assert (kind, program, flag) == ("CMD", "python", "-c")
    compile(code, f"{name} healthcheck", "exec")


def test_every_service_has_a_healthcheck_and_restarts(compose):
    for name, service in compose["services"].items():
        assert service.get("healthcheck", {}).get("test"), name
        assert service.get("restart") == "unless-stopped", name
    for name in ("worker", "beat", "flower", "web"):  # Redis first, and healthy
        assert compose["services"][name]["depends_on"] == {"redis": {"condition": "service_healthy"}}


def test_the_worker_scales(compose):
    worker = compose["services"]["worker"]
    assert not {"container_name", "ports", "hostname"} & set(worker), sorted(worker)


def test_redis_healthcheck_keeps_the_password_off_command_lines(resolved, env_example):
    kind, shell = resolved["services"]["redis"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL" and env_example["REDIS_PASSWORD"] not in shell
    words = shlex.split(shell)
    assert 'REDISCLI_AUTH=$REDIS_PASSWORD' in words and "-a" not in words and "redis-cli" in words, words


def test_beat_gets_the_broker_but_no_pool_password(compose, example_cfg):
    beat = compose["services"]["beat"]
    assert "env_file" not in beat and "secrets" not in beat
    env = _environment(beat)
    assert not {p.password_env for p in example_cfg.pools.values()} & set(env), env


# -- the try-out profile -------------------------------------------------------------------
def test_the_tryout_profile_runs_the_simulator_and_only_it(compose):
    in_profiles = {name for name, s in compose["services"].items() if s.get("profiles")}
    assert in_profiles == {"sim"} and compose["services"]["sim"]["profiles"] == ["tryout"]
    sim = compose["services"]["sim"]
    args = cli.build_parser().parse_args(sim["command"][1:])
    assert args.command == "sim" and args.pool_address == [sim["hostname"]] and args.hosts_per_pool == 1
    assert "ports" not in sim


def _free_port_range(count: int) -> int:
    import random
    import socket
    for _ in range(200):
        base, socks = random.randint(20000, 60000), []
        try:
            for port in range(base, base + count):
                socks.append(socket.socket())
                socks[-1].bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port range")


def test_the_tryout_config_logs_in_to_the_simulator(compose, env_example, redis_server, tmp_path):
    from helpers import toml_write
    sim = compose["services"]["sim"]
    args = cli.build_parser().parse_args(sim["command"][1:])
    # Given the simulator started as the `sim` service starts it, but on loopback and free ports
    base = _free_port_range(args.pools + 1)
    argv = list(sim["command"][2:])
    argv[argv.index("--port") + 1], argv[argv.index("--pool-address") + 1] = str(base), "127.0.0.1"
    proc = SimProc(*argv).start()
    try:
        # And tinabs-sim.toml, whose pools must be the simulator's, pointed there
        cfg = toml_write.read(DEPLOY / "tinabs-sim.toml")
        assert list(cfg["pools"]) == [p["name"] for p in proc.pools]
        for k, (name, pool) in enumerate(cfg["pools"].items()):
            assert pool["master"] == f"http://{sim['hostname']}:{args.port + k + 1}", pool
            pool["master"] = proc.pool(name)["master"]
        cfg["destination"] = str(tmp_path)
        cfg["repository"]["path"] = str(tmp_path / "repo")
        (tmp_path / "tinabs.toml").write_text(toml_write.dumps(cfg))
        # When tinabs check-config runs with the environment the worker container gets from .env
        # (its repository key set, as env.example asks, and the repository made with it)
        key = keys.generate_key()
        init_repository(str(tmp_path / "repo"), key=key)
        env = {**os.environ, **env_example, "TINABS_CONFIG": str(tmp_path / "tinabs.toml"),
               "TINABS_BROKER_URL": redis_server.url, cfg["repository"]["key_env"]: key.hex()}
        done = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "check-config"], env=env,
                              capture_output=True, text=True, timeout=60)
    finally:
        proc.stop()
    # Then it logs in to every simulated pool with env.example's passwords and finds their SRs
    assert done.returncode == 0 and "all checks passed" in done.stdout, done.stdout + done.stderr
    assert done.stdout.count("logged in to") == args.pools, done.stdout
    assert "key from env TINABS_REPO_KEY matches" in done.stdout, done.stdout


# -- Compose itself ------------------------------------------------------------------------
def _compose_tool() -> list[str] | None:
    """A compose CLI that can at least validate files (no Docker engine needed), or None."""
    candidates = [["docker", "compose"]] if shutil.which("docker") else []
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for tool in candidates:
        if subprocess.run([*tool, "version"], capture_output=True, timeout=60).returncode == 0:
            return tool
    return None


def _project(tmp_path: Path, env_text: str) -> Path:
    """The deploy folder with .env, as the README sets it up, and what its build context needs."""
    project = tmp_path / "deploy"
    shutil.copytree(DEPLOY, project)
    (project / ".env").write_text(env_text)
    for name in ("workers", "pyproject.toml", "README.md", "tinabs_tasks"):
        (tmp_path / name).symlink_to(ROOT / name)
    return project


def _config(tool: list[str] | None, project: Path, env: dict) -> tuple[int, dict | None, str]:
    """(exit status, resolved document, error) of `config`, by the tool or by helpers/compose_check."""
    if tool is not None:
        proc = subprocess.run([*tool, "config"], cwd=project, env=env, capture_output=True, text=True, timeout=120)
        return proc.returncode, yaml.safe_load(proc.stdout) if proc.returncode == 0 else None, proc.stderr
    from helpers.compose_check import active, dotenv
    dot = dotenv((project / ".env").read_text())
    try:
        doc = interpolate(yaml.safe_load((project / "docker-compose.yml").read_text()), {**dot, **env})
    except InterpolationError as exc:
        return 1, None, str(exc)
    problems = structural_problems(doc, project)
    profiles = set(filter(None, {**dot, **env}.get("COMPOSE_PROFILES", "").split(",")))
    return (1, None, "\n".join(problems)) if problems else (0, active(doc, profiles), "")


def test_compose_accepts_the_file(tmp_path, env_example):
    """`docker compose config` or `docker-compose config` accepts the file with a .env made from
    env.example, fills in the broker URL, takes the try-out's profile and config file from .env,
    and refuses to run without REDIS_PASSWORD.  Without either tool (make test installs Debian's
    docker-compose) helpers/compose_check stands in for `config`: Compose's interpolation and a
    strict check of the keys and shapes this file uses, not Compose's whole schema."""
    tool = _compose_tool()
    env = {k: v for k, v in os.environ.items() if k not in env_example and not k.startswith(("COMPOSE_", "TINABS_"))}
    # Given the deploy folder with .env made from env.example, as the README says
    status, doc, error = _config(tool, _project(tmp_path / "plain", ENV_EXAMPLE.read_text()), env)
    assert status == 0, error
    url = doc["services"]["worker"]["environment"]["TINABS_BROKER_URL"]
    assert url == f"redis://:{env_example['REDIS_PASSWORD']}@redis:6379/0"
    assert any(v.endswith("tinabs.toml:/etc/tinabs/tinabs.toml:ro") for v in _volumes(doc, "beat")), doc
    # And with the try-out lines of env.example uncommented, the simulator runs and everything reads its config
    tryout = re.sub(r"^# (COMPOSE_PROFILES|TINABS_CONFIG_FILE)=", r"\1=", ENV_EXAMPLE.read_text(), flags=re.M)
    status, doc, error = _config(tool, _project(tmp_path / "tryout", tryout), env)
    assert status == 0, error
    assert "sim" in doc["services"], sorted(doc["services"])
    for name in ("worker", "beat", "flower"):
        assert any(v.endswith("tinabs-sim.toml:/etc/tinabs/tinabs.toml:ro") for v in _volumes(doc, name)), name
    # And without a Redis password it refuses to run at all
    unset = "\n".join(f"{k}={v}" for k, v in env_example.items() if k != "REDIS_PASSWORD")
    status, _, error = _config(tool, _project(tmp_path / "nopass", unset), env)
    assert status != 0 and "REDIS_PASSWORD" in error, error


def _volumes(doc: dict, service: str) -> list[str]:
    """Short-syntax strings, whether Compose printed them long (v2) or short (1.x)."""
    out = []
    for v in doc["services"][service].get("volumes", []):
        out.append(v if isinstance(v, str) else f"{v['source']}:{v['target']}" + (":ro" if v.get("read_only") else ""))
    return out


def test_the_structural_check_runs_and_catches_mistakes(tmp_path, env_example):
    # Given the deploy folder as the README sets it up, the stand-in for `config` finds nothing wrong
    project = _project(tmp_path, ENV_EXAMPLE.read_text())
    doc = interpolate(yaml.safe_load((project / "docker-compose.yml").read_text()), env_example)
    assert structural_problems(doc, project) == []
    # And each of these mistakes is caught
    broken = yaml.safe_load((project / "docker-compose.yml").read_text())
    broken["services"]["worker"]["restrat"] = "always"
    broken["services"]["beat"]["depends_on"] = {"sim": {"condition": "service_healthy"}}
    broken["services"]["flower"]["healthcheck"]["interval"] = "30 seconds"
    broken["services"]["worker"]["volumes"].append("nowhere:/x")
    broken["services"]["worker"]["build"] = {"context": "..", "dockerfile": "workers/Nope"}
    problems = "\n".join(structural_problems(interpolate(broken, env_example), project))
    for words in ("unknown key `restrat`", "runs only in profile", "is not a duration",
                  "`nowhere` is not a named volume", "workers/Nope does not exist"):
        assert words in problems, (words, problems)
    with pytest.raises(InterpolationError, match="HOSTNAME"):
        interpolate({"test": "ping $HOSTNAME"}, env_example)  # Compose would fill it in from the host
