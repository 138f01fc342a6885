"""Retention: which backups of a VM to keep (pure policy; nothing here touches a disk or a pool).

The rules work like restic's ``forget``:

* ``keep_last = N``: the N newest good backups;
* ``keep_daily`` / ``keep_weekly`` / ``keep_monthly = N``: the newest good backup in each of the
  last N UTC days / ISO weeks / months *that have a good backup* (a week without backups does not
  use up a slot, as in restic);
* a backup kept by any rule is kept; the rules are applied per VM (pool + VM uuid);
* all rules 0: no policy, nothing is deleted.

What counts ("verified-complete"): a backup is *good* when the catalog calls it complete (its
manifest parses and its data file is there with the manifest's size) and its verification did
not fail, i.e. ``verified`` is ``"ok"`` or ``None`` (never verified: a backup is written with a
checksum and is trusted until a verification says otherwise).  Only good backups satisfy a rule.

*Bad* backups (verification ``failed``, or a manifest whose data file is missing / of the wrong
size) never count towards a rule and are never kept because of a bucket; each is deleted only when
it is older than the newest kept good backup (a newer bad one may be all there is of a recent
state, so it stays until a good backup replaces it).  When a VM has no good backup, nothing of it
is deleted.

Safety nets: the newest good backup and the newest complete backup of a VM are never deleted.
Entries without a usable manifest (``.partial`` files, data files no manifest names, corrupt
manifests) are not backups this policy owns: they are left alone (``.partial`` files are the
janitor's, the rest are for a human to look at).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from tinabs_tasks.storage.catalog import COMPLETE, MISSING, Backup
from tinabs_tasks.config.model import RetentionConfig as Policy

__all__ = ["Policy", "Decision", "plan_vm", "plan", "is_good", "render"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@dataclass
class Decision:
    backup: Backup
    keep: bool
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"action": "keep" if self.keep else "delete", "reasons": self.reasons, **self.backup.to_dict()}


def is_good(b: Backup) -> bool:
    return b.status == COMPLETE and b.verified != "failed"


def _managed(b: Backup) -> bool:
    """Backups this policy decides on: a valid manifest, complete or with its data file missing."""
    return b.manifest_path is not None and b.status in (COMPLETE, MISSING)


def _newest_first(items: list[Backup]) -> list[Backup]:
    return sorted(items, key=lambda b: (b.created or _EPOCH, b.manifest_path or ""), reverse=True)


_BUCKETS = (
    ("daily", "keep_daily", lambda t: t.strftime("%Y-%m-%d")),
    ("weekly", "keep_weekly", lambda t: "%04d-W%02d" % t.isocalendar()[:2]),
    ("monthly", "keep_monthly", lambda t: t.strftime("%Y-%m")),
)


def plan_vm(backups: list[Backup], policy: Policy) -> list[Decision]:
    """Decisions for the backups of ONE VM, newest first (unmanaged entries are left out)."""
    managed = _newest_first([b for b in backups if _managed(b)])
    if not policy.active:
        return [Decision(b, True, ["no retention policy"]) for b in managed]
    reasons: dict[int, list[str]] = {id(b): [] for b in managed}
    good = [b for b in managed if is_good(b)]
    for b in good[:policy.keep_last]:
        reasons[id(b)].append(f"last {policy.keep_last}")
    for label, attr, key_of in _BUCKETS:
        limit, seen = getattr(policy, attr), []
        for b in good:
            if len(seen) >= limit:
                break
            if b.created is None:
                continue
            key = key_of(b.created)
            if key not in seen:
                seen.append(key)
                reasons[id(b)].append(f"{label} {key}")
    if good:
        reasons[id(good[0])].append("newest good backup")
    complete = [b for b in managed if b.status == COMPLETE]
    if complete and not reasons[id(complete[0])]:
        reasons[id(complete[0])].append("newest complete backup")
    kept_good = [b for b in good if reasons[id(b)]]
    newest_kept = kept_good[0].created if kept_good else None
    out = []
    for b in managed:
        why = reasons[id(b)]
        if why:
            out.append(Decision(b, True, why))
        elif is_good(b):
            out.append(Decision(b, False, ["not kept by any rule"]))
        else:
            bad = "verification failed" if b.verified == "failed" else f"incomplete ({b.status})"
            if newest_kept is not None and b.created is not None and b.created < newest_kept:
                out.append(Decision(b, False, [f"{bad}, older than the newest kept good backup"]))
            else:
                out.append(Decision(b, True, [f"{bad}, but no good backup newer than it is kept"]))
    return out


def plan(backups: list[Backup], policy: Policy) -> list[Decision]:
    """Decisions for any number of VMs (grouped by pool and VM uuid), in catalog order."""
    groups: dict[tuple, list[Backup]] = {}
    for b in backups:
        groups.setdefault((b.pool, b.vm_uuid), []).append(b)
    out = []
    for key in sorted(groups, key=lambda k: (k[0], groups[k][0].vm_name, k[1])):
        out.extend(plan_vm(groups[key], policy))
    return out


def render(decisions: list[Decision]) -> str:
    lines = []
    for d in decisions:
        b = d.backup
        when = b.created.strftime("%Y-%m-%d %H:%M:%SZ") if b.created else "?"
        lines.append(f"{'keep' if d.keep else 'DELETE':6}  {b.pool}/{b.vm_name}  {when}  {b.mode or '-':7}  "
                     f"{b.manifest_path}  ({'; '.join(d.reasons)})")
    return "\n".join(lines)
