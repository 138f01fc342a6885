"""`tinabs janitor [--dry-run] [--pool P] [--max-age-h H] [--json]`: remove litter of dead runs.

Sends `tinabs.janitor` to each pool's queue and waits: each removes the pool objects carrying
tinabs markers of runs that are no longer active and older than the maximum age ([janitor]
max_age_h, default 24), and that pool's stale `.partial` files.  Kept sr-copy disks are never
touched (they go only through `tinabs prune`).  Bases (`tinabs bases`) older than the maximum age
are removed when their VM no longer exists on the pool, or when the VM has a newer base; they are
shown as "base VDI ..." with the reason.  `--dry-run` lists what would be removed.
"""
from __future__ import annotations

import json

from tinabs_tasks.cli.common import UserError, job_store, load_config
from tinabs_tasks.cli.prune import DEFAULT_TIMEOUT_S, wait_all


def add_arguments(parser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    parser.add_argument("--pool", action="append", help="only this pool (repeatable; default: all)")
    parser.add_argument("--max-age-h", type=float, help="override [janitor] max_age_h")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait for the workers")


def run(args) -> int:
    cfg = load_config(args)
    pools = args.pool or list(cfg.pools)
    for name in pools:
        cfg.pool(name)  # unknown pool: a clear error
    if args.max_age_h is not None and args.max_age_h < 0:
        raise UserError("--max-age-h must be >= 0")
    job_store(cfg)
    from tinabs_tasks.runs import requests  # sent by name: this process needs only the broker
    sent = [requests.janitor(name, args.dry_run, args.max_age_h) for name in pools]
    results = wait_all(sent, args.timeout)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "results": results}, indent=2))
    else:
        print(render(results, args.dry_run))
    return 1 if any(r.get("errors") for r in results) else 0


def render(results: list[dict], dry_run: bool) -> str:
    verb = "would remove" if dry_run else "removed"
    lines, n = [], 0
    for r in results:
        pool = r.get("pool", "?")
        for o in r.get("objects", []):
            n += 1
            if o.get("role") == "base":
                lines.append(f"{verb}  {pool}  base VDI {o['uuid']}  {o['name']!r}  of VM {o['vm']}: "
                             f"{o['reason']}  ({o.get('age_h')} h old)")
                continue
            lines.append(f"{verb}  {pool}  {o['class']} {o['uuid']}  {o['name']!r}  run {o['run']}  "
                         f"({o.get('age_h')} h old)")
        for f in r.get("files", []):
            n += 1
            lines.append(f"{verb}  {pool}  file {f['path']}  run {f['run']}  ({f['age_h']} h old)")
        for s in r.get("skipped", []):
            what = "base VDI" if s.get("role") == "base" else s["class"]
            lines.append(f"left    {pool}  {what} {s['uuid']}  {s['name']!r}: {s['why']}")
        for e in r.get("errors", []):
            lines.append(f"ERROR   {pool}  {e.get('class', '')} {e.get('uuid', '')}  {e.get('error')}")
    lines.append(f"{n} item(s) {verb}" + (" (dry run: nothing removed)" if dry_run else ""))
    return "\n".join(lines)
