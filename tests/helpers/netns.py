"""Test hosts as Linux network namespaces (`ip netns`), joined by veth links.

A ``Lab`` makes namespaces with names unique to this run, gives each end of each link an
address in 198.18.0.0/15 (RFC 2544's range for test networks, so never a real network's),
and deletes everything it made in ``close()``.  Nothing routes between links and no namespace
has a default route: a host reaches exactly the addresses on its own links, and the root
namespace reaches only the hosts it is linked to.  Needs root and iproute2.
"""
from __future__ import annotations

import ipaddress
import os
import random
import signal
import subprocess


class LabError(RuntimeError):
    pass


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


class Host:
    """A network namespace; ``prefix`` runs a command inside it, optionally with its own host name."""

    def __init__(self, netns: str):
        self.netns = netns

    def prefix(self, hostname: str | None = None) -> list[str]:
        inside = ["ip", "netns", "exec", self.netns]
        if hostname is None:
            return inside
        # a UTS namespace of its own, so the worker's socket.gethostname() names this host
        return inside + ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname]

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix(), *argv], capture_output=True, text=True, timeout=timeout)


class Lab:
    def __init__(self):
        self.tag = f"tb{os.getpid() % 1000:03d}{random.randrange(16 ** 3):03x}"
        self.net = self._free_net()
        self.hosts: list[Host] = []
        self._links = 0
        self._root_ends: list[str] = []  # veth ends in the root namespace, deleted explicitly

    @staticmethod
    def _free_net() -> ipaddress.IPv4Network:
        """A /24 in 198.18.0.0/15 that no interface here uses (another test run's, say)."""
        used = ip("-4", "addr")
        for _ in range(100):
            net = ipaddress.ip_network(f"198.{random.choice((18, 19))}.{random.randrange(256)}.0/24")
            if f"{str(net.network_address)[:-1]}" not in used:
                return net
        raise LabError("no free /24 in 198.18.0.0/15")

    def host(self, name: str) -> Host:
        netns = f"{self.tag}-{name}"
        ip("netns", "add", netns)
        host = Host(netns)
        self.hosts.append(host)
        ip("-n", netns, "link", "set", "lo", "up")
        return host

    def link(self, a: Host | None, b: Host) -> tuple[str, str]:
        """A veth link between ``a`` (None: the root namespace) and ``b``: their addresses."""
        k = self._links
        self._links += 1
        if k >= 60:
            raise LabError("too many links")
        base = self.net.network_address + 4 * k
        ends = [(a, f"{self.tag}{k}a", str(base + 1)), (b, f"{self.tag}{k}b", str(base + 2))]
        ip("link", "add", ends[0][1], "type", "veth", "peer", "name", ends[1][1])
        for host, dev, address in ends:
            scope = ["-n", host.netns] if host else []
            if host:
                ip("link", "set", dev, "netns", host.netns)
            else:
                self._root_ends.append(dev)
            ip(*scope, "addr", "add", f"{address}/30", "dev", dev)
            ip(*scope, "link", "set", dev, "up")
        return ends[0][2], ends[1][2]

    def close(self) -> None:
        """Kill what still runs in our namespaces (only the test's own processes can), then delete
        the links and the namespaces."""
        for host in self.hosts:
            pids = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True).stdout
            for pid in pids.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for dev in self._root_ends:  # its peer goes with it; the kernel frees a namespace's links lazily
            subprocess.run(["ip", "link", "del", dev], capture_output=True, timeout=30)
        for host in self.hosts:
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, timeout=30)
        self.hosts, self._root_ends = [], []

    def leftovers(self) -> list[str]:
        """Namespaces or links of this lab still present (empty after close())."""
        names = ip("netns", "list") + ip("link")
        return sorted({word for word in names.split() if word.startswith(self.tag)})
