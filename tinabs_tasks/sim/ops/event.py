"""The event class: event.from (and the deprecated register / next / unregister), inject, get_current_id.

Semantics from ocaml/xapi/xapi_event.ml; the journal they read is :mod:`..events`.
"""
from __future__ import annotations

import re
import time

from tinabs_tasks.sim import datamodel
from tinabs_tasks.sim.errors import XapiError
from tinabs_tasks.sim.events import parse_subscriptions
from tinabs_tasks.sim.ops import Ctx, op
from tinabs_tasks.sim.wire import Int32

#: xapi_event.ml from_inner: after a wake-up it sleeps this long (``Thread.delay 0.05``) before
#: reading, so a burst of writes (a task's progress, a clone's records) comes back as one batch
BATCH_DELAY_S = 0.05
_TOKEN_PART = re.compile(r"-?[0-9]+\Z")


def parse_token(token) -> int:
    """xapi_event.ml Token.of_string: ``""`` or ``"<generation>,<message generation>"``."""
    if token == "":
        return 0
    parts = token.split(",") if isinstance(token, str) else []
    if len(parts) != 2 or not all(_TOKEN_PART.match(p) for p in parts):
        raise XapiError("EVENT_FROM_TOKEN_PARSE_FAILURE", token)
    return int(parts[0])


def format_token(generation: int) -> str:
    # Token.to_string: zero-padded so tokens compare as strings; the simulator has no
    # message table, so the message generation is always 0
    return "%020d,%020d" % (generation, 0)


@op("event.from")
def event_from(ctx: Ctx, classes, token, timeout):
    since = parse_token(token)
    subs = parse_subscriptions(classes)
    try:
        timeout = float(timeout)
    except (TypeError, ValueError):
        raise XapiError("FIELD_TYPE_ERROR", "timeout") from None
    deadline = time.monotonic() + timeout
    journal = ctx.store.journal
    with journal.waiter(ctx.session, subs) as waiter:   # From.with_call: known to writers throughout
        while True:
            with ctx.store.lock:
                found = journal.changes(subs, since, waiter)
                events = _events(ctx.store, found)
                counts = {cls.lower(): Int32(len(ctx.store.refs(cls))) for cls in datamodel.CLASSES}
            # xapi loops ("suppressing empty event.from") until events or the deadline
            if events or time.monotonic() >= deadline:
                return {"events": events, "valid_ref_counts": counts, "token": format_token(found.last)}
            since = found.last
            journal.wait(waiter, deadline)
            time.sleep(BATCH_DELAY_S)


def _events(store, found) -> list[dict]:
    """Event records as Event_types.rpc_of_event writes them: id and timestamp are strings,
    the class is lower case, and a del has no snapshot."""
    events = []
    for operation, entries in (("add", found.adds), ("mod", found.mods), ("del", found.dels)):
        for generation, cls, ref in entries:
            event = {"id": str(generation), "timestamp": "0.0", "class": cls.lower(),
                     "operation": operation, "ref": ref}
            if operation != "del":
                event["snapshot"] = store.record(cls, ref)
            events.append(event)
    return events


@op("event.register")
def register(ctx: Ctx, classes):
    ctx.store.journal.register(ctx.session, parse_subscriptions(classes))
    return ""


@op("event.unregister")
def unregister(ctx: Ctx, classes):
    ctx.store.journal.unregister(ctx.session, parse_subscriptions(classes))
    return ""


@op("event.next")
def next_(ctx: Ctx):
    return ctx.store.journal.next_events(ctx.session)


@op("event.get_current_id")
def get_current_id(ctx: Ctx):
    return ctx.store.journal.next_id


@op("event.inject")
def inject(ctx: Ctx, cls, ref):
    with ctx.store.lock:
        if not (cls in datamodel.CLASSES and ctx.store.exists(cls, ref)):
            raise XapiError("HANDLE_INVALID", cls, ref)
        before = ctx.store.journal.touch(cls, ref, lambda: ctx.store.record(cls, ref))
    return format_token(before)
