"""`tinabs prune [--dry-run] [--pool P] [--vm NAME|UUID] [--json]`: apply the [retention] policy.

The destination is scanned here to find the VMs with backups; each VM is then pruned by
`tinabs.prune_vm` on its pool's queue (a worker holds the pool's credentials, and sr-copy
backups' disks are destroyed on the pool), and this command waits for the results.
`--dry-run` goes the same way and deletes nothing: it prints what would be kept and deleted,
with the reasons.  A repository backup is deleted as a file backup is, its index standing for the data
file; its blocks stay until the repository's GC.  Exit status: 0, or 1 when a backup could not be deleted.
"""
from __future__ import annotations

import json
import os

from tinabs_tasks.storage import catalog
from tinabs_tasks.cli.common import UserError, job_store, load_config

DEFAULT_TIMEOUT_S = 600


def add_arguments(parser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print the plan, delete nothing")
    parser.add_argument("--pool", help="only this pool's backups")
    parser.add_argument("--vm", metavar="NAME|UUID", help="only this VM's backups")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait for the workers")


def run(args) -> int:
    cfg = load_config(args)
    if not os.path.isdir(cfg.destination):
        raise UserError(f"destination {cfg.destination} does not exist or is not a directory")
    job_store(cfg)  # a clear message when the broker is down
    from tinabs_tasks.runs import requests  # sent by name: this process needs only the broker
    sent, notes = [], []
    for pool, vm_uuid in catalog.vm_groups(cfg.destination, pool=args.pool, vm=args.vm):
        if pool not in cfg.pools:
            notes.append(f"pool `{pool}` is not configured: its backups are left alone")
            continue
        sent.append(requests.prune_vm(pool, vm_uuid, args.dry_run))
    results = wait_all(sent, args.timeout)
    errors = [e for r in results for e in r.get("errors", [])]
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "results": results, "notes": notes}, indent=2))
    else:
        print(render(results, args.dry_run, notes))
    return 1 if errors else 0


def wait_all(sent, timeout: float) -> list[dict]:
    out = []
    for result in sent:
        try:
            out.append(result.get(timeout=timeout))
        except Exception as exc:  # a timeout or a failed task: say so, keep the others
            out.append({"errors": [{"error": f"task {result.id}: {exc.__class__.__name__}: {exc}"}]})
    return out


def render(results: list[dict], dry_run: bool, notes: list[str]) -> str:
    lines = list(notes)
    kept = deleted = 0
    for r in results:
        for d in r.get("decisions", []):
            when = (d.get("created") or "?").replace("T", " ")
            mark = "keep" if d["action"] == "keep" else ("would delete" if dry_run else "delete")
            lines.append(f"{mark:12}  {d['pool']}/{d['vm_name']}  {when}  {d.get('mode') or '-':7}  "
                         f"{os.path.basename(d.get('manifest_path') or '')}  ({'; '.join(d['reasons'])})")
            kept += d["action"] == "keep"
        for done in r.get("deleted", []):
            deleted += 1
            if done.get("vdis"):
                lines.append(f"{'':12}  {'would destroy' if dry_run else 'destroyed'} copied disk(s) "
                             f"{', '.join(done['vdis'])} on pool {done['pool']}")
            if done.get("index"):  # a repo backup: its blocks are freed by the next GC, not here
                idx = done["index"]
                verb = "would remove" if dry_run else "removed" if idx["removed"] else "found already gone:"
                lines.append(f"{'':12}  {verb} index {idx['backup_id']} from the repository {idx['repository']} "
                             "(its blocks go at the next GC)")
        for err in r.get("errors", []):
            lines.append(f"ERROR  {err.get('manifest') or ''}  {err.get('error')}")
    verb = "would delete" if dry_run else "deleted"
    lines.append(f"{kept} backup(s) kept, {deleted} {verb}" + (" (dry run: nothing deleted)" if dry_run else ""))
    return "\n".join(lines)
