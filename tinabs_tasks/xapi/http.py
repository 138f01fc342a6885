"""HTTP transfers with a pool: /export and /export_metadata downloads.

The body goes to a sink callable; redirects (302 to the host that sees the
storage) are followed keeping the session; a transfer that ends before its
end marker raises StreamCut so the stage retries from a clean start.
"""
from __future__ import annotations

import http.client
import urllib.parse

from .errors import StreamCut

BUFFER = 4 << 20
MAX_REDIRECTS = 3
TAR_END = bytes(1024)


def open_get(base_url: str, path: str, query: dict, context, timeout: float = 300.0):
    """(connection, response) of a GET, following 302s; raises on other statuses."""
    url = base_url.rstrip("/") + path + "?" + urllib.parse.urlencode(query)
    for _hop in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
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


def stream_to(resp, sink, progress=None, expect_tar_end: bool = True) -> int:
    """Copy the body into ``sink(memoryview)``; returns bytes; StreamCut if incomplete."""
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    total, tail = 0, b""
    length = resp.getheader("Content-Length")
    while True:
        try:
            n = resp.readinto(buf)
        except (http.client.IncompleteRead, ConnectionError, TimeoutError) as exc:
            raise StreamCut(f"after {total} bytes: {type(exc).__name__}") from None
        if not n:
            break
        sink(view[:n])
        total += n
        tail = (tail + bytes(view[max(0, n - 1024):n]))[-1024:]
        if progress:
            progress(total)
    if length is not None and int(length) != total:
        raise StreamCut(f"got {total} of {length} bytes")
    if expect_tar_end and tail != TAR_END:
        raise StreamCut(f"after {total} bytes, no end-of-archive marker")
    return total
