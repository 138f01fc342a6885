"""The simulated host's disk routes: ``GET /export_raw_vdi`` and ``PUT /import_raw_vdi``.

Mixed into ``http_host.HostHandler``.  As ocaml/xapi/export_raw_vdi.ml and
import_raw_vdi.ml (FACTS.md §5, §10):

* ``vdi`` is a ref or else a uuid (importexport.ml ``vdi_of_req``): a bad one is
  ``UUID_INVALID`` raised before the handler's context exists, so HTTP 500
  (http_svr.ml's catch-all) and a caller's ``task_id`` is left alone; so is a
  missing ``vdi`` on export ("Missing vdi query parameter").
* A host that cannot see the VDI's SR redirects (302) to one that can.
* ``format`` = raw (default) | vhd | tar, case-insensitive; anything else,
  qcow2 included (the simulated xapi predates XCP-ng's qcow2 support), is
  404 (HTTP/1.0) with the task failed ``INTERNAL_ERROR ["Unknown format x"]``.
* Export answers ``HTTP/1.1 200 OK``, Connection: close, no Content-Length,
  content-type raw ``application/octet-stream`` | vhd ``application/vhd`` |
  tar ``application/x-tar``, ``content-disposition: attachment;
  filename="<vdi uuid>.<format>"``; *then* it checks, so a VHD over 2040 GiB
  (``VDI_TOO_LARGE [vdi, max]``), a bad ``base`` or a base on storage that is
  not VHD fail the task after the 200 head, and the body is http_svr.ml's 500
  page (a client that trusts the 200 saves that page as the disk).  ``base``
  (ref or uuid) makes vhd and raw differential (``--relative-to``); tar
  ignores it.
* Import: ``Transfer-Encoding`` is 404 + ``INTERNAL_ERROR ["Cannot handle
  encoding: x"]``, the ``chunked`` flag with a non-raw format 404 + "Cannot
  handle chunked VHD"; no ``vdi`` but ``sr_id``/``sr_uuid``, raw and a
  Content-Length creates "Imported VDI" of that size; vhd without a vdi is 400
  "Importing a VHD directly into an SR not yet supported", anything else
  without one 400 "Not enough info supplied to import", neither vdi nor SR
  400 + ``VDI_MISSING []``.  Then an early 200 (before the body is read) and
  the task's result is the VDI ref.

Bytes stream a chunk at a time through the host's bandwidth throttle, with
progress and cancellation on the task; the pool counts the bytes exported and
imported (``GET /sim/stats``).
"""
from __future__ import annotations

import html

from tinabs_tasks.sim import disk_transfer as dt
from tinabs_tasks.sim import vhd
from tinabs_tasks.sim.errors import XapiError
from tinabs_tasks.sim.http_base import HandlerBase, abort
from tinabs_tasks.sim.http_import import RequestBody
from tinabs_tasks.sim.ops import Ctx
from tinabs_tasks.sim.ops import storage
from tinabs_tasks.sim.tasks import TaskCancelled

CONTENT_TYPES = {"raw": "application/octet-stream", "vhd": "application/vhd", "tar": "application/x-tar"}


class _ClientGone(Exception):
    """The client closed the connection while the disk was streaming."""


