"""The tinabs config file (TOML): load, validate, explain what is wrong.

Secrets are never inline by default: each pool names ``password_env``,
``password_file`` or ``password_secret`` (a file in the secrets directory, as
Docker secrets and systemd credentials provide them); a password file readable
by others is refused.  ``TINABS_BROKER_URL`` / ``TINABS_RESULT_BACKEND`` override the
broker so one file serves several deployments.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tinabs_tasks.config.secrets import SecretError, read_password_file, read_secret
from tinabs_tasks.config.reports import ReportsConfig, parse as parse_reports
from tinabs_tasks.config.web import WebConfig, parse as parse_web

if TYPE_CHECKING:  # schedules.py imports this module
    from tinabs_tasks.config.schedule import ScheduleConfig

MODES = ("export", "sr-copy")
DEFAULT_PATH = "/etc/tinabs/tinabs.toml"
#: where ``password_secret`` files are looked for when nothing says otherwise (Docker's secrets)
DEFAULT_SECRETS_DIR = "/run/secrets"
PASSWORD_SOURCES = ("password_secret", "password_env", "password_file")


class ConfigError(Exception):
    """A config problem a user can fix; the message says what and where."""


@dataclass(frozen=True)
class PoolConfig:
    name: str
    master: str
    username: str
    password_env: str | None = None
    password_file: str | None = None
    #: a file name in ``secrets_dir`` (``/run/secrets/<name>``, ``$CREDENTIALS_DIRECTORY/<name>``)
    password_secret: str | None = None
    secrets_dir: str = DEFAULT_SECRETS_DIR
    #: what chose ``secrets_dir``, for messages: "TINABS_SECRETS_DIR", "secrets_dir in FILE", ...
    secrets_dir_from: str = "the default"
    password: str | None = field(default=None, repr=False)  # only with allow_inline_password
    ca_bundle: str | None = None
    #: ``sha256:AB:CD:...``: trust exactly this server certificate (no CA check)
    tls_fingerprint: str | None = None
    #: no TLS verification at all; explicit, warned about at every start
    insecure: bool = False
    shared_sr: str = ""
    backup_sr: str = ""
    max_concurrent_exports: int = 2

    @property
    def verify_tls(self) -> bool:
        """False only with ``insecure = true`` (formerly ``verify_tls = false``)."""
        return not self.insecure

    @property
    def queue(self) -> str:
        return f"tinabs.pool.{self.name}"

    @property
    def password_source(self) -> str:
        """Where the password comes from, for messages (never the password itself)."""
        if self.password_env:
            return f"environment variable {self.password_env}"
        if self.password_file:
            return f"password file {self.password_file}"
        if self.password_secret:
            return f"secret `{self.password_secret}` in {self.secrets_dir} (from {self.secrets_dir_from})"
        return "inline password (allow_inline_password = true)"

    def resolve_password(self) -> str:
        """The password, read now (never stored in task arguments or state)."""
        try:
            if self.password_env:
                value = os.environ.get(self.password_env)
                if not value:
                    raise SecretError(f"environment variable {self.password_env} is not set")
                return value
            if self.password_file:
                return read_password_file(self.password_file)
            if self.password_secret:
                return read_secret(self.secrets_dir, self.password_secret, self.secrets_dir_from)
        except SecretError as exc:
            raise ConfigError(f"pool `{self.name}`: {exc}") from None
        if self.password is not None:
            return self.password
        raise ConfigError(f"pool `{self.name}`: no password source (set password_secret, password_env or "
                          "password_file)")


@dataclass(frozen=True)
class RetryConfig:
    max_retries: int = 5
    backoff_base_s: float = 2.0
    backoff_max_s: float = 120.0
    #: how long a pool may refuse connections or time out before a stage gives up on it (a
    #: master reboot or a network cut); counted in time, not retries, and twice that for cleanup
    unreachable_wait_s: float = 900.0


@dataclass(frozen=True)
class LimitsConfig:
    export_time_limit_s: int = 6 * 3600
    stage_time_limit_s: int = 1800
    lease_s: int = 60
    #: space the destination must keep free besides the backup being written (bytes)
    reserve_free_bytes: int = 0
    #: Redis redelivers a task unacknowledged this long (a worker that died mid-stage);
    #: 0 = longer than the longest time limit, so a live worker's task is never redelivered.
    #: Shorter resumes a killed worker's work sooner: the stage guard keeps the copy waiting.
    visibility_timeout_s: int = 0
    #: a started run that no stage holds and nothing has touched for this long lost its next message
    #: (Redis died with it in flight): it is sent again (resume.py); far above any retry countdown
    stuck_after_s: int = 900
    #: how long job/run state and task results stay in Redis (seconds; default a week)
    state_ttl_s: int = 7 * 24 * 3600


@dataclass(frozen=True)
class RetentionConfig:
    """How many backups of each VM ``tinabs prune`` keeps (restic-like; 0 = rule unused)."""
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    #: apply the policy to a VM right after each of its good backups (else only `tinabs prune`)
    after_backup: bool = True

    @property
    def active(self) -> bool:
        """All zero: no policy, nothing is ever pruned."""
        return any((self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly))


@dataclass(frozen=True)
class JanitorConfig:
    max_age_h: float = 24.0


@dataclass(frozen=True)
class Config:
    broker_url: str
    result_backend: str
    destination: str
    pools: dict[str, PoolConfig]
    default_mode: str = "export"
    retry: RetryConfig = RetryConfig()
    limits: LimitsConfig = LimitsConfig()
    retention: RetentionConfig = RetentionConfig()
    janitor: JanitorConfig = JanitorConfig()
    reports: ReportsConfig = ReportsConfig()  # [reports]: see reports_config.py
    web: WebConfig = WebConfig()  # [web]: the web console (web_config.py)
    path: str = ""
    #: [schedule] (schedules.py); None when the file has none: nothing is scheduled
    schedule: ScheduleConfig | None = None

    def pool(self, name: str) -> PoolConfig:
        try:
            return self.pools[name]
        except KeyError:
            raise ConfigError(f"unknown pool `{name}`; configured pools: {', '.join(sorted(self.pools))}") from None


_TOP = {"broker_url", "result_backend", "destination", "default_mode", "pools", "retry", "limits",
        "retention", "janitor", "secrets_dir", "reports",
        "schedule", "web"}
_POOL = {"master", "username", *PASSWORD_SOURCES, "password", "allow_inline_password",
         "verify_tls", "insecure", "ca_bundle", "tls_fingerprint", "shared_sr", "backup_sr", "max_concurrent_exports"}


def secrets_dir(raw: dict, path: str) -> tuple[str, str]:
    """(directory, what chose it): $TINABS_SECRETS_DIR, then the file's ``secrets_dir``, then systemd's
    $CREDENTIALS_DIRECTORY (set by LoadCredential=), then Docker's /run/secrets."""
    if "secrets_dir" in raw:
        _str(raw, "secrets_dir", path)
    choices = (("TINABS_SECRETS_DIR", os.environ.get("TINABS_SECRETS_DIR")),
               (f"secrets_dir in {path}", raw.get("secrets_dir")),
               ("CREDENTIALS_DIRECTORY", os.environ.get("CREDENTIALS_DIRECTORY")))
    for origin, value in choices:
        if value:  # an empty variable counts as unset
            if not os.path.isabs(value):
                raise ConfigError(f"{origin}: the secrets directory must be an absolute path, got {value!r}")
            return value, origin
    return DEFAULT_SECRETS_DIR, "the default"


