"""`tinabs check-config`: validate the config and test it against the pools."""
from __future__ import annotations

import os
import sys

from tinabs_tasks.cli.common import job_store, load_config, UserError


def add_arguments(parser) -> None:
    parser.add_argument("--offline", action="store_true", help="only check the file, do not contact pools")


def run(args) -> int:
    cfg = load_config(args)
    print(f"config {cfg.path}: syntax and keys OK ({len(cfg.pools)} pools)")
    from tinabs_tasks.xapi.tls import insecure_warnings
    for line in insecure_warnings(cfg.pools.values()):
        print(f"WARNING: {line}", file=sys.stderr)
    problems = 0
    if not os.path.isdir(cfg.destination) or not os.access(cfg.destination, os.W_OK):
        print(f"  destination {cfg.destination}: missing or not writable — create it and give the worker "
              "user write access")
        problems += 1
    else:
        print(f"  destination {cfg.destination}: writable")
    print(f"  web console: {web_console(cfg.web)}")
    if cfg.repository is not None:
        line, bad = repository(cfg.repository)
        print(f"  repository {cfg.repository.path}: {line}")
        problems += bad
    if args.offline:
        return 1 if problems else 0
    try:
        job_store(cfg)
        print("  broker: reachable")
    except UserError as exc:
        print(f"  broker: {exc}")
        problems += 1
    for pool in cfg.pools.values():
        problems += check_pool(pool)
    print("all checks passed" if not problems else f"{problems} problem(s) found")
    return 1 if problems else 0


def web_console(web) -> str:
    """Whether `tinabs web` would find its password (said, never shown), and where it listens."""
    from tinabs_tasks.config.secrets import SecretError
    where = f"{web.password.kind} {web.password.name}"
    try:
        web.password.read()
    except SecretError as exc:
        return f"no password ({exc}); `tinabs web` will not start until {where} is set"
    return f"listens on {web.listen}, user {web.username}, password from {where}"


def repository(repo_cfg) -> tuple[str, int]:
    """(what the repository says, 1 if it cannot be used): opened with the configured key, which
    is checked (never shown), and writable by this user."""
    from tinabs_tasks.repo.configured import open_configured
    from tinabs_tasks.repo.errors import RepoError
    try:
        repo = open_configured(repo_cfg)
    except RepoError as exc:
        return str(exc), 1
    if not os.access(repo.path, os.W_OK):
        return "not writable by this user — give the worker user write access", 1
    key = f"key from {repo_cfg.key.kind} {repo_cfg.key.name} matches" if repo.config.encrypted else "not encrypted"
    return f"{repo.config.encryption}, {repo_cfg.compression} level {repo_cfg.level}; {key}", 0


def check_pool(pool) -> int:
    from tinabs_tasks.config.model import ConfigError
    from tinabs_tasks.xapi.connect import PoolSession
    from tinabs_tasks.xapi.errors import classify
    from tinabs_tasks.xapi.port import Xapi
    from tinabs_tasks.xapi.tls import failure_advice
    try:
        xapi = Xapi(PoolSession(pool))
    except ConfigError as exc:
        print(f"  pool `{pool.name}`: {_unprefixed(exc, pool.name)}")
        return 1
    except Exception as exc:
        advice = failure_advice(pool, exc)
        if advice:
            print(f"  pool `{pool.name}`: {advice}")
            return 1
        print(f"  pool `{pool.name}`: {_unprefixed(classify(exc, pool.name), pool.name)}")
        return 1
    problems = 0
    print(f"  pool `{pool.name}`: logged in to {xapi.base_url}")
    print(f"    password: {pool.password_source}")
    for key in ("shared_sr", "backup_sr"):
        wanted = getattr(pool, key)
        if not wanted:
            print(f"    {key}: not set" + (" (sr-copy mode will not work)" if key == "backup_sr" else ""))
            continue
        try:
            sr = xapi.sr_by_name_or_uuid(wanted)
            print(f"    {key} {wanted!r}: found ({xapi.x.SR.get_type(sr)})")
        except Exception:
            names = sorted(r["name_label"] for r in xapi.x.SR.get_all_records().values())
            print(f"    {key} {wanted!r}: no such SR on this pool (SRs: {', '.join(names)})")
            problems += 1
    xapi.session.logout()
    return problems


def _unprefixed(exc: Exception, pool: str) -> str:
    """The message without its own "pool `x`: " (the line already starts with it)."""
    text = str(exc)
    prefix = f"pool `{pool}`: "
    return text[len(prefix):] if text.startswith(prefix) else text
