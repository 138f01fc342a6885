"""What `docker compose config` checks in a compose file, for where no compose tool is installed:
variable interpolation as Compose does it, and the structure of the services it runs.

Not the whole Compose specification: the keys and value shapes a deployment like ours uses,
checked strictly (an unknown key is reported, as Compose would refuse it), plus what Compose
checks only at `up` time: build contexts, bind-mount sources and env files exist, depends_on
names services of the same profile, and no `$NAME` is left for Compose to substitute by surprise.
"""
from __future__ import annotations

import re
from pathlib import Path

TOP_KEYS = {"version", "name", "services", "volumes", "networks", "secrets", "configs"}
SERVICE_KEYS = {
    "build", "image", "command", "entrypoint", "environment", "env_file", "volumes", "ports", "expose",
    "depends_on", "healthcheck", "restart", "profiles", "hostname", "stop_grace_period", "stop_signal",
    "networks", "secrets", "configs", "user", "working_dir", "labels", "logging", "deploy", "container_name",
    "extra_hosts", "cap_add", "cap_drop", "read_only", "tmpfs", "ulimits", "init", "security_opt",
    "shm_size", "sysctls", "network_mode", "privileged", "tty", "stdin_open", "dns", "mem_limit", "cpus",
    "platform", "pull_policy", "scale",
}
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
RESTART = {"no", "always", "unless-stopped", "on-failure"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
DURATION = re.compile(r"^(\d+(\.\d+)?(us|ms|s|m|h))+$")
#: `$$` (a literal $), `${NAME...}`, or a bare `$NAME`, which Compose substitutes too
TOKEN = re.compile(r"\$\$|\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
BRACED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?])(.*))?$", re.S)


class InterpolationError(ValueError):
    pass


