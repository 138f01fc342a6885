"""Which VMs of a pool a selector picks (the `plan` task's pure part).

Skips templates, snapshots, control domains and tinabs' own backup VMs.
Duplicate names are not merged: each VM is backed up by uuid, and a note
says so.
"""
from __future__ import annotations

from collections import Counter

from tinabs_tasks.xapi import markers


def describe(selector: dict) -> str:
    if selector.get("tag"):
        return f"tag {selector['tag']}"
    if selector.get("vm"):
        return f"VM {selector['vm']}"
    if selector.get("uuids"):
        return f"{len(selector['uuids'])} chosen VM(s)"
    return "all VMs"


def select(xapi, selector: dict) -> tuple[list[dict], list[str]]:
    records = xapi.x.VM.get_all_records()
    candidates = [r for r in records.values() if backupable(r)]
    if selector.get("tag"):
        chosen = [r for r in candidates if selector["tag"] in r["tags"]]
    elif selector.get("vm"):
        chosen = [r for r in candidates if selector["vm"] in (r["name_label"], r["uuid"])]
    elif selector.get("uuids"):  # VMs picked one by one (the web console)
        chosen = [r for r in candidates if r["uuid"] in selector["uuids"]]
    elif selector.get("all"):
        chosen = candidates
    else:
        raise ValueError(f"empty selector {selector!r}")
    notes = []
    counts = Counter(r["name_label"] for r in chosen)
    for name, count in sorted(counts.items()):
        if count > 1:
            uuids = ", ".join(sorted(r["uuid"] for r in chosen if r["name_label"] == name))
            notes.append(f"pool `{xapi.pool.name}`: {count} VMs are named {name!r}; each is backed up "
                         f"separately by uuid ({uuids})")
    vms = [{"uuid": r["uuid"], "name": r["name_label"]} for r in sorted(chosen, key=lambda r: (r["name_label"],
                                                                                               r["uuid"]))]
    return vms, notes


def backupable(rec: dict) -> bool:
    if rec["is_a_template"] or rec["is_a_snapshot"] or rec["is_control_domain"]:
        return False
    return not (rec["name_label"].startswith(markers.NAME_PREFIX) or markers.RUN in rec["other_config"])
