"""The simulator process: every host of every pool on its own loopback endpoint.

Each pool listens on one port; its master on 127.0.0.1 and its members on
127.0.<pool>.<host> (all of 127/8 is loopback on Linux), so ``host.address``
is a bare IP exactly like a real host's and a client that follows
``HOST_IS_SLAVE [address]`` keeps its scheme and port, as it would on 443.
``--pool-address`` moves the masters to addresses that other network
namespaces or containers reach (the control API stays on loopback).
"""
from __future__ import annotations

import errno
import fcntl
import sys
import shutil
import socket
import ssl
import struct
import tempfile
import termios
import threading
import time
from http.server import ThreadingHTTPServer

from tinabs_tasks.sim.control import ControlHandler, pool_state
from tinabs_tasks.sim.faults import FaultRegistry
from tinabs_tasks.sim.http_host import HostHandler
from tinabs_tasks.sim.inventory import populate
from tinabs_tasks.sim.pool import SimPool
from tinabs_tasks.sim.settings import SimSettings


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


class HostServer(_Server):
    def __init__(self, address, pool: SimPool, host_ref: str, tls: ssl.SSLContext | None = None):
        self.pool, self.host_ref = pool, host_ref
        self._open: set = set()  # accepted connections, so an outage can cut them too
        self._open_lock = threading.Lock()
        super().__init__(address, HostHandler)
        if tls is not None:
            # the handshake happens on the first read, in the request's own thread:
            # a slow or refusing client does not hold up accept()
            self.socket = tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def handle_error(self, request, client_address):
        # a client that refuses our certificate (or speaks plain http) is not a simulator bug
        if isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError)):
            return
        super().handle_error(request, client_address)

    def process_request(self, request, client_address):
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._open_lock:
            self._open.discard(request)
        _drain_before_reset(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        """What a rebooting host does to its clients: every open connection is reset."""
        with self._open_lock:
            cut, self._open = list(self._open), set()
        for sock in cut:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _drain_before_reset(sock, timeout: float = 10.0) -> None:
    """Let a cut connection (SO_LINGER 0: close sends RST) deliver what was written first.

    A drop fault promises the client exactly N bytes, but a RST makes the
    kernel discard whatever it has not sent yet, so wait for the send queue.
    """
    try:
        onoff, linger = struct.unpack("ii", sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))
        if not onoff or linger:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            unsent = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
            if unsent == 0:
                return
            time.sleep(0.005)
    except OSError:
        return


class ControlServer(_Server):
    def __init__(self, address, sim: "Simulator"):
        self.sim = sim
        super().__init__(address, ControlHandler)


