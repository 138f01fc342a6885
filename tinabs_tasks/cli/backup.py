"""`tinabs backup (--tag T | --vm NAME | --all) [--pool P] [--mode M] [--full] [--wait] [--json]`.

The producer only talks to the broker: it records the job, sends one `plan`
task per pool (to that pool's queue), and with --wait follows the job's state
until every VM's backup has ended.  Exit status 0 only when all succeeded.
"""
from __future__ import annotations

import json
import sys
import time

import redis

from tinabs_tasks.config.model import MODES
from tinabs_tasks.runs.jobstart import check_pools, describe_modes, job_modes, start_job
from tinabs_tasks.reports.summary import stored as stored_report
from tinabs_tasks.backup.selection import describe
from tinabs_tasks.runs.vm_lock import SKIPPED
from tinabs_tasks.cli.common import UserError, check_repository, job_store, load_config
from tinabs_tasks.cli.status import render

NO_WORKER_HINT_S = 30
#: how long --wait rides out a broker that went away (a Redis restart): the job goes on meanwhile
BROKER_OUTAGE_S = 300


def add_arguments(parser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--tag", help="back up the VMs carrying this tag (e.g. Mon)")
    which.add_argument("--vm", help="back up the VM with this name or uuid")
    which.add_argument("--all", action="store_true", help="back up every VM")
    parser.add_argument("--pool", action="append", help="only this pool (repeatable; default: all)")
    parser.add_argument("--mode", choices=MODES, help="export (.xva), sr-copy or repo (the repository) "
                        "(default: each pool's mode, else default_mode)")
    parser.add_argument("--full", action="store_true", help="full backups even where an incremental one could "
                        "be taken (repo and sr-copy modes build on each VM's base otherwise)")
    parser.add_argument("--wait", action="store_true", help="follow progress until every VM is done")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--timeout", type=float, default=0, help="with --wait: give up after this many seconds")


def run(args) -> int:
    selector = _selector(args)
    cfg = load_config(args)
    pools = check_pools(cfg, args.pool)  # an unknown pool: one line, exit 2
    modes = job_modes(cfg, args.mode, pools)
    if "repo" in modes.values():
        check_repository(cfg)  # a wrong or missing key, or no repository: said now, before any work
    store = job_store(cfg)
    job_id = start_job(cfg, store, selector, args.mode, pools, full="--full" if args.full else None)
    mode = describe_modes(modes)
    if not args.wait:
        print(json.dumps({"job": job_id}) if args.json else f"job {job_id} queued; `tinabs status {job_id}`")
        return 0
    if not args.json:
        print(f"job {job_id}: backing up {', '.join(f'{k}={v}' for k, v in selector.items())} "
              f"on {', '.join(pools)} ({mode})", flush=True)
    job = follow(store, job_id, quiet=args.json, timeout=args.timeout)
    job["report"] = stored_report(job)  # as `tinabs status --json` shows it: decoded, or None
    if args.json:
        print(json.dumps(job, indent=2, default=str))
    else:
        print("\n" + render(job))
    if not job["done"]:
        print(f"tinabs: gave up waiting after {args.timeout:.0f}s; the job goes on (`tinabs status {job_id}`)",
              file=sys.stderr)
        return 1
    if not job["runs"]:
        return _nothing_backed_up(job, selector, pools)
    return 0 if job["succeeded"] else 1


def _nothing_backed_up(job: dict, selector: dict, pools: list[str]) -> int:
    """No run at all: a pool that could not be asked (1) is not the same as no VM matching (3)."""
    skipped = [n for n in job.get("notes", []) if SKIPPED in n]
    if skipped and not job.get("plan_errors"):
        print(f"tinabs: every matching VM is still being backed up by an earlier job ({len(skipped)} VM(s)); "
              "nothing new was started", file=sys.stderr)
        return 0
    if job.get("plan_errors"):
        print(f"tinabs: could not select VMs on {job['plan_errors']} pool(s); nothing was backed up "
              "(the job's notes say why; `tinabs check-config` tests each pool)", file=sys.stderr)
        return 1
    print(f"tinabs: no VM matched {describe(selector)} in {', '.join(pools)}; nothing was backed up — "
          "check the spelling (tags and names are case-sensitive) and --pool", file=sys.stderr)
    return 3


def _selector(args) -> dict:
    """`--tag ""` (say, an unset shell variable) must never widen into "back up everything"."""
    for key in ("tag", "vm"):
        value = getattr(args, key)
        if value is not None:
            if not value.strip():
                raise UserError(f"--{key} needs a non-empty value")
            return {key: value}
    return {"all": True}


def follow(store, job_id: str, quiet: bool, timeout: float = 0) -> dict:
    began = time.monotonic()
    last_lines: dict[str, str] = {}
    hinted = False
    lost_since, said_lost = None, False
    while True:
        try:
            job = store.job(job_id)
        except redis.AuthenticationError:
            raise  # waiting cannot fix a refused password
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > BROKER_OUTAGE_S:
                raise UserError(f"lost the broker for {BROKER_OUTAGE_S}s ({exc}); the job goes on without this "
                                f"command — `tinabs status {job_id}` once Redis is back") from None
            if not quiet and not said_lost:
                print("  (lost the broker; waiting for it — the job goes on meanwhile)", flush=True)
                said_lost = True
            time.sleep(1)
            continue
        lost_since, said_lost = None, False
        if not quiet:
            _print_changes(job, last_lines)
        if job["done"]:
            return job
        elapsed = time.monotonic() - began
        if timeout and elapsed > timeout:
            return job
        if not hinted and elapsed > NO_WORKER_HINT_S and not job["planned"] and not quiet:
            print("  (no worker has planned this job yet: is `celery -A tinabs_tasks worker` running "
                  "with access to these pools?)", flush=True)
            hinted = True
        time.sleep(poll_interval(len(job["runs"])))


def poll_interval(runs: int) -> float:
    """How often --wait reads the job: 5 times a second for a few VMs, once a second for a
    thousand (each read fetches every run's state)."""
    return min(1.0, 0.2 + runs / 1250)


def _print_changes(job: dict, last: dict[str, str]) -> None:
    """One line per VM whenever its stage/state changes, plus byte progress every few seconds."""
    now = time.monotonic()
    for r in job["runs"]:
        key = f"{r.get('pool')}/{r.get('vm_name')} ({r.get('vm_uuid', '')[:8]})"
        state_line = f"{r['state']} {r.get('stage', '')}"
        moving = r["state"] == "running" and int(r.get("bytes") or 0) > 0
        bytes_due = moving and now - float(last.get(key + "#t", 0)) > 2
        if last.get(key) != state_line or bytes_due:
            detail = ""
            if moving:
                detail = f" {int(r['bytes']) / 1e6:.1f} MB at {int(r.get('rate', 0)) / 1e6:.1f} MB/s"
            if r["state"] in ("failed", "retrying") and r.get("error"):
                detail = f" — {r['error']}"
            print(f"  {key:<40} {state_line}{detail}", flush=True)
            last[key], last[key + "#t"] = state_line, str(now)
