"""The tinabs config file (TOML): load, validate, explain what is wrong.

Secrets are never inline by default: each pool names ``password_env`` or
``password_file`` (mode checked: a password file readable by others is
refused).  ``TINABS_BROKER_URL`` / ``TINABS_RESULT_BACKEND`` override the
broker so one file serves several deployments.
"""
from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

MODES = ("export", "sr-copy")
DEFAULT_PATH = "/etc/tinabs/tinabs.toml"


class ConfigError(Exception):
    """A config problem a user can fix; the message says what and where."""


@dataclass(frozen=True)
class PoolConfig:
    name: str
    master: str
    username: str
    password_env: str | None = None
    password_file: str | None = None
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

    def resolve_password(self) -> str:
        """The password, read now (never stored in task arguments or state)."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if not value:
                raise ConfigError(f"pool `{self.name}`: environment variable {self.password_env} is not set")
            return value
        if self.password_file:
            return read_secret_file(self.password_file, f"pool `{self.name}`")
        if self.password is not None:
            return self.password
        raise ConfigError(f"pool `{self.name}`: no password source (set password_env or password_file)")


@dataclass(frozen=True)
class RetryConfig:
    max_retries: int = 5
    backoff_base_s: float = 2.0
    backoff_max_s: float = 120.0


@dataclass(frozen=True)
class LimitsConfig:
    export_time_limit_s: int = 6 * 3600
    stage_time_limit_s: int = 1800
    lease_s: int = 60
    #: space the destination must keep free besides the backup being written (bytes)
    reserve_free_bytes: int = 0


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
    path: str = ""

    def pool(self, name: str) -> PoolConfig:
        try:
            return self.pools[name]
        except KeyError:
            raise ConfigError(f"unknown pool `{name}`; configured pools: {', '.join(sorted(self.pools))}") from None


_TOP = {"broker_url", "result_backend", "destination", "default_mode", "pools", "retry", "limits",
        "retention", "janitor"}
_POOL = {"master", "username", "password_env", "password_file", "password", "allow_inline_password",
         "verify_tls", "insecure", "ca_bundle", "tls_fingerprint", "shared_sr", "backup_sr", "max_concurrent_exports"}


def read_secret_file(path: str, what: str) -> str:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read password file {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{what}: password file {path} is readable by others "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}")
    try:
        value = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:  # a directory, unreadable, or not text
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{what}: cannot read password file {path}: {reason}") from None
    if not value:
        raise ConfigError(f"{what}: password file {path} is empty")
    return value


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
    pools = {name: _pool(name, table, path) for name, table in pools_raw.items()}
    return Config(broker_url=broker, result_backend=backend, destination=destination, pools=pools,
                  default_mode=mode, retry=_section(raw, "retry", RetryConfig, path),
                  limits=_section(raw, "limits", LimitsConfig, path),
                  retention=_retention(raw, path), janitor=_section(raw, "janitor", JanitorConfig, path),
                  path=path)


def _retention(raw: dict, path: str) -> RetentionConfig:
    table = raw.get("retention", {})
    if isinstance(table, dict):
        for name, value in table.items():  # counts: 2.5 backups means nothing
            if name.startswith("keep_") and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{path}: [retention] {name} must be a non-negative integer, got {value!r}")
    return _section(raw, "retention", RetentionConfig, path)


def _pool(name: str, table, path: str) -> PoolConfig:
    where = f"{path}: [pools.{name}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"{where}: pool names use letters, digits, '-' and '_' only")
    _no_unknown(table, _POOL, where)
    sources = [k for k in ("password_env", "password_file", "password") if k in table]
    if len(sources) != 1:
        raise ConfigError(f"{where}: give exactly one of password_env or password_file (found {sources or 'none'})")
    if "password" in table and table.get("allow_inline_password") is not True:
        raise ConfigError(f"{where}: inline passwords are refused; use password_env or password_file "
                          "(or set allow_inline_password = true if you really must)")
    for key in ("password_env", "password_file", "password", "ca_bundle", "tls_fingerprint"):
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
        password=table.get("password"), insecure=insecure, tls_fingerprint=fingerprint,
        ca_bundle=table.get("ca_bundle"), shared_sr=_str(table, "shared_sr", where, required=True),
        backup_sr=table.get("backup_sr", ""), max_concurrent_exports=limit)


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
