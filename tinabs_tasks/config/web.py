"""The ``[web]`` config section: the web console's address, login and links.

The console always asks for a login.  Its password is never inline: ``password_env``,
``password_file`` or ``password_secret`` (as pool passwords), or else the environment variable
``TINABS_WEB_PASSWORD``; `tinabs web` refuses to start without one.  Session cookies are
``Secure`` unless ``secure_cookies = false`` (only for a plain-HTTP console on a trusted
network: browsers treat http://localhost and http://127.0.0.1 as secure already).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from tinabs_tasks.config.reports import SecretRef, _error, known, number, secret_keys, string

DEFAULT_LISTEN = "127.0.0.1:8080"
PASSWORD_ENV = "TINABS_WEB_PASSWORD"
_KEYS = {"listen", "username", "password_env", "password_file", "password_secret", "flower_url",
         "secure_cookies", "session_hours", "tls_cert", "tls_key", "answer_wait_s"}


@dataclass(frozen=True)
class WebConfig:
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


def split_listen(value: str, where: str) -> tuple[str, int]:
    """"HOST:PORT" ("[::1]:8080" for IPv6) -> (host, port), or a ConfigError saying what is wrong."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _error(f"{where} must look like \"127.0.0.1:8080\" (HOST:PORT), got {value!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse(table, path: str, secrets: tuple[str, str]) -> WebConfig:
    if table is None:
        return WebConfig()
    where = f"{path}: [web]"
    if not isinstance(table, dict):
        raise _error(f"{where} must be a table")
    known(table, _KEYS, where)
    if "password" in table:
        raise _error(f"{where} inline passwords are refused; use password_secret, password_env or password_file")
    listen = string(table, "listen", where) or DEFAULT_LISTEN
    split_listen(listen, f"{where} listen")
    flower = string(table, "flower_url", where)
    if flower and not flower.startswith(("http://", "https://")):
        raise _error(f"{where} flower_url must be an http:// or https:// URL, got {flower!r}")
    secure = table.get("secure_cookies", True)
    if not isinstance(secure, bool):
        raise _error(f"{where} secure_cookies must be true or false, got {secure!r}")
    hours = number(table, "session_hours", 12.0, where)
    if hours <= 0:
        raise _error(f"{where} session_hours must be above 0")
    wait = number(table, "answer_wait_s", 20.0, where)
    if wait <= 0:
        raise _error(f"{where} answer_wait_s must be above 0")
    cert, key = string(table, "tls_cert", where), string(table, "tls_key", where)
    if bool(cert) != bool(key):
        raise _error(f"{where} give both tls_cert and tls_key (or neither)")
    return WebConfig(listen=listen, username=string(table, "username", where) or "admin",
                     password=secret_keys(table, "password", where, secrets) or SecretRef("env", PASSWORD_ENV),
                     flower_url=flower.rstrip("/"), secure_cookies=secure, session_hours=hours,
                     tls_cert=cert, tls_key=key, answer_wait_s=wait)