def interpolate(value, env: dict[str, str]):
    """``value`` (a parsed compose document or part of one) with variables substituted, as Compose
    does: ``${X}``, ``${X:-default}``, ``${X-default}``, ``${X:?error}``, ``${X?error}``; ``$$`` is a
    literal ``$``.  A bare ``$X`` is refused: Compose would substitute it on the host, which is almost
    never what a healthcheck or command meant (write ``$$X`` for the container's variable)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value
    return TOKEN.sub(lambda m: _substitute(m, env), value)


def _substitute(match: re.Match, env: dict[str, str]) -> str:
    if match.group(0) == "$$":
        return "$"
    if match.group(2):
        raise InterpolationError(f"bare ${match.group(2)}: Compose substitutes it from the host's environment; "
                                 f"write ${{{match.group(2)}}} for that, or $${match.group(2)} for the container's")
    parsed = BRACED.match(match.group(1))
    if not parsed:
        raise InterpolationError(f"invalid interpolation ${{{match.group(1)}}}")
    name, colon, op, arg = parsed.groups()
    value = env.get(name)
    missing = value is None or (colon == ":" and value == "")
    if op == "?" and missing:
        raise InterpolationError(f"required variable {name} is missing a value: {arg}")
    if op == "-" and missing:
        return arg
    return value or ""


def active(doc: dict, profiles: set[str]) -> dict:
    """The document with only the services Compose starts under ``profiles`` (no profile: always)."""
    services = {name: s for name, s in doc["services"].items()
                if not s.get("profiles") or set(s["profiles"]) & profiles}
    return {**doc, "services": services}


def dotenv(text: str) -> dict[str, str]:
    """KEY=VALUE lines as Compose reads .env (comments and blank lines skipped; a later line wins)."""
    pairs = (line.split("=", 1) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def structural_problems(doc: dict, project_dir: Path) -> list[str]:
    """Every problem found in an interpolated compose document (empty: none)."""
    problems = [f"unknown top-level key `{k}`" for k in doc if k not in TOP_KEYS and not k.startswith("x-")]
    services = doc.get("services")
    if not isinstance(services, dict) or not services:
        return problems + ["no services"]
    volumes = doc.get("volumes") or {}
    for name, service in services.items():
        problems += [f"{name}: {p}" for p in _service_problems(service, services, volumes, project_dir)]
    return problems


def _service_problems(service: dict, services: dict, volumes: dict, project_dir: Path) -> list[str]:
    problems = [f"unknown key `{k}`" for k in service if k not in SERVICE_KEYS and not k.startswith("x-")]
    if "image" not in service and "build" not in service:
        problems.append("neither image nor build")
    problems += _build_problems(service.get("build"), project_dir)
    problems += _command_problems(service)
    restart = str(service.get("restart", "no"))
    if restart.split(":")[0] not in RESTART:
        problems.append(f"restart `{restart}` is not one of {sorted(RESTART)}")
    problems += _depends_problems(service, services)
    problems += _healthcheck_problems(service.get("healthcheck"))
    problems += _volume_problems(service.get("volumes", []), volumes, project_dir)
    problems += _env_problems(service, project_dir)
    for port in service.get("ports", []):
        if not re.fullmatch(r"((\d{1,3}\.){3}\d{1,3}:)?(\d+:)?\d+(/(tcp|udp))?", str(port)):
            problems.append(f"port `{port}` is not [IP:][HOST:]CONTAINER")
    if "stop_grace_period" in service and not DURATION.match(str(service["stop_grace_period"])):
        problems.append(f"stop_grace_period `{service['stop_grace_period']}` is not a duration")
    profiles = service.get("profiles", [])
    if not isinstance(profiles, list) or not all(isinstance(p, str) and p for p in profiles):
        problems.append("profiles must be a list of names")
    return problems


def _build_problems(build, project_dir: Path) -> list[str]:
    if build is None:
        return []
    if isinstance(build, str):
        build = {"context": build}
    context = (project_dir / build.get("context", ".")).resolve()
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    if not context.is_dir():
        return [f"build context {context} is not a directory"]
    return [] if dockerfile.is_file() else [f"Dockerfile {dockerfile} does not exist"]


def _command_problems(service: dict) -> list[str]:
    command = service.get("command")
    if command is None or isinstance(command, str):
        return []
    if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
        return ["command must be a string or a list of strings"]
    return []


def _depends_problems(service: dict, services: dict) -> list[str]:
    depends = service.get("depends_on", [])
    items = depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends)
    problems = []
    for target, spec in items:
        if target not in services:
            problems.append(f"depends_on `{target}`, which is not a service")
            continue
        if (spec or {}).get("condition", "service_started") not in CONDITIONS:
            problems.append(f"depends_on `{target}`: condition must be one of {sorted(CONDITIONS)}")
        if (spec or {}).get("condition") == "service_healthy" and "healthcheck" not in services[target]:
            problems.append(f"waits for `{target}` to be healthy, but it has no healthcheck")
        if set(services[target].get("profiles", [])) - set(service.get("profiles", [])):
            problems.append(f"depends_on `{target}`, which runs only in profile(s) {services[target]['profiles']}")
    return problems


def _healthcheck_problems(check) -> list[str]:
    if check is None:
        return []
    problems = [f"healthcheck: unknown key `{k}`" for k in check if k not in HEALTHCHECK_KEYS]
    test = check.get("test")
    if isinstance(test, list):
        if not test or test[0] not in ("CMD", "CMD-SHELL", "NONE") or not all(isinstance(a, str) for a in test):
            problems.append("healthcheck: test must start with CMD, CMD-SHELL or NONE")
        elif test[0] == "CMD-SHELL" and len(test) != 2:
            problems.append("healthcheck: CMD-SHELL takes exactly one shell command")
    elif not isinstance(test, str) and not check.get("disable"):
        problems.append("healthcheck: no test")
    for key in ("interval", "timeout", "start_period", "start_interval"):
        if key in check and not DURATION.match(str(check[key])):
            problems.append(f"healthcheck: {key} `{check[key]}` is not a duration like 30s or 1m30s")
    if "retries" in check and (not isinstance(check["retries"], int) or check["retries"] < 1):
        problems.append("healthcheck: retries must be a whole number >= 1")
    return problems


def _volume_problems(mounts: list, volumes: dict, project_dir: Path) -> list[str]:
    problems = []
    for item in mounts:
        if not isinstance(item, str):
            continue  # long syntax: not used here
        source, target, *mode = item.split(":")
        if not target.startswith("/"):
            problems.append(f"volume `{item}`: the target must be an absolute path")
        if mode and not set(mode[0].split(",")) <= {"ro", "rw", "z", "Z", "cached", "delegated", "consistent"}:
            problems.append(f"volume `{item}`: unknown mode `{mode[0]}`")
        if source.startswith((".", "/", "~")):
            if not (project_dir / source).exists():
                problems.append(f"volume `{item}`: bind source {project_dir / source} does not exist")
        elif source not in volumes:
            problems.append(f"volume `{item}`: `{source}` is not a named volume of this file")
    return problems


def _env_problems(service: dict, project_dir: Path) -> list[str]:
    problems = []
    env = service.get("environment", {})
    if isinstance(env, dict):
        problems += [f"environment `{k}` must be a scalar" for k, v in env.items() if isinstance(v, (dict, list))]
    elif not isinstance(env, list):
        problems.append("environment must be a mapping or a list")
    env_files = service.get("env_file", [])
    for path in [env_files] if isinstance(env_files, str) else env_files:
        if not (project_dir / path).is_file():
            problems.append(f"env_file {project_dir / path} does not exist")
    return problems
