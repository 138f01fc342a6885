"""`tinabs repo init|key|stats|check|gc|export-xva`: look after the backup repository ([repository]).

Each subcommand lives in its own module (repo_init, repo_stats, repo_gc, repo_export); this one
builds their parsers and holds what they share: opening the configured repository (every fault
of the config, the path or the key is one ``tinabs: repository: ...`` line, exit 2), reading the
indexes (a damaged one is reported, not fatal to the others) and naming a backup for a human
(its VM and pool, from its index or its manifest).

Exit statuses: 0 done and sound, 1 the repository has a problem (a missing or damaged block or
index, a GC already running, an export that failed its checks), 2 a usage or config error.
None of these commands needs the broker or a worker: they read and write the repository directly.
"""
from __future__ import annotations

import json
import sys

from tinabs_tasks.cli.common import UserError, check_repository, load_config, printable
from tinabs_tasks.repo.errors import RepoError
from tinabs_tasks.repo.index import BackupIndex, BackupNotFound, list_backups, load_index

SUBCOMMANDS = {
    "init": ("tinabs_tasks.cli.repo_init", "make the repository (and its key file, if it has none)"),
    "key": ("tinabs_tasks.cli.repo_init", "make a new key file (for key_env / key_secret)"),
    "stats": ("tinabs_tasks.cli.repo_stats", "what the repository holds: sizes, dedup and compression ratios"),
    "check": ("tinabs_tasks.cli.repo_stats", "check every backup's blocks are there (--read-data: and sound)"),
    "gc": ("tinabs_tasks.cli.repo_gc", "remove blocks no backup references (after the grace)"),
    "export-xva": ("tinabs_tasks.cli.repo_export", "write a backup as a standard .xva file"),
}


def add_arguments(parser) -> None:
    import importlib
    sub = parser.add_subparsers(dest="repo_command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=help_text)
        getattr(mod, f"add_{name.replace('-', '_')}_arguments")(p)
        p.set_defaults(repo_run=getattr(mod, f"run_{name.replace('-', '_')}"))


def run(args) -> int:
    return args.repo_run(args)


# -- shared ------------------------------------------------------------------------------
def opened(args):
    """(config, the configured repository opened with its key): UserError (exit 2) otherwise."""
    cfg = load_config(args)
    return cfg, check_repository(cfg)


def problem(message: str) -> int:
    """A fault in the repository (not in what the user typed): one line, exit 1."""
    print(f"tinabs: {printable(message)}", file=sys.stderr)
    return 1


def print_json(doc) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True))


def read_indexes(repo):
    """(backup id, its index or None, the reason it could not be read) for every backup, one at a
    time: a damaged index is a finding of its own, and must not hide the others."""
    for backup_id in list_backups(repo):
        try:
            yield backup_id, load_index(repo, backup_id), None
        except BackupNotFound:  # pruned since the listing
            continue
        except RepoError as exc:
            yield backup_id, None, str(exc)


def whose(index: BackupIndex | None) -> dict:
    """The VM and pool a backup is of, from what the backup recorded in its index."""
    meta = index.meta if index is not None else {}
    vm = meta.get("vm") if isinstance(meta.get("vm"), dict) else {}
    return {"vm": vm.get("name"), "vm_uuid": vm.get("uuid"), "pool": meta.get("pool")}


def fill_from_manifests(owners: dict[str, dict], dest: str) -> None:
    """Complete ``owners`` (backup id -> whose()) from the destination's manifests, for backups
    whose index could not say (a damaged index, or one written without meta)."""
    if all(o.get("vm") for o in owners.values()):
        return
    from tinabs_tasks.storage import catalog
    try:
        found = catalog.scan(dest, include_incomplete=True)
    except OSError:
        return
    for b in found:
        owner = owners.get(b.backup_id or "")
        if owner is not None and not owner.get("vm"):
            owner.update(vm=b.vm_name, vm_uuid=b.vm_uuid, pool=b.pool)


def label(backup_id: str, owner: dict) -> str:
    """``<id> (VM web-01, pool pool-a)``, or the bare id when neither is known."""
    if not owner.get("vm") and not owner.get("pool"):
        return backup_id
    return f"{backup_id} (VM {owner.get('vm') or '?'}, pool {owner.get('pool') or '?'})"


def user_error(exc: RepoError) -> UserError:
    return UserError(f"repository: {exc}")
