"""host.get_servertime / host.get_server_localtime: the host's clock.

xapi_host.ml: get_servertime is ``Date.now ()`` (UTC, written with a ``Z``);
get_server_localtime is the local wall-clock time with no zone (date.ml
``localtime`` strips it, so ``to_rfc3339`` writes no suffix).  Both take the
host they ask and check it like any ref.
"""
from __future__ import annotations

import datetime as dt

from tinabs_tasks.sim.ops import Ctx, op


@op("host.get_servertime")
def get_servertime(ctx: Ctx, host):
    ctx.store.get("host", host, "uuid")   # HANDLE_INVALID for a bad host
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


@op("host.get_server_localtime")
def get_server_localtime(ctx: Ctx, host):
    ctx.store.get("host", host, "uuid")
    return dt.datetime.now().replace(microsecond=0)   # naive: wire.py writes it without a zone
