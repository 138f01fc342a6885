"""HTTP uploads to a pool: a body PUT to /import or /import_metadata.

The body is a file (its path) or any ``Body``: a known size and a way to iterate its
bytes from the start, e.g. an XVA rebuilt from a repository as it is sent (never
written to a temp file).  xapi refuses chunked transfer encoding on /import
(IMPORT_ERROR_CANNOT_HANDLE_CHUNKED), so the body is sent raw with a Content-Length
(the body's size), in pieces (memory does not grow with the body).  xapi answers
*before* it reads the body: 200 with a ``task-id`` header, or 302 to the host that
sees the SR.  So the request head goes first, the early answer is read, a 302 is
followed (same query, session kept; never downgraded to cleartext) and only then the
body is sent; a 302 that comes only after the body (the early answer was late) is
followed too, and every hop sends the body again from its start (``pieces()`` anew).
A body the pool stops reading (it failed the import) raises UploadCut; the pool's
reason is on the task, which ``xapi.transfer`` reads.  A body whose own source fails
(a damaged backup, more or fewer bytes than its size) raises SourceFailed carrying that
error: the connection is closed short of Content-Length, so the pool's import fails
and rolls back what it made.
"""
from __future__ import annotations

import http.client
import os
import select
import socket
import ssl
import struct
import urllib.parse
from collections.abc import Iterator
from typing import Protocol

from tinabs_tasks.xapi import tls

PIECE = 1 << 20
MAX_REDIRECTS = 3
#: how long to wait for xapi's early answer before sending the body anyway
EARLY_ANSWER_S = 10.0


class UploadCut(ConnectionError):
    """The pool closed the connection before it had the whole body."""


class SourceFailed(Exception):
    """The body's source failed while it was being sent (not the network, not the pool); ``error``
    is what it raised.  The upload was cut short of its Content-Length."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class Body(Protocol):
    """What an upload sends: ``size`` bytes, which ``pieces()`` yields from the start each time."""

    size: int

    def pieces(self) -> Iterator[bytes]: ...


class FileBody:
    """``prefix`` + the file at ``path`` from ``offset``, read in PIECE-sized pieces."""

    def __init__(self, path: str, offset: int = 0, prefix: bytes = b""):
        self.path, self.offset, self.prefix = path, offset, prefix
        self.size = len(prefix) + os.path.getsize(path) - offset

    def pieces(self) -> Iterator[bytes]:
        if self.prefix:
            yield self.prefix
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            while piece := fh.read(PIECE):
                yield piece


def put_file(base_url: str, path: str, query: dict, body: "str | Body", context: ssl.SSLContext | None = None,
             progress=None, timeout: float = 300.0, offset: int = 0, prefix: bytes = b"") -> dict:
    """PUT ``body`` (a ``Body``, or a file path: ``prefix`` + that file from ``offset``) to
    ``base_url + path``; returns ``{"status", "task_id", "sent", "url"}`` once the body is sent
    and the answer read."""
    if isinstance(body, (str, os.PathLike)):
        body = FileBody(os.fspath(body), offset, prefix)
    size = body.size
    url = base_url.rstrip("/") + path + "?" + urllib.parse.urlencode(query)
    for _hop in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        sock = _connect(parts, context, timeout)
        reader = None
        try:
            target = parts.path + ("?" + parts.query if parts.query else "")
            host = parts.hostname + (f":{parts.port}" if parts.port else "")
            head = (f"PUT {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tinabs\r\n"
                    f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n"
                    "Connection: close\r\n\r\n")
            sock.sendall(head.encode("latin-1"))
            reader = sock.makefile("rb")
            answer = None
            if _readable(sock, EARLY_ANSWER_S):
                answer = _read_answer(reader)
                if _follow(answer):
                    url = _location(answer, parts)
                    continue
                if answer[0] != 200:
                    raise http.client.HTTPException(
                        f"HTTP {answer[0]} from {parts.hostname}{parts.path}: {answer[2]}")
            try:
                sent = _send_body(sock, body, progress)
            except SourceFailed:
                _abort(sock)  # a reset, never a clean end: the pool cannot take a cut body for a whole one
                raise
            if answer is None:
                answer = _read_answer(reader)
                if _follow(answer):  # the redirect came after the body: send it again, from its start
                    url = _location(answer, parts)
                    continue
                if answer[0] != 200:
                    raise http.client.HTTPException(
                        f"HTTP {answer[0]} from {parts.hostname}{parts.path}: {answer[2]}")
            return {"status": answer[0], "task_id": answer[1].get("task-id"), "sent": sent, "url": url}
        finally:
            try:
                if reader is not None:  # it holds the socket open: the connection ends only with both closed
                    reader.close()
                sock.close()
            except OSError:
                pass
    raise http.client.HTTPException(f"too many redirects for {path}")


def _abort(sock) -> None:
    """Make the socket's close a reset (RST) rather than an orderly end (FIN)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


def _follow(answer) -> bool:
    return answer[0] in (301, 302, 303, 307) and bool(answer[1].get("Location"))


def _location(answer, parts) -> str:
    url = answer[1]["Location"]
    if parts.scheme == "https" and url.startswith("http://"):
        url = "https://" + url[len("http://"):]
    return url


def _connect(parts, context, timeout: float):
    port = parts.port or (443 if parts.scheme == "https" else 80)
    sock = socket.create_connection((parts.hostname, port), timeout=timeout)
    if parts.scheme == "https":
        ctx = context or ssl.create_default_context()
        try:
            sock = tls.wrap(ctx, sock, parts.hostname)  # pin checked, if the pool has one
        except BaseException:
            sock.close()
            raise
    return sock


def _readable(sock, wait_s: float) -> bool:
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    ready, _, _ = select.select([sock], [], [], wait_s)
    return bool(ready)


def _read_answer(reader) -> tuple[int, dict, str]:
    """(status, headers, short body) of an HTTP answer."""
    line = reader.readline(65537)
    if not line:
        raise UploadCut("the pool closed the connection without an answer")
    try:
        _version, status, *_ = line.decode("latin-1").split(None, 2)
        status = int(status)
    except ValueError:
        raise http.client.HTTPException(f"bad status line {line[:80]!r}") from None
    msg = http.client.parse_headers(reader)
    headers = {k: v for k, v in msg.items()}
    headers.update({k.lower(): v for k, v in msg.items()})
    body = ""
    length = msg.get("Content-Length")
    if status != 200 and length and length.isdigit() and int(length) > 0:
        body = reader.read(min(int(length), 2000)).decode(errors="replace").strip()
    return status, headers, body


def _send_body(sock, body: Body, progress) -> int:
    """Send ``body.size`` bytes of ``body.pieces()``; SourceFailed when the source raises or gives
    more or fewer bytes (the connection is then closed short of Content-Length by the caller)."""
    sent = 0
    pieces = iter(body.pieces())
    try:
        while True:
            try:
                piece = next(pieces)
            except StopIteration:
                break
            except Exception as exc:  # the source's failure, not the network's: its own error stands
                raise SourceFailed(exc) from exc
            if sent + len(piece) > body.size:
                raise SourceFailed(ValueError(f"the upload's source gave more than its {body.size} bytes"))
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout) as exc:
                raise UploadCut(f"the pool stopped reading after {sent} bytes ({type(exc).__name__})") from None
            sent += len(piece)
            if progress:
                progress(sent)
    finally:
        getattr(pieces, "close", lambda: None)()  # a file the source opened is closed now, not at GC
    if sent != body.size:
        raise SourceFailed(ValueError(f"the upload's source ended after {sent} of its {body.size} bytes"))
    return sent
