"""The ``[reports]`` config section: when a job's summary is sent, and to which channels.

Secrets (the SMTP password, a webhook's secret headers or secret URL) are never
inline: each names an environment variable, a file or a secret in the secrets
directory, as pool passwords do, and is read by the worker only when it sends.
A secret is never kept in Redis, task arguments, logs or the report itself.
"""
from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass

from tinabs_tasks.config.secrets import SecretError, read_password_file, read_secret

#: Xen Orchestra's reportWhen values; "failure" is its default, and ours: a nightly mail that
#: says "all fine" every day trains people to ignore the one that does not
WHEN = ("always", "failure", "never")
SECURITY = ("starttls", "ssl", "none")
DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
#: a literal header value under one of these names is refused: it is a secret in the config file
SECRET_HEADER = re.compile(r"auth|token|key|secret|password|cookie|signature", re.IGNORECASE)
_SOURCES = ("env", "file", "secret")
ADDRESS = re.compile(r"[^\s@]+@[^\s@]+")  # a bare address: no name, no line break into the headers


@dataclass(frozen=True)
class SecretRef:
    """Where a secret is: an environment variable, a file, or a name in the secrets directory."""
    kind: str  # "env" | "file" | "secret"
    name: str
    secrets_dir: str = ""
    secrets_dir_from: str = ""

    def read(self) -> str:
        """The secret, read now; SecretError (a reason, never the value) if it cannot be used."""
        if self.kind == "env":
            value = os.environ.get(self.name)
            if not value:
                raise SecretError(f"environment variable {self.name} is not set")
            return value
        if self.kind == "file":
            return read_password_file(self.name)
        return read_secret(self.secrets_dir, self.name, self.secrets_dir_from)


@dataclass(frozen=True)
class EmailConfig:
    host: str
    port: int
    security: str
    sender: str
    to: tuple[str, ...]
    username: str = ""
    password: SecretRef | None = None
    ca_bundle: str = ""
    timeout_s: float = 30.0

    @property
    def target(self) -> str:
        """Where the mail goes, for status and logs."""
        return f"{', '.join(self.to)} via {self.host}:{self.port}"


@dataclass(frozen=True)
class WebhookConfig:
    url: str = ""                      # a literal URL ...
    url_ref: SecretRef | None = None   # ... or one that is itself a secret (Slack, Teams, Discord)
    headers: tuple[tuple[str, str | SecretRef], ...] = ()
    ca_bundle: str = ""
    timeout_s: float = 10.0

    @property
    def target(self) -> str:
        """scheme://host[:port] only: a webhook's path and query often carry its token."""
        if not self.url:
            return f"the URL in {self.url_ref.kind} {self.url_ref.name}"
        parts = urllib.parse.urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


@dataclass(frozen=True)
class ReportsConfig:
    when: str = "failure"
    email: EmailConfig | None = None
    webhook: WebhookConfig | None = None
    #: a channel that fails is tried again this many times, backoff_s, 2x, 4x ... apart
    max_retries: int = 3
    backoff_s: float = 30.0

    @property
    def channels(self) -> dict[str, EmailConfig | WebhookConfig]:
        return {name: c for name, c in (("email", self.email), ("webhook", self.webhook)) if c is not None}


def _error(message: str) -> Exception:
    from tinabs_tasks.config.model import ConfigError# config imports this module: import at call time
    return ConfigError(message)


def parse(table, path: str, secrets: tuple[str, str]) -> ReportsConfig:
    """``[reports]`` of the config file at ``path``; ``secrets`` = (secrets dir, what chose it)."""
    if table is None:
        return ReportsConfig()
    where = f"{path}: [reports]"
    _table(table, where)
    known(table, {"when", "max_retries", "backoff_s", "email", "webhook"}, where)
    when = table.get("when", "failure")
    if when not in WHEN:
        raise _error(f"{where} when must be one of {', '.join(repr(w) for w in WHEN)}, got {when!r}")
    email = _email(table["email"], f"{where[:-1]}.email]", secrets) if "email" in table else None
    webhook = _webhook(table["webhook"], f"{where[:-1]}.webhook]", secrets) if "webhook" in table else None
    return ReportsConfig(when=when, email=email, webhook=webhook,
                         max_retries=int(number(table, "max_retries", 3, where, integer=True)),
                         backoff_s=number(table, "backoff_s", 30.0, where))


