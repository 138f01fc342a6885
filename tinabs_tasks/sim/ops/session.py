"""session.* and the pool/host messages a client asks right after login."""
from __future__ import annotations

from tinabs_tasks.sim.errors import XapiError
from tinabs_tasks.sim.ops import Ctx, op


@op("session.login_with_password")
def login_with_password(ctx: Ctx, uname, pwd, version="1.1", originator=""):
    if not isinstance(uname, str) or not isinstance(pwd, str):
        raise XapiError("SESSION_AUTHENTICATION_FAILED", str(uname), "Authentication failure")
    return ctx.pool.login(uname, pwd, str(originator))


@op("session.logout")
def logout(ctx: Ctx):
    ctx.pool.logout(ctx.session)
    return ""


@op("session.get_this_host")
def get_this_host(ctx: Ctx, self):
    return ctx.store.get("session", ctx.pool.check_session(self), "this_host")


@op("session.get_this_user")
def get_this_user(ctx: Ctx, self):
    return ctx.store.get("session", ctx.pool.check_session(self), "this_user")
