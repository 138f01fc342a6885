"""What a host serves over HTTP: XML-RPC at ``POST /`` and the import/export handlers.

Handler rules (FACTS.md §5): credentials from the ``session_id`` cookie or
query, or HTTP Basic auth (a session made on the client's behalf); a bad one
gets 401 and fails the task with ``SESSION_AUTHENTICATION_FAILED []``;
``task_id`` attaches the work to a task made with ``task.create``; replies
carry a ``task-id`` header; a host that cannot see the storage redirects
(302) to one that can.
"""
from __future__ import annotations

import base64
import gzip
import logging
import socket
import urllib.parse
from http.server import BaseHTTPRequestHandler

from tinabs_tasks.sim import dispatch
from tinabs_tasks.sim.datamodel import NULL_REF
from tinabs_tasks.sim.errors import XapiError
from tinabs_tasks.sim.exporter import ConnectionDropped, metadata_tar, stream_xva
from tinabs_tasks.sim.faults import raise_if_error
from tinabs_tasks.sim.importer import Import
from tinabs_tasks.sim.ops.vm import assert_not_busy
from tinabs_tasks.sim.xva import TarReader

log = logging.getLogger("tinabs.sim.http")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class HostHandler(BaseHTTPRequestHandler):
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

    # -- XML-RPC --------------------------------------------------------------
    def do_POST(self):
        if self._route() not in ("/", "/RPC2", "/xmlrpc"):
            return self._reply(404, b"not found\n", close=True)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self._reply(200, dispatch.handle(self.pool, self.host_ref, body), ctype="text/xml")

    # -- routes ---------------------------------------------------------------
    def do_GET(self):
        route = self._route()
        if route == "/export":
            return self._export()
        if route == "/export_metadata":
            return self._export_metadata()
        self._reply(404, b"not found\n", close=True)

    def do_PUT(self):
        route = self._route()
        if route in ("/import", "/import_metadata"):
            return self._import(metadata=route == "/import_metadata")
        self._reply(404, b"not found\n", close=True)

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

    # -- /export --------------------------------------------------------------
    def _export(self):
        begun = self._begin("Export of VM", "/export")
        if begun is None:
            return
        query, task = begun
        store = self.pool.store
        try:
            vm = self._vm_of(query)
            rec = store.record("VM", vm)
            vm_names = (vm, rec["uuid"], rec["name_label"])
            if rec["is_control_domain"]:
                raise XapiError("OPERATION_NOT_ALLOWED", "cannot export the control domain")
            if rec["power_state"] not in ("Halted", "Suspended"):
                raise XapiError("VM_BAD_POWER_STATE", vm, "halted, suspended", rec["power_state"].lower())
            assert_not_busy(_Ctx(self.pool), vm)
            srs = {store.get("VDI", store.get("VBD", b, "VDI"), "SR") for b in rec["VBDs"]
                   if store.get("VBD", b, "VDI") != NULL_REF}
            other = self._redirect_host(srs)
            if other is not None:
                return self._redirect(other, task, query)
            fault = self._fault("/export", task, vm_names)
        except XapiError as exc:
            return self._fail(500 if exc.code != "HANDLE_INVALID" and exc.code != "UUID_INVALID" else 404, task, exc)
        store.set("VM", vm, "current_operations", {task: "export"})
        try:
            self._stream_export(vm, task, query, fault)
        finally:
            if store.exists("VM", vm):
                store.set("VM", vm, "current_operations", {})

    def _stream_export(self, vm: str, task: str, query, fault):
        self.close_connection = True
        self.wfile.write(b"HTTP/1.0 200 OK\r\nConnection: close\r\ncontent-type: application/octet-stream\r\n"
                         b'Content-Disposition: attachment; filename="export.xva"\r\n'
                         b"task-id: " + task.encode() + b"\r\n\r\n")
        out = _Output(self, self.pool.hosts[self.host_ref].throttle,
                      fault.drop_after_bytes if fault else None, query.get("use_compression", ""))
        try:
            stream_xva(self.pool, vm, out.write, task=task)
            out.finish()
        except ConnectionDropped:
            self.pool.tasks.fail(task, XapiError("CLIENT_ERROR", "connection closed during export"))
            _abort(self.connection)
            return
        except XapiError as exc:
            self.pool.tasks.fail(task, exc)
            _abort(self.connection)
            return
        self.pool.tasks.succeed(task, "")

    # -- /export_metadata -----------------------------------------------------
    def _export_metadata(self):
        begun = self._begin("Export of VM metadata", "/export_metadata")
        if begun is None:
            return
        query, task = begun
        try:
            vm = self._vm_of(query)
            rec = self.pool.store.record("VM", vm)
            fault = self._fault("/export_metadata", task, (vm, rec["uuid"], rec["name_label"]))
            excluded = {x.strip() for x in query.get("excluded_device_types", "").split(",") if x.strip()}
            body = metadata_tar(self.pool, vm, snapshots=query.get("export_snapshots", "true") != "false",
                                excluded=excluded)
        except XapiError as exc:
            return self._fail(500 if exc.code not in ("HANDLE_INVALID", "UUID_INVALID") else 404, task, exc)
        limit = fault.drop_after_bytes if fault else None
        headers = [("task-id", task), ("Content-Disposition", 'attachment; filename="metadata.xva"')]
        if limit is not None and limit < len(body):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            for key, value in headers:
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body[:limit])
            self.pool.tasks.fail(task, XapiError("CLIENT_ERROR", "connection closed during export"))
            _abort(self.connection)
            self.close_connection = True
            return
        self.pool.hosts[self.host_ref].throttle.consume(len(body))
        self._reply(200, body, ctype="application/octet-stream", headers=headers, close=True)
        self.pool.tasks.succeed(task, "")

    # -- /import and /import_metadata -----------------------------------------
    def _import(self, metadata: bool):
        handler = "/import_metadata" if metadata else "/import"
        begun = self._begin("VM import", handler)
        if begun is None:
            return
        query, task = begun
        if "Transfer-Encoding" in self.headers:
            return self._fail(403, task, XapiError("IMPORT_ERROR_CANNOT_HANDLE_CHUNKED"))
        try:
            sr = self._import_sr(query)
            if self.pool.store.get("SR", sr, "content_type") == "iso":
                return self._fail(400, task, XapiError("SR_OPERATION_NOT_SUPPORTED", sr))
            other = self._redirect_host({sr})
            if other is not None:
                return self._redirect(other, task, query)
            fault = self._fault(handler, task)
        except XapiError as exc:
            return self._fail(500, task, exc)
        # xapi answers 200 with the task id *before* reading the body; the
        # outcome is on the task.
        self.close_connection = True
        self.send_response(200)
        self.send_header("task-id", task)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        self._run_import(query, task, sr, fault, metadata)

    def _import_sr(self, query) -> str:
        store = self.pool.store
        if query.get("sr_id"):
            if not store.exists("SR", query["sr_id"]):
                raise XapiError("HANDLE_INVALID", "SR", query["sr_id"])
            return query["sr_id"]
        if query.get("sr_uuid"):
            return store.by_uuid("SR", query["sr_uuid"])
        pool_ref = store.refs("pool")[0]
        default = store.get("pool", pool_ref, "default_SR")
        if not store.exists("SR", default):
            raise XapiError("DEFAULT_SR_NOT_FOUND", default)
        return default

    def _run_import(self, query, task, sr, fault, metadata: bool):
        length = self.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        body = _Input(self.rfile, total, fault.drop_after_bytes if fault else None, self.connection)
        job = Import(self.pool, sr, restore=query.get("restore") == "true", force=query.get("force") == "true",
                     task=task)
        try:
            reader = TarReader(_decompressing(body).read)
            if metadata:
                vdi_map = {k[4:]: v for k, v in query.items() if k.startswith("vdi:")}
                vms = job.run_metadata(reader, vdi_map, query.get("dry_run") == "true")
            else:
                vms = job.run_xva(reader, total)
        except XapiError as exc:
            self.pool.tasks.fail(task, exc)
            return
        except Exception as exc:  # corrupt compression, socket errors: the task must still end
            self.pool.tasks.fail(task, XapiError("IMPORT_ERROR", f"{type(exc).__name__}: {exc}"))
            return
        self.pool.tasks.succeed(task, vms)


