"""`tinabs status [JOB] [--json]`: a job's per-VM state, from any host that reaches the broker."""
from __future__ import annotations

import json
import sys

from tinabs_tasks.reports.summary import stored as stored_report
from tinabs_tasks.runs.job_view import backup_name, how_taken, summary
from tinabs_tasks.cli.common import UserError, human_bytes, job_store, load_config


def add_arguments(parser) -> None:
    parser.add_argument("job", nargs="?", help="job id (default: list recent jobs)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args) -> int:
    store = job_store(load_config(args))
    if not args.job:
        jobs = [store.job(j) for j in store.recent_jobs()]
        jobs = [j for j in jobs if j]
        if args.json:
            print(json.dumps([summary(j) for j in jobs], indent=2))
        else:
            for j in jobs:
                s = summary(j)
                print(f"{j['id']}  {s['created']}  {s['state']:<9} {s['succeeded']}/{s['total']} ok  {s['what']}")
        return 0
    job = store.job(args.job)
    if job is None:
        kept = f"{store.ttl_s / 86400:g} days" if store.ttl_s >= 86400 else f"{store.ttl_s} s"
        raise UserError(f"no job {args.job!r} (a job is kept {kept} after it ends, [limits] state_ttl_s; "
                        "`tinabs status` lists recent ones)")
    job["report"] = stored_report(job)  # the job's summary and where it was sent, once it has ended
    if args.json:
        print(json.dumps(job, indent=2, default=str))
    else:
        print(render(job))
    return 0 if job["succeeded"] or not job["done"] else 1


def render(job: dict) -> str:
    s = summary(job)
    lines = [f"job {job['id']}  {s['what']}  {s['state']} ({s['succeeded']}/{s['total']} succeeded)"]
    header = f"{'POOL':<10} {'VM':<20} {'STATE':<10} {'STAGE':<22} {'BYTES':>10} {'RATE':>11}  DETAIL"
    lines.append(header)
    for r in job["runs"]:
        detail = r.get("error", "") if r["state"] in ("failed", "failing", "retrying") else _backup_detail(r)
        rate = f"{human_bytes(r.get('rate'))}/s" if r.get("rate") and r["state"] == "running" else ""
        progress = r.get("progress")
        stage = r.get("stage", "")
        if progress and r["state"] == "running":
            stage = f"{stage} {float(progress) * 100:.0f}%"
        lines.append(f"{r.get('pool', ''):<10} {r.get('vm_name', '')[:20]:<20} {r['state']:<10} {stage[:22]:<22} "
                     f"{_size(r):>10} {rate:>11}  {detail}")
    for note in job["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines + _report_lines(job))


def _report_lines(job: dict) -> list[str]:
    """Where the job's report went ([reports]): one line per channel."""
    report = stored_report(job)
    if report is None:
        return ["report: being prepared"] if job.get("report_claimed") else []
    if not report["delivery"]:
        return ["report: stored, not sent (no [reports] channel configured)"]
    lines = []
    for channel, d in report["delivery"].items():
        if d["status"] == "sent":
            lines.append(f"report: {channel} {d.get('detail', 'sent')} at {d.get('at', '?')}")
        elif d["status"] == "not sent":
            lines.append(f"report: {channel} not sent ({d.get('why', '')})")
        elif d["status"] == "failed":
            lines.append(f"report: {channel} FAILED after {d['attempts']} attempt(s): {d.get('error', '')}")
        elif d["status"] == "retrying":
            lines.append(f"report: {channel} attempt {d['attempts']} failed, trying again: {d.get('error', '')}")
        else:
            lines.append(f"report: {channel} {d['status']}")
    return lines


def _backup_detail(run: dict) -> str:
    """What names a run's backup: its file, or for a repository backup (whose ``path`` is its
    manifest) its id and what it added to the repository (deduplication makes that far less
    than its size); then, for a repo or sr-copy backup, how it was taken (incremental from
    which base, or full and why: a full one is never silent)."""
    if run.get("backup_id"):
        stored = run.get("stored_bytes")
        added = f" ({human_bytes(stored)} new in the repository)" if stored not in (None, "") else ""
        name = f"repository backup {run['backup_id']}{added}"
    else:
        name = backup_name(run)
    how = how_taken(run)
    return f"{name}; {how}" if how else name


def _size(run: dict) -> str:
    """The backup's size once done; the bytes moved so far while running."""
    value = run.get("size") if run["state"] == "succeeded" else run.get("bytes")
    return human_bytes(value) if value and value != "None" else ""


def print_live(job: dict, stream=sys.stdout) -> None:
    stream.write(render(job) + "\n")
    stream.flush()
