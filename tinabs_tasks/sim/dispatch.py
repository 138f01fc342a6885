"""XML-RPC dispatch: method resolution, arity, sessions, Async, faults.

Follows ocaml/idl/ocaml_backend/gen_server.ml and ocaml/xapi/server_helpers.ml:
``Class.msg`` or ``Class_msg``, ``Async.`` prefix stripped (and refused for
messages without an Async form), ``MESSAGE_PARAMETER_COUNT_MISMATCH [method,
expected, received]`` with trailing defaulted parameters optional, and on a
pool member every call answers ``HOST_IS_SLAVE [master address]``.
"""
from __future__ import annotations

import copy
import logging

from tinabs_tasks.sim import accessors
from tinabs_tasks.sim import datamodel
from tinabs_tasks.sim import wire
from tinabs_tasks.sim.errors import XapiError
from tinabs_tasks.sim.faults import raise_if_error
from tinabs_tasks.sim.ops import Ctx, load_all

log = logging.getLogger("tinabs.sim")
OPS = load_all()


def handle(pool, host_ref: str, body: bytes) -> bytes:
    try:
        method, params = wire.parse_call(body)
        return wire.success(call(pool, host_ref, method, list(params)))
    except XapiError as exc:
        return wire.failure(exc.description)
    except _NoAsync as exc:
        return wire.failure(["Fault", f"No async mode for this operation (rpc: {exc.args[0]})"])
    except Exception as exc:  # xapi's catch-all (exnHelper.ml): INTERNAL_ERROR, never a dropped call
        log.exception("internal error in %r", body[:200])
        return wire.failure(["INTERNAL_ERROR", repr(exc)])


class _NoAsync(Exception):
    pass


def resolve(method: str) -> tuple[str, str, bool]:
    """(class, message, is_async) of a wire method name; MESSAGE_METHOD_UNKNOWN if none."""
    name, is_async = method, False
    for prefix in ("Async.", "InternalAsync."):
        if name.startswith(prefix):
            name, is_async = name[len(prefix):], True
    cls, sep, msg = name.partition(".")
    if not sep:
        cls, _, msg = name.partition("_")
    known = datamodel.CLASSES + datamodel.MESSAGE_ONLY_CLASSES
    if cls not in known or msg not in datamodel.model(cls).messages:  # includes the hidden *_where
        raise XapiError("MESSAGE_METHOD_UNKNOWN", method)
    return cls, msg, is_async


def call(pool, host_ref: str, method: str, params: list):
    cls, msg, is_async = resolve(method)
    m = datamodel.model(cls)
    takes_session = msg not in m.no_session
    if takes_session and not params:
        raise XapiError("SESSION_INVALID", "")
    args = _fill_defaults(m, msg, method, params[1:] if takes_session else params,
                          len(params) - (1 if takes_session else 0))
    if host_ref != pool.master_ref:
        raise XapiError("HOST_IS_SLAVE", pool.master.address)
    name = f"{cls}.{msg}"
    impl = OPS.get(name)
    if impl is None and not m.is_implicit(msg):
        raise XapiError("MESSAGE_METHOD_UNKNOWN", method)
    if takes_session and pool.faults.take(pool.name, method=name, expiring=True,
                                          arg_matches=lambda value: _arg_matches(Ctx(pool, None, host_ref), args,
                                                                                 value)):
        pool.expire_sessions()  # a session that timed out just now: this call meets SESSION_INVALID
    session = pool.check_session(params[0] if params else None) if takes_session else None
    if is_async and not m.has_async(msg):
        raise _NoAsync(name)
    if is_async:
        return pool.tasks.run_async(name, lambda task: _execute(Ctx(pool, session, host_ref, task), cls, msg, args))
    return _execute(Ctx(pool, session, host_ref), cls, msg, args)


def _fill_defaults(m, msg: str, method: str, args: list, received: int) -> list:
    expected = m.messages[msg]
    defaults = m.param_defaults.get(msg, {})
    required = [p for p in expected if p not in defaults]
    if received < len(required) or received > len(expected):
        raise XapiError("MESSAGE_PARAMETER_COUNT_MISMATCH", method, len(required), received)
    # deep copies: a default such as ignore_vdis=[] lives in the cached datamodel and must never be shared
    return list(args) + [copy.deepcopy(defaults[p]) for p in expected[len(args):]]


def _execute(ctx: Ctx, cls: str, msg: str, args: list):
    fault = ctx.pool.faults.take(ctx.pool.name, method=f"{cls}.{msg}",
                                 arg_matches=lambda value: _arg_matches(ctx, args, value))
    if fault is not None:
        ctx.pool.tasks.sleep(ctx.task, fault.delay_s)
        raise_if_error(fault)
    impl = OPS.get(f"{cls}.{msg}")
    if impl is not None:
        return impl(ctx, *args)
    return accessors.serve(ctx, cls, msg, tuple(args))


def _arg_matches(ctx: Ctx, args: list, wanted: str) -> bool:
    for value in args:
        if value == wanted:
            return True
        if isinstance(value, str) and value.startswith("OpaqueRef:"):
            for cls in datamodel.CLASSES:
                if ctx.store.exists(cls, value):
                    rec = ctx.store.record(cls, value)
                    if wanted in (rec.get("name_label"), rec.get("uuid")):
                        return True
    return False
