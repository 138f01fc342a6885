"""`tinabs metrics [--listen HOST:PORT]`: serve tinabs' own figures to Prometheus.

Reads what the workers count in Redis (tinabs_tasks/metrics.py) at every scrape and answers
`GET /metrics` in the Prometheus text format.  It has no authentication of its own: it listens
on loopback unless told otherwise, and says so when it is not.  A scrape while Redis cannot be
read answers 503 (Prometheus records the target as down), never stale figures.
"""
from __future__ import annotations

import ipaddress
import socket
import sys

import redis

from tinabs_tasks.runs import metrics as figures
from tinabs_tasks.cli.common import UserError, job_store, load_config

DEFAULT_LISTEN = "127.0.0.1:9817"
VM_LABELS = ["pool", "vm", "vm_uuid"]
#: the classic text format, which every Prometheus reads (tinabs' names need no UTF-8 escaping)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def add_arguments(parser) -> None:
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                        help=f"address to serve /metrics on (default {DEFAULT_LISTEN}; port 0: any free port)")


def parse_listen(text: str) -> tuple[str, int]:
    """`127.0.0.1:9817`, `[::1]:9817`, `0.0.0.0:9817` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UserError(f"--listen {text!r}: give HOST:PORT, e.g. {DEFAULT_LISTEN} or [::1]:9817")
    return host, int(port)


class TinabsCollector:
    """The figures, read from Redis at each scrape."""

    def __init__(self, r):
        self.r = r

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        pools = figures.read(self.r)
        backups = CounterMetricFamily("tinabs_backups", "VM backups that ended, per pool and result",
                                      labels=["pool", "result"])
        exported = CounterMetricFamily("tinabs_bytes_exported", "Bytes of complete backups: files written to "
                                       "the destination, XVA streams stored in the repository", labels=["pool"])
        stored = CounterMetricFamily("tinabs_repository_bytes_stored", "Bytes repository backups added to the "
                                     "repository (new blocks and indexes, after deduplication)", labels=["pool"])
        last_success = GaugeMetricFamily("tinabs_last_success_timestamp_seconds",
                                         "When the VM's last successful backup ended (Unix time)", labels=VM_LABELS)
        last_ok = GaugeMetricFamily("tinabs_last_run_succeeded", "1 if the VM's last backup run succeeded, "
                                    "0 if it failed", labels=VM_LABELS)
        last_bytes = GaugeMetricFamily("tinabs_last_backup_bytes", "Size of the VM's last successful backup",
                                       labels=VM_LABELS)
        last_seconds = GaugeMetricFamily("tinabs_last_backup_duration_seconds", "Time the VM's last "
                                         "successful backup spent in its stages", labels=VM_LABELS)
        last_stored = GaugeMetricFamily("tinabs_last_backup_stored_bytes", "Bytes the VM's last successful "
                                        "backup added to the repository (repo mode only)", labels=VM_LABELS)
        last_incremental = GaugeMetricFamily("tinabs_last_backup_incremental", "1 if the VM's last successful "
                                             "backup was incremental, 0 if full (repo and sr-copy modes only)",
                                             labels=VM_LABELS)
        for pool in pools:
            backups.add_metric([pool.name, "succeeded"], pool.succeeded)
            backups.add_metric([pool.name, "failed"], pool.failed)
            exported.add_metric([pool.name], pool.bytes_exported)
            stored.add_metric([pool.name], pool.bytes_stored)
            for vm in pool.vms:
                labels = [pool.name, vm.name, vm.uuid]
                last_ok.add_metric(labels, 1 if vm.last_result == "succeeded" else 0)
                if vm.last_success is not None:
                    last_success.add_metric(labels, vm.last_success)
                    last_bytes.add_metric(labels, vm.last_size)
                    last_seconds.add_metric(labels, vm.last_seconds)
                    if vm.last_stored is not None:
                        last_stored.add_metric(labels, vm.last_stored)
                    if vm.last_kind is not None:
                        last_incremental.add_metric(labels, 1 if vm.last_kind == "incremental" else 0)
        return [backups, exported, stored, last_success, last_ok, last_bytes, last_seconds, last_stored,
                last_incremental]


def wsgi_app(registry):
    from prometheus_client import generate_latest

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            try:
                body = generate_latest(registry)
            except redis.RedisError as exc:
                print(f"tinabs metrics: cannot read Redis: {exc}", file=sys.stderr, flush=True)
                return _text(start_response, "503 Service Unavailable", f"cannot read Redis: {exc}\n")
            start_response("200 OK", [("Content-Type", CONTENT_TYPE)])
            return [body]
        if path == "/":
            return _text(start_response, "200 OK", "tinabs metrics: see /metrics\n")
        return _text(start_response, "404 Not Found", "not found: try /metrics\n")
    return app


def _text(start_response, status: str, text: str) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [text.encode()]


def serve(host: str, port: int, registry):
    """A threading WSGI server on (host, port); imported here, not by every `tinabs` command."""
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format, *args):  # one line per scrape is noise
            pass

    try:
        return make_server(host, port, wsgi_app(registry), server_class=Server, handler_class=QuietHandler)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(args) -> int:
    host, port = parse_listen(args.listen)
    store = job_store(load_config(args))  # a clear error now if the broker cannot be reached
    from prometheus_client import CollectorRegistry
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TinabsCollector(store.r))
    server = serve(host, port, registry)
    shown = f"[{host}]" if ":" in host else host
    if not _loopback(host):
        print(f"tinabs metrics: warning: listening on {shown} without authentication: anyone who reaches it "
              "can read pool and VM names; allow only Prometheus there (firewall, or a TLS proxy with auth)",
              file=sys.stderr, flush=True)
    print(f"tinabs metrics: serving http://{shown}:{server.server_port}/metrics", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
