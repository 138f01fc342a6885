"""What a host serves over HTTP: XML-RPC at ``POST /`` and the import/export handlers.

Handler rules (FACTS.md §5): credentials from the ``session_id`` cookie or
query, or HTTP Basic auth (a session made on the client's behalf); a bad one
gets 401 and fails the task with ``SESSION_AUTHENTICATION_FAILED []``;
``task_id`` attaches the work to a task made with ``task.create``; replies
carry a ``task-id`` header; a host that cannot see the storage redirects
(302) to one that can.
"""
from __future__ import annotations

from tinabs_tasks.sim import dispatch
from tinabs_tasks.sim.http_export import ExportRoutes
from tinabs_tasks.sim.http_import import ImportRoutes
from tinabs_tasks.sim.http_rawvdi import RawVdiRoutes


class HostHandler(ExportRoutes, ImportRoutes, RawVdiRoutes):
    """One connection to a simulated host: the routes, over ``http_base.HandlerBase``."""

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
        if route == "/export_raw_vdi":
            return self._export_raw_vdi()
        if route == "/pool/xmldbdump":
            return self._xmldbdump()
        self._reply(404, b"not found\n", close=True)

    def do_PUT(self):
        route = self._route()
        if route in ("/import", "/import_metadata"):
            return self._import(metadata=route == "/import_metadata")
        if route == "/import_raw_vdi":
            return self._import_raw_vdi()
        self._reply(404, b"not found\n", close=True)
