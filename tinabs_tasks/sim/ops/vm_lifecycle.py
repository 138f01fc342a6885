"""Which VM operations may run now: power states, concurrency, templates, snapshots.

Follows ocaml/xapi/xapi_vm_lifecycle.ml: ``check_operation_error`` tests, in
xapi's order, blocked_operations, the power state (``allowed_power_states``),
the operations already running (``is_allowed_concurrently``), template and
snapshot rules, provision/revert only on templates/snapshots, the control
domain and the guest features an HVM guest must offer.  ``allowed_operations``
is ``update_allowed_operations``: the operations of xapi's list that pass.
``vm_operation`` is message_forwarding.ml ``with_vm_operation``: the running
operation sits in ``current_operations`` under its task while it runs.
"""
from __future__ import annotations

import contextlib

from tinabs_tasks.sim.datamodel import NULL_REF
from tinabs_tasks.sim.errors import XapiError, bad_power_state
from tinabs_tasks.sim.ops.construct import require
from tinabs_tasks.sim.store import new_ref

_ALL_STATES = ["Halted", "Paused", "Suspended", "Running"]
_POWER_STATES = {
    **dict.fromkeys(("provision", "start", "start_on", "make_into_template"), ["Halted"]),
    "unpause": ["Paused"],
    **dict.fromkeys(("resume", "resume_on"), ["Suspended"]),
    **dict.fromkeys(("clean_reboot", "clean_shutdown", "pause", "suspend"), ["Running"]),
    **dict.fromkeys(("destroy", "export"), ["Halted", "Suspended"]),
    "hard_reboot": ["Paused", "Running"],
    **dict.fromkeys(("checkpoint", "shutdown", "hard_shutdown"), ["Paused", "Suspended", "Running"]),
    **dict.fromkeys(("metadata_export", "revert", "reverting", "snapshot"), _ALL_STATES),
}
#: is_allowed_concurrently: operations that may all run at once
_CONCURRENT_SETS = (("clone", "copy", "export"), ("snapshot", "checkpoint"))
#: check_template: what a (non-snapshot) template allows
_TEMPLATE_OPS = ("clone", "copy", "export", "metadata_export", "provision")
#: check_snapshot
_SNAPSHOT_OPS = ("revert", "clone", "copy", "export", "destroy", "hard_shutdown", "metadata_export")
#: what a control domain allows (of the operations the simulator has)
_DOM0_OPS = ("metadata_export", "start", "start_on")
#: update_allowed_operations' list, less the operations whose messages the simulator does not serve
#: (snapshot_with_quiesce is removed; pool_migrate, migrate_send, changing_* are not implemented)
LISTED_OPS = ("snapshot", "copy", "clone", "revert", "checkpoint", "start", "start_on", "pause", "unpause",
              "clean_shutdown", "clean_reboot", "hard_shutdown", "hard_reboot", "suspend", "resume",
              "resume_on", "export", "destroy", "provision", "make_into_template")


def allowed_power_states(rec: dict, op: str) -> list[str]:
    if op in ("clone", "copy"):  # clone_suspended_vm_enabled is off by default
        return ["Halted", "Suspended"] if rec["is_a_snapshot"] else ["Halted"]
    return _POWER_STATES[op]


def is_allowed_concurrently(op: str, current: list[str]) -> bool:
    if any(op in group and all(c in group for c in current) for group in _CONCURRENT_SETS):
        return True
    if op == "hard_shutdown":
        return "hard_shutdown" not in current
    if op == "hard_reboot":
        return not any(c in ("hard_shutdown", "hard_reboot") for c in current)
    return False


def _conflicting(op: str, current_ops: dict) -> tuple[str, str]:
    """The (task, op) to report: a running op that ``op`` may not join (xen-api PR #6588)."""
    for task, running in current_ops.items():
        if not is_allowed_concurrently(op, [running]):
            return task, running
    return next(iter(current_ops.items()))


def _lacks_feature(op: str, rec: dict, guest_other: dict | None, strict: bool) -> bool:
    """check_op_for_feature: a running HVM guest must advertise what a clean op needs."""
    if rec["power_state"] != "Running" or rec.get("domain_type") in ("pv", "pvh", "pv_in_pvh"):
        return False
    other = guest_other or {}

    def lacks(feature):
        return other.get(feature) != "1"

    if op == "clean_shutdown":
        return strict and lacks("feature-shutdown") and lacks("feature-poweroff")
    if op == "clean_reboot":
        return strict and lacks("feature-shutdown") and lacks("feature-reboot")
    if op in ("suspend", "checkpoint"):
        return strict and lacks("feature-suspend")
    return False


