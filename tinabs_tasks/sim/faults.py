"""Fault injection, driven by tests through ``POST /sim/faults``.

A fault spec is a JSON object (or a list of them).  Exactly one trigger:

``{"method": "VDI.copy", ...}``
    fires when that XAPI message runs (sync or ``Async.``; for an Async call
    the error fails the task, as a real backend failure would).
``{"handler": "/export", ...}``
    fires on an HTTP handler: ``/export``, ``/export_metadata``, ``/export_raw_vdi``,
    ``/import``, ``/import_metadata``.
``{"expire_sessions": true}``
    expires every session now (clients see ``SESSION_INVALID``); not stored.

Effects (at least one with ``method``/``handler``):

``"expire_sessions": true``          expire the pool's sessions just before the
                                     call checks its own, so this very call
                                     meets an expired session (a session that
                                     timed out mid-chain), nothing else.
``"error": ["CODE", "param", ...]``  fail with this XAPI error.
``"delay_s": 30``                    stall this long first (cancellable).
``"drop_after_bytes": 5000000``      handlers only: cut the connection after
                                     this many body bytes (sent or received).

Filters: ``"pool": "pool-a"`` (default: every pool), ``"arg": "web-01"``
(fires only when a call parameter equals it, or names an object whose
``name_label`` or ``uuid`` equals it), ``"times": N`` (fires N times, then
is gone; default: until ``DELETE /sim/faults``).  Nonsense gets HTTP 400
with the reason.  ``GET /sim/faults`` lists active faults with ``fired``
counts.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field

from tinabs_tasks.sim import datamodel
from tinabs_tasks.sim.errors import XapiError

HANDLERS = ("/export", "/export_metadata", "/export_raw_vdi", "/import", "/import_metadata")
_KEYS = {"method", "handler", "expire_sessions", "error", "delay_s", "drop_after_bytes", "times", "pool", "arg"}


class FaultSpecError(ValueError):
    """A fault spec that makes no sense; the message says why."""


@dataclass
class Fault:
    id: int
    method: str | None = None
    handler: str | None = None
    error: list[str] | None = None
    delay_s: float = 0.0
    drop_after_bytes: int | None = None
    times: int | None = None
    pool: str | None = None
    arg: str | None = None
    expire_sessions: bool = False
    fired: int = 0
    spec: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        return {**self.spec, "id": self.id, "fired": self.fired, "remaining": self.times}


def normalize_method(name: str) -> str:
    for prefix in ("Async.", "InternalAsync."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if "." not in name and "_" in name:
        cls, _, msg = name.partition("_")
        name = f"{cls}.{msg}"
    return name


def parse_spec(spec, pool_names) -> dict:
    if not isinstance(spec, dict):
        raise FaultSpecError("a fault spec is a JSON object")
    unknown = set(spec) - _KEYS
    if unknown:
        raise FaultSpecError(f"unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    triggers = [k for k in ("method", "handler") if k in spec] or [k for k in ("expire_sessions",) if k in spec]
    if len(triggers) != 1:
        raise FaultSpecError("give exactly one of 'method', 'handler', 'expire_sessions'")
    if "pool" in spec and spec["pool"] not in pool_names:
        raise FaultSpecError(f"unknown pool {spec['pool']!r}; pools: {sorted(pool_names)}")
    if triggers == ["expire_sessions"]:
        if spec["expire_sessions"] is not True or set(spec) - {"expire_sessions", "pool"}:
            raise FaultSpecError("'expire_sessions' takes true and optionally 'pool', nothing else")
        return spec
    if "method" in spec:
        _check_method(spec["method"])
        if "drop_after_bytes" in spec:
            raise FaultSpecError("'drop_after_bytes' applies to handlers, not XML-RPC methods")
    elif spec["handler"] not in HANDLERS:
        raise FaultSpecError(f"unknown handler {spec['handler']!r}; one of {list(HANDLERS)}")
    if not {"error", "delay_s", "drop_after_bytes", "expire_sessions"} & set(spec):
        raise FaultSpecError("give at least one effect: 'error', 'delay_s', 'drop_after_bytes' or 'expire_sessions'")
    if "expire_sessions" in spec:
        if spec["expire_sessions"] is not True or {"error", "delay_s", "drop_after_bytes"} & set(spec):
            raise FaultSpecError("'expire_sessions' as an effect takes true and no other effect")
    _check_effects(spec)
    return spec


def _check_method(name) -> None:
    if not isinstance(name, str):
        raise FaultSpecError("'method' is a string such as 'VDI.copy'")
    cls, _, msg = normalize_method(name).partition(".")
    if cls not in datamodel.CLASSES + datamodel.MESSAGE_ONLY_CLASSES or msg not in datamodel.model(cls).messages:
        raise FaultSpecError(f"unknown XAPI method {name!r}")


def _check_effects(spec: dict) -> None:
    err = spec.get("error")
    if err is not None and (not isinstance(err, list) or not err or not all(isinstance(x, str) for x in err)):
        raise FaultSpecError("'error' is a non-empty list of strings: [CODE, param, ...]")
    if err is not None and not datamodel.is_known_error(err[0]):
        raise FaultSpecError(f"unknown XAPI error code {err[0]!r}")
    delay = spec.get("delay_s", 0)
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= 3600:
        raise FaultSpecError("'delay_s' is a number of seconds between 0 and 3600")
    for key, low in (("drop_after_bytes", 0), ("times", 1)):
        value = spec.get(key, low)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise FaultSpecError(f"'{key}' is an integer >= {low}")
    if "arg" in spec and not isinstance(spec["arg"], str):
        raise FaultSpecError("'arg' is a string")


class FaultRegistry:
    def __init__(self):
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)

    def add(self, spec: dict) -> int:
        with self._lock:
            fault = Fault(
                id=next(self._ids), method=normalize_method(spec["method"]) if "method" in spec else None,
                handler=spec.get("handler"), error=spec.get("error"), delay_s=float(spec.get("delay_s", 0)),
                drop_after_bytes=spec.get("drop_after_bytes"), times=spec.get("times"),
                pool=spec.get("pool"), arg=spec.get("arg"), expire_sessions=bool(spec.get("expire_sessions")),
                spec=dict(spec))
            self._faults.append(fault)
            return fault.id

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def active(self) -> list[dict]:
        with self._lock:
            return [f.as_json() for f in self._faults]

    def take(self, pool: str, *, method: str | None = None, handler: str | None = None,
             arg_matches=lambda value: False, expiring: bool = False) -> Fault | None:
        """The first matching fault, counted as fired (and dropped when used up).

        ``expiring`` picks the session-expiry faults, which fire before the session
        check; the others fire once the call is authenticated."""
        with self._lock:
            for fault in self._faults:
                if fault.expire_sessions != expiring:
                    continue
                if fault.pool not in (None, pool):
                    continue
                if method is not None and fault.method != method:
                    continue
                if handler is not None and fault.handler != handler:
                    continue
                if fault.arg is not None and not arg_matches(fault.arg):
                    continue
                fault.fired += 1
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                return fault
        return None


def raise_if_error(fault: Fault | None) -> None:
    if fault is not None and fault.error:
        raise XapiError(*fault.error)
