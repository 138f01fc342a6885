"""HTTP transfers with a pool under an XAPI task: downloads (/export*) and uploads (/import*).

One protocol for both directions: create a task, mark it with the run (so
an abort cancels it and a later delivery finds what it made, ``port.orphans_of``),
do the HTTP transfer with ``task_id``, wait for the task, destroy it.  When
the transfer fails (an HTTP error status, a cut), the HTTP side says nothing
a program can classify; the task's ``error_info`` does, and becomes the
error raised:

- a code that only echoes the cut (``Direction.echoes``): a download's own
  error stands; an upload raises UploadCut (worth a retry);
- ``SESSION_AUTHENTICATION_FAILED``: the handler refused a session XML-RPC
  accepted a moment ago (it expired), so SESSION_INVALID (log in again),
  never a wrong-password verdict;
- any other code: that XenAPI.Failure (e.g. VM_BAD_POWER_STATE, permanent).

An upload whose body's own source fails (``upload.SourceFailed``: a backup rebuilt from the
repository with a damaged block, say) is cut by us, not by the network or the pool: the pool's
task is given the moment it needs to fail and roll back, and then the source's error is raised
as it is (it names what is damaged), never the pool's echo of the cut.

The HTTP mechanics are in ``xapi/http.py`` (GET) and ``xapi/upload.py`` (PUT);
what happens to the bytes (files, hashes) is the caller's.
"""
from __future__ import annotations

import http.client
from dataclasses import dataclass
from typing import Callable

import XenAPI

from tinabs_tasks.xapi import http as xhttp
from tinabs_tasks.xapi import upload as xupload
from tinabs_tasks.xapi.errors import StreamCut


@dataclass(frozen=True)
class Direction:
    """How a failed transfer in one direction is told apart from what the pool says about it."""

    #: failures of the HTTP side after which the task's error_info is read
    errors: tuple[type[BaseException], ...]
    #: task codes that say no more than the cut itself
    echoes: frozenset[str]
    #: what an echo becomes (None: the transfer's own error, or the task's Failure, stands)
    echo: Callable[[str], BaseException] | None = None
    #: of ``errors``, those that mean the connection was cut: the pool takes longer to end the task
    cuts: tuple[type[BaseException], ...] = ()
    #: how long to wait for the task to end before reading its error_info (after a cut / otherwise)
    cut_wait_s: float = 2.0
    wait_s: float = 2.0
    #: of ``errors``, our own failures: once the task has ended (waiting up to ``cut_wait_s``), they stand
    own: tuple[type[BaseException], ...] = ()


#: GET: how a failed download shows on our side; CLIENT_ERROR only echoes the cut connection,
#: and the StreamCut or HTTP error is clearer
DOWNLOAD = Direction(errors=(http.client.HTTPException, StreamCut, ConnectionError, TimeoutError),
                     echoes=frozenset({"CLIENT_ERROR"}))
#: PUT: the pool's import task says the body ended early: the cut is the reason, and worth a retry
UPLOAD = Direction(errors=(Exception,), echoes=frozenset({"IMPORT_ERROR_PREMATURE_EOF", "CLIENT_ERROR"}),
                   echo=lambda code: xupload.UploadCut(f"the pool got part of the upload only ({code})"),
                   cuts=(xupload.UploadCut, OSError, ConnectionError), cut_wait_s=10.0,
                   own=(xupload.SourceFailed,))


def download(xapi, handler: str, query: dict, sinks, *, label: str, run: str | None = None, progress=None,
             expect_tar_end: bool = True, wait_timeout_s: float = 60.0) -> int:
    """GET ``handler`` under a task into each of ``sinks`` (``xhttp.stream_to``); returns the bytes."""
    def send(task: str) -> int:
        conn, resp = xhttp.open_get(xapi.base_url, handler, with_task(xapi, query, task), xapi.session.context)
        try:
            return xhttp.stream_to(resp, sinks, progress, expect_tar_end)
        finally:
            conn.close()

    size, _result = under_task(xapi, label, send, DOWNLOAD, run=run, timeout_s=wait_timeout_s)
    return size


def upload(xapi, handler: str, query: dict, body, *, label: str, run: str | None = None, progress=None,
           task_progress=None):
    """PUT ``body`` (a file path or an ``upload.Body``) to ``handler`` under a task; returns the
    task's decoded result (the imported VMs).  ``progress(bytes sent)``; ``task_progress(fraction)``
    while the pool works.  When the body's source fails, its own error is raised."""
    def send(task: str) -> dict:
        return xupload.put_file(xapi.base_url, handler, with_task(xapi, query, task), body, xapi.session.context,
                                progress=progress)

    try:
        _answer, result = under_task(xapi, label, send, UPLOAD, run=run, progress=task_progress)
    except xupload.SourceFailed as exc:
        raise exc.error from None
    return result


def with_task(xapi, query: dict, task: str) -> dict:
    """The query of a transfer: the session it runs in and the task that tracks it."""
    return {**query, "session_id": xapi.handle, "task_id": task}


def under_task(xapi, label: str, send, direction: Direction, *, run: str | None = None, progress=None,
               timeout_s: float = 6 * 3600):
    """``send(task)`` under a new task marked with ``run``, then wait for the task; returns
    (what ``send`` returned, the task's decoded result).  Failures are classified by
    ``direction``; the task is always destroyed."""
    task = xapi.x.task.create(label, "")
    try:
        if run:  # a transfer that ends after this worker died is found again through its task
            xapi.mark_task(task, run, transfer=True)
        try:
            sent = send(task)
        except direction.errors as exc:
            if isinstance(exc, direction.own):  # ours: the pool ends (and rolls back) its task first
                xapi.task_error(task, wait_s=direction.cut_wait_s)
                raise
            better = pool_reason(xapi, task, exc, direction)
            if better is not None:
                raise better from exc
            raise
        try:
            return sent, xapi.wait_task(task, progress=progress, timeout_s=timeout_s)
        except XenAPI.Failure as exc:  # the body went out whole, but was cut on the way
            if direction.echo and exc.details and exc.details[0] in direction.echoes:
                raise direction.echo(exc.details[0]) from exc
            raise
    finally:
        xapi._destroy_task(task)


def pool_reason(xapi, task: str, exc: BaseException, direction: Direction) -> BaseException | None:
    """What to raise for the transfer failure ``exc``: the pool's reason, read from the task's
    error_info; None when the transfer's own error says more (or the task says nothing)."""
    wait_s = direction.cut_wait_s if isinstance(exc, direction.cuts) else direction.wait_s
    return classify(xapi.task_error(task, wait_s=wait_s), direction)


def classify(error: list[str] | None, direction: Direction) -> BaseException | None:
    """The exception for a failed transfer task's ``error_info`` (see the module's docstring)."""
    if not error:
        return None
    if error[0] in direction.echoes:
        return direction.echo(error[0]) if direction.echo else None
    if error[0] == "SESSION_AUTHENTICATION_FAILED":
        return XenAPI.Failure(["SESSION_INVALID", *error[1:]])
    return XenAPI.Failure(error)
