"""The tinabs config file (TOML): load, validate, explain everything that is wrong at once.

``ConfigFile`` is the whole file as written, one pydantic model whose fields are the file's
tables (pools.py, sections.py, reports.py, web.py, schedule.py); a file is validated in one
pass and a ConfigError lists every problem, one line each.  ``Config`` is what the rest of
tinabs reads.  Secrets are never inline by default: each pool names ``password_env``,
``password_file`` or ``password_secret`` (a file in the secrets directory, as Docker secrets and
systemd credentials provide them); a password file readable by others is refused.
``TINABS_BROKER_URL`` / ``TINABS_RESULT_BACKEND`` override the broker so one file serves several
deployments.
"""
from __future__ import annotations

import os
import tomllib

from pydantic import Field, ValidationError, field_validator

from tinabs_tasks.config.base import MODES, Record, Table, one_of, text, validator
from tinabs_tasks.config.errors import ConfigError, problem, problems_of
from tinabs_tasks.config.pools import PASSWORD_SOURCES, PoolConfig, PoolTable
from tinabs_tasks.config.reports import ReportsTable
from tinabs_tasks.config.repository import RepositoryConfig, RepositoryTable
from tinabs_tasks.config.reports_records import ReportsConfig
from tinabs_tasks.config.schedule import ScheduleTable
from tinabs_tasks.config.schedule_entries import ScheduleConfig
from tinabs_tasks.config.sections import JanitorConfig, LimitsConfig, RetentionConfig, RetryConfig
from tinabs_tasks.config.sources import DEFAULT_SECRETS_DIR
from tinabs_tasks.config.web import WebConfig, WebTable

__all__ = ["Config", "PoolConfig", "RetryConfig", "LimitsConfig", "RetentionConfig", "JanitorConfig", "ConfigError",
           "ConfigFile", "MODES", "DEFAULT_PATH", "DEFAULT_SECRETS_DIR", "PASSWORD_SOURCES", "load", "parse",
           "config_path", "secrets_dir"]
DEFAULT_PATH = "/etc/tinabs/tinabs.toml"


class Config(Record):
    broker_url: str
    result_backend: str
    destination: str
    pools: dict[str, PoolConfig]
    default_mode: str = "export"
    retry: RetryConfig = RetryConfig()
    limits: LimitsConfig = LimitsConfig()
    retention: RetentionConfig = RetentionConfig()
    janitor: JanitorConfig = JanitorConfig()
    reports: ReportsConfig = ReportsConfig()  # [reports]: reports.py
    web: WebConfig = WebConfig()  # [web]: the web console (web.py)
    path: str = ""
    #: [schedule] (schedule.py); None when the file has none: nothing is scheduled
    schedule: ScheduleConfig | None = None
    #: [repository] (repository.py); None when the file has none: no repo mode
    repository: RepositoryConfig | None = None

    def mode_of(self, pool: str) -> str:
        """The mode of ``pool``'s backups when a job names none: the pool's own, else default_mode."""
        return self.pool(pool).mode or self.default_mode

    def pool(self, name: str) -> PoolConfig:
        try:
            return self.pools[name]
        except KeyError:
            raise ConfigError(f"unknown pool `{name}`; configured pools: {', '.join(sorted(self.pools))}") from None


class ConfigFile(Table):
    """The whole file as written.  Validated with the context ``{"pools": [names]}``: what a
    schedule's ``pools`` may name."""
    broker_url: str
    result_backend: str | None = None
    destination: str
    default_mode: str = "export"
    pools: dict[str, PoolTable] = Field(default=None, validate_default=True)
    retry: RetryConfig = RetryConfig()
    limits: LimitsConfig = LimitsConfig()
    retention: RetentionConfig = RetentionConfig()
    janitor: JanitorConfig = JanitorConfig()
    #: checked by secrets_dir(), with the environment variables that come before it
    secrets_dir: object = None
    reports: ReportsTable | None = None
    web: WebTable | None = None
    schedule: ScheduleTable | None = None
    repository: RepositoryTable | None = None

    _text = validator(text, "broker_url", "result_backend")
    _mode = validator(one_of, "default_mode", choices=MODES)

    @field_validator("destination", mode="before")
    @classmethod
    def _destination(cls, value):
        if not os.path.isabs(text(value, "destination")):
            raise problem(f"destination must be an absolute path, got {value!r}")
        return value

    @field_validator("pools", mode="before")
    @classmethod
    def _pools(cls, value):
        if not isinstance(value, dict) or not value:
            raise problem("no pools configured; add a [pools.NAME] table")
        return value

    @classmethod
    def cross(cls, data: dict, context: dict) -> list[tuple[tuple, str]]:
        pools = data.get("pools")
        names = pools if isinstance(pools, dict) else {}
        found = [(("pools", name), "pool names use letters, digits, '-' and '_' only") for name in names
                 if not name.replace("-", "").replace("_", "").isalnum()]
        if "repository" not in data:
            for where, mode in _modes_named(data):
                if mode == "repo":
                    found.append((where, 'mode "repo" needs a [repository] table (path, encryption, key_file); '
                                         "see the README's Repository section"))
            schedule = data.get("schedule")
            if isinstance(schedule, dict) and "gc" in schedule:
                found.append((("schedule", "gc"), "the repository's GC needs a [repository] table and the "
                                                  "config has none; add one (path, encryption, key_file) or "
                                                  "remove [schedule.gc]"))
        return found

    def build(self, path: str, secrets: tuple[str, str]) -> Config:
        return Config(broker_url=self.broker_url, result_backend=self.result_backend or self.broker_url,
                      destination=self.destination, default_mode=self.default_mode,
                      pools={name: table.build(name, secrets) for name, table in self.pools.items()},
                      retry=self.retry, limits=self.limits, retention=self.retention, janitor=self.janitor,
                      reports=self.reports.build(secrets) if self.reports else ReportsConfig(),
                      web=self.web.build(secrets) if self.web else WebConfig(), path=path,
                      schedule=self.schedule.build(self.default_mode) if self.schedule else None,
                      repository=self.repository.build(secrets) if self.repository else None)


