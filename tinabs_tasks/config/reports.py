"""The ``[reports]`` config section: when a job's summary is sent, and to which channels.

Secrets (the SMTP password, a webhook's secret headers or secret URL) are never
inline: each names an environment variable, a file or a secret in the secrets
directory, as pool passwords do, and is read by the worker only when it sends.
A secret is never kept in Redis, task arguments, logs or the report itself.
The records (EmailConfig, ...) are in reports_records.py; this module reads the tables.
"""
from __future__ import annotations

import re
import urllib.parse

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from tinabs_tasks.config.base import Table, flag, number, one_of, text, validator
from tinabs_tasks.config.errors import problem, several, unknown_keys
from tinabs_tasks.config.reports_records import (ADDRESS, DEFAULT_PORTS, SECRET_HEADER, SECURITY, WHEN, EmailConfig,
                                                 ReportsConfig, WebhookConfig, check_url, url_problem)
from tinabs_tasks.config.sources import KINDS, SecretRef, check_ref, given, only_one, ref, sources

__all__ = ["WHEN", "SECURITY", "DEFAULT_PORTS", "SECRET_HEADER", "ADDRESS", "SecretRef", "EmailConfig",
           "WebhookConfig", "ReportsConfig", "check_url", "ReportsTable", "EmailTable", "WebhookTable"]
_INLINE = "inline passwords are refused; use password_secret, password_env or password_file"
_ONE_OF_REFS = '{ env = "VAR" }, { file = "/path" } or { secret = "name" }'


class _Channel(Table):
    ca_bundle: str | None = None

    _ca = validator(text, "ca_bundle")
    _timeout = validator(number, "timeout_s", check_fields=False)


class EmailTable(_Channel):
    """``[reports.email]`` as written."""
    refused = {"password": _INLINE}
    host: str
    port: int | None = None  # by security: 587, 465 or 25
    security: str = "starttls"
    sender: str = Field(alias="from")
    to: tuple[str, ...] = Field(default=None, validate_default=True)
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    password_secret: str | None = None
    allow_plaintext_auth: bool = False
    timeout_s: float = 30.0

    _text = validator(text, "host", "username")
    _source = sources("password")
    _security = validator(one_of, "security", choices=SECURITY)
    _plaintext = validator(flag, "allow_plaintext_auth", got=False)

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, value):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise problem(f"port must be an integer from 1 to 65535, got {value!r}")
        return value

    @field_validator("sender", mode="before")
    @classmethod
    def _sender(cls, value):
        text(value, "from")
        if not ADDRESS.fullmatch(value):
            raise problem(f"`from` must be a mail address, got {value!r}")
        return value

    @field_validator("to", mode="before")
    @classmethod
    def _to(cls, value):
        to = [value] if isinstance(value, str) else value
        if not isinstance(to, list) or not to or not all(isinstance(a, str) and ADDRESS.fullmatch(a) for a in to):
            raise problem('`to` must be a list of mail addresses, e.g. to = ["ops@example.com"]')
        return tuple(to)

    @classmethod
    def cross(cls, data: dict, context: dict) -> list[tuple[tuple, str]]:
        found = only_one(data, "password")
        if ("username" in data) != bool(given(data, "password")):
            found.append(((), "give both `username` and one of password_secret, password_env or password_file "
                              "(or neither, for a relay that needs no login)"))
        if "username" in data and data.get("security") == "none" and data.get("allow_plaintext_auth") is not True:
            found.append(((), 'a login with security = "none" sends the password in clear; use '
                              'security = "starttls" or "ssl" (or set allow_plaintext_auth = true for a local relay)'))
        return found

    def build(self, secrets: tuple[str, str]) -> EmailConfig:
        return EmailConfig(host=self.host, port=self.port or DEFAULT_PORTS[self.security], security=self.security,
                           sender=self.sender, to=self.to, username=self.username or "",
                           password=ref(self, "password", secrets), ca_bundle=self.ca_bundle or "",
                           timeout_s=self.timeout_s)


class WebhookTable(_Channel):
    """``[reports.webhook]`` as written."""
    url: str | None = None
    url_env: str | None = None
    url_file: str | None = None
    url_secret: str | None = None
    #: name -> a literal value, or ("env" | "file" | "secret", where)
    headers: tuple[tuple[str, str | tuple[str, str]], ...] = ()
    timeout_s: float = 10.0

    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, value):
        text(value, "url")
        if url_problem(value):
            raise problem(url_problem(value))
        if "@" in urllib.parse.urlsplit(value).netloc:
            raise problem('the url holds credentials; give a secret URL with url_env, url_file or url_secret, '
                          'or the credentials as a header ({ env = "VAR" })')
        return value

    _source = sources("url")

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, value):
        if not isinstance(value, dict):
            raise problem("must be a table", table=True)
        headers, found = [], []
        for name, item in value.items():
            try:
                headers.append((name, _header(name, item)))
            except PydanticCustomError as exc:  # every header is checked
                found.append(exc)
        if found:
            raise several(found)
        return tuple(headers)

    @classmethod
    def cross(cls, data: dict, context: dict) -> list[tuple[tuple, str]]:
        refs = given(data, "url")
        if len(refs) > 1:
            return only_one(data, "url")
        if ("url" in data) == bool(refs):
            return [((), "give exactly one of url, url_env, url_file or url_secret")]
        return []

    def build(self, secrets: tuple[str, str]) -> WebhookConfig:
        headers = tuple((name, v if isinstance(v, str) else SecretRef(*v, *secrets)) for name, v in self.headers)
        return WebhookConfig(url=self.url or "", url_ref=ref(self, "url", secrets), headers=headers,
                             ca_bundle=self.ca_bundle or "", timeout_s=self.timeout_s)


def _header(name: str, value) -> str | tuple[str, str]:
    where = f"header {name}"
    if not re.fullmatch(r"[A-Za-z0-9-]+", name):
        raise problem(f"header name {name!r}: letters, digits and '-' only")
    if isinstance(value, dict):
        unknown = [k for k in value if k not in KINDS]
        if unknown:
            raise problem(f"{where} {unknown_keys(unknown, KINDS)}")
        if len(value) != 1 or not isinstance(next(iter(value.values())), str):
            raise problem(f"{where}: give exactly one of {_ONE_OF_REFS}")
        kind, where_to = next(iter(value.items()))
        if not where_to.strip():
            raise problem(f"{where} must be a non-empty string")
        return kind, check_ref(where_to, where, kind)
    if not isinstance(value, str) or "\n" in value or "\r" in value:
        raise problem(f'{where} must be a one-line string or {{ env = "VAR" }}')
    if SECRET_HEADER.search(name):
        raise problem(f"{where} looks secret: give its value as {_ONE_OF_REFS}, not inline")
    return value


class ReportsTable(Table):
    """``[reports]`` as written."""
    when: str = "failure"
    max_retries: int = 3
    backoff_s: float = 30.0
    email: EmailTable | None = None
    webhook: WebhookTable | None = None

    _when = validator(one_of, "when", choices=WHEN, quote=True)
    _retries = validator(number, "max_retries", integer=True)
    _backoff = validator(number, "backoff_s")

    def build(self, secrets: tuple[str, str]) -> ReportsConfig:
        return ReportsConfig(when=self.when, email=self.email and self.email.build(secrets),
                             webhook=self.webhook and self.webhook.build(secrets), max_retries=self.max_retries,
                             backoff_s=self.backoff_s)
