"""A ``[pools.NAME]`` table (``PoolTable``) and the pool tinabs works with (``PoolConfig``).

The password is never inline by default: ``password_secret``, ``password_env`` or
``password_file`` (one SecretRef), read only when a login needs it; ``password`` itself only
with ``allow_inline_password = true``.  TLS: the system's CAs, or ``ca_bundle``, or a pinned
``tls_fingerprint``, or ``insecure = true`` (``verify_tls = false`` is its old spelling).
"""
from __future__ import annotations

from pydantic import Field, field_validator

from tinabs_tasks.config.base import MODES, Record, Table, flag, http_url, one_of, text, validator
from tinabs_tasks.config.errors import ConfigError, problem
from tinabs_tasks.config.secrets import SecretError
from tinabs_tasks.config.sources import DEFAULT_SECRETS_DIR, SecretRef, check_ref, ref

PASSWORD_SOURCES = ("password_secret", "password_env", "password_file")
TASK_WAITS = ("events", "poll")
_ONE_SOURCE = "password_secret, password_env or password_file"



def queue_name(pool: str) -> str:
    """The Celery queue of a pool's tasks (app.py routes there; `tinabs worker --pools` consumes it)."""
    return f"tinabs.pool.{pool}"

class PoolConfig(Record):
    """A pool as the workers and the CLI use it (``name`` is its key in [pools])."""
    name: str
    master: str
    username: str
    #: where the password is (password_secret / password_env / password_file); None: inline
    secret: SecretRef | None = None
    password: str | None = Field(default=None, repr=False)  # only with allow_inline_password
    ca_bundle: str | None = None
    #: ``sha256:AB:CD:...``: trust exactly this server certificate (no CA check)
    tls_fingerprint: str | None = None
    #: no TLS verification at all; explicit, warned about at every start
    insecure: bool = False
    shared_sr: str = ""
    backup_sr: str = ""
    max_concurrent_exports: int = 2
    #: how a worker waits for its XAPI tasks: "events" (one event.from connection per pool per
    #: worker process, falling back to polling where the pool has no events) or "poll"
    task_wait: str = "events"
    #: this pool's backup mode when a job names none (None: the file's default_mode)
    mode: str | None = None

    @property
    def verify_tls(self) -> bool:
        """False only with ``insecure = true`` (formerly ``verify_tls = false``)."""
        return not self.insecure

    @property
    def queue(self) -> str:
        return queue_name(self.name)

    def _source(self, kind: str) -> str | None:
        return self.secret.name if self.secret is not None and self.secret.kind == kind else None

    @property
    def password_env(self) -> str | None:
        return self._source("env")

    @property
    def password_file(self) -> str | None:
        return self._source("file")

    @property
    def password_secret(self) -> str | None:
        """A file name in ``secrets_dir`` (``/run/secrets/<name>``, ``$CREDENTIALS_DIRECTORY/<name>``)."""
        return self._source("secret")

    @property
    def secrets_dir(self) -> str:
        return self.secret.secrets_dir if self.secret is not None else DEFAULT_SECRETS_DIR

    @property
    def secrets_dir_from(self) -> str:
        """What chose ``secrets_dir``, for messages: "TINABS_SECRETS_DIR", "secrets_dir in FILE", ..."""
        return self.secret.secrets_dir_from if self.secret is not None else "the default"

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
        if self.secret is not None:
            try:
                return self.secret.read()
            except SecretError as exc:
                raise ConfigError(f"pool `{self.name}`: {exc}") from None
        if self.password is not None:
            return self.password
        raise ConfigError(f"pool `{self.name}`: no password source (set {_ONE_SOURCE})")