class Simulator:
    def __init__(self, pools: int = 2, vms_per_pool: int = 8, hosts_per_pool: int = 2, seed: int = 1,
                 disk_mib: int = 64, port: int = 0, settings: SimSettings | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None,
                 pool_addresses: list[str] | None = None):
        if not (1 <= pools <= 250 and 1 <= hosts_per_pool <= 250 and vms_per_pool >= 0 and disk_mib >= 1):
            raise ValueError("need 1-250 pools, 1-250 hosts per pool, >= 0 VMs and a disk of >= 1 MiB")
        masters = master_addresses(pools, hosts_per_pool, pool_addresses)
        self.settings = settings or SimSettings()
        self.tls: ssl.SSLContext | None = None
        if tls_cert:  # every host endpoint over HTTPS; the control API stays plain http on loopback
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(tls_cert, tls_key)
        self.faults = FaultRegistry()
        self.scratch = tempfile.mkdtemp(prefix="tinabs-sim-")
        self.pools: dict[str, SimPool] = {}
        self._servers: list[_Server] = []
        self._pool_servers: dict[str, list[HostServer]] = {}
        self._outage_lock = threading.Lock()
        self._base_port = port
        latency, self.settings.latency_s = self.settings.latency_s, 0.0  # building the inventory is not a call
        for k in range(pools):
            name = f"pool-{chr(ord('a') + k)}" if k < 26 else f"pool-{k + 1}"
            pool = SimPool(name, "root", f"sim-{name}-{seed}", self.settings, self.faults, self.scratch)
            addresses = [masters[k]] + [f"127.0.{k + 1}.{j + 1}" for j in range(1, hosts_per_pool)]
            with pool.store.seeded_ids(f"tinabs-sim {seed}:{k}"):  # one seed, one inventory: uuids too
                populate(pool, k, hosts_per_pool, vms_per_pool, seed, disk_mib, addresses)
            if self.tls is not None:
                pool.scheme = "https"
            self.pools[name] = pool
        self.settings.latency_s = latency

    def start(self) -> dict:
        try:
            self.control = self._bind(ControlServer, ("127.0.0.1", self._base_port), self)
            for k, pool in enumerate(self.pools.values()):
                self._serve_pool(pool, self._base_port + k + 1 if self._base_port else 0)
        except BaseException:
            # nothing serves yet, so stop() (which waits for serve_forever) cannot clean up
            for server in self._servers:
                server.server_close()
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise
        for server in self._servers:
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        return self.ready_info()

    def _serve_pool(self, pool: SimPool, port: int) -> None:
        for _attempt in range(20):
            bound = [self._bind(HostServer, (pool.master.address, port), pool, pool.master_ref, self.tls)]
            chosen = bound[0].server_address[1]
            try:
                for ref, host in pool.hosts.items():
                    if ref != pool.master_ref:
                        bound.append(self._bind(HostServer, (host.address, chosen), pool, ref, self.tls))
            except OSError as exc:
                for server in bound:
                    server.server_close()
                if port or exc.errno != errno.EADDRINUSE:
                    raise
                continue
            for host in pool.hosts.values():
                host.port = chosen
            self._servers.extend(bound)
            self._pool_servers[pool.name] = bound
            return
        raise OSError(f"no free port for pool {pool.name}")

    def _bind(self, cls, address, *args):
        try:
            server = cls(address, *args)
        except OSError as exc:  # say which address; keep errno for _serve_pool's retry
            raise OSError(exc.errno, f"cannot listen on {address[0]}:{address[1]}: {exc.strerror}") from None
        if cls is ControlServer:
            self._servers.append(server)
        return server

    def ready_info(self) -> dict:
        return {
            "pools": [{"name": p.name, "master": p.base_url(),
                       "members": [p.base_url(ref) for ref in p.hosts if ref != p.master_ref],
                       "username": p.username, "password": p.password} for p in self.pools.values()],
            "control": "http://127.0.0.1:%d" % self.control.server_address[1],
        }

    def take_offline(self, name: str, seconds: float) -> None:
        """The pool stops answering for ``seconds``: its hosts' ports refuse connections and open
        connections are reset (a master rebooting, a switch down), then it comes back as it was."""
        with self._outage_lock:
            servers = self._pool_servers.get(name)
            if not servers:
                raise KeyError(name)
            self._pool_servers[name] = []
        for server in servers:
            server.shutdown()
            server.server_close()
            server.cut_connections()
            self._servers.remove(server)
        timer = threading.Timer(seconds, self._bring_online, args=(name, servers))
        timer.daemon = True
        timer.start()

    def _bring_online(self, name: str, old: list[HostServer]) -> None:
        pool = self.pools[name]
        back = [HostServer(s.server_address, pool, s.host_ref, self.tls) for s in old]
        with self._outage_lock:
            self._pool_servers[name] = back
        self._servers.extend(back)
        for server in back:
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()

    def offline_pools(self) -> list[str]:
        with self._outage_lock:
            return sorted(name for name, servers in self._pool_servers.items() if not servers)

    def state(self) -> dict:
        return {"pools": {name: pool_state(pool) for name, pool in self.pools.items()}}

    def stop(self) -> None:
        # shutdown() waits up to a poll interval: stop every server at once, not one after another
        stoppers = [threading.Thread(target=server.shutdown) for server in self._servers]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        for server in self._servers:
            server.server_close()
        shutil.rmtree(self.scratch, ignore_errors=True)


def master_addresses(pools: int, hosts_per_pool: int, given: list[str] | None) -> list[str]:
    """Each pool master's address: 127.0.0.1 by default, or ``given`` (one for every pool, or one each),
    where another network namespace or container can reach it.  Members always listen on their own
    loopback addresses, which nothing outside this host reaches, so addresses need one host per pool."""
    if not given:
        return ["127.0.0.1"] * pools
    if len(given) not in (1, pools):
        raise ValueError(f"--pool-address: give one address for all pools or one per pool ({pools}), "
                         f"got {len(given)}")
    if hosts_per_pool != 1:
        raise ValueError("--pool-address needs --hosts-per-pool 1: pool members listen on loopback "
                         "addresses (127.0.k.j) that other hosts cannot reach")
    return given * pools if len(given) == 1 else list(given)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
