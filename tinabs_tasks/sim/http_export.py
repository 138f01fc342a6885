"""The simulated host's download routes: ``GET /export`` (a VM's XVA, streamed), ``/export_metadata``
and ``/pool/xmldbdump`` (the pool database).

Mixed into ``http_host.HostHandler``; the socket writer applies the host's
bandwidth cap, a drop fault and optional compression (gzip, zstd).
"""
from __future__ import annotations

import gzip

from tinabs_tasks.sim.datamodel import NULL_REF
from tinabs_tasks.sim.errors import XapiError
from tinabs_tasks.sim.dbdump import database_xml
from tinabs_tasks.sim.exporter import ConnectionDropped, metadata_tar, metadata_vms, stream_xva
from tinabs_tasks.sim.http_base import HandlerBase, abort
from tinabs_tasks.sim.ops.vm_lifecycle import add_operation, assert_operation_valid, remove_operation


class ExportRoutes(HandlerBase):
    """``GET /export``, ``/export_metadata`` and ``/pool/xmldbdump``, for ``http_host.HostHandler``."""

    # -- /export --------------------------------------------------------------
    def _export(self):
        begun = self._begin("VM.export", "/export")
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
            assert_operation_valid(_Ctx(self.pool), vm, "export")  # export, clone, copy may run together
            srs = {store.get("VDI", store.get("VBD", b, "VDI"), "SR") for b in rec["VBDs"]
                   if store.get("VBD", b, "VDI") != NULL_REF}
            other = self._redirect_host(srs)
            if other is not None:
                return self._redirect(other)
            fault = self._fault("/export", task, vm_names)
        except XapiError as exc:
            return self._fail(500 if exc.code != "HANDLE_INVALID" and exc.code != "UUID_INVALID" else 404, task, exc)
        add_operation(_Ctx(self.pool), vm, task, "export")
        try:
            self._stream_export(vm, task, query, fault)
        finally:
            remove_operation(_Ctx(self.pool), vm, task)

    def _stream_export(self, vm: str, task: str, query, fault):
        self.close_connection = True
        # export.ml handler: Http.http_200_ok ~keep_alive:false ~version:"1.0" (), the task id,
        # the content type and disposition; no Content-Length (the stream ends at close)
        self.wfile.write(b"HTTP/1.0 200 OK\r\nConnection: close\r\nCache-Control: no-cache, no-store\r\n"
                         b"task-id: " + task.encode() + b"\r\ncontent-type: application/octet-stream\r\n"
                         b'Content-Disposition: attachment; filename="export.xva"\r\n\r\n')
        out = _Output(self, self.pool.hosts[self.host_ref].throttle,
                      fault.drop_after_bytes if fault else None, query.get("use_compression", ""))
        try:
            stream_xva(self.pool, vm, out.write, task=task)
            out.finish()
        except ConnectionDropped:
            self.pool.tasks.fail(task, XapiError("CLIENT_ERROR", "connection closed during export"))
            abort(self.connection)
            return
        except XapiError as exc:
            self.pool.tasks.fail(task, exc)
            abort(self.connection)
            return
        self.pool.tasks.succeed(task, "")

    # -- /export_metadata -----------------------------------------------------
    def _export_metadata(self):
        begun = self._begin("VM.export_metadata", "/export_metadata")
        if begun is None:
            return
        query, task = begun
        store = self.pool.store
        try:
            # export.ml metadata_handler: all=true takes every VM but the default templates
            # (dom0 unless include_dom0=false), else the one VM of ref= or uuid=
            if _flag(query, "all", False):
                vms = metadata_vms(store, include_dom0=_flag(query, "include_dom0", True))
            else:
                vms = [self._vm_of(query)]
            names = {name for vm in vms
                     for name in (vm, store.get("VM", vm, "uuid"), store.get("VM", vm, "name_label"))}
            fault = self._fault("/export_metadata", task, names)
            excluded = {x.strip() for x in query.get("excluded_device_types", "").split(",") if x.strip()}
            body = metadata_tar(self.pool, vms, snapshots=_flag(query, "export_snapshots", True), excluded=excluded)
        except XapiError as exc:
            return self._fail(500 if exc.code not in ("HANDLE_INVALID", "UUID_INVALID") else 404, task, exc)
        limit = fault.drop_after_bytes if fault else None
        headers = [("task-id", task), ("Content-Disposition", 'attachment; filename="export.xva"')]
        if limit is not None and limit < len(body):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            for key, value in headers:
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body[:limit])
            self.pool.tasks.fail(task, XapiError("CLIENT_ERROR", "connection closed during export"))
            abort(self.connection)
            self.close_connection = True
            return
        self.pool.hosts[self.host_ref].throttle.consume(len(body))
        self._reply(200, body, ctype="application/octet-stream", headers=headers, close=True)
        self.pool.count_bytes("exported_bytes", len(body))  # bytes the pool sent, as /export counts them
        self.pool.tasks.succeed(task, "")

    # -- /pool/xmldbdump -------------------------------------------------------
    def _xmldbdump(self):
        """pool_db_backup.ml ``pull_database_backup_handler``: the database as Db_xml writes it.

        Under ``with_context "Dumping database as XML"`` (credentials as for any handler);
        ``Http.http_200_ok ~keep_alive:false ()`` with no Content-Length and no task-id,
        then the XML until the connection closes.
        """
        if self._begin("Dumping database as XML", "/pool/xmldbdump") is None:
            return
        body = database_xml(self.pool.store)
        self.close_connection = True
        self.wfile.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nCache-Control: no-cache, no-store\r\n\r\n")
        self.pool.hosts[self.host_ref].throttle.consume(len(body))
        self.wfile.write(body)


def _flag(query, key: str, default: bool) -> bool:
    """A boolean query parameter as export.ml reads it (OCaml ``bool_of_string``)."""
    value = query.get(key)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise XapiError("INTERNAL_ERROR", 'Invalid_argument("bool_of_string")')
    return value == "true"


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
        self.handler.pool.count_bytes("exported_bytes", len(data))


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
