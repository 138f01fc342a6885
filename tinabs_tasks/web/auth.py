"""Login, sessions and CSRF for the web console.

* Every page and action needs a logged-in session; only the login form, the static assets
  (CSS, JS) and /healthz (which says "ok" and nothing else) answer without one.  A page asked
  for without a session redirects to the login form; anything else gets 401.
* Sessions are signed cookies (HttpOnly, SameSite=Strict, Secure unless configured off) whose
  key is derived from the console password: changing the password logs everybody out, and
  several console replicas with one password accept each other's sessions.  The cookie holds
  the user name, the login time and the session's CSRF token; never a secret of a pool.
* Every action (POST) carries the session's CSRF token in its form (or an X-CSRF-Token
  header) and is refused (403) without it.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import secrets
import time
from urllib.parse import urlencode

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import PlainTextResponse, RedirectResponse

PUBLIC_PATHS = ("/login", "/healthz")
PUBLIC_PREFIXES = ("/static/",)
#: a wrong password costs this long: guessing is slow, a typo is not
FAILED_LOGIN_DELAY_S = 1.0
COOKIE = "tinabs_session"
#: what the browser may load and where forms may go: this site only (no CDN, no inline script)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def session_key(password: str) -> str:
    return hmac.new(password.encode(), b"tinabs-web-session-v1", hashlib.sha256).hexdigest()


def password_ok(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def user(request) -> str | None:
    return request.session.get("user")


def csrf_token(request) -> str:
    """The session's token (made once per session, before login too: the login form has one)."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


def log_in(request, name: str) -> None:
    request.session.clear()  # a new session (and token) at login: no fixation
    request.session.update({"user": name, "since": int(time.time()), "csrf": secrets.token_urlsafe(32)})


async def failed_login_pause() -> None:
    await asyncio.sleep(FAILED_LOGIN_DELAY_S)


class RequireLogin(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        path = request.url.path
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
        if not public and not user(request):
            if request.method in ("GET", "HEAD") and "application/json" not in request.headers.get("accept", ""):
                wanted = path + (f"?{request.url.query}" if request.url.query else "")
                response = RedirectResponse(f"/login?{urlencode({'next': safe_next(wanted)})}", status_code=303)
            else:
                response = PlainTextResponse("login required\n", status_code=401)
        else:
            response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def safe_next(path: str) -> str:
    """Only a path on this site, never another site, as where to go after logging in."""
    return path if path.startswith("/") and not path.startswith(("//", "/\\")) else "/"


class CsrfRefused(Exception):
    pass


async def checked_form(request) -> dict:
    """The action's form, once its CSRF token matches the session's; CsrfRefused otherwise."""
    form = await request.form()
    sent = form.get("csrf") or request.headers.get("x-csrf-token") or ""
    expected = request.session.get("csrf") or ""
    if not expected or not hmac.compare_digest(str(sent).encode(), expected.encode()):
        raise CsrfRefused()
    return form


def action(handler):
    """An action (POST): refused with 403 unless its CSRF token is right; the handler gets the form."""
    @functools.wraps(handler)
    async def wrapped(request):
        try:
            form = await checked_form(request)
        except CsrfRefused:
            return PlainTextResponse("refused: this form is stale or not from this console (CSRF); "
                                     "reload the page and try again\n", status_code=403)
        return await handler(request, form)
    wrapped.is_action = True
    return wrapped