class RawVdiRoutes(HandlerBase):
    """``GET /export_raw_vdi`` and ``PUT /import_raw_vdi``, for ``http_host.HostHandler``."""

    # -- shared ---------------------------------------------------------------
    def _vdi_of(self, value: str) -> str:
        """importexport.ml ``vdi_of_req``: a ref that exists, or else a uuid."""
        if self.pool.store.exists("VDI", value):
            return value
        return self.pool.store.by_uuid("VDI", value)

    def _escaped(self, exc: XapiError):
        """An exception out of the handler before its context: http_svr.ml answers 500."""
        self.close_connection = True
        self.wfile.write(_internal_error_response(exc))

    def _not_found(self, task: str, error: XapiError):
        """``Http.http_404_missing ~version:"1.0"`` after failing the task."""
        self.pool.tasks.fail(task, error)
        self.close_connection = True
        self.wfile.write(b"HTTP/1.0 404 Not Found\r\nConnection: close\r\nCache-Control: no-cache, no-store\r\n\r\n")

    def _format(self, query) -> str:
        return (self._param(query, "format") or "raw").lower()

    # -- /export_raw_vdi ------------------------------------------------------
    def _export_raw_vdi(self):
        begun = self._begin("Exporting raw VDI", "/export_raw_vdi")
        if begun is None:
            return
        query, task = begun
        try:
            if not self._param(query, "vdi"):
                raise XapiError("INTERNAL_ERROR", "Missing vdi query parameter")
            vdi = self._vdi_of(self._param(query, "vdi"))
        except XapiError as exc:
            return self._escaped(exc)
        other = self._redirect_host({self.pool.store.get("VDI", vdi, "SR")})
        if other is not None:
            return self._redirect(other)
        fmt = self._format(query)
        if fmt not in CONTENT_TYPES:
            return self._not_found(task, XapiError("INTERNAL_ERROR", f"Unknown format {fmt}"))
        uuid = self.pool.store.get("VDI", vdi, "uuid")
        self.close_connection = True
        self.wfile.write(f"HTTP/1.1 200 OK\r\nConnection: close\r\nCache-Control: no-cache, no-store\r\n"
                         f"task-id: {task}\r\ncontent-type: {CONTENT_TYPES[fmt]}\r\n"
                         f'content-disposition: attachment; filename="{uuid}.{fmt}"\r\n\r\n'.encode())
        try:
            fault = self._fault("/export_raw_vdi", task, (vdi, uuid))
            pieces, total = self._export_body(vdi, fmt, query)
        except XapiError as exc:
            # raised after the 200 head: http_svr.ml still writes its 500 page, so the body a
            # client saves is that page; the task says what went wrong
            self.pool.tasks.fail(task, exc)
            self.wfile.write(_internal_error_response(exc))
            return
        try:
            self._send(pieces, total, task, fault.drop_after_bytes if fault else None)
        except _ClientGone:
            self.pool.tasks.fail(task, dt.io_error())
            abort(self.connection)
        except XapiError as exc:
            self.pool.tasks.fail(task, exc)
            abort(self.connection)
        else:
            self.pool.tasks.succeed(task, "")

    def _export_body(self, vdi: str, fmt: str, query):
        """(pieces, expected bytes) of the body; raises the errors xapi raises after its 200."""
        store, content = self.pool.store, self.pool.content(vdi)
        if fmt == "tar":
            return dt.tar_pieces(content, self.pool.settings.export_keepalive_s), content.nonzero_bytes() or 1
        if fmt == "vhd" and store.get("VDI", vdi, "virtual_size") > vhd.MAX_VHD_SIZE:
            raise XapiError("VDI_TOO_LARGE", vdi, vhd.MAX_VHD_SIZE)
        base_vdi = self._vdi_of(self._param(query, "base")) if self._param(query, "base") else None
        base = None
        if base_vdi is not None:  # vhd_tool_wrapper.ml send: both must be VHDs
            if not dt.is_vhd_backed(self.pool, vdi):
                raise XapiError("INTERNAL_ERROR", "Cannot compute differences on non-VHD images")
            if not dt.is_vhd_backed(self.pool, base_vdi):
                raise XapiError("INTERNAL_ERROR", "Vhd_tool_wrapper.send: base VDI is not a vhd; "
                                "cannot compute differences: not a tapdisk vhd device")
            base = self.pool.content(base_vdi)
        if fmt == "raw":
            blocks = None if base is None else set(dt.vhd_blocks(content, base))
            return dt.raw_pieces(content, blocks), content.size or 1
        blocks = dt.vhd_blocks(content, base)
        parent = dt.vhd_parent(self.pool, base_vdi) if base_vdi else None
        return dt.vhd_pieces(content, blocks, parent), vhd.image_length(content.size, len(blocks))

    def _send(self, pieces, total: int, task: str, drop_after: int | None):
        throttle = self.pool.hosts[self.host_ref].throttle
        sent = 0
        for piece in pieces:
            self.pool.tasks.check_cancel(task)
            if drop_after is not None and sent + len(piece) > drop_after:
                piece = piece[: max(0, drop_after - sent)]
                self._write_body(piece, throttle)
                raise _ClientGone()
            self._write_body(piece, throttle)
            sent += len(piece)
            self.pool.tasks.progress(task, min(0.99, sent / total))

    def _write_body(self, piece: bytes, throttle) -> None:
        view = memoryview(piece)
        for start in range(0, len(piece), 1 << 18):  # the throttle paces quarter-MiB writes
            part = view[start: start + (1 << 18)]
            try:
                self.wfile.write(part)
            except OSError:
                raise _ClientGone() from None
            self.pool.count_bytes("exported_bytes", len(part))
            throttle.consume(len(part))

    # -- /import_raw_vdi ------------------------------------------------------
    def _import_raw_vdi(self):
        begun = self._begin("Importing raw VDI", "/import_raw_vdi")
        if begun is None:
            return
        query, task = begun
        callers = task if task != getattr(self, "_own_task", None) else None
        try:
            vdi = self._vdi_of(self._param(query, "vdi")) if self._param(query, "vdi") else None
        except XapiError as exc:
            return self._escaped(exc)
        try:  # import_raw_vdi.ml ``import``: failures here fail a caller's task, 400
            sr = self.pool.store.get("VDI", vdi, "SR") if vdi else self._sr_of(query)
            if sr is None:
                raise XapiError("VDI_MISSING")
            other = self._redirect_host({sr})
        except XapiError as exc:
            return self._fail(400, callers, exc)
        if other is not None:
            return self._redirect(other)
        self._import_here(query, task, vdi, sr)

    def _sr_of(self, query) -> str | None:
        """importexport.ml ``sr_of_req``: ``sr_id`` (a ref, unchecked until used) or ``sr_uuid``."""
        if self._param(query, "sr_id"):
            ref = self._param(query, "sr_id")
            if not self.pool.store.exists("SR", ref):
                raise XapiError("HANDLE_INVALID", "SR", ref)
            return ref
        if self._param(query, "sr_uuid"):
            return self.pool.store.by_uuid("SR", self._param(query, "sr_uuid"))
        return None

    def _import_here(self, query, task: str, vdi: str | None, sr: str):
        """import_raw_vdi.ml ``localhost_handler``: under the request's task."""
        fmt = self._format(query)
        if fmt not in CONTENT_TYPES:
            return self._not_found(task, XapiError("INTERNAL_ERROR", f"Unknown format {fmt}"))
        chunked = self._param(query, "chunked") is not None or "chunked" in query
        if fmt != "raw" and chunked:
            return self._not_found(task, XapiError("INTERNAL_ERROR", "Cannot handle chunked VHD"))
        if "Transfer-Encoding" in self.headers:
            return self._not_found(task, XapiError(
                "INTERNAL_ERROR", f"Cannot handle encoding: {self.headers['Transfer-Encoding']}"))
        length = self.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        ctx = Ctx(self.pool, None, self.host_ref, task)
        if vdi is None:
            if fmt == "vhd":
                return self._fail(400, task, XapiError(
                    "INTERNAL_ERROR", "Importing a VHD directly into an SR not yet supported"))
            if fmt != "raw" or length is None:
                return self._fail(400, task, XapiError("INTERNAL_ERROR", "Not enough info supplied to import"))
            try:
                vdi = storage.vdi_create(ctx, {
                    "name_label": "Imported VDI", "name_description": "", "SR": sr, "virtual_size": str(length),
                    "type": "user", "sharable": False, "read_only": False, "other_config": {},
                    "xenstore_data": {}, "sm_config": {}, "tags": []})
            except XapiError as exc:
                return self._fail(500, task, exc)
        self._early_ok(task)
        try:
            if self.pool.store.get("VDI", vdi, "read_only"):
                raise XapiError("VDI_READONLY", vdi)  # the RW block-attach refuses it
            self._receive(fmt, chunked, vdi, task, length)
        except TaskCancelled as exc:
            self.pool.tasks.fail(task, exc)
            abort(self.connection)
        except XapiError as exc:
            self.pool.tasks.fail(task, exc)
        except OSError:
            self.pool.tasks.fail(task, dt.io_error())
        else:
            self.pool.tasks.succeed(task, vdi)
        finally:
            if self.pool.store.exists("VDI", vdi):
                storage.update_usage(ctx, vdi)

    def _receive(self, fmt: str, chunked: bool, vdi: str, task: str, length: int | None):
        body = RequestBody(self.rfile, length, None, self.connection)
        writer = dt.DiskWriter(self.pool, vdi, lambda: self._received(task, body, length))
        try:
            if chunked:
                dt.receive_chunked(body.read, writer)
            elif fmt == "raw":
                dt.receive_raw(body.read, writer, length)
            elif fmt == "vhd":
                dt.receive_vhd(body.read, writer)
            else:
                dt.receive_tar(body.read, writer)
        finally:
            self.pool.count_bytes("imported_bytes", writer.written)

    def _received(self, task: str, body: RequestBody, length: int | None) -> None:
        self.pool.tasks.check_cancel(task)
        if length:
            self.pool.tasks.progress(task, min(0.99, body.received / length))


def _internal_error_response(exc: XapiError) -> bytes:
    """http_svr.ml ``response_internal_error``: its page, the exception as ``Generic_error``
    (xapi_http.ml ``add_handler``: ExnHelper.string_of_exn, "CODE: [ p1; p2 ]") in it."""
    extra = f"{exc.code}: [ {'; '.join(exc.params)} ]"
    if exc.code == "INTERNAL_ERROR":  # a failwith: Printexc.to_string, HTML-escaped
        extra = html.escape(f'Failure("{exc.params[0]}")')
    body = ("<html><body><h1>HTTP 500 internal server error</h1>An unexpected error occurred; please wait a "
            "while and try again. If the problem persists, please contact your support representative."
            f"<h1> Additional information </h1>{extra}</body></html>").encode()
    return (b"HTTP/1.1 500 Internal Error\r\nConnection: close\r\nCache-Control: no-cache, no-store\r\n"
            b"content-length: %d\r\ncontent-type: text/html\r\n\r\n" % len(body)) + body