def config_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("TINABS_CONFIG") or DEFAULT_PATH


def load(path: str | None = None) -> Config:
    path = config_path(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found (set TINABS_CONFIG or pass --config)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:  # tomllib decodes before parsing: a binary file fails here
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse(raw, path)


def parse(raw: dict, path: str = "<config>") -> Config:
    _no_unknown(raw, _TOP, path)
    broker = os.environ.get("TINABS_BROKER_URL") or _str(raw, "broker_url", path, required=True)
    backend = os.environ.get("TINABS_RESULT_BACKEND") or _str(raw, "result_backend", path) or broker
    destination = _str(raw, "destination", path, required=True)
    if not os.path.isabs(destination):
        raise ConfigError(f"{path}: destination must be an absolute path, got {destination!r}")
    mode = raw.get("default_mode", "export")
    if mode not in MODES:
        raise ConfigError(f"{path}: default_mode must be one of {', '.join(MODES)}, got {mode!r}")
    pools_raw = raw.get("pools")
    if not isinstance(pools_raw, dict) or not pools_raw:
        raise ConfigError(f"{path}: no pools configured; add a [pools.NAME] table")
    secrets = secrets_dir(raw, path)
    pools = {name: _pool(name, table, path, secrets) for name, table in pools_raw.items()}
    return Config(broker_url=broker, result_backend=backend, destination=destination, pools=pools,
                  default_mode=mode, retry=_section(raw, "retry", RetryConfig, path),
                  limits=_section(raw, "limits", LimitsConfig, path),
                  retention=_retention(raw, path), janitor=_section(raw, "janitor", JanitorConfig, path),
                  reports=parse_reports(raw.get("reports"), path, secrets), path=path,
                  web=parse_web(raw.get("web"), path, secrets),
                  schedule=_schedule(raw, path, list(pools), mode))


def _schedule(raw: dict, path: str, pools: list[str], mode: str):
    """[schedule], parsed by schedules.py (imported here: it imports ConfigError from this module)."""
    from tinabs_tasks.config.schedule import parse_schedule
    return parse_schedule(raw.get("schedule"), path, pools, mode)


def _retention(raw: dict, path: str) -> RetentionConfig:
    table = raw.get("retention", {})
    if isinstance(table, dict):
        for name, value in table.items():  # counts: 2.5 backups means nothing
            if name.startswith("keep_") and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{path}: [retention] {name} must be a non-negative integer, got {value!r}")
    return _section(raw, "retention", RetentionConfig, path)


def _pool(name: str, table, path: str, secrets: tuple[str, str]) -> PoolConfig:
    where = f"{path}: [pools.{name}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"{where}: pool names use letters, digits, '-' and '_' only")
    _no_unknown(table, _POOL, where)
    _check_password_source(table, where)
    for key in ("ca_bundle", "tls_fingerprint"):
        _str(table, key, where)  # checked now: a wrong type would only fail later, in a worker
    if not isinstance(table.get("backup_sr", ""), str):  # "" is allowed: no sr-copy for this pool
        raise ConfigError(f"{where}: `backup_sr` must be a string")
    for key in ("verify_tls", "insecure", "allow_inline_password"):
        if key in table and not isinstance(table[key], bool):
            raise ConfigError(f"{where}: `{key}` must be true or false, got {table[key]!r}")
    insecure = _insecure(table, where)
    fingerprint = table.get("tls_fingerprint")
    if fingerprint is not None:
        _check_fingerprint(fingerprint, where)
    trust = [k for k, on in (("ca_bundle", "ca_bundle" in table), ("tls_fingerprint", fingerprint is not None),
                              ("insecure", insecure)) if on]
    if len(trust) > 1:
        raise ConfigError(f"{where}: set at most one of ca_bundle, tls_fingerprint or insecure = true "
                          f"(found {', '.join(trust)})")
    master = _str(table, "master", where, required=True)
    if not master.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: master must be an http:// or https:// URL, got {master!r}")
    limit = table.get("max_concurrent_exports", 2)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ConfigError(f"{where}: max_concurrent_exports must be an integer >= 1")
    return PoolConfig(
        name=name, master=master.rstrip("/"), username=_str(table, "username", where, required=True),
        password_env=table.get("password_env"), password_file=table.get("password_file"),
        password_secret=table.get("password_secret"), secrets_dir=secrets[0], secrets_dir_from=secrets[1],
        password=table.get("password"), insecure=insecure, tls_fingerprint=fingerprint,
        ca_bundle=table.get("ca_bundle"), shared_sr=_str(table, "shared_sr", where, required=True),
        backup_sr=table.get("backup_sr", ""), max_concurrent_exports=limit)


def _check_password_source(table: dict, where: str) -> None:
    """Exactly one source; the password itself is read only when a login needs it."""
    sources = [k for k in (*PASSWORD_SOURCES, "password") if k in table]
    if len(sources) != 1:
        raise ConfigError(f"{where}: give exactly one of password_secret, password_env or password_file "
                          f"(found {', '.join(sources) if sources else 'none'})")
    if "password" in table and table.get("allow_inline_password") is not True:
        raise ConfigError(f"{where}: inline passwords are refused; use password_secret, password_env or "
                          "password_file (or set allow_inline_password = true if you really must)")
    _str(table, sources[0], where)
    name = table.get("password_secret")
    # a name in the secrets directory, never a path that could lead out of it
    if name is not None and ("/" in name or "\0" in name or name in (".", "..")):
        raise ConfigError(f"{where}: password_secret is a file name in the secrets directory, not a path "
                          f"(got {name!r}); put the file there and give its name, or use password_file")


def _insecure(table: dict, where: str) -> bool:
    """``insecure = true``; ``verify_tls = false`` is the old spelling of the same."""
    if "insecure" in table and "verify_tls" in table:
        raise ConfigError(f"{where}: `verify_tls` is the old name of `insecure`; set only `insecure = true`")
    if "insecure" in table:
        return table["insecure"]
    return table.get("verify_tls", True) is False


def _check_fingerprint(value: str, where: str) -> None:
    text = value.strip()
    digits = text[len("sha256:"):] if text.lower().startswith("sha256:") else None
    hexdigits = (digits or "").replace(":", "")
    if digits is None or len(hexdigits) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hexdigits):
        raise ConfigError(f"{where}: tls_fingerprint must look like \"sha256:AB:CD:...\" (32 hex pairs; "
                          "see: openssl x509 -noout -fingerprint -sha256 -in CERT), got {value!r}")


def _section(raw: dict, key: str, cls, path: str):
    table = raw.get(key, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: `{key}` must be a table ([{key}])")
    allowed = set(cls.__dataclass_fields__)
    _no_unknown(table, allowed, f"{path}: [{key}]")
    defaults = cls()
    for name, value in table.items():
        expected = type(getattr(defaults, name))
        if expected is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: [{key}] {name} must be true or false")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{path}: [{key}] {name} must be a non-negative number")
        table[name] = expected(value)
    return cls(**table)


def _no_unknown(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _str(table: dict, key: str, where: str, required: bool = False) -> str:
    value = table.get(key)
    if value is None and required:
        raise ConfigError(f"{where}: missing required key `{key}`")
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{where}: `{key}` must be a non-empty string")
    return value or ""
