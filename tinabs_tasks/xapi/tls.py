"""TLS to pools, in one place: verified by default, a CA bundle, a pinned fingerprint, or insecure.

``context_for(pool)`` gives the SSLContext every connection to the pool uses
(XML-RPC, /export downloads, /import uploads); ``check_pin(pool, sock)``
must run after each handshake: with ``tls_fingerprint`` set the chain is not
checked against CAs, but the peer certificate's SHA-256 must equal the pin.
"""
from __future__ import annotations

import hashlib
import http.client
import ssl
import xmlrpc.client

from tinabs_tasks.config.model import PoolConfig


class PinMismatch(ssl.SSLCertVerificationError):
    """The pool's certificate is not the pinned one (not retried: an untrusted pool stays untrusted)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.verify_message = self.strerror = message
        self.verify_code = 0


def normalize_fingerprint(text: str) -> str:
    """``sha256:AB:CD:...`` (any case, colons optional) -> lowercase hex without colons."""
    value = text.strip()
    if value.lower().startswith("sha256:"):
        value = value[len("sha256:"):]
    return value.replace(":", "").lower()


def fingerprint(der: bytes) -> str:
    """``sha256:AB:CD:...`` of a DER certificate, as ``openssl x509 -fingerprint -sha256`` shows it."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return "sha256:" + ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def context_for(pool: PoolConfig) -> ssl.SSLContext | None:
    if not pool.master.startswith("https://"):
        return None
    if pool.tls_fingerprint:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the pin replaces the CA check: check_pin() after the handshake
        ctx.tinabs_pin = normalize_fingerprint(pool.tls_fingerprint)
        return ctx
    if pool.insecure:
        return ssl._create_unverified_context()  # explicit opt-out; warned about at every start
    return ssl.create_default_context(cafile=pool.ca_bundle) if pool.ca_bundle else ssl.create_default_context()


def check_pin(context: ssl.SSLContext | None, sock) -> None:
    """Raise PinMismatch unless the peer certificate matches the context's pin (no pin: no check)."""
    pin = getattr(context, "tinabs_pin", None)
    if not pin or not isinstance(sock, ssl.SSLSocket):
        return
    der = sock.getpeercert(binary_form=True)
    got = hashlib.sha256(der).hexdigest() if der else ""
    if got != pin:
        sock.close()
        raise PinMismatch(f"certificate fingerprint {fingerprint(der) if der else 'none'} does not match "
                          "the pinned tls_fingerprint")


def wrap(context: ssl.SSLContext, sock, hostname: str):
    """A client TLS socket, pin checked."""
    tls = context.wrap_socket(sock, server_hostname=hostname)
    check_pin(context, tls)
    return tls


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPSConnection that checks the pin (if any) right after connecting."""

    def connect(self):
        super().connect()
        check_pin(self._context, self.sock)


class SafeTransport(xmlrpc.client.SafeTransport):
    """XML-RPC over HTTPS with the pin checked on every new connection."""

    def make_connection(self, host):
        if self._connection and host == self._connection[0]:
            return self._connection[1]
        chost, self._extra_headers, x509 = self.get_host_info(host)
        self._connection = host, PinnedHTTPSConnection(chost, None, context=self.context, **(x509 or {}))
        return self._connection[1]


def insecure_warnings(pools) -> list[str]:
    """One line per https pool with ``insecure = true``: logged/printed at every start."""
    return [f"pool `{p.name}`: TLS verification is OFF (insecure = true); anyone on the path can "
            "impersonate the pool master and read its root password — set ca_bundle or tls_fingerprint instead"
            for p in pools if p.master.startswith("https://") and p.insecure]


def failure_advice(pool: PoolConfig, exc: BaseException) -> str | None:
    """A one-line explanation of a TLS failure naming the fix, or None if ``exc`` is no TLS failure."""
    if isinstance(exc, PinMismatch):
        return (f"TLS certificate refused: {exc.verify_message} — check tls_fingerprint for this pool "
                "(openssl s_client -connect HOST:443 | openssl x509 -noout -fingerprint -sha256)")
    if isinstance(exc, ssl.SSLCertVerificationError):
        how = (f"ca_bundle {pool.ca_bundle} does not vouch for it — point ca_bundle at the CA that signed the "
               "pool's certificate" if pool.ca_bundle else
               "set ca_bundle = \"/path/to/pool-ca.pem\" for this pool (or tls_fingerprint = \"sha256:...\")")
        return f"TLS certificate not trusted ({exc.verify_message}); {how}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc}); check the pool's https:// URL, ca_bundle or tls_fingerprint"
    return None
