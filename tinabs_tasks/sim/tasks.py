"""XAPI task objects: Async calls, HTTP handler tasks, progress and cancellation."""
from __future__ import annotations

import datetime as dt
import threading
import time

from tinabs_tasks.sim import wire
from tinabs_tasks.sim.datamodel import NULL_REF
from tinabs_tasks.sim.errors import XapiError


#: the least time between two progress writes of one task (see Tasks.progress)
PROGRESS_EVERY_S = 0.5


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


class TaskCancelled(XapiError):
    def __init__(self, task: str):
        super().__init__("TASK_CANCELLED", task)


class Tasks:
    """Task lifecycle on one pool's store (taskHelper.ml semantics)."""

    def __init__(self, store, host_ref: str):
        self.store = store
        self.host_ref = host_ref
        self._progress_at: dict[str, float] = {}  # task -> when its progress was last written

    def create(self, label: str, description: str = "", cancellable: bool = True) -> str:
        ref = self.store.create("task", {
            "name_label": label, "name_description": description, "status": "pending",
            "progress": 0.0, "created": now(), "finished": wire_epoch(), "resident_on": self.host_ref,
            "allowed_operations": ["cancel"] if cancellable else [], "current_operations": {},
            "result": "", "error_info": [], "other_config": {}, "subtask_of": NULL_REF,
            "type": "<none/>", "backtrace": "()",
        })
        self._progress_at[ref] = time.monotonic()
        return ref

    def progress(self, ref: str, fraction: float) -> None:
        """Record a task's progress, at most once per PROGRESS_EVERY_S: xapi writes progress to its
        database as the operation reports it, in steps (the storage backend's percentages), and
        every write is an event that wakes each ``event.from`` watching the task; a simulator
        writing every 50 ms would wake them twenty times a second."""
        if not ref or not self.store.exists("task", ref):
            return
        now_s = time.monotonic()
        if now_s - self._progress_at.get(ref, 0.0) < PROGRESS_EVERY_S:
            return
        self._progress_at[ref] = now_s
        if len(self._progress_at) > 4096:  # forget tasks long gone
            self._progress_at = {r: t for r, t in self._progress_at.items() if now_s - t < 60}
        self.store.set("task", ref, "progress", max(0.0, min(1.0, fraction)))

    def check_cancel(self, ref: str | None) -> None:
        if ref and self.store.exists("task", ref) and self.store.get("task", ref, "status") == "cancelling":
            raise TaskCancelled(ref)

    def succeed(self, ref: str, result=None) -> None:
        if not self.store.exists("task", ref):
            return
        self.store.update("task", ref, status="success", progress=1.0, finished=now(),
                          result=wire.fragment("" if result is None else result),
                          allowed_operations=[], current_operations={})

    def fail(self, ref: str, error: XapiError) -> None:
        if not self.store.exists("task", ref):
            return
        status = "cancelled" if error.code == "TASK_CANCELLED" else "failure"
        self.store.update("task", ref, status=status, finished=now(), error_info=error.description,
                          allowed_operations=[], current_operations={})

    def cancel(self, ref: str) -> None:
        with self.store.lock:
            rec = self.store.record("task", ref)
            if "cancel" not in rec["allowed_operations"] or rec["status"] != "pending":
                raise XapiError("OPERATION_NOT_ALLOWED", f"task {ref} cannot be cancelled in state {rec['status']}")
            self.store.update("task", ref, status="cancelling", current_operations={ref: "cancel"})

    def run_async(self, label: str, work) -> str:
        """Start ``work(task_ref)`` in a thread; its return value is the task result."""
        ref = self.create(f"Async.{label}", "")

        def runner():
            try:
                result = work(ref)
            except XapiError as exc:
                self.fail(ref, exc)
            except Exception as exc:  # a simulator bug: surface it as xapi would
                self.fail(ref, XapiError("INTERNAL_ERROR", repr(exc)))
            else:
                self.succeed(ref, result)

        threading.Thread(target=runner, name=f"task {label}", daemon=True).start()
        return ref

    def sleep(self, ref: str | None, seconds: float, start: float = 0.0, span: float = 1.0) -> None:
        """Pass ``seconds`` of simulated work, advancing progress from start to start+span."""
        if seconds <= 0:
            return
        began = time.monotonic()
        while True:
            self.check_cancel(ref)
            elapsed = time.monotonic() - began
            if ref:
                self.progress(ref, start + span * min(1.0, elapsed / seconds))
            if elapsed >= seconds:
                return
            time.sleep(min(0.05, seconds - elapsed))


def wire_epoch() -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