class _Ctx:
    def __init__(self, pool):
        self.pool, self.store = pool, pool.store


class _Output:
    """Socket writer with the host's bandwidth cap, a drop fault and optional compression."""

    def __init__(self, handler, throttle, drop_after: int | None, compression: str):
        self.handler, self.throttle, self.drop_after = handler, throttle, drop_after
        self.sent = 0
        self.compressor = None
        if compression in ("true", "gzip"):
            self.compressor = _GzipSink(self._raw)
        elif compression == "zstd":
            import zstandard
            self.compressor = zstandard.ZstdCompressor(level=1).stream_writer(_Sink(self._raw), closefd=False)

    def write(self, data: bytes) -> int:
        if self.compressor is not None:
            self.compressor.write(data)
        else:
            self._raw(data)
        return len(data)

    def finish(self) -> None:
        if self.compressor is not None:
            self.compressor.close()

    def _raw(self, data: bytes) -> None:
        if not data:
            return
        if self.drop_after is not None and self.sent + len(data) > self.drop_after:
            self._send(data[: self.drop_after - self.sent])
            raise ConnectionDropped()
        self._send(data)

    def _send(self, data: bytes) -> None:
        try:
            self.handler.wfile.write(data)
        except OSError:
            raise ConnectionDropped() from None
        self.sent += len(data)
        self.throttle.consume(len(data))


