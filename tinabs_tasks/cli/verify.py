"""`tinabs verify BACKUP|--all`: re-read backups offline and report exactly what is wrong.

A repository backup (named by its manifest or its id) is rebuilt from the repository, which
this process opens with its config's ``[repository]`` key.
"""
from __future__ import annotations

import json
import os
import sys

from tinabs_tasks.storage import catalog
from tinabs_tasks.storage.copied_disks import pool_check
from tinabs_tasks.storage.verify import verify_all, verify_backup
from tinabs_tasks.cli.common import UserError, human_bytes, job_store, load_config, printable


def add_arguments(parser) -> None:
    parser.add_argument("backup", nargs="?", help="a backup: its .xva / .metadata.xva file or its .json manifest, "
                                                  "or a repository backup's id")
    parser.add_argument("--all", action="store_true", help="verify every backup under the destination")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--no-record", action="store_true",
                        help="do not write the result into the manifest (\"verified\")")
    parser.add_argument("--restore-test", action="store_true",
                        help="health check: import BACKUP into --pool, check its skeleton, start it on an "
                             "isolated network, check it runs, remove everything it made")
    parser.add_argument("--pool", help="with --restore-test: the pool to test in")
    parser.add_argument("--sr", help="with --restore-test: the SR for the test VM's disks")
    parser.add_argument("--offline", action="store_true",
                        help="do not contact pools (skips checking the disks sr-copy backups keep on the backup SR)")


def run(args) -> int:
    if bool(args.all) == bool(args.backup):
        raise UserError("give either one backup (its .xva or .json) or --all")
    cfg = load_config(args)
    if args.restore_test:
        return _restore_test(cfg, args)
    record = not args.no_record
    check = None if args.offline else pool_check(cfg)
    if args.all:
        if not os.path.isdir(cfg.destination):
            raise UserError(f"destination {cfg.destination} does not exist")
        results = verify_all(cfg.destination, record=record, pool_check=check, repository=cfg.repository)
    else:
        path = _manifest(args.backup, cfg.destination)
        results = [(path, verify_backup(path, record=record, pool_check=check, repository=cfg.repository))]
    if args.json:
        print(json.dumps([r.as_dict() for _, r in results], indent=2))
    else:
        if not results:
            print(f"no backups under {cfg.destination}")
        for path, report in results:
            label = printable(report.data or path)
            if report.ok:
                print(f"OK      {label} ({human_bytes(report.bytes)}, {report.disks} disk(s), "
                      f"{report.chunks} chunk(s))")
            else:
                print(f"FAILED  {label}")
                for problem in report.problems:
                    print(f"  - {printable(problem)}")
        if len(results) > 1:
            bad = sum(1 for _, r in results if not r.ok)
            print(f"{len(results)} backup(s) verified, {bad} failed")
    unrecorded = [r.record_error for _, r in results if r.record_error]
    if unrecorded:
        more = f" (and {len(unrecorded) - 1} more)" if len(unrecorded) > 1 else ""
        print(f"tinabs: {printable(unrecorded[0])}{more} — the verdicts above stand; use --no-record on a "
              "read-only copy of the backups", file=sys.stderr)
    return 0 if all(r.ok for _, r in results) else 1


def _restore_test(cfg, args) -> int:
    """Runs on a worker of the pool (it holds the credentials); this process waits for the verdict."""
    if args.all or not (args.pool and args.sr):
        raise UserError("--restore-test takes one BACKUP, --pool and --sr")
    cfg.pool(args.pool)  # unknown pool: one clear line
    path = _manifest(args.backup, cfg.destination)
    job_store(cfg)  # an unreachable broker: one clear line now, not minutes of publish retries
    from tinabs_tasks.runs import requests  # sent by name: this process needs only the broker
    result = requests.restore_test(args.pool, path, args.sr)
    try:
        report = result.get(timeout=cfg.limits.export_time_limit_s)
    except Exception as exc:  # the task failed (a backup it refuses, a pool error): its reason, one line
        print(f"tinabs: restore test of {printable(path)} failed: {printable(exc)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(("OK      " if report["ok"] else "FAILED  ") + f"restore test of {path} in pool {args.pool}")
        for step in report.get("steps", []):
            print(f"  . {step}")
        for problem in report.get("problems", []):
            print(f"  - {problem}")
    return 0 if report["ok"] else 1


def _manifest(path: str, dest: str) -> str:
    try:
        return catalog.resolve(dest, path)
    except catalog.NotABackup as exc:
        raise UserError(str(exc)) from None
