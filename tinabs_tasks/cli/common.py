"""What every broker-facing command needs: the config, the job store, clear errors."""
from __future__ import annotations

import sys

import redis

from tinabs_tasks.config import model as config_mod
from tinabs_tasks.runs.human import human_bytes  # noqa: F401 (the commands' helper)


class UserError(Exception):
    """Printed as `tinabs: <message>` with exit status 2; never a traceback."""


def load_config(args) -> config_mod.Config:
    try:
        return config_mod.load(getattr(args, "config", None))
    except config_mod.ConfigError as exc:
        raise UserError(f"config error: {exc}") from None


#: how long a command waits for the broker to answer before it says it cannot reach it
BROKER_PROBE_S = 5


def job_store(cfg: config_mod.Config):
    """The job store, once the broker answered a PING within BROKER_PROBE_S: a broker that is
    down, refuses, or never answers (a firewall, a wrong port) is one clear line, fast."""
    from tinabs_tasks.runs.store import JobStore
    from tinabs_tasks.runs.redis_client import client
    try:
        probe = redis.Redis.from_url(cfg.broker_url, socket_connect_timeout=BROKER_PROBE_S,
                                     socket_timeout=BROKER_PROBE_S)
    except ValueError as exc:
        raise UserError(f"broker_url {redacted(cfg.broker_url)} is not a Redis URL ({exc}) — use "
                        "redis://[:PASSWORD@]host:port/db") from None
    try:
        probe.ping()
    except redis.AuthenticationError as exc:  # before RedisError: it is one, but no network problem
        if "@" not in cfg.broker_url:
            raise UserError(f"the broker at {cfg.broker_url} requires a password; put it in broker_url (or "
                            "TINABS_BROKER_URL) as redis://:PASSWORD@host:port/db") from None
        raise UserError(f"the broker at {redacted(cfg.broker_url)} refused the login ({exc}) — check the "
                        "password in broker_url (or TINABS_BROKER_URL)") from None
    except redis.RedisError as exc:
        raise UserError(f"cannot reach the broker at {redacted(cfg.broker_url)}: {exc} — is Redis running, "
                        "and is broker_url (or TINABS_BROKER_URL) right?") from None
    finally:
        probe.close()
    return JobStore(client(cfg.broker_url), cfg.limits.state_ttl_s)


def redacted(url: str) -> str:
    """A broker URL without its password, fit for messages and logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def printable(text) -> str:
    """``text`` safe to print: control characters (a terminal escape in a VM name read from a
    manifest, say) are shown as ``\\xNN`` escapes, never sent to the terminal."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))


def fail(message: str) -> int:
    print(f"tinabs: {message}", file=sys.stderr)
    return 2


def check_repository(cfg: config_mod.Config):
    """The configured repository, opened (its key checked): a command that will write to it or
    read from it says what is wrong before it starts anything."""
    from tinabs_tasks.repo.configured import open_configured
    from tinabs_tasks.repo.errors import RepoError
    try:
        return open_configured(cfg.repository)
    except RepoError as exc:
        raise UserError(f"repository: {exc}") from None
