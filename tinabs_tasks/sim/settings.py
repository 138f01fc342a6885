"""Realism knobs of a simulator run (all off by default)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SimSettings:
    #: seconds each slow operation (snapshot, clone, copy, create) takes
    latency_s: float = 0.0
    #: per-host cap on bytes/s streamed by /export and /export_metadata (0: none)
    host_bandwidth: float = 0.0
    #: bytes/s a VDI.copy moves on the storage (0: instant apart from latency_s)
    copy_bandwidth: float = 0.0
    #: xapi writes an empty keep-alive chunk after this long without output
    export_keepalive_s: float = 5.0
    #: sessions idle longer than this expire (0: never; xapi's default is 24 h)
    session_ttl_s: float = 0.0
    #: every VM's system disk is a clone of its pool's template image plus a few MiB of its own
    clone_from_template: bool = False