class PoolTable(Table):
    """``[pools.NAME]`` as written."""
    master: str
    username: str
    password_secret: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    password: str | None = Field(default=None, repr=False)
    allow_inline_password: bool = False
    verify_tls: bool | None = None
    insecure: bool | None = None
    ca_bundle: str | None = None
    tls_fingerprint: str | None = None
    shared_sr: str
    backup_sr: str = ""
    max_concurrent_exports: int = 2
    task_wait: str = "events"
    mode: str | None = None

    # checked now: a wrong type would only fail later, in a worker
    _text = validator(text, "username", "shared_sr", "password_env", "password_file", "password", "ca_bundle")
    _flag = validator(flag, "allow_inline_password", "verify_tls", "insecure", backticks=True)

    @field_validator("master", mode="before")
    @classmethod
    def _master(cls, value):
        return http_url(value, "master").rstrip("/")

    @field_validator("password_secret", mode="before")
    @classmethod
    def _secret_name(cls, value):
        # a name in the secrets directory, never a path that could lead out of it
        return check_ref(value, "password_secret", "secret",
                         instead="put the file there and give its name, or use password_file")

    @field_validator("tls_fingerprint", mode="before")
    @classmethod
    def _fingerprint(cls, value):
        text(value, "tls_fingerprint")
        stripped = value.strip()
        digits = stripped[len("sha256:"):] if stripped.lower().startswith("sha256:") else None
        hexdigits = (digits or "").replace(":", "")
        if digits is None or len(hexdigits) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hexdigits):
            raise problem(f"tls_fingerprint must look like \"sha256:AB:CD:...\" (32 hex pairs; see: openssl x509 "
                          f"-noout -fingerprint -sha256 -in CERT), got {value!r}")
        return value

    @field_validator("backup_sr", mode="before")
    @classmethod
    def _backup_sr(cls, value):
        if not isinstance(value, str):  # "" is allowed: no sr-copy for this pool
            raise problem("`backup_sr` must be a string")
        return value

    _task_wait = validator(one_of, "task_wait", choices=TASK_WAITS, quote=True)
    _mode = validator(one_of, "mode", choices=MODES)

    @field_validator("max_concurrent_exports", mode="before")
    @classmethod
    def _limit(cls, value):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise problem("max_concurrent_exports must be an integer >= 1")
        return value

    @classmethod
    def cross(cls, data: dict, context: dict) -> list[tuple[tuple, str]]:
        found: list[str] = []
        sources = [k for k in (*PASSWORD_SOURCES, "password") if k in data]
        if len(sources) != 1:  # exactly one; the password itself is read only when a login needs it
            found.append(f"give exactly one of {_ONE_SOURCE} (found {', '.join(sources) if sources else 'none'})")
        if "password" in data and data.get("allow_inline_password") is not True:
            found.append(f"inline passwords are refused; use {_ONE_SOURCE} (or set allow_inline_password = true "
                         "if you really must)")
        if "insecure" in data and "verify_tls" in data:
            found.append("`verify_tls` is the old name of `insecure`; set only `insecure = true`")
        insecure = data.get("insecure") is True if "insecure" in data else data.get("verify_tls") is False
        trust = [k for k, on in (("ca_bundle", "ca_bundle" in data), ("tls_fingerprint", "tls_fingerprint" in data),
                                  ("insecure", insecure)) if on]
        if len(trust) > 1:
            found.append(f"set at most one of ca_bundle, tls_fingerprint or insecure = true (found {', '.join(trust)})")
        return [((), message) for message in found]

    def build(self, name: str, secrets: tuple[str, str]) -> PoolConfig:
        insecure = self.insecure if self.insecure is not None else self.verify_tls is False
        return PoolConfig(name=name, master=self.master, username=self.username, secret=ref(self, "password", secrets),
                          password=self.password, ca_bundle=self.ca_bundle, tls_fingerprint=self.tls_fingerprint,
                          insecure=insecure, shared_sr=self.shared_sr, backup_sr=self.backup_sr,
                          max_concurrent_exports=self.max_concurrent_exports, task_wait=self.task_wait,
                          mode=self.mode)
