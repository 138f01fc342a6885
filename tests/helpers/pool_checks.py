"""Assertions about what tinabs left on the simulated pools."""
from __future__ import annotations

RUN = "tinabs:run"


def tinabs_objects(state: dict) -> dict[str, list[tuple[str, str, dict]]]:
    """(pool, class) -> objects carrying a tinabs marker or name."""
    found: dict[str, list] = {}
    for pool, classes in state["pools"].items():
        for cls, objects in classes.items():
            for ref, rec in objects.items():
                marked = RUN in (rec.get("other_config") or {})
                named = str(rec.get("name_label", "")).startswith("[tinabs]")
                if marked or named:
                    found.setdefault(cls, []).append((pool, ref, rec))
    return found


def _kept(cls: str, rec: dict) -> bool:
    other = rec["other_config"]
    return cls == "VDI" and other.get("tinabs:keep") == "true" and other.get("tinabs:role") in ("system-copy", "base")


def litter(state: dict) -> dict[str, list]:
    """tinabs objects that should not exist: anything but kept sr-copy VDIs and one base
    snapshot per VM (a second base of a VM is litter)."""
    out = {}
    for cls, objects in tinabs_objects(state).items():
        bad = [o for o in objects if not _kept(cls, o[2])]
        seen: set[tuple[str, str]] = set()
        for pool, ref, rec in objects:
            if _kept(cls, rec) and rec["other_config"].get("tinabs:role") == "base":
                key = (pool, rec["other_config"].get("tinabs:vm", ""))
                if key in seen:
                    bad.append((pool, ref, rec))
                seen.add(key)
        if bad:
            out[cls] = [(pool, rec.get("name_label")) for pool, _, rec in bad]
    return out


def bases(state: dict) -> list[dict]:
    """Every base snapshot on every pool: {pool, vm, backup, uuid, snapshot_of}."""
    return [{"pool": pool, "vm": rec["other_config"].get("tinabs:vm"), "backup": rec["other_config"].get("tinabs:base"),
             "uuid": rec["uuid"], "snapshot_of": rec.get("snapshot_of")}
            for pool, _ref, rec in tinabs_objects(state).get("VDI", [])
            if rec["other_config"].get("tinabs:role") == "base"]


def backupable_vms(state: dict, pool: str) -> list[dict]:
    return [r for r in state["pools"][pool]["VM"].values()
            if not (r["is_a_template"] or r["is_a_snapshot"] or r["is_control_domain"])
            and not r["name_label"].startswith("[tinabs]")]


def normalise(value):
    """Record values compared across the wire: ova.xml and XML-RPC send ints as strings, sets
    in any order."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return sorted(normalise(v) for v in value)
    return value
