"""Waiting in end-to-end tests for something other processes make true."""
from __future__ import annotations

import time


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2, explain=None):
    """The first truthy value of ``predicate()``, asked every ``interval`` seconds; after
    ``timeout`` seconds a failure naming ``what`` (and what ``explain()`` says, if given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    detail = f"\n{explain()}" if explain else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
