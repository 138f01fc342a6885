"""Custom XAPI messages the simulator implements, registered by wire name.

Implicit messages (getters, setters, get_record, get_by_* ...) are served
generically by :mod:`..accessors`; everything here has real semantics.  A
message in the datamodel that is neither answers ``MESSAGE_METHOD_UNKNOWN``,
as xapi does for a method it does not know.
"""
from __future__ import annotations

from dataclasses import dataclass

OPS: dict[str, callable] = {}


@dataclass
class Ctx:
    pool: "SimPool"  # noqa: F821
    session: str | None
    host_ref: str
    task: str | None = None  # the Async task running this call, if any

    @property
    def store(self):
        return self.pool.store


def op(name: str):
    def register(fn):
        OPS[name] = fn
        return fn
    return register


def load_all() -> dict[str, callable]:
    from tinabs_tasks.sim.ops import cbt
    from tinabs_tasks.sim.ops import devices
    from tinabs_tasks.sim.ops import event
    from tinabs_tasks.sim.ops import host
    from tinabs_tasks.sim.ops import session
    from tinabs_tasks.sim.ops import storage
    from tinabs_tasks.sim.ops import task
    from tinabs_tasks.sim.ops import vm  # noqa: F401  (registration)
    from tinabs_tasks.sim.ops import vm_power  # noqa: F401
    from tinabs_tasks.sim.ops import vm_snapshot  # noqa: F401
    return OPS
