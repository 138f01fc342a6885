"""A job's report: the summary of its end (per VM: result, size, duration, error; for a repo
backup also its id and ``stored_bytes``, what it added to the repository; for a repo or sr-copy
backup how it was taken: ``backup_kind``, the ``full_reason`` of a full one, the ``base_backup``
of an incremental one, and in the totals how many were each), as JSON and
as a plain-text table, and where it is kept: the ``report`` field of the job's hash, which
expires with the job.  Sending it is tasks_report.py's; the channels are report_channels.py's.

The stored report is the summary plus ``delivery``: per channel, ``status`` (pending,
retrying, sent, failed, not sent), ``attempts``, ``error`` and when.  It holds no secret.
"""
from __future__ import annotations

import datetime as dt
import json
import time

from tinabs_tasks.runs import keys
from tinabs_tasks.runs.human import human_bytes
from tinabs_tasks.runs.job_view import backup_name, how_taken
from tinabs_tasks.backup.selection import describe

#: write the report only while the job's hash exists: a late write never re-creates an
#: expired job without a TTL (HSET keeps the hash's TTL)
_SAVE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HSET', KEYS[1], 'report', ARGV[1])
end
return -1
"""
#: how a repo or sr-copy backup was taken (storage/manifest.KIND_FIELDS' backup_kind)
KINDS = ("incremental", "full")


def summarize(job: dict, now: float | None = None) -> dict:
    """The summary of an ended job, from ``JobStore.job()``."""
    vms = [_vm(r) for r in job["runs"]]
    ok = sum(v["result"] == "succeeded" for v in vms)
    finished = [float(r["finished"]) for r in job["runs"] if r.get("finished")]
    ended = max(finished) if finished else (now or time.time())
    created = float(job["created"])
    # what repository backups added to the repository; a job of file backups only has no such total
    in_repo = {"stored_bytes": sum(v["stored_bytes"] or 0 for v in vms)} \
        if any(v["stored_bytes"] is not None for v in vms) else {}
    # how repo and sr-copy backups were taken; a job of export backups (always full) has no such count
    kinds = {k: sum(v["backup_kind"] == k for v in vms) for k in KINDS} \
        if any(v["backup_kind"] for v in vms) else {}
    return {
        "job": job["id"],
        "result": "succeeded" if job["succeeded"] else ("failed" if vms or job["plan_errors"] else "nothing backed up"),
        "selector": job["selector"], "mode": job["mode"], "pools": job["pools"],
        "created": _iso(created), "ended": _iso(ended), "duration_s": round(max(0.0, ended - created), 3),
        "totals": {"vms": len(vms), "succeeded": ok, "failed": len(vms) - ok,
                   "bytes": sum(v["size"] or 0 for v in vms), **in_repo, **kinds,
                   "pools_not_planned": job["plan_errors"]},
        "vms": vms, "notes": list(job["notes"]),
    }


def _vm(run: dict) -> dict:
    ok = run.get("state") == "succeeded"
    queued, finished = run.get("queued"), run.get("finished")
    return {
        "pool": run.get("pool", ""), "vm": run.get("vm_name", ""), "uuid": run.get("vm_uuid", ""),
        "result": run.get("state", "unknown"),
        "size": _int(run.get("size")) if ok else None,
        # from the moment the VM was planned to its end: queueing for a pool slot included
        "duration_s": round(float(finished) - float(queued), 3) if queued and finished else None,
        "error": None if ok else (run.get("error") or None),
        "failed_stage": None if ok else run.get("failed_stage"),
        "retries": _int(run.get("retries")) or 0,
        "backup": (backup_name(run) or None) if ok else None,
        # repo mode: the backup's id, and the bytes it added to the repository (its new blocks)
        "backup_id": run.get("backup_id") if ok else None,
        "stored_bytes": _int(run.get("stored_bytes")) if ok else None,
        # repo and sr-copy: incremental (against which backup, how many since the last full) or
        # full (and why); None for an export backup and a failed run
        "backup_kind": run.get("backup_kind") if ok else None,
        "full_reason": run.get("full_reason") if ok else None,
        "base_backup": run.get("base_backup") if ok else None,
        "chain": _int(run.get("chain")) if ok else None,
    }


def _size(vm: dict) -> str:
    """The backup's size; a repository backup's also what it added to the repository."""
    if vm["size"] is None:
        return ""
    if vm.get("stored_bytes") is not None:
        return f"{human_bytes(vm['size'])} ({human_bytes(vm['stored_bytes'])} stored)"
    return human_bytes(vm["size"])


def _any_repo(summary: dict) -> bool:
    return "stored_bytes" in summary["totals"]


def should_send(when: str, summary: dict) -> bool:
    """always; failure: anything but every VM backed up; never."""
    return when == "always" or (when == "failure" and summary["result"] != "succeeded")


def subject(summary: dict) -> str:
    t = summary["totals"]
    counts = f"{t['succeeded']} succeeded, {t['failed']} failed" if t["vms"] else "nothing backed up"
    if t["pools_not_planned"]:
        counts += f", {t['pools_not_planned']} pool(s) not reached"
    return f"[tinabs] job {summary['job']}: {counts}"


def text(summary: dict) -> str:
    """The plain-text body: a header, one line per VM, totals and notes."""
    t = summary["totals"]
    lines = [f"tinabs job {summary['job']}: {summary['result']}",
             f"{_clean(describe(summary['selector']))}, mode {summary['mode']}, pools {', '.join(summary['pools'])}",
             f"from {summary['created']} to {summary['ended']} ({_duration(summary['duration_s'])})", ""]
    rows = [("POOL", "VM", "RESULT", "SIZE", "DURATION", "DETAIL")]
    rows += [(v["pool"], v["vm"], v["result"], _size(v), _duration(v["duration_s"]), v["error"] or how_taken(v))
             for v in summary["vms"]]
    widths = [max(len(_clean(r[i])) for r in rows) for i in range(5)]
    for row in rows:
        lines.append("  ".join(_clean(c).ljust(w) for c, w in zip(row[:5], widths)) + "  " + _clean(row[5]))
    # a repository backup writes only its new blocks: its size is what was backed up, not written
    moved = f"{human_bytes(t['bytes'])} backed up, {human_bytes(t['stored_bytes'])} of it new in the " \
        "repository" if _any_repo(summary) else f"{human_bytes(t['bytes'])} written"
    kinds = f"; {t['incremental']} incremental, {t['full']} full" if "full" in t else ""
    lines += ["", f"{t['vms']} VM(s): {t['succeeded']} succeeded, {t['failed']} failed, {moved}{kinds}"]
    lines += [f"note: {_clean(n)}" for n in summary["notes"]]
    return "\n".join(line.rstrip() for line in lines) + "\n"


class ReportStore:
    """The stored report of a job (its hash's ``report`` field)."""

    def __init__(self, redis):
        self.r = redis
        self._save = redis.register_script(_SAVE)

    def load(self, job_id: str) -> dict | None:
        raw = self.r.hget(keys.job(job_id), "report")
        return json.loads(raw) if raw else None

    def save(self, job_id: str, report: dict) -> bool:
        """False if the job's state has expired meanwhile (nothing is written then)."""
        return self._save(keys=[keys.job(job_id)], args=[json.dumps(report)]) != -1


def stored(job: dict) -> dict | None:
    """The report kept in a job as ``JobStore.job()`` returns it (a JSON string), decoded."""
    raw = job.get("report")
    return json.loads(raw) if isinstance(raw, str) else raw


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds) -> str:
    if seconds is None:
        return ""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def _clean(value) -> str:
    """One line, no control characters: VM names and errors come from the pools."""
    return "".join(c if c.isprintable() else "?" for c in str(value))
