"""Waiting for a CLI process a test started in the background."""
from __future__ import annotations

import subprocess


def finish(proc: subprocess.Popen, what: str, timeout: float) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) once it ends; a failure naming `what` if it does not in time."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{what} never ended (in {timeout}s):\n{out}\n{err}") from None
    return proc.returncode, out, err
