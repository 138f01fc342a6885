"""The plumbing every simulated host's HTTP route uses: replies, auth, tasks, faults, redirects.

``HandlerBase`` is what ``http_host.HostHandler`` and its route mixins
(``http_export``, ``http_import``) share; the rules it follows are in
``http_host``'s docstring.
"""
from __future__ import annotations

import base64
import logging
import socket
import urllib.parse
from http.server import BaseHTTPRequestHandler

from tinabs_tasks.sim.errors import XapiError
from tinabs_tasks.sim.faults import raise_if_error

log = logging.getLogger("tinabs.sim.http")


class HandlerBase(BaseHTTPRequestHandler):
    """Replies, auth, tasks, faults and redirects shared by every route."""

    protocol_version = "HTTP/1.1"
    server_version = "xapi"
    sys_version = ""

    # -- plumbing -------------------------------------------------------------
    def setup(self):
        super().setup()
        # Replies go out as two writes (head, then body); with Nagle on, the body
        # waits for the client's delayed ACK: ~40 ms added to every XML-RPC call.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def pool(self):
        return self.server.pool

    @property
    def host_ref(self) -> str:
        return self.server.host_ref

    def log_message(self, fmt, *args):  # quiet by default; tests read state, not logs
        log.debug("%s %s", self.address_string(), fmt % args)

    def _query(self) -> dict[str, str]:
        parsed = urllib.parse.urlsplit(self.path)
        return dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))

    def _route(self) -> str:
        return urllib.parse.urlsplit(self.path).path

    def _reply(self, status: int, body: bytes = b"", ctype: str = "text/plain", headers=(), close=False):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers:
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _fail(self, status: int, task: str | None, error: XapiError):
        if task:
            self.pool.tasks.fail(task, error)
        self._reply(status, (" ".join(error.description) + "\n").encode(),
                    headers=[("task-id", task)] if task else (), close=True)

    # -- auth and tasks -------------------------------------------------------
    def _session(self, query) -> str | None:
        cookie = self.headers.get("Cookie", "")
        cookies = dict(p.strip().split("=", 1) for p in cookie.split(";") if "=" in p)
        ref = cookies.get("session_id") or query.get("session_id")
        if ref:
            try:
                return self.pool.check_session(ref)
            except XapiError:
                return None
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                return self.pool.login(user, password, "HTTP basic auth")
            except (XapiError, ValueError, UnicodeDecodeError):
                return None
        return None

    def _task(self, query, label: str) -> str:
        ref = query.get("task_id")
        if ref and self.pool.store.exists("task", ref):
            return ref
        return self.pool.tasks.create(label, "")

    def _begin(self, label: str, handler: str):
        """(query, task) after auth; None when a reply was already sent."""
        query = self._query()
        task_ref = query.get("task_id") if self.pool.store.exists("task", query.get("task_id")) else None
        if self.pool.faults.take(self.pool.name, handler=handler, expiring=True):
            self.pool.expire_sessions()  # the session timed out just before this transfer
        if self._session(query) is None:
            self._fail(401, task_ref, XapiError("SESSION_AUTHENTICATION_FAILED"))
            return None
        return query, self._task(query, label)

    def _fault(self, handler: str, task: str, arg_values=()):
        fault = self.pool.faults.take(self.pool.name, handler=handler,
                                      arg_matches=lambda v: v in arg_values)
        if fault is not None:
            self.pool.tasks.sleep(task, fault.delay_s)
            raise_if_error(fault)
        return fault

    def _vm_of(self, query) -> str:
        store = self.pool.store
        if query.get("ref"):
            ref = query["ref"]
            if not store.exists("VM", ref):
                raise XapiError("HANDLE_INVALID", "VM", ref)
            return ref
        if query.get("uuid"):
            return store.by_uuid("VM", query["uuid"])
        raise XapiError("INTERNAL_ERROR", "export needs a 'ref' or 'uuid' query parameter")

    def _redirect_host(self, srs) -> str | None:
        """A host that sees every SR in ``srs``, when this one does not."""
        if all(self.pool.sr_visible_from(sr, self.host_ref) for sr in srs):
            return None
        for host in self.pool.hosts:
            if all(self.pool.sr_visible_from(sr, host) for sr in srs):
                return host
        return None

    def _redirect(self, host_ref: str, task: str, query):
        # xapi checks the SRs under a throw-away task (export.ml/import.ml "we don't
        # want to complete the task in the forwarding case"): a task_id given by the
        # client stays pending for the target host; one made here must not linger.
        if task != query.get("task_id") and self.pool.store.exists("task", task):
            self.pool.store.destroy("task", task)
        location = self.pool.base_url(host_ref) + self.path  # same scheme: https stays https
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Connection", "close")
        self.send_header("Cache-Control", "no-cache, no-store")
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.close_connection = True


def abort(conn) -> None:
    """Cut the connection the way a failing network does (RST, not a clean FIN)."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
