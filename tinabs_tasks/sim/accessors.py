"""The implicit messages every class gets (ocaml/idl/datamodel_utils.ml rules)."""
from __future__ import annotations

from tinabs_tasks.sim import where
from tinabs_tasks.sim import wire
from tinabs_tasks.sim.datamodel import model
from tinabs_tasks.sim.errors import XapiError


def serve(ctx, cls: str, msg: str, args: tuple):
    """Run an implicit message, or return NotImplemented if ``msg`` is not one."""
    store, m = ctx.store, model(cls)
    if msg == "get_record":
        return store.record(cls, args[0])
    if msg == "get_all":
        return store.refs(cls)
    if msg == "get_all_records":
        return store.all_records(cls)
    if msg in ("get_all_where", "get_all_records_where"):
        return _where(store, cls, args[0], records=msg == "get_all_records_where")
    if msg == "get_by_uuid":
        return store.by_uuid(cls, _string(args[0], "uuid"))
    if msg == "get_by_name_label":
        return store.find(cls, name_label=_string(args[0], "label"))
    for prefix, action in _PREFIXES:
        if msg.startswith(prefix) and msg[len(prefix):] in m.field_info:
            return action(ctx, cls, msg[len(prefix):], *args)
    return NotImplemented


def _where(store, cls: str, expr, records: bool):
    """The hidden get_all_where / get_all_records_where (gen_db_actions: Db_filter.expr_of_string,
    then every row of the table is tested; see :mod:`.where`)."""
    parsed = where.parse(expr)
    with store.lock:
        found = {ref: rec for ref, rec in store.all_records(cls).items()
                 if where.matches(parsed, where.db_row(cls, ref, rec))}
    return found if records else list(found)


def _string(value, name):
    if not isinstance(value, str):
        raise XapiError("FIELD_TYPE_ERROR", name)
    return value


def _get(ctx, cls, field, ref):
    return ctx.store.get(cls, ref, field)


def _set(ctx, cls, field, ref, value):
    m = model(cls)
    ctx.store.get(cls, ref, "uuid")  # HANDLE_INVALID first, as the DB layer does
    ctx.store.set(cls, ref, field, wire.coerce(m.ftype(field), value, field))
    return ""


def _add_to(ctx, cls, field, ref, key, value):
    with ctx.store.lock:
        current = ctx.store.get(cls, ref, field)
        key = _string(key, "key")
        if key in current:
            raise XapiError("MAP_DUPLICATE_KEY", cls, field, ctx.store.get(cls, ref, "uuid"), key)
        current[key] = _string(value, "value")
        ctx.store.set(cls, ref, field, current)
    return ""


def _remove_from(ctx, cls, field, ref, key):
    with ctx.store.lock:
        current = ctx.store.get(cls, ref, field)
        current.pop(_string(key, "key"), None)
        ctx.store.set(cls, ref, field, current)
    return ""


def _add(ctx, cls, field, ref, value):
    with ctx.store.lock:
        current = ctx.store.get(cls, ref, field)
        value = _string(value, "value")
        if value not in current:
            current.append(value)
        ctx.store.set(cls, ref, field, current)
    return ""


def _remove(ctx, cls, field, ref, value):
    with ctx.store.lock:
        current = ctx.store.get(cls, ref, field)
        ctx.store.set(cls, ref, field, [v for v in current if v != value])
    return ""


_PREFIXES = (("get_", _get), ("set_", _set), ("add_to_", _add_to), ("remove_from_", _remove_from),
             ("add_", _add), ("remove_", _remove))
