"""The plumbing every simulated host's HTTP route uses: replies, auth, tasks, faults, redirects.

``HandlerBase`` is what ``http_host.HostHandler`` and its route mixins
(``http_export``, ``http_import``) share; the rules it follows are in
``http_host``'s docstring.  Like xapi's own HTTP server (``http_svr.ml``) it
never answers ``Expect: 100-continue``, answers methods it has no handler for
(HEAD among them) with 501, and a task a handler makes for itself lives only
as long as the handler (``xapi_http.ml`` ``with_context``).
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

    def handle_expect_100(self):
        # http_svr.ml has no notion of Expect: xapi never sends "100 Continue".  Answering it
        # here (as http.server does by default) and then an early 200 with a Content-Length
        # made curl -T take the exchange as over and stop sending the body.
        return True

    def handle_one_request(self):
        self._own_task = self._own_session = None
        try:
            super().handle_one_request()
        finally:
            self._drop_own_task()
            self._logout_own_session()

    def _method_not_implemented(self):
        """What http_svr.ml ``handle_one`` answers to a method no handler is registered for.

        Http.method_t knows GET, POST, PUT, CONNECT and OPTIONS only; anything else
        (HEAD included) is ``Unknown m`` and gets ``response_method_not_implemented``:
        501 with an HTML body, written even to a HEAD, and the connection closed.
        Nothing runs: no task, no lock, no export.
        """
        body = ("<html><body><h1>HTTP 501 Method Not Implemented</h1>"
                f"<p>Unknown {self.command} not supported.<br /></p></body></html>").encode()
        version = "1.0" if self.request_version == "HTTP/1.0" else "1.1"
        self.close_connection = True
        self.wfile.write(f"HTTP/{version} 501 Method not implemented\r\ncontent-length: {len(body)}\r\n"
                         "content-type: text/html\r\nconnection: close\r\n"
                         "cache-control: no-cache, no-store\r\n\r\n".encode() + body)

    do_HEAD = do_DELETE = do_PATCH = do_TRACE = _method_not_implemented

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

    def _early_ok(self, task: str) -> None:
        """The 200 a handler sends before it reads the request body (import.ml ``handler``).

        ``Http.http_200_ok ~keep_alive:false ()`` plus the task id and content type, and
        no Content-Length: the reply ends when the connection closes, after the body
        was read and the task ended.  A ``Content-Length: 0`` here would tell a client
        (curl -T) that the exchange is complete, and it would stop sending.
        """
        self.close_connection = True
        self.wfile.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nCache-Control: no-cache, no-store\r\n"
                         b"task-id:" + task.encode() + b"\r\ncontent-type: application/octet-stream\r\n\r\n")
        self.wfile.flush()

    def _fail(self, status: int, task: str | None, error: XapiError):
        if task:
            self.pool.tasks.fail(task, error)
        self._reply(status, (" ".join(error.description) + "\n").encode(),
                    headers=[("task-id", task)] if task else (), close=True)

    # -- auth and tasks -------------------------------------------------------
    def _session(self, query) -> str | None:
        ref = self._param(query, "session_id")
        if ref:
            try:
                return self.pool.check_session(ref)
            except XapiError:
                return None
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                self._own_session = self.pool.login(user, password, "HTTP basic auth")
                return self._own_session
            except (XapiError, ValueError, UnicodeDecodeError):
                return None
        return None

    def _param(self, query, name: str) -> str | None:
        """A request parameter: the cookie first, then the query (xapi_http.ml ``lookup_param_of_req``)."""
        cookie = self.headers.get("Cookie", "")
        cookies = dict(p.strip().split("=", 1) for p in cookie.split(";") if "=" in p)
        return cookies.get(name) or query.get(name)

    def _task(self, query, label: str) -> str:
        ref = self._param(query, "task_id")
        if ref and self.pool.store.exists("task", ref):
            return ref
        self._own_task = self.pool.tasks.create(label, "")
        return self._own_task

    def _drop_own_task(self) -> None:
        """Destroy the task this request made for itself, once its handler is over.

        xapi_http.ml ``with_context`` runs a handler without ``task_id`` under
        ``Server_helpers.exec_with_new_task``, whose context is destroyed when the
        handler returns (``Context.destroy`` -> ``TaskHelper.destroy``), before the
        connection closes: its task-id answers HANDLE_INVALID afterwards.  A task the
        caller gave (``task_id``) is a forwarded task, never destroyed here.
        """
        own, self._own_task = getattr(self, "_own_task", None), None
        if own and self.pool.store.exists("task", own):
            self.pool.store.destroy("task", own)

    def _logout_own_session(self) -> None:
        # with_context logs in on a Basic-auth client's behalf and logs that session out
        # when the handler is over (``must_logout``): it must not pile up in the session table
        own, self._own_session = getattr(self, "_own_session", None), None
        if own:
            self.pool.logout(own)

    def _begin(self, label: str, handler: str):
        """(query, task) after auth; None when a reply was already sent."""
        query = self._query()
        given = self._param(query, "task_id")
        task_ref = given if self.pool.store.exists("task", given) else None
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

    def _redirect(self, host_ref: str):
        # xapi checks the SRs under a throw-away task (export.ml/import.ml "we don't
        # want to complete the task in the forwarding case"): a task_id given by the
        # client stays pending for the target host; one made here must not linger.
        self._drop_own_task()
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
