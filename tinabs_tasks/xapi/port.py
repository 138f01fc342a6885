"""The XAPI port the stages use: one pool session plus waiting on XAPI tasks."""
from __future__ import annotations

import time
import xmlrpc.client

import XenAPI

from .connect import PoolSession

NULL_REF = "OpaqueRef:NULL"


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

    def call_async(self, method: str, *args, progress=None, poll_s: float = 0.2, timeout_s: float = 6 * 3600):
        """Run ``Async.<method>`` and wait: returns the decoded result, raises XenAPI.Failure."""
        target = self.x.Async
        for part in method.split("."):
            target = getattr(target, part)
        task = target(*args)
        try:
            return self.wait_task(task, progress, poll_s, timeout_s)
        finally:
            self._destroy_task(task)

    def wait_task(self, task: str, progress=None, poll_s: float = 0.2, timeout_s: float = 6 * 3600):
        deadline = time.monotonic() + timeout_s
        while True:
            rec = self.x.task.get_record(task)
            status = rec["status"]
            if status == "success":
                return decode_result(rec["result"])
            if status in ("failure", "cancelled"):
                raise XenAPI.Failure(rec["error_info"] or ["TASK_FAILED", task])
            if progress:
                progress(float(rec["progress"]))
            if time.monotonic() > deadline:
                self.x.task.cancel(task)
                raise XenAPI.Failure(["TASK_TIMEOUT", task])
            time.sleep(poll_s)

    def _destroy_task(self, task: str) -> None:
        try:
            self.x.task.destroy(task)
        except (XenAPI.Failure, OSError):
            pass  # tasks are garbage-collected by xapi eventually; never fail a stage over it

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
