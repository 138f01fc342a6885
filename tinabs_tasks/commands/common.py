"""What every broker-facing command needs: the config, the job store, clear errors."""
from __future__ import annotations

import sys

import redis

from .. import config as config_mod


class UserError(Exception):
    """Printed as `tinabs: <message>` with exit status 2; never a traceback."""


def load_config(args) -> config_mod.Config:
    try:
        return config_mod.load(getattr(args, "config", None))
    except config_mod.ConfigError as exc:
        raise UserError(f"config error: {exc}") from None


def job_store(cfg: config_mod.Config):
    from ..jobs import JobStore
    from ..redis_client import client
    r = client(cfg.broker_url)
    try:
        r.ping()
    except redis.RedisError as exc:
        raise UserError(f"cannot reach the broker at {redacted(cfg.broker_url)}: {exc} — is Redis running, "
                        "and is broker_url (or TINABS_BROKER_URL) right?") from None
    return JobStore(r)


def redacted(url: str) -> str:
    """A broker URL without its password, fit for messages and logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def human_bytes(n) -> str:
    n = float(n or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def fail(message: str) -> int:
    print(f"tinabs: {message}", file=sys.stderr)
    return 2
