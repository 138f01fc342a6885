"""task.create / destroy / cancel (the rest are implicit accessors)."""
from __future__ import annotations

from tinabs_tasks.sim.errors import XapiError
from tinabs_tasks.sim.ops import Ctx, op


@op("task.create")
def create(ctx: Ctx, label, description):
    if not isinstance(label, str) or not isinstance(description, str):
        raise XapiError("FIELD_TYPE_ERROR", "label")
    return ctx.pool.tasks.create(label, description)


@op("task.destroy")
def destroy(ctx: Ctx, self):
    ctx.store.destroy("task", self)
    return ""


@op("task.cancel")
def cancel(ctx: Ctx, task):
    ctx.pool.tasks.cancel(task)
    return ""
