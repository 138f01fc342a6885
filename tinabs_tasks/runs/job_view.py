"""A job in a few words, for `tinabs status`, its report and the web console: its state, counts
and selection, what names a run's backup and how that backup was taken."""
from __future__ import annotations

import datetime as dt


def summary(job: dict) -> dict:
    runs = job["runs"]
    ok = sum(r["state"] == "succeeded" for r in runs)
    state = ("succeeded" if job["succeeded"] else "failed") if job["done"] else "running"
    if job.get("aborted"):  # (abort.py) its runs end failed, with the reason
        state = "aborted" if job["done"] else "aborting"
    created = dt.datetime.fromtimestamp(float(job["created"]), dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    what = ", ".join(f"{k}={v}" for k, v in job["selector"].items())
    return {"id": job["id"], "created": created, "state": state, "succeeded": ok, "total": len(runs),
            "what": f"{what} mode={job['mode']} pools={','.join(job['pools'])}"}


def backup_name(run: dict) -> str:
    """What names a succeeded run's backup for people: a repository backup's id (its ``path`` is
    its manifest; `tinabs restore`/`verify` take the id), else its file."""
    return run.get("backup_id") or run.get("path", "")


def how_taken(record) -> str:
    """How a repo or sr-copy backup was taken, for people, from its run's record or its manifest
    (``storage/manifest.KIND_FIELDS``): ``incremental (from <base backup>)`` or ``full: <reason>``.
    A full backup never goes unexplained (the issue's "never silently").  "" for an export backup
    (always full, with no base to speak of) and for a run that has not ended well (no backup)."""
    kind = record.get("backup_kind")
    if kind == "incremental":
        return f"incremental (from {record.get('base_backup') or 'an unrecorded base'})"
    if kind == "full":
        return f"full: {record.get('full_reason') or 'no reason recorded'}"
    return ""