def operation_error(rec: dict, vm: str, op: str, *, guest_other: dict | None = None,
                    strict: bool = False) -> XapiError | None:
    """check_operation_error: the first reason ``op`` may not run on ``vm`` now, or None."""
    if op in rec["blocked_operations"]:
        return XapiError("OPERATION_BLOCKED", vm, rec["blocked_operations"][op])
    expected = allowed_power_states(rec, op)
    if rec["power_state"] not in expected:
        return bad_power_state(vm, expected, rec["power_state"])
    current = rec["current_operations"]
    if current and not is_allowed_concurrently(op, list(current.values())):
        task, running = _conflicting(op, current)
        return XapiError("OTHER_OPERATION_IN_PROGRESS", "VM", vm, running, task)
    if rec["is_a_template"] and not rec["is_a_snapshot"]:
        default = rec["is_default_template"] or rec["other_config"].get("default_template") in ("true", "1")
        if op not in _TEMPLATE_OPS and not (op == "destroy" and not default):
            return XapiError("VM_IS_TEMPLATE", vm, op)
    if rec["is_a_snapshot"] and op not in _SNAPSHOT_OPS:
        return XapiError("VM_IS_SNAPSHOT", vm, op)
    if op == "provision" and not rec["is_a_template"]:
        return XapiError("PROVISION_ONLY_ALLOWED_ON_TEMPLATE")
    if op == "revert" and not rec["is_a_snapshot"]:
        return XapiError("REVERT_ONLY_ALLOWED_ON_SNAPSHOT")
    if rec["is_control_domain"] and op == "destroy":  # every simulated control domain is a dom0
        return XapiError("OPERATION_NOT_ALLOWED", "This operation is not allowed on dom0")
    if rec["is_control_domain"] and op not in _DOM0_OPS:
        return XapiError("OPERATION_NOT_ALLOWED", "This operation is not allowed on a control domain")
    if _lacks_feature(op, rec, guest_other, strict):
        return XapiError("VM_LACKS_FEATURE", vm)
    return None


def guest_other(store, rec: dict) -> dict | None:
    gm = rec.get("guest_metrics", NULL_REF)
    return store.get("VM_guest_metrics", gm, "other") if store.exists("VM_guest_metrics", gm) else None


def allowed_operations(rec: dict, guest: dict | None = None, vm: str = NULL_REF) -> list[str]:
    """update_allowed_operations for a record (strict feature checks, as xapi lists them)."""
    return [op for op in LISTED_OPS if operation_error(rec, vm, op, guest_other=guest, strict=True) is None]


def refresh_allowed(ctx, vm: str) -> None:
    with ctx.store.lock:
        rec = ctx.store.record("VM", vm)
        ctx.store.set("VM", vm, "allowed_operations", allowed_operations(rec, guest_other(ctx.store, rec), vm))


def vm_record(ctx, vm) -> dict:
    return ctx.store.record("VM", require(ctx.store, "VM", vm))


def assert_operation_valid(ctx, vm: str, op: str) -> None:
    rec = vm_record(ctx, vm)
    error = operation_error(rec, vm, op, guest_other=guest_other(ctx.store, rec))
    if error is not None:
        raise error


def begin_operation(ctx, vm: str, op: str, task: str) -> None:
    """Check ``op`` and record it in current_operations under ``task``, in one step."""
    with ctx.store.lock:
        assert_operation_valid(ctx, vm, op)
        add_operation(ctx, vm, task, op)


def add_operation(ctx, vm: str, task: str, op: str) -> None:
    with ctx.store.lock:
        ops = ctx.store.get("VM", vm, "current_operations")
        ops[task] = op
        ctx.store.set("VM", vm, "current_operations", ops)
        refresh_allowed(ctx, vm)


def remove_operation(ctx, vm: str, task: str) -> None:
    with ctx.store.lock:
        if not ctx.store.exists("VM", vm):
            return  # destroyed by the operation itself
        ops = ctx.store.get("VM", vm, "current_operations")
        ops.pop(task, None)
        ctx.store.set("VM", vm, "current_operations", ops)
        refresh_allowed(ctx, vm)


@contextlib.contextmanager
def vm_operation(ctx, vm: str, op: str):
    """message_forwarding.ml with_vm_operation: checked, listed while it runs, then removed.
    A synchronous call has a task in xapi too; here it gets a key of its own."""
    key = ctx.task or new_ref()
    begin_operation(ctx, vm, op, key)
    try:
        yield
    finally:
        remove_operation(ctx, vm, key)
