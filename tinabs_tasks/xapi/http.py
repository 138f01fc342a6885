"""HTTP transfers with a pool: /export and /export_metadata downloads.

The body goes to a sink callable; redirects (302 to the host that sees the
storage) are followed keeping the session; a transfer that ends before its
end marker raises StreamCut so the stage retries from a clean start.  The task
the transfer runs under, and the pool's reason when it fails, are ``xapi.transfer``'s.
"""
from __future__ import annotations

import http.client
import queue
import threading
import urllib.parse

from tinabs_tasks.xapi.errors import StreamCut
from tinabs_tasks.xapi.tls import PinnedHTTPSConnection

BUFFER = 4 << 20
RING = 4
MAX_REDIRECTS = 3
TAR_END = bytes(1024)


def open_get(base_url: str, path: str, query: dict, context, timeout: float = 300.0):
    """(connection, response) of a GET, following 302s; raises on other statuses."""
    url = base_url.rstrip("/") + path + "?" + urllib.parse.urlencode(query)
    for _hop in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        cls = PinnedHTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        kwargs = {"context": context} if parts.scheme == "https" else {}
        conn = cls(parts.hostname, parts.port, timeout=timeout, **kwargs)
        conn.request("GET", parts.path + ("?" + parts.query if parts.query else ""))
        resp = conn.getresponse()
        if resp.status in (301, 302, 303, 307) and resp.getheader("Location"):
            url = resp.getheader("Location")
            if parts.scheme == "https" and url.startswith("http://"):
                url = "https://" + url[len("http://"):]  # never downgrade a redirect to cleartext
            conn.close()
            continue
        if resp.status != 200:
            body = resp.read(2000).decode(errors="replace").strip()
            conn.close()
            raise http.client.HTTPException(f"HTTP {resp.status} from {parts.hostname}{parts.path}: {body}")
        return conn, resp
    raise http.client.HTTPException(f"too many redirects for {path}")


class _Rings:
    """Rings of buffers kept for the next transfer: zeroing 16 MiB for every download costs more
    CPU than a small backup's whole transfer.  A process keeps as many rings as it ran transfers
    at once (one, in a prefork worker's child)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._kept: list[list[bytearray]] = []

    def take(self) -> list[bytearray]:
        with self._lock:
            if self._kept:
                return self._kept.pop()
        return [bytearray(BUFFER) for _ in range(RING)]

    def give(self, ring: list[bytearray]) -> None:
        with self._lock:
            self._kept.append(ring)


_RINGS = _Rings()


def stream_to(resp, sinks, progress=None, expect_tar_end: bool = True) -> int:
    """Copy the body into each ``sink(memoryview)``; returns bytes; StreamCut if incomplete.

    Reading the socket and each sink (say, hashing and writing the file) run
    on their own threads over a small ring of large buffers: all of them
    release the GIL, so a transfer costs about the slowest of them, not their
    sum.  Each sink sees every chunk, in order, from one thread; a buffer is
    reused once every sink is done with it.
    """
    ring = _RINGS.take()
    try:
        return _stream(resp, sinks, progress, expect_tar_end, ring)
    finally:
        _RINGS.give(ring)  # every sink thread has let go of it (joined below)


def _stream(resp, sinks, progress, expect_tar_end: bool, ring: list[bytearray]) -> int:
    free: queue.Queue = queue.Queue()
    for i in range(RING):
        free.put(i)
    pending = [0] * RING
    lock = threading.Lock()
    failure: list[BaseException] = []

    def release(index: int) -> None:
        with lock:
            pending[index] -= 1
            last = pending[index] == 0
        if last:
            free.put(index)

    def consume(sink, inbox: queue.Queue):
        while (item := inbox.get()) is not None:
            index, n = item
            try:
                if not failure:
                    sink(memoryview(ring[index])[:n])
            except BaseException as exc:  # handed to the reading thread, which raises it
                failure.append(exc)
            release(index)

    inboxes = [queue.Queue() for _ in sinks]
    workers = [threading.Thread(target=consume, args=(sink, inbox), name="tinabs-stream-sink", daemon=True)
               for sink, inbox in zip(sinks, inboxes)]
    for worker in workers:
        worker.start()
    total, tail = 0, b""
    length = resp.getheader("Content-Length")
    try:
        while not failure:
            index = free.get()
            try:
                n = resp.readinto(ring[index])
            except (http.client.IncompleteRead, ConnectionError, TimeoutError) as exc:
                raise StreamCut(f"after {total} bytes: {type(exc).__name__}") from None
            if not n:
                free.put(index)
                break
            tail = (tail + bytes(memoryview(ring[index])[max(0, n - len(TAR_END)):n]))[-len(TAR_END):]
            pending[index] = len(sinks)
            for inbox in inboxes:
                inbox.put((index, n))
            total += n
            if progress:
                progress(total)
    finally:
        for inbox in inboxes:
            inbox.put(None)
        for worker in workers:
            worker.join()
    if failure:
        raise failure[0]
    if length is not None and int(length) != total:
        raise StreamCut(f"got {total} of {length} bytes")
    if expect_tar_end and tail != TAR_END:
        raise StreamCut(f"after {total} bytes, no end-of-archive marker")
    return total
