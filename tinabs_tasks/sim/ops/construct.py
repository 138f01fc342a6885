"""Implicit constructors: the ``<Class>.create(args)`` struct rules (FACTS.md §3)."""
from __future__ import annotations

import random

from tinabs_tasks.sim import wire
from tinabs_tasks.sim.datamodel import NULL_REF, model
from tinabs_tasks.sim.errors import XapiError, handle_invalid


def ctor_fields(cls: str, args) -> dict:
    """The constructor fields of ``args``: required ones present, all typed, extras ignored."""
    if not isinstance(args, dict):
        raise XapiError("FIELD_TYPE_ERROR", "args")
    m = model(cls)
    for name in m.create_required:
        if name not in args:
            # gen_server.ml from_ctor_record -> my_assoc -> exnHelper catch-all
            raise XapiError("INTERNAL_ERROR", f'Server_helpers.Dispatcher_FieldNotFound("{name}")')
    return {name: wire.coerce(m.ftype(name), args[name], name)
            for name in m.create_required + m.create_optional if name in args}


def require(store, cls: str, ref, allow_null: bool = False) -> str:
    if allow_null and ref == NULL_REF:
        return ref
    if not store.exists(cls, ref):
        raise handle_invalid(cls, ref)
    return ref


def random_mac(rng: random.Random | None = None) -> str:
    """A locally administered unicast MAC, as xapi generates from the VM's mac_seed."""
    rng = rng or random.SystemRandom()
    return "%02x:%02x:%02x:%02x:%02x:%02x" % (0x02 | (rng.randrange(64) << 2), *(rng.randrange(256) for _ in range(5)))
