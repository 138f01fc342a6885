"""Exceptions stages raise to steer the retry policy."""
from __future__ import annotations

from tinabs_tasks.xapi.errors import StageError


class Permanent(StageError):
    """Retrying cannot help; the message says what the user should do."""

    def __init__(self, message: str, code: str = "PERMANENT"):
        super().__init__(message, transient=False, code=code)


class WaitForSlot(Exception):
    """The pool's export/copy limit is reached, or another worker holds this run's lease:
    come back shortly. Not a failure, so it does not use up retries."""


class StageFailed(Exception):
    """Raised by a task that gave up: its message is the reason shown everywhere."""
