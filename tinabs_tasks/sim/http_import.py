"""The simulated host's upload routes: ``PUT /import`` (an XVA) and ``/import_metadata``.

Mixed into ``http_host.HostHandler``; the body is read as it comes
(bounded by Content-Length, with an optional drop fault), gzip or zstd
compressed or not, and handed to ``importer.Import``.
"""
from __future__ import annotations

import gzip

from tinabs_tasks.sim.errors import XapiError
from tinabs_tasks.sim.http_base import HandlerBase, abort
from tinabs_tasks.sim.importer import Import
from tinabs_tasks.sim.xva import TarReader

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class ImportRoutes(HandlerBase):
    """``PUT /import`` and ``/import_metadata``, for ``http_host.HostHandler``."""

    # -- /import and /import_metadata -----------------------------------------
    def _import(self, metadata: bool):
        handler = "/import_metadata" if metadata else "/import"
        begun = self._begin("VM.metadata_import" if metadata else "VM.import", handler)
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
                return self._redirect(other)
            fault = self._fault(handler, task)
        except XapiError as exc:
            return self._fail(500, task, exc)
        # xapi answers 200 with the task id *before* reading the body; the
        # outcome is on the task.
        self._early_ok(task)
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
        body = RequestBody(self.rfile, total, fault.drop_after_bytes if fault else None, self.connection)
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


class RequestBody:
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
                abort(self.conn)
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


def _decompressing(body: RequestBody):
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
