"""HTTP uploads to a pool: a file PUT to /import or /import_metadata.

xapi refuses chunked transfer encoding on /import (IMPORT_ERROR_CANNOT_HANDLE_CHUNKED),
so the body is sent raw with a Content-Length, streamed from the file in 1 MiB
pieces (memory does not grow with the file).  xapi answers *before* it reads
the body: 200 with a ``task-id`` header, or 302 to the host that sees the SR.
So the request head goes first, the early answer is read, a 302 is followed
(same query, session kept; never downgraded to cleartext) and only then the
body is sent.  A body the pool stops reading (it failed the import) raises
UploadCut; the pool's reason is on the task, which ``xapi.transfer`` reads.
"""
from __future__ import annotations

import http.client
import os
import select
import socket
import ssl
import urllib.parse

from tinabs_tasks.xapi import tls

PIECE = 1 << 20
MAX_REDIRECTS = 3
#: how long to wait for xapi's early answer before sending the body anyway
EARLY_ANSWER_S = 10.0


class UploadCut(ConnectionError):
    """The pool closed the connection before it had the whole body."""


def put_file(base_url: str, path: str, query: dict, file_path: str, context: ssl.SSLContext | None = None,
             progress=None, timeout: float = 300.0, offset: int = 0, prefix: bytes = b"") -> dict:
    """PUT ``prefix`` + ``file_path[offset:]`` to ``base_url + path``; returns
    ``{"status", "task_id", "sent", "url"}`` once the body is sent and the answer read."""
    size = len(prefix) + os.path.getsize(file_path) - offset
    url = base_url.rstrip("/") + path + "?" + urllib.parse.urlencode(query)
    for _hop in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        sock = _connect(parts, context, timeout)
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
                if answer[0] in (301, 302, 303, 307) and answer[1].get("Location"):
                    url = answer[1]["Location"]
                    if parts.scheme == "https" and url.startswith("http://"):
                        url = "https://" + url[len("http://"):]
                    continue
                if answer[0] != 200:
                    raise http.client.HTTPException(
                        f"HTTP {answer[0]} from {parts.hostname}{parts.path}: {answer[2]}")
            sent = _send_body(sock, file_path, offset, prefix, progress)
            if answer is None:
                answer = _read_answer(reader)
                if answer[0] != 200:
                    raise http.client.HTTPException(
                        f"HTTP {answer[0]} from {parts.hostname}{parts.path}: {answer[2]}")
            return {"status": answer[0], "task_id": answer[1].get("task-id"), "sent": sent, "url": url}
        finally:
            try:
                sock.close()
            except OSError:
                pass
    raise http.client.HTTPException(f"too many redirects for {path}")


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


def _send_body(sock, file_path: str, offset: int, prefix: bytes, progress) -> int:
    sent = 0
    try:
        if prefix:
            sock.sendall(prefix)
            sent += len(prefix)
        with open(file_path, "rb") as fh:
            fh.seek(offset)
            while piece := fh.read(PIECE):
                sock.sendall(piece)
                sent += len(piece)
                if progress:
                    progress(sent)
    except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout) as exc:
        raise UploadCut(f"the pool stopped reading after {sent} bytes ({type(exc).__name__})") from None
    return sent
