"""One simulated pool: its database, sessions, disks, hosts and knobs."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from tinabs_tasks.sim.datamodel import NULL_REF
from tinabs_tasks.sim.disks import Content, OverlayContent
from tinabs_tasks.sim.errors import XapiError
from tinabs_tasks.sim.faults import FaultRegistry
from tinabs_tasks.sim.settings import SimSettings
from tinabs_tasks.sim.store import Store
from tinabs_tasks.sim.tasks import Tasks, now
from tinabs_tasks.sim.throttle import Throttle


@dataclass
class HostEndpoint:
    ref: str
    address: str      # what host.address says (a loopback IP, like a real host's IP)
    port: int = 0     # every host of a pool listens on the same port, as real ones do on 443
    throttle: Throttle | None = None


class SimPool:
    def __init__(self, name: str, username: str, password: str, settings: SimSettings,
                 faults: FaultRegistry, scratch_dir: str):
        self.name = name
        self.username = username
        self.password = password
        self.settings = settings
        self.faults = faults
        self.scratch_dir = scratch_dir
        self.store = Store()
        self.disks: dict[str, Content] = {}
        self.hosts: dict[str, HostEndpoint] = {}
        self.master_ref = NULL_REF
        self.tasks: Tasks | None = None
        self._session_seen: dict[str, float] = {}
        #: callables (vdi_ref, offset, length) told of every write to a VDI's bytes
        self.write_observers: list = []
        #: bytes the simulated storage copied (VDI.copy, VM.copy), served by the disk export
        #: handlers and written by the disk import handlers (``GET /sim/stats``)
        self.byte_counters = {"copied_bytes": 0, "exported_bytes": 0, "imported_bytes": 0}
        self._counters_lock = threading.Lock()

    # -- topology -------------------------------------------------------------
    def add_host_endpoint(self, ref: str, address: str) -> None:
        self.hosts[ref] = HostEndpoint(ref, address, throttle=Throttle(self.settings.host_bandwidth))

    def set_master(self, ref: str) -> None:
        self.master_ref = ref
        self.tasks = Tasks(self.store, ref)

    @property
    def master(self) -> HostEndpoint:
        return self.hosts[self.master_ref]

    #: "https" when the simulator serves its hosts over TLS (``tinabs sim --tls-cert``)
    scheme = "http"

    def base_url(self, host_ref: str | None = None) -> str:
        host = self.hosts[host_ref or self.master_ref]
        return f"{self.scheme}://{host.address}:{host.port}"

    # -- sessions -------------------------------------------------------------
    def login(self, username: str, password: str, originator: str = "") -> str:
        if username != self.username or password != self.password:
            raise XapiError("SESSION_AUTHENTICATION_FAILED", username,
                            "Authentication failure")
        ref = self.store.create("session", {
            "this_host": self.master_ref, "this_user": NULL_REF, "last_active": now(),
            "pool": False, "auth_user_name": username, "originator": originator,
            "is_local_superuser": True, "validation_time": now(), "parent": NULL_REF,
        })
        self._session_seen[ref] = time.monotonic()
        return ref

    def check_session(self, ref) -> str:
        if not isinstance(ref, str) or not self.store.exists("session", ref):
            raise XapiError("SESSION_INVALID", ref)
        ttl = self.settings.session_ttl_s
        if ttl and time.monotonic() - self._session_seen.get(ref, 0) > ttl:
            self.logout(ref)
            raise XapiError("SESSION_INVALID", ref)
        self._session_seen[ref] = time.monotonic()
        return ref

    def logout(self, ref: str) -> None:
        self._session_seen.pop(ref, None)
        if self.store.exists("session", ref):
            self.store.destroy("session", ref)

    def expire_sessions(self) -> int:
        refs = self.store.refs("session")
        for ref in refs:
            self.logout(ref)
        return len(refs)

    # -- disks ----------------------------------------------------------------
    def content(self, vdi_ref: str) -> Content:
        try:
            return self.disks[vdi_ref]
        except KeyError:
            raise XapiError("HANDLE_INVALID", "VDI", vdi_ref) from None

    def guest_write(self, vdi_ref: str, offset: int, data: bytes) -> None:
        """What a running guest does to its disk: only this VDI changes, not its snapshots."""
        with self.store.lock:
            self._writable(vdi_ref).write(offset, data)
            self.notify_written(vdi_ref, offset, len(data))

    def seeded_write(self, vdi_ref: str, offset: int, length: int, seed: int) -> None:
        """A guest write of ``length`` deterministic bytes from ``seed`` (disks.seeded_bytes)."""
        with self.store.lock:
            self._writable(vdi_ref).write_seeded(offset, length, seed)
            self.notify_written(vdi_ref, offset, length)

    def _writable(self, vdi_ref: str) -> OverlayContent:
        """The VDI's own overlay, written in place while no other VDI or overlay shares it;
        otherwise a new overlay over what it had (copy on write: snapshots keep their bytes)."""
        current = self.content(vdi_ref)
        if (isinstance(current, OverlayContent) and not current.children
                and sum(1 for c in self.disks.values() if c is current) == 1):
            return current
        overlay = OverlayContent(current, self.scratch_dir)
        self.disks[vdi_ref] = overlay
        return overlay

    def notify_written(self, vdi_ref: str, offset: int, length: int) -> None:
        """Tell the write observers (changed block tracking) that bytes of a VDI changed."""
        for observer in self.write_observers:
            observer(vdi_ref, offset, length)

    def count_bytes(self, counter: str, nbytes: int) -> None:
        with self._counters_lock:
            self.byte_counters[counter] += nbytes

    def sr_visible_from(self, sr_ref: str, host_ref: str) -> bool:
        return any(self.store.get("PBD", pbd, "host") == host_ref and self.store.get("PBD", pbd, "currently_attached")
                   for pbd in self.store.get("SR", sr_ref, "PBDs"))

    def slow_op(self, task_ref: str | None) -> None:
        """The configured latency of a slow storage/VM operation."""
        self.tasks.sleep(task_ref, self.settings.latency_s, 0.0, 0.9)
