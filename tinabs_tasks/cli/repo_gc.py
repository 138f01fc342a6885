"""`tinabs repo gc [--dry-run] [--json]`: remove the blocks no backup references any more.

The work is repo/gc.py's (mark every referenced block, then sweep blocks and temp files whose
mark is older than the start minus the grace, [repository] gc_grace_h): it takes only
``gc.lock``, which backups never wait on, so GC runs while backups do.  A second GC while one
runs says so and exits 1 having touched nothing; so does a GC that meets an unreadable index
(it stops before sweeping: that index's blocks would look unreferenced).

``--dry-run`` changes nothing (no mark, no lock): it lists what a GC now would remove, by the
same sweep (repo/gc.py ``plan_garbage``: an unreferenced block, or a temp file, older than the grace).  Referenced blocks a GC
finds missing are reported (exit 1): `tinabs repo check` says which backups they break.
"""
from __future__ import annotations

import dataclasses

from tinabs_tasks.cli.common import human_bytes, printable
from tinabs_tasks.cli.repo import opened, print_json, problem
from tinabs_tasks.repo.errors import RepoCorrupt, RepoError
from tinabs_tasks.repo.gc import collect_garbage, plan_garbage
from tinabs_tasks.repo.index import all_referenced_block_ids


def add_gc_arguments(parser) -> None:
    parser.add_argument("--dry-run", action="store_true",
                        help="change nothing; say what a GC now would remove")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run_gc(args) -> int:
    cfg, repo = opened(args)
    grace_s = cfg.repository.gc_grace_h * 3600
    try:
        if args.dry_run:
            report = plan_garbage(repo, lambda: all_referenced_block_ids(repo), grace_s=grace_s)
        else:
            report = collect_garbage(repo, lambda: _once(all_referenced_block_ids(repo)), grace_s=grace_s)
    except RepoCorrupt as exc:
        return problem(f"gc stopped before removing anything: {exc}")
    except RepoError as exc:  # another GC holds gc.lock
        return problem(str(exc))
    if args.json:
        print_json({"path": repo.path, "dry_run": args.dry_run, "grace_h": cfg.repository.gc_grace_h,
                    **dataclasses.asdict(report)})
    else:
        dry = args.dry_run
        print(f"{'dry run, nothing changed: ' if dry else ''}{printable(repo.path)}, grace {cfg.repository.gc_grace_h:g} h")
        rows = [("referenced" if dry else "marked", f"{report.marked} block(s) the backups reference"),
                ("would remove" if dry else "removed",
                 f"{report.blocks_removed} unreferenced block(s) and {report.temps_removed} temp file(s), "
                 f"{'freeing' if dry else 'freed'} {human_bytes(report.bytes_freed)}"),
                ("kept", f"{report.blocks_kept} block(s), {human_bytes(report.bytes_kept)} (referenced, or "
                         "younger than the grace)")]
        for name, text in rows:
            print(f"{name:<13}{text}")
    if report.missing:
        return problem(f"{len(report.missing)} block(s) the backups reference are missing (e.g. {report.missing[0]}); "
                       "run `tinabs repo check` to see which backups they affect")
    return 0


def _once(block_ids):
    """Each id once: a block shared by many backups is marked once (and counted once in "marked")."""
    seen = set()
    for block_id in block_ids:
        if block_id not in seen:
            seen.add(block_id)
            yield block_id
