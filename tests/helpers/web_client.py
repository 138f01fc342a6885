"""A plain HTTP client for the web console, for tests that check what the server itself does
(no browser): it keeps the session cookie by hand, because Python's cookie jar will not send a
Secure cookie over plain HTTP (browsers do for 127.0.0.1), and never follows redirects."""
from __future__ import annotations

import http.client
import re
import urllib.parse
from dataclasses import dataclass


@dataclass
class Reply:
    status: int
    headers: dict
    body: str

    @property
    def location(self) -> str:
        return self.headers.get("location", "")


class WebClient:
    def __init__(self, base: str):
        parts = urllib.parse.urlsplit(base)
        self.host, self.port = parts.hostname, parts.port
        self.cookie = ""

    def request(self, method: str, path: str, form: dict | None = None, headers: dict | None = None) -> Reply:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        body = urllib.parse.urlencode(form or {}, doseq=True) if form is not None else None
        hdrs = {**({"Cookie": self.cookie} if self.cookie else {}), **(headers or {})}
        if body is not None:
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            reply = Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode(errors="replace"))
        finally:
            conn.close()
        cookie = reply.headers.get("set-cookie", "")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        return reply

    def get(self, path: str, **kw) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, form: dict | None = None, **kw) -> Reply:
        return self.request("POST", path, form or {}, **kw)

    def csrf(self, path: str = "/login") -> str:
        page = self.get(path)
        found = re.search(r'name="csrf" value="([^"]+)"', page.body)
        assert found, f"no CSRF token on {path}: {page.status} {page.body[:300]}"
        return found.group(1)

    def login(self, username: str, password: str) -> Reply:
        token = self.csrf("/login")
        return self.post("/login", {"csrf": token, "next": "/pools", "username": username, "password": password})
