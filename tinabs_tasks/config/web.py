"""The ``[web]`` config section: the web console's address, login and links.

The console always asks for a login.  Its password is never inline: ``password_env``,
``password_file`` or ``password_secret`` (as pool passwords), or else the environment variable
``TINABS_WEB_PASSWORD``; `tinabs web` refuses to start without one.  Session cookies are
``Secure`` unless ``secure_cookies = false`` (only for a plain-HTTP console on a trusted
network: browsers treat http://localhost and http://127.0.0.1 as secure already).
"""
from __future__ import annotations

import ipaddress

from pydantic import field_validator

from tinabs_tasks.config.base import Record, Table, flag, http_url, number, text, validator
from tinabs_tasks.config.errors import ConfigError, problem
from tinabs_tasks.config.sources import SecretRef, only_one, ref, sources

DEFAULT_LISTEN = "127.0.0.1:8080"
PASSWORD_ENV = "TINABS_WEB_PASSWORD"


class WebConfig(Record):
    listen: str = DEFAULT_LISTEN
    username: str = "admin"
    password: SecretRef = SecretRef("env", PASSWORD_ENV)
    #: where Flower is, as the browser reaches it (links from jobs and runs); "" = no links
    flower_url: str = ""
    secure_cookies: bool = True
    session_hours: float = 12.0
    tls_cert: str = ""
    tls_key: str = ""
    #: how long a page waits for a pool's worker to answer (then it says none did)
    answer_wait_s: float = 20.0

    @property
    def host_port(self) -> tuple[str, int]:
        return split_listen(self.listen, "[web] listen")


def _listen_problem(value: str) -> str:
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"must look like \"127.0.0.1:8080\" (HOST:PORT), got {value!r}"
    return ""


def split_listen(value: str, where: str) -> tuple[str, int]:
    """"HOST:PORT" ("[::1]:8080" for IPv6) -> (host, port), or a ConfigError saying what is wrong."""
    if _listen_problem(value):
        raise ConfigError(f"{where} {_listen_problem(value)}")
    host, _, port = value.rpartition(":")
    return (host[1:-1] if host.startswith("[") and host.endswith("]") else host), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebTable(Table):
    """``[web]`` as written."""
    refused = {"password": "inline passwords are refused; use password_secret, password_env or password_file"}
    listen: str = DEFAULT_LISTEN
    username: str = "admin"
    password_env: str | None = None
    password_file: str | None = None
    password_secret: str | None = None
    flower_url: str = ""
    secure_cookies: bool = True
    session_hours: float = 12.0
    tls_cert: str = ""
    tls_key: str = ""
    answer_wait_s: float = 20.0

    _text = validator(text, "username", "tls_cert", "tls_key")
    _source = sources("password")
    _secure = validator(flag, "secure_cookies")

    @field_validator("listen", mode="before")
    @classmethod
    def _listen(cls, value):
        text(value, "listen")
        if _listen_problem(value):
            raise problem(f"listen {_listen_problem(value)}")
        return value

    @field_validator("flower_url", mode="before")
    @classmethod
    def _flower(cls, value):
        return http_url(value, "flower_url").rstrip("/")

    @field_validator("session_hours", "answer_wait_s", mode="before")
    @classmethod
    def _positive(cls, value, info):
        if number(value, info.field_name) <= 0:
            raise problem(f"{info.field_name} must be above 0")
        return float(value)

    @classmethod
    def cross(cls, data: dict, context: dict) -> list[tuple[tuple, str]]:
        found = only_one(data, "password")
        if ("tls_cert" in data) != ("tls_key" in data):
            found.append(((), "give both tls_cert and tls_key (or neither)"))
        return found

    def build(self, secrets: tuple[str, str]) -> WebConfig:
        return WebConfig(listen=self.listen, username=self.username, flower_url=self.flower_url,
                         password=ref(self, "password", secrets) or SecretRef("env", PASSWORD_ENV),
                         secure_cookies=self.secure_cookies, session_hours=self.session_hours,
                         tls_cert=self.tls_cert, tls_key=self.tls_key, answer_wait_s=self.answer_wait_s)