def _modes_named(data: dict):
    """(where, mode) of every mode the file names: default_mode, each pool's, each schedule's."""
    yield ("default_mode",), data.get("default_mode", "export")
    for name, pool in (data.get("pools") or {}).items() if isinstance(data.get("pools"), dict) else ():
        if isinstance(pool, dict) and "mode" in pool:
            yield ("pools", name, "mode"), pool["mode"]
    schedule = data.get("schedule") if isinstance(data.get("schedule"), dict) else {}
    if isinstance(schedule.get("daily"), dict) and "mode" in schedule["daily"]:
        yield ("schedule", "daily", "mode"), schedule["daily"]["mode"]
    for i, entry in enumerate(schedule.get("backups") or []) if isinstance(schedule.get("backups"), list) else ():
        if isinstance(entry, dict) and "mode" in entry:
            yield ("schedule", "backups", i, "mode"), entry["mode"]


def secrets_dir(raw: dict, path: str) -> tuple[str, str]:
    """(directory, what chose it): $TINABS_SECRETS_DIR, then the file's ``secrets_dir``, then systemd's
    $CREDENTIALS_DIRECTORY (set by LoadCredential=), then Docker's /run/secrets."""
    value = raw.get("secrets_dir")
    if "secrets_dir" in raw and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{path}: `secrets_dir` must be a non-empty string")
    choices = (("TINABS_SECRETS_DIR", os.environ.get("TINABS_SECRETS_DIR")),
               (f"secrets_dir in {path}", value),
               ("CREDENTIALS_DIRECTORY", os.environ.get("CREDENTIALS_DIRECTORY")))
    for origin, value in choices:
        if value:  # an empty variable counts as unset
            if not os.path.isabs(value):
                raise ConfigError(f"{origin}: the secrets directory must be an absolute path, got {value!r}")
            return value, origin
    return DEFAULT_SECRETS_DIR, "the default"


def config_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("TINABS_CONFIG") or DEFAULT_PATH


#: what a config depends on besides its file: a load with the same file and these is the same Config
_ENV_INPUTS = ("TINABS_BROKER_URL", "TINABS_RESULT_BACKEND", "TINABS_SECRETS_DIR", "CREDENTIALS_DIRECTORY")
_loaded: dict[tuple, Config] = {}


def load(path: str | None = None) -> Config:
    """The config at ``path`` (or $TINABS_CONFIG, or the default path).  A process reads and checks a
    file once: a command that loads it, then builds the Celery app (which loads it too), parses it
    once; a changed file (its size, mtime or inode) is read again."""
    path = config_path(path)
    try:
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns, *(os.environ.get(v) for v in _ENV_INPUTS))
    except OSError:
        key = None
    if key in _loaded:
        return _loaded[key]
    cfg = _read(path)
    if key is not None:
        _loaded[key] = cfg
    return cfg


def _read(path: str) -> Config:
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
    """The Config of the file at ``path`` read as ``raw``, or a ConfigError with all its problems."""
    problems: list[str] = []
    try:
        secrets = secrets_dir(raw, path)
    except ConfigError as exc:
        problems += exc.problems
        secrets = (DEFAULT_SECRETS_DIR, "the default")
    data = dict(raw)
    for key, variable in (("broker_url", "TINABS_BROKER_URL"), ("result_backend", "TINABS_RESULT_BACKEND")):
        if os.environ.get(variable):  # the file's value is not even looked at
            data[key] = os.environ[variable]
    pools = raw.get("pools")
    file = None
    try:
        file = ConfigFile.model_validate(data, context={"pools": sorted(pools) if isinstance(pools, dict) else []})
    except ValidationError as exc:
        problems = problems_of(exc, raw, path) + problems
    if problems:
        raise ConfigError(problems)
    return file.build(path, secrets)
