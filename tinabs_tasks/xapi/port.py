"""The XAPI port the stages use: one pool session plus waiting on XAPI tasks."""
from __future__ import annotations

import time
import xmlrpc.client

import XenAPI

from tinabs_tasks.xapi import task_events
from tinabs_tasks.xapi.connect import PoolSession
from tinabs_tasks.xapi.errors import UNKNOWN_MESSAGE_CODES

NULL_REF = "OpaqueRef:NULL"
#: on the XAPI tasks tinabs starts: the run they belong to, so the objects a task made after its
#: worker died (a snapshot, a clone, an import) are found again through the task
TASK_RUN = "tinabs:task-of"
#: how long to wait for such a task; one nobody drives (an HTTP transfer's task whose client
#: died before sending) never ends by itself, and is cancelled after this
ORPHAN_WAIT_S = 600.0
TASK_TRANSFER = "tinabs:transfer"
#: a transfer whose client died ends within moments (the pool sees the cut) or never
ORPHAN_TRANSFER_WAIT_S = 10.0
#: pools (master URLs) that answered get_all_records_where with MESSAGE_METHOD_UNKNOWN
_NO_WHERE: set[str] = set()
POLL_MIN_S = 0.01
POLL_MAX_S = 0.5


class Xapi:
    def __init__(self, session: PoolSession):
        self.session = session
        self.x = session.xenapi
        self.pool = session.pool

    @property
    def base_url(self) -> str:
        return self.session.url

    @property
    def handle(self) -> str:
        return self.session.handle

    def start_async(self, method: str, *args) -> str:
        """Start ``Async.<method>`` and return its task (for work that can overlap)."""
        target = self.x.Async
        for part in method.split("."):
            target = getattr(target, part)
        return target(*args)

    def finish(self, task: str, progress=None, poll_s: float = POLL_MAX_S, timeout_s: float = 6 * 3600):
        """Wait for a task from start_async, destroy it, return its result."""
        try:
            return self.wait_task(task, progress, poll_s, timeout_s)
        finally:
            self._destroy_task(task)

    def call_async(self, method: str, *args, progress=None, poll_s: float = POLL_MAX_S,
                   timeout_s: float = 6 * 3600):
        """Run ``Async.<method>`` and wait: returns the decoded result, raises XenAPI.Failure."""
        task = self.start_async(method, *args)
        try:
            return self.wait_task(task, progress, poll_s, timeout_s)
        finally:
            self._destroy_task(task)

    def call_async_marked(self, method: str, *args, run: str, progress=None, poll_s: float = POLL_MAX_S):
        """``call_async`` whose task carries ``run``: see ``orphans_of``."""
        task = self.start_async(method, *args)
        try:
            self.mark_task(task, run)
            return self.wait_task(task, progress, poll_s)
        finally:
            self._destroy_task(task)

    def mark_task(self, task: str, run: str, transfer: bool = False) -> None:
        """``transfer``: the task of an HTTP transfer, which only its client drives."""
        self.x.task.add_to_other_config(task, TASK_RUN, run)
        if transfer:
            self.x.task.add_to_other_config(task, TASK_TRANSFER, "true")

    def orphans_of(self, run: str, progress=None) -> list[str]:
        """What tasks of ``run`` made whose worker died waiting for them: the results of the
        finished ones, after waiting for the running ones (each task destroyed once read)."""
        found = []
        for task, rec in self.x.task.get_all_records().items():
            if rec["other_config"].get(TASK_RUN) != run:
                continue
            transfer = rec["other_config"].get(TASK_TRANSFER) == "true"
            try:
                result = self.finish(task, progress, timeout_s=ORPHAN_TRANSFER_WAIT_S if transfer else ORPHAN_WAIT_S)
            except XenAPI.Failure:  # that attempt failed (or never sent its data): it made nothing
                continue
            found += [r for r in (result if isinstance(result, list) else str(result).split(","))
                      if r.startswith("OpaqueRef:") and r != NULL_REF]
        return found

    def wait_task(self, task: str, progress=None, poll_s: float = POLL_MAX_S, timeout_s: float = 6 * 3600):
        """Wait for a task to end: by events where the pool has them (xapi/task_events.py: one
        ``event.from`` connection per pool in this process), else by polling.  Returns its decoded
        result; raises XenAPI.Failure with its error_info, or TASK_TIMEOUT after cancelling it."""
        deadline = time.monotonic() + timeout_s
        if self.pool.task_wait == "events":
            watcher = task_events.watcher_for(self.pool.name, lambda: PoolSession(self.pool))
            try:
                return self._outcome(task, watcher.wait(task, progress, timeout_s))
            except task_events.Unavailable:
                pass  # no events from this pool now: poll what is left of the wait
            except TimeoutError:
                self.x.task.cancel(task)
                raise XenAPI.Failure(["TASK_TIMEOUT", task]) from None
        return self._poll_task(task, progress, poll_s, deadline)

    def _poll_task(self, task: str, progress, poll_s: float, deadline: float):
        """Poll a task until it ends (or ``deadline``).  The interval starts at 10 ms and doubles up
        to ``poll_s``: most tasks end within a few hundred ms, and a fixed 200 ms poll would add
        ~100 ms to each."""
        interval = POLL_MIN_S
        while True:
            rec = self.x.task.get_record(task)
            if rec["status"] in ("success", "failure", "cancelled"):
                return self._outcome(task, rec)
            if progress:
                progress(float(rec["progress"]))
            if time.monotonic() > deadline:
                self.x.task.cancel(task)
                raise XenAPI.Failure(["TASK_TIMEOUT", task])
            time.sleep(interval)
            interval = min(poll_s, interval * 2)

    @staticmethod
    def _outcome(task: str, rec: dict):
        """An ended task's decoded result, or its error as XenAPI.Failure."""
        if rec["status"] == "success":
            return decode_result(rec["result"])
        raise XenAPI.Failure(rec["error_info"] or ["TASK_FAILED", task])

    def task_error(self, task: str, wait_s: float = 2.0) -> list[str] | None:
        """The XAPI error a failed task carries, waiting briefly for it to end; None if it did not fail.

        An HTTP handler that fails answers 500/404 or cuts the stream: the HTTP side says nothing a
        program can classify, the task's ``error_info`` does (e.g. VM_BAD_POWER_STATE, permanent).
        """
        deadline = time.monotonic() + wait_s
        while True:
            try:
                rec = self.x.task.get_record(task)
            except (XenAPI.Failure, OSError, xmlrpc.client.ProtocolError):
                return None  # the pool is unreachable too: the transfer error stands
            if rec["status"] == "failure":
                return [str(d) for d in rec["error_info"]] or None
            if rec["status"] != "pending" or time.monotonic() > deadline:
                return None
            time.sleep(0.1)

    def _destroy_task(self, task: str) -> None:
        try:
            self.x.task.destroy(task)
        except (XenAPI.Failure, OSError):
            pass  # tasks are garbage-collected by xapi eventually; never fail a stage over it

    def records_where(self, cls: str, field: str, ref: str, refs_of) -> dict[str, dict]:
        """Every ``cls`` record whose ``field`` is ``ref``, in one call where the pool can
        (``_where``); else the refs ``refs_of()`` names, read one by one."""
        found = self._where(cls, f'field "{field}" = "{ref}"')
        if found is not None:
            return found
        api = getattr(self.x, cls)
        return {r: api.get_record(r) for r in refs_of()}

    def refs_named(self, cls: str, labels: list[str]) -> dict[str, str]:
        """ref -> name for every ``cls`` object named one of ``labels``: one ``_where`` call
        (``field "name__label"``: the database column, db_filter.ml), else one get_by_name_label
        per label.  A label the filter language cannot quote (a double quote or a backslash in a
        VM's name) is looked up by itself."""
        found = {}
        plain = [label for label in labels if '"' not in label and "\\" not in label]
        odd = [label for label in labels if label not in plain]
        if len(plain) > 1:
            records = self._where(cls, " or ".join(f'field "name__label" = "{label}"' for label in plain))
            if records is not None:
                found = {ref: rec["name_label"] for ref, rec in records.items()}
                plain = []
        api = getattr(self.x, cls)
        for label in plain + odd:
            for ref in api.get_by_name_label(label):
                found.setdefault(ref, label)
        return found

    def _where(self, cls: str, expr: str) -> dict[str, dict] | None:
        """``<class>.get_all_records_where(expr)``, which xapi generates for every class
        (``datamodel_utils.ml``; hidden from the docs, served over XML-RPC), with xapi's filter
        language (``db_filter.ml``); None from a pool that does not know it (remembered per master
        in this process, so it is asked once)."""
        if self.session.url in _NO_WHERE:
            return None
        try:
            return getattr(self.x, cls).get_all_records_where(expr)
        except XenAPI.Failure as exc:
            if not exc.details or exc.details[0] not in UNKNOWN_MESSAGE_CODES:
                raise
            _NO_WHERE.add(self.session.url)
            return None

    def sr_by_name_or_uuid(self, wanted: str) -> str:
        try:
            return self.x.SR.get_by_uuid(wanted)
        except XenAPI.Failure:
            pass
        refs = self.x.SR.get_by_name_label(wanted)
        if len(refs) != 1:
            raise XenAPI.Failure(["SR_NOT_FOUND", wanted, f"{len(refs)} SRs with that name"])
        return refs[0]


def decode_result(fragment: str):
    """A task result is an XML-RPC value fragment (``<value>OpaqueRef:..</value>``)."""
    if not fragment:
        return ""
    doc = f"<methodResponse><params><param>{fragment}</param></params></methodResponse>"
    (value,), _ = xmlrpc.client.loads(doc)
    return value