class _Sink:
    def __init__(self, write):
        self.write_fn = write

    def write(self, data):
        self.write_fn(bytes(data))
        return len(data)

    def flush(self):
        pass


class _GzipSink:
    def __init__(self, write):
        self._gz = gzip.GzipFile(fileobj=_Sink(write), mode="wb", compresslevel=1, mtime=0)

    def write(self, data):
        self._gz.write(data)

    def close(self):
        self._gz.close()


class _Input:
    """The request body: bounded by Content-Length (if any), with an optional drop fault."""

    def __init__(self, rfile, length: int | None, drop_after: int | None, conn):
        self.rfile, self.left, self.drop_after, self.conn = rfile, length, drop_after, conn
        self.received = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 20
        if self.left is not None:
            n = min(n, self.left)
        if self.drop_after is not None:
            n = min(n, self.drop_after - self.received)
            if n <= 0:
                _abort(self.conn)
                raise EOFError
        if n == 0:
            return b""
        data = self.rfile.read1(n) if hasattr(self.rfile, "read1") else self.rfile.read(n)
        self.received += len(data)
        if self.left is not None:
            self.left -= len(data)
        return data


class _Peek:
    def __init__(self, inner, head: bytes):
        self.inner, self.head = inner, head

    def read(self, n: int = -1) -> bytes:
        if self.head:
            out, self.head = self.head[:n] if n > 0 else self.head, self.head[n:] if n > 0 else b""
            return out
        return self.inner.read(n)


def _decompressing(body: _Input):
    head = b""
    while len(head) < 4:
        piece = body.read(4 - len(head))
        if not piece:
            break
        head += piece
    stream = _Peek(body, head)
    if head.startswith(ZSTD_MAGIC):
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=stream, mode="rb")
    return stream


def _abort(conn) -> None:
    """Cut the connection the way a failing network does (RST, not a clean FIN)."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
