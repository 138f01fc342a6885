"""The event journal of one pool's database: what changed, when, and who is waiting for it.

It follows xapi's two event mechanisms (ocaml/xapi/xapi_event.ml):

* ``event.from`` reads per-row generation counters, as xapi's in-memory DB
  does (ocaml/database/db_cache_types.ml ``Stat``: created / modified /
  deleted).  Every write stamps the row with a new generation, so a client
  asking "what changed since generation N" gets one event per object however
  many times it changed.  Deleted rows are remembered in a short per-table
  queue (``Table.remove``: at 512 entries it is cut back to the newest 256),
  so the journal's memory is bounded by the live objects plus that queue.
* ``event.next`` (deprecated) keeps a queue of events with the record as it
  was at each write, but only while some registered session wants them
  (``Next.add``); it is bounded too, and a client that falls behind the
  bound gets ``EVENTS_LOST``.

The store calls :meth:`Journal.created`, :meth:`modified` and :meth:`deleted`
while it holds its own lock; the journal has its own lock and never takes
the store's, so a waiter blocks on the journal only and never holds up a
write.
"""
from __future__ import annotations

import collections
import hashlib
import threading
import time
from dataclasses import dataclass, field

from tinabs_tasks.sim.errors import XapiError

#: classes whose objects generate no events (datamodel.ml ``~gen_events:false``)
NO_EVENTS = frozenset({"session"})
#: db_cache_types.ml Table.remove: the deleted queue is cut to LOW entries when it reaches HIGH
DELETED_HIGH, DELETED_LOW = 512, 256
#: events kept for event.next (xapi keeps 10 MB of them, Next.max_queue_size)
NEXT_QUEUE_MAX = 10000


# -- subscriptions ----------------------------------------------------------
@dataclass(frozen=True)
class Subscription:
    """One entry of ``classes``: ``*`` (cls None), ``<class>``, or ``<class>/<ref>``."""

    cls: str | None
    ref: str | None = None

    @classmethod
    def parse(cls, text) -> "Subscription":
        if not isinstance(text, str):
            raise XapiError("EVENT_SUBSCRIPTION_PARSE_FAILURE", text)
        if text == "*":
            return cls(None)
        name, sep, ref = text.partition("/")  # String.split ~limit:2 '/'
        return cls(name.lower(), ref if sep else None)

    def wants_table(self, table: str) -> bool:
        return self.cls is None or self.cls == table.lower()

    def wants(self, table: str, ref: str) -> bool:
        return self.wants_table(table) and (self.ref is None or self.ref == ref)


def parse_subscriptions(classes) -> tuple[Subscription, ...]:
    if not isinstance(classes, list):
        raise XapiError("FIELD_TYPE_ERROR", "classes")
    return tuple(Subscription.parse(c) for c in classes)


def wanted(subs, table: str, ref: str) -> bool:
    return any(s.wants(table, ref) for s in subs)


def trackid(session: str) -> str:
    """context.ml trackid_of_session: a hash, so errors never echo the session ref itself."""
    return hashlib.md5(session.encode()).hexdigest()


# -- the journal ------------------------------------------------------------
@dataclass
class Changes:
    """What event.from found since a generation: (generation, class, ref) triples per operation."""

    adds: list = field(default_factory=list)
    mods: list = field(default_factory=list)
    dels: list = field(default_factory=list)
    last: int = 0

    def __bool__(self) -> bool:
        return bool(self.adds or self.mods or self.dels)


class _Waiter:
    """One blocked event.from call (xapi_event.ml ``From.call``)."""

    def __init__(self, lock, session: str, subs):
        self.session, self.subs = session, subs
        self.changed = threading.Condition(lock)
        self.pending = False        # something it wants changed since it last looked
        self.session_ended = False


class _Registration:
    """A session's event.next subscription (xapi_event.ml ``Next.subscription``)."""

    def __init__(self, last_id: int):
        self.last_id = last_id
        self.subs: list[Subscription] = []
        self.session_ended = False


