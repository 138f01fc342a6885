"""Exceptions stages raise to steer the retry policy."""
from __future__ import annotations

from tinabs_tasks.runs.slots import WaitForSlot  # noqa: F401 (raised by the transfer stages)
from tinabs_tasks.xapi.errors import StageError


class Permanent(StageError):
    """Retrying cannot help; the message says what the user should do."""

    def __init__(self, message: str, code: str = "PERMANENT"):
        super().__init__(message, transient=False, code=code)


class StageFailed(Exception):
    """Raised by a task that gave up: its message is the reason shown everywhere."""
