"""Sessions to pool masters: TLS as configured, HOST_IS_SLAVE followed, cached per process."""
from __future__ import annotations

import os
import ssl
import threading
import urllib.parse

import XenAPI

from tinabs_tasks.config.model import PoolConfig
from tinabs_tasks.xapi import tls

_cache: dict[str, "PoolSession"] = {}
_lock = threading.Lock()
ORIGINATOR = "tinabs"


def tls_context(pool: PoolConfig) -> ssl.SSLContext | None:
    """See tls.context_for: CA-verified by default, ca_bundle, tls_fingerprint pin, or insecure."""
    return tls.context_for(pool)


class PoolSession:
    """A logged-in XenAPI session to a pool's current master."""

    def __init__(self, pool: PoolConfig):
        self.pool = pool
        self.url = pool.master
        self.context = tls_context(pool)
        self.session = self._login(pool.master)

    def _session_for(self, url: str) -> XenAPI.Session:
        transport = tls.SafeTransport(context=self.context) if url.startswith("https://") else None
        return XenAPI.Session(url, transport=transport)

    def _login(self, url: str) -> XenAPI.Session:
        for _hop in range(3):
            session = self._session_for(url)
            try:
                session.xenapi.login_with_password(self.pool.username, self.pool.resolve_password(),
                                                   "2.21", ORIGINATOR)
            except XenAPI.Failure as exc:
                if exc.details and exc.details[0] == "HOST_IS_SLAVE" and len(exc.details) > 1:
                    url = replace_host(url, exc.details[1])
                    continue
                raise
            self.url = url
            return session
        raise XenAPI.Failure(["HOST_IS_SLAVE", "redirected too many times"])

    @property
    def xenapi(self):
        return self.session.xenapi

    @property
    def handle(self) -> str:
        return self.session._session

    def logout(self) -> None:
        try:
            self.session.xenapi.session.logout()
        except Exception:  # a dead session needs no logout
            pass


def replace_host(url: str, address: str) -> str:
    """Same scheme and port, another host: how a client follows HOST_IS_SLAVE."""
    parts = urllib.parse.urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    host = f"[{address}]" if ":" in address and not address.startswith("[") else address
    return urllib.parse.urlunsplit((parts.scheme, host + port, parts.path, parts.query, parts.fragment))


def session_for(pool: PoolConfig) -> PoolSession:
    """A cached session (XenAPI re-logs in by itself on SESSION_INVALID)."""
    with _lock:
        cached = _cache.get(pool.name)
        if cached is not None and cached.pool == pool:
            return cached
    fresh = PoolSession(pool)
    with _lock:
        _cache[pool.name] = fresh
    return fresh


# A forked worker child must not share its parent's keep-alive sockets.
os.register_at_fork(after_in_child=_cache.clear)


def forget(pool_name: str) -> None:
    with _lock:
        _cache.pop(pool_name, None)