class Journal:
    def __init__(self):
        self._lock = threading.Lock()
        self.generation = 0
        self._rows: dict[str, dict[str, list[int]]] = collections.defaultdict(dict)   # [created, modified]
        self._deleted: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._waiters: list[_Waiter] = []
        # event.next
        self._next_changed = threading.Condition(self._lock)
        self.next_id = 0
        self._queue: collections.deque = collections.deque()   # (id, class, ref, event)
        self._forgotten = -1
        self._registrations: dict[str, _Registration] = {}

    # -- hooks the store calls (under its own lock) ---------------------------
    def created(self, cls: str, ref: str, snapshot) -> None:
        if cls in NO_EVENTS:
            return
        with self._lock:
            stamp = self._stamp()
            self._rows[cls][ref] = [stamp, stamp]
            self._changed(cls, ref, "add", snapshot)

    def modified(self, cls: str, ref: str, snapshot) -> None:
        if cls in NO_EVENTS:
            return
        with self._lock:
            row = self._rows[cls].get(ref)
            if row is None:
                return
            row[1] = self._stamp()
            self._changed(cls, ref, "mod", snapshot)

    def deleted(self, cls: str, ref: str, snapshot) -> None:
        with self._lock:
            if cls == "session":
                self._session_ended(ref)
            if cls in NO_EVENTS:
                return
            row = self._rows[cls].pop(ref, None)
            if row is None:
                return
            queue = self._deleted[cls]
            queue.appendleft((row[0], self._stamp(), ref))
            if len(queue) >= DELETED_HIGH:
                while len(queue) > DELETED_LOW:
                    queue.pop()
            self._changed(cls, ref, "del", snapshot)

    def touch(self, cls: str, ref: str, snapshot) -> int:
        """event.inject: a mod of an unchanged object; returns the generation before it."""
        with self._lock:
            before = self.generation
        self.modified(cls, ref, snapshot)
        return before

    def _stamp(self) -> int:
        self.generation += 1
        return self.generation

    def _changed(self, cls: str, ref: str, op: str, snapshot) -> None:
        for waiter in self._waiters:
            if not waiter.pending and wanted(waiter.subs, cls, ref):
                waiter.pending = True
                waiter.changed.notify_all()
        if any(wanted(r.subs, cls, ref) for r in self._registrations.values()):
            self._queue_next(cls, ref, op, snapshot)

    def _session_ended(self, session: str) -> None:
        for waiter in self._waiters:
            if waiter.session == session:
                waiter.session_ended = True
                waiter.changed.notify_all()
        registration = self._registrations.pop(session, None)
        if registration is not None:
            registration.session_ended = True
            self._next_changed.notify_all()

    # -- event.from -----------------------------------------------------------
    def changes(self, subs, since: int, waiter: _Waiter | None = None) -> Changes:
        """Objects changed after generation ``since`` (call with the store locked, so the
        snapshots read next agree with it); resets ``waiter`` so later writes wake it."""
        found = Changes(last=since)
        with self._lock:
            if waiter is not None:
                waiter.pending = False
            for table in set(self._rows) | set(self._deleted):
                table_subs = [s for s in subs if s.wants_table(table)]
                if table_subs:
                    self._scan(table, table_subs, since, found)
        for kind in (found.adds, found.mods, found.dels):
            kind.sort()
        return found

    def _scan(self, table: str, subs, since: int, found: Changes) -> None:
        rows = self._rows[table]
        if all(s.ref is not None for s in subs):   # only named objects: no need to walk the table
            candidates = ((s.ref, rows[s.ref]) for s in set(subs) if s.ref in rows)
        else:
            candidates = rows.items()
        for ref, (created, modified) in candidates:
            if modified > since and wanted(subs, table, ref):
                found.last = max(found.last, modified)
                # xapi_event.ml from_inner: "Only have a mod event if we don't have a created event"
                (found.adds if created > since else found.mods).append(
                    (created if created > since else modified, table, ref))
        for created, deleted, ref in self._deleted[table]:
            if deleted <= since:
                break   # newest first
            if wanted(subs, table, ref):
                found.last = max(found.last, deleted)
                if created <= since:   # created and destroyed since the token: nothing to tell
                    found.dels.append((deleted, table, ref))

    def waiter(self, session: str, subs) -> "_WaiterScope":
        return _WaiterScope(self, _Waiter(self._lock, session, subs))

    def wait(self, waiter: _Waiter, deadline: float) -> None:
        """Block until ``waiter`` has news or ``deadline`` (time.monotonic) passes."""
        with self._lock:
            while not (waiter.pending or waiter.session_ended):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                waiter.changed.wait(remaining)
            if waiter.session_ended:
                raise XapiError("SESSION_INVALID", waiter.session)

    # -- event.next -----------------------------------------------------------
    def register(self, session: str, subs) -> None:
        with self._lock:
            self._registration(session).subs[:0] = subs

    def unregister(self, session: str, subs) -> None:
        with self._lock:
            registration = self._registration(session)
            registration.subs = [s for s in registration.subs if s not in subs]

    def _registration(self, session: str) -> _Registration:
        if session not in self._registrations:
            self._registrations[session] = _Registration(self.next_id)
        return self._registrations[session]

    def _queue_next(self, cls: str, ref: str, op: str, snapshot) -> None:
        event = {"id": str(self.next_id), "timestamp": "%d." % time.time(), "class": cls.lower(),
                 "operation": op, "ref": ref, "snapshot": snapshot()}
        self._queue.append((self.next_id, cls, ref, event))
        self.next_id += 1
        while len(self._queue) > NEXT_QUEUE_MAX:
            self._forgotten = self._queue.popleft()[0]
        self._next_changed.notify_all()

    def next_events(self, session: str) -> list[dict]:
        """event.next: block until events for the session's registration exist, then take them."""
        with self._lock:
            registration = self._registrations.get(session)
            if registration is None:
                raise XapiError("SESSION_NOT_REGISTERED", trackid(session))
            while True:
                while registration.last_id == self.next_id and not registration.session_ended:
                    self._next_changed.wait()
                if registration.session_ended:
                    raise XapiError("SESSION_INVALID", session)
                start, registration.last_id = registration.last_id, self.next_id
                if self._forgotten >= start:
                    raise XapiError("EVENTS_LOST")
                events = [event for ident, cls, ref, event in self._queue
                          if ident >= start and wanted(registration.subs, cls, ref)]
                if events:
                    return events


class _WaiterScope:
    """``with journal.waiter(...) as w``: the waiter is known to writers for the whole call."""

    def __init__(self, journal: Journal, waiter: _Waiter):
        self.journal, self.waiter = journal, waiter

    def __enter__(self) -> _Waiter:
        with self.journal._lock:
            self.journal._waiters.append(self.waiter)
        return self.waiter

    def __exit__(self, *exc) -> None:
        with self.journal._lock:
            self.journal._waiters.remove(self.waiter)
