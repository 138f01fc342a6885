"""Markers on every pool object tinabs creates, and finding them again.

Cleanup and compensation find litter by marker, never from memory, so they
work after a crash, twice in a row, or from another worker.  Names carry the
run id too: an object a crash left before it was marked is still found.
"""
from __future__ import annotations

import datetime as dt

import XenAPI

RUN = "tinabs:run"
VM = "tinabs:vm"
JOB = "tinabs:job"
CREATED = "tinabs:created"
ROLE = "tinabs:role"
KEEP = "tinabs:keep"
NAME_PREFIX = "[tinabs]"


class Role:
    SYSTEM_SNAPSHOT = "system-snapshot"
    SYSTEM_DISK = "system-disk"        # writable clone of the snapshot (export mode)
    SYSTEM_COPY = "system-copy"        # copy on the backup SR (sr-copy mode), kept
    BACKUP_VM = "backup-vm"
    DATA_DISK = "data-disk"            # + ":<userdevice>"


class RestoreRole:
    """Roles of what a restore (and the restore test) makes."""
    VM = "restored-vm"
    DISK = "restored-disk"          # + ":<userdevice>"
    VBD = "restored-vbd"
    NETWORK = "restored-network"    # a network the import had to create
    TEST_NETWORK = "restore-test-network"
    TEST_VIF = "restore-test-vif"


def markers(ctx: dict, role: str) -> dict[str, str]:
    return {RUN: ctx["run"], VM: ctx["vm"]["uuid"], JOB: ctx["job"], ROLE: role,
            CREATED: dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def name(ctx: dict, what: str) -> str:
    return f"{NAME_PREFIX} {ctx['vm']['name']} {what} {ctx['run']}"


def mark(x, cls: str, ref: str, ctx: dict, role: str, label: str | None = None) -> None:
    """Set the markers in one call (set_other_config is idempotent, add_to_ is not)."""
    api = getattr(x, cls)
    other = dict(api.get_other_config(ref))
    other.update(markers(ctx, role))
    api.set_other_config(ref, other)
    if label is not None:
        api.set_name_label(ref, label)


def unmarked(other: dict) -> dict:
    """``other_config`` without any tinabs key."""
    return {k: v for k, v in other.items() if not k.startswith("tinabs:")}


def replace(x, cls: str, ref: str, ctx: dict, role: str) -> None:
    """Replace any tinabs keys (another run's markers, the tinabs:keep of a clone) with this run's."""
    api = getattr(x, cls)
    api.set_other_config(ref, {**unmarked(api.get_other_config(ref)), **markers(ctx, role)})


def is_ours(record: dict, run: str) -> bool:
    return record.get("other_config", {}).get(RUN) == run or (
        record.get("name_label", "").startswith(NAME_PREFIX) and record.get("name_label", "").endswith(run))


def find(x, cls: str, run: str, role: str | None = None) -> list[str]:
    """Refs of ``cls`` objects of this run (optionally of one role), by marker or name."""
    return list(find_records(x, cls, run, role))


def find_records(x, cls: str, run: str, role: str | None = None) -> dict[str, dict]:
    """Like ``find``, with the records read in the same call: re-reading one may fail
    with HANDLE_INVALID when another worker removed it meanwhile."""
    found = {}
    for ref, rec in getattr(x, cls).get_all_records().items():
        if not is_ours(rec, run):
            continue
        if role is None or rec.get("other_config", {}).get(ROLE) == role:
            found[ref] = rec
    return found


def find_named(x, cls: str, label: str, run: str) -> str | None:
    """An object an earlier attempt created under ``label`` (cheap: name index)."""
    for ref in getattr(x, cls).get_by_name_label(label):
        try:
            if is_ours(getattr(x, cls).get_record(ref), run):
                return ref
        except XenAPI.Failure:
            continue
    return None