def _email(table, where: str, secrets) -> EmailConfig:
    _table(table, where)
    if "password" in table:
        raise _error(f"{where} inline passwords are refused; use password_secret, password_env or password_file")
    known(table, {"host", "port", "security", "from", "to", "username", "password_env", "password_file",
                   "password_secret", "allow_plaintext_auth", "ca_bundle", "timeout_s"}, where)
    security = table.get("security", "starttls")
    if security not in SECURITY:
        raise _error(f"{where} security must be one of {', '.join(SECURITY)}, got {security!r}")
    to = table.get("to")
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not to or not all(isinstance(a, str) and ADDRESS.fullmatch(a) for a in to):
        raise _error(f"{where} `to` must be a list of mail addresses, e.g. to = [\"ops@example.com\"]")
    sender = string(table, "from", where, required=True)
    if not ADDRESS.fullmatch(sender):
        raise _error(f"{where} `from` must be a mail address, got {sender!r}")
    username = string(table, "username", where)
    password = secret_keys(table, "password", where, secrets)
    if bool(username) != bool(password):
        raise _error(f"{where} give both `username` and one of password_secret, password_env or password_file "
                     "(or neither, for a relay that needs no login)")
    if not isinstance(table.get("allow_plaintext_auth", False), bool):
        raise _error(f"{where} allow_plaintext_auth must be true or false")
    if username and security == "none" and table.get("allow_plaintext_auth") is not True:
        raise _error(f"{where} a login with security = \"none\" sends the password in clear; use "
                     "security = \"starttls\" or \"ssl\" (or set allow_plaintext_auth = true for a local relay)")
    return EmailConfig(host=string(table, "host", where, required=True), port=_port(table, security, where),
                       security=security, sender=sender, to=tuple(to), username=username, password=password,
                       ca_bundle=string(table, "ca_bundle", where),
                       timeout_s=number(table, "timeout_s", 30.0, where))


def _port(table: dict, security: str, where: str) -> int:
    port = table.get("port", DEFAULT_PORTS[security])
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise _error(f"{where} port must be an integer from 1 to 65535, got {port!r}")
    return port


def _webhook(table, where: str, secrets) -> WebhookConfig:
    _table(table, where)
    known(table, {"url", "url_env", "url_file", "url_secret", "headers", "ca_bundle", "timeout_s"}, where)
    url_ref = secret_keys(table, "url", where, secrets)
    url = string(table, "url", where)
    if bool(url) == bool(url_ref):
        raise _error(f"{where} give exactly one of url, url_env, url_file or url_secret")
    if url:
        check_url(url, where)
        if "@" in urllib.parse.urlsplit(url).netloc:
            raise _error(f"{where} the url holds credentials; give a secret URL with url_env, url_file or "
                         "url_secret, or the credentials as a header ({ env = \"VAR\" })")
    headers = table.get("headers", {})
    _table(headers, f"{where[:-1]}.headers]")
    return WebhookConfig(url=url, url_ref=url_ref,
                         headers=tuple(_header(n, v, where, secrets) for n, v in headers.items()),
                         ca_bundle=string(table, "ca_bundle", where),
                         timeout_s=number(table, "timeout_s", 10.0, where))


def check_url(url: str, where: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _error(f"{where} the webhook URL must be http:// or https:// with a host")


def _header(name: str, value, where: str, secrets) -> tuple[str, str | SecretRef]:
    if not re.fullmatch(r"[A-Za-z0-9-]+", name):
        raise _error(f"{where} header name {name!r}: letters, digits and '-' only")
    if isinstance(value, dict):
        known(value, set(_SOURCES), f"{where} header {name}")
        if len(value) != 1 or not isinstance(next(iter(value.values())), str):
            raise _error(f"{where} header {name}: give exactly one of {{ env = \"VAR\" }}, {{ file = \"/path\" }} "
                         "or { secret = \"name\" }")
        kind, ref = next(iter(value.items()))
        return name, _ref(kind, ref, f"{where} header {name}", secrets)
    if not isinstance(value, str) or "\n" in value or "\r" in value:
        raise _error(f"{where} header {name} must be a one-line string or {{ env = \"VAR\" }}")
    if SECRET_HEADER.search(name):
        raise _error(f"{where} header {name} looks secret: give its value as {{ env = \"VAR\" }}, "
                     "{ file = \"/path\" } or { secret = \"name\" }, not inline")
    return name, value


def secret_keys(table: dict, stem: str, where: str, secrets) -> SecretRef | None:
    """``<stem>_env`` / ``<stem>_file`` / ``<stem>_secret``: at most one, as for pool passwords."""
    given = [k for k in _SOURCES if f"{stem}_{k}" in table]
    if len(given) > 1:
        raise _error(f"{where} give only one of {', '.join(f'{stem}_{k}' for k in given)}")
    if not given:
        return None
    key = f"{stem}_{given[0]}"
    return _ref(given[0], string(table, key, where, required=True), f"{where} {key}", secrets)


def _ref(kind: str, value: str, where: str, secrets) -> SecretRef:
    if not value:
        raise _error(f"{where} must be a non-empty string")
    if kind == "file" and not os.path.isabs(value):
        raise _error(f"{where} must be an absolute path, got {value!r}")
    if kind == "secret" and ("/" in value or "\0" in value or value in (".", "..")):
        raise _error(f"{where} is a file name in the secrets directory, not a path (got {value!r})")
    return SecretRef(kind, value, *secrets) if kind == "secret" else SecretRef(kind, value)


def _table(value, where: str) -> None:
    if not isinstance(value, dict):
        raise _error(f"{where} must be a table")


def known(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _error(f"{where} unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def string(table: dict, key: str, where: str, required: bool = False) -> str:
    value = table.get(key)
    if value is None and required:
        raise _error(f"{where} missing required key `{key}`")
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise _error(f"{where} `{key}` must be a non-empty string")
    return value or ""


def number(table: dict, key: str, default, where: str, integer: bool = False):
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or value < 0:
        kind = "a non-negative integer" if integer else "a non-negative number"
        raise _error(f"{where} {key} must be {kind}, got {value!r}")
    return value if integer else float(value)
