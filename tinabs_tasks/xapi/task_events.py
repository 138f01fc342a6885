"""Waiting for XAPI tasks by events: one ``event.from`` connection per pool per worker process.

Polling ``task.get_record`` costs a call per poll per waiting task, on the pool master, which
serves every worker of every job; xapi's own advice is to wait with ``event.from``
(``xapi_event.ml`` ``from``), which answers when something of interest changed.  So each worker
process keeps, per pool, one ``TaskWatcher``: a thread with a session (and so a connection) of
its own, looping on ``event.from(["task/<ref>", ...], token, LONG_POLL_S)`` over the tasks its
stages wait for, and waking each waiter when its task ends.  A stage's own session stays free for
its calls: XenAPI serialises the calls of one session's connection.

Falling back to polling, never to waiting forever:

* a pool without events (``MESSAGE_METHOD_UNKNOWN``, ``MESSAGE_REMOVED``) or configured with
  ``task_wait = "poll"``: every wait polls, as before;
* a watcher whose call failed (the pool unreachable, a session lost) or that has said nothing for
  longer than its long poll: the waiter polls its task itself, so the failure is met, and
  classified, on the stage's own calls;
* a task that vanished (a ``del`` event: destroyed by someone else, as xapi does with the tasks its
  HTTP handlers make for themselves, ``xapi_http.ml`` ``with_context``) ends the wait with
  ``HANDLE_INVALID``, exactly what polling it would have met.

Progress: a task's ``progress`` field changes often while it works, and each change is an event;
after a batch that ended none of its tasks the watcher waits before asking again (``SETTLE_S``,
doubling up to ``SETTLE_MAX_S``), so a long task costs about a call per 0.8 s, not
one per progress step, and learns of its end 0.8 s late at the most; a batch that ends a task
is followed at once by the next call.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import XenAPI

from tinabs_tasks.xapi.errors import UNKNOWN_MESSAGE_CODES

log = logging.getLogger("tinabs")

#: how long one event.from call may wait on the pool for a change (xapi caps nothing; 30 s is
#: what xe and the SDK examples use)
LONG_POLL_S = 30.0
#: the least time between two calls when the last one only brought progress: it starts at
#: SETTLE_S and doubles up to SETTLE_MAX_S while calls bring nothing but progress
SETTLE_S = 0.2
SETTLE_MAX_S = 0.8
#: a watcher with nothing to wait for this long logs out and ends its thread
IDLE_S = 60.0
#: a watcher silent this much longer than its long poll is taken for stuck: waiters poll
SILENT_GRACE_S = 15.0
#: a waiter whose task the watcher's call in flight does not cover waits this long for the next
#: call, then polls (a long poll over other tasks may not return for a while)
SUBSCRIBE_WAIT_S = 1.0
ENDED = ("success", "failure", "cancelled")


class Unavailable(Exception):
    """Events cannot tell this waiter about its task: poll it."""


class TaskWatcher:
    """The ``event.from`` loop of one pool in one process, and the tasks waited for on it."""

    def __init__(self, open_session):
        self._open_session = open_session
        self._cond = threading.Condition()
        self._waiting: dict[str, int] = {}          # task -> number of waiters
        self._seen: dict[str, dict] = {}             # task -> its latest record (while waited for)
        self._gone: set[str] = set()                 # tasks a del event reported (while waited for)
        self._broken_at = 0.0                        # when the last call failed
        self._last_answer = time.monotonic()
        self._thread: threading.Thread | None = None
        self._subscribed: frozenset[str] = frozenset()  # the tasks the call in flight watches
        self.no_events: str | None = None            # why this pool cannot do events, once known

    # -- the waiter's side -----------------------------------------------------
    def wait(self, task: str, progress=None, timeout_s: float = 6 * 3600) -> dict:
        """The task's record once it ended; raises Unavailable (poll instead), TimeoutError, or
        XenAPI.Failure(HANDLE_INVALID) for a task that vanished."""
        if self.no_events:
            raise Unavailable(self.no_events)
        registered = time.monotonic()
        deadline = registered + timeout_s
        shown = None
        with self._cond:
            self._waiting[task] = self._waiting.get(task, 0) + 1
            self._ensure_thread()
            self._cond.notify_all()
            try:
                while True:
                    if task in self._gone:
                        raise XenAPI.Failure(["HANDLE_INVALID", "task", task])
                    rec = self._seen.get(task)
                    if rec is not None and rec.get("status") in ENDED:
                        return rec
                    if rec is not None and progress and rec.get("progress") != shown:
                        shown = rec.get("progress")
                        progress(float(shown))
                    self._assert_usable(started=time.monotonic())
                    if task not in self._subscribed and time.monotonic() - registered > SUBSCRIBE_WAIT_S:
                        # the watcher is still in a long poll over other tasks (it cannot be told
                        # of this one until that call returns): don't wait for it
                        raise Unavailable("the event connection is busy with other tasks")
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(task)
                    self._cond.wait(min(left, 1.0))
            finally:
                self._forget(task)

    def _assert_usable(self, started: float) -> None:
        if self.no_events:
            raise Unavailable(self.no_events)
        if self._broken_at and self._broken_at >= self._last_answer:
            raise Unavailable("the event connection failed")
        if started - self._last_answer > LONG_POLL_S + SILENT_GRACE_S:
            raise Unavailable("the event connection is silent")

    def _forget(self, task: str) -> None:
        n = self._waiting.get(task, 0) - 1
        if n > 0:
            self._waiting[task] = n
            return
        self._waiting.pop(task, None)
        self._seen.pop(task, None)
        self._gone.discard(task)

    # -- the watcher's thread --------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._last_answer = time.monotonic()
            self._broken_at = 0.0
            self._thread = threading.Thread(target=self._loop, name="tinabs-task-events", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        session, token, subscribed, settle = None, "", (), SETTLE_S
        while True:
            with self._cond:
                while not self._waiting:  # nothing to watch: no calls at all
                    if not self._cond.wait(IDLE_S) and not self._waiting:
                        self._thread = None  # the next waiter starts another thread
                        break
                idle = not self._waiting
                # tasks already ended are their waiters' to read now: watching them more would only
                # bring their del event when they are destroyed, one call for nothing
                wanted = tuple(sorted(t for t in self._waiting if t not in self._gone
                                      and self._seen.get(t, {}).get("status") not in ENDED))
                if not wanted and not idle:
                    self._cond.wait(1.0)  # its waiters are reading their ended tasks: wait for them
                    continue
                if wanted != subscribed:
                    if not set(wanted) <= set(subscribed):  # new tasks: their current records first
                        token, settle = "", SETTLE_S
                    subscribed = wanted  # fewer tasks: the token still holds for them
                    self._subscribed = frozenset(wanted)
            if idle:  # a minute with nothing to wait for: give the pool its session back
                if session is not None:
                    session.logout()
                return
            fresh = token == ""  # the answer holds the tasks' current records: no wait behind it
            try:
                if session is None:
                    session = self._open_session()
                answer = getattr(session.xenapi.event, "from")([f"task/{t}" for t in subscribed], token,
                                                               LONG_POLL_S)
            except XenAPI.Failure as exc:
                if self._failed(exc.details[0] if exc.details else "", exc):
                    return
                session = None
                time.sleep(1.0)
                continue
            except Exception as exc:  # the pool unreachable: waiters poll and meet it themselves
                self._failed("", exc)
                session = None
                time.sleep(1.0)
                continue
            token = answer["token"]
            relevant, ended = self._take(answer["events"])
            if relevant and not ended and not fresh:
                time.sleep(settle)  # only progress: let it gather before asking again
                settle = min(SETTLE_MAX_S, settle * 2)
            else:
                settle = SETTLE_S

    def _failed(self, code: str, exc: BaseException) -> bool:
        """Record a failed call; True when the pool has no events at all (the loop ends)."""
        with self._cond:
            if code in UNKNOWN_MESSAGE_CODES:  # the pool has no event.from: poll from then on
                self.no_events = f"the pool has no event.from ({code}): polling tasks"
                log.info("%s", self.no_events)
                self._thread = None
                self._cond.notify_all()
                return True
            log.info("task events: %s; waiters poll meanwhile", exc)
            self._broken_at = time.monotonic()
            self._cond.notify_all()
            return False

    def _take(self, events: list) -> tuple[int, int]:
        """Apply a batch of events; (events of waited-for tasks, how many of those tasks it ended)."""
        relevant = ended = 0
        with self._cond:
            self._last_answer = time.monotonic()
            for event in events:
                ref = event.get("ref")
                if event.get("class") != "task" or ref not in self._waiting:
                    continue
                relevant += 1
                if event.get("operation") == "del":
                    self._gone.add(ref)
                    ended += 1
                    continue
                snapshot = event.get("snapshot") or {}
                self._seen[ref] = snapshot
                ended += snapshot.get("status") in ENDED
            self._cond.notify_all()
        return relevant, ended


_watchers: dict[str, TaskWatcher] = {}
_lock = threading.Lock()


def watcher_for(pool_name: str, open_session) -> TaskWatcher:
    """This process's watcher of ``pool_name`` (made on first use)."""
    with _lock:
        watcher = _watchers.get(pool_name)
        if watcher is None:
            watcher = _watchers[pool_name] = TaskWatcher(open_session)
        return watcher


# A forked worker child has none of its parent's threads: it starts its own watchers.
os.register_at_fork(after_in_child=_watchers.clear)
