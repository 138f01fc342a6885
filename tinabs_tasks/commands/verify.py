"""`tinabs verify BACKUP|--all`: re-read backups offline and report exactly what is wrong."""
from __future__ import annotations

import json
import os

from .. import destination
from ..verify import check_copied_vdis, manifest_for, verify_all, verify_backup
from ..xapi.connect import PoolSession
from ..xapi.errors import classify
from ..xapi.port import Xapi
from .common import UserError, human_bytes, load_config


def add_arguments(parser) -> None:
    parser.add_argument("backup", nargs="?", help="a backup: its .xva / .metadata.xva file or its .json manifest")
    parser.add_argument("--all", action="store_true", help="verify every backup under the destination")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--no-record", action="store_true",
                        help="do not write the result into the manifest (\"verified\")")
    parser.add_argument("--offline", action="store_true",
                        help="do not contact pools (skips checking the disks sr-copy backups keep on the backup SR)")


def run(args) -> int:
    if bool(args.all) == bool(args.backup):
        raise UserError("give either one backup (its .xva or .json) or --all")
    cfg = load_config(args)
    record = not args.no_record
    check = None if args.offline else pool_check(cfg)
    if args.all:
        if not os.path.isdir(cfg.destination):
            raise UserError(f"destination {cfg.destination} does not exist")
        results = verify_all(cfg.destination, record=record, pool_check=check)
    else:
        path = _manifest(args.backup, cfg.destination)
        results = [(path, verify_backup(path, record=record, pool_check=check))]
    if args.json:
        print(json.dumps([r.as_dict() for _, r in results], indent=2))
    else:
        if not results:
            print(f"no backups under {cfg.destination}")
        for path, report in results:
            label = report.data or path
            if report.ok:
                print(f"OK      {label} ({human_bytes(report.bytes)}, {report.disks} disk(s), "
                      f"{report.chunks} chunk(s))")
            else:
                print(f"FAILED  {label}")
                for problem in report.problems:
                    print(f"  - {problem}")
        if len(results) > 1:
            bad = sum(1 for _, r in results if not r.ok)
            print(f"{len(results)} backup(s) verified, {bad} failed")
    return 0 if all(r.ok for _, r in results) else 1


def pool_check(cfg):
    """Checks an sr-copy backup's kept disks on its pool, one session per pool."""
    sessions = {}

    def check(manifest: dict) -> list[str]:
        pool = manifest.get("pool")
        if pool not in cfg.pools:
            return [f"pool {pool!r} is not in the config: the copied disks were not checked"]
        try:
            if pool not in sessions:
                sessions[pool] = Xapi(PoolSession(cfg.pool(pool)))
            return check_copied_vdis(sessions[pool], manifest)
        except Exception as exc:  # unreachable pool, bad credentials: say so, per backup
            return [f"could not check the copied disks: {classify(exc, pool)}"]

    return check


def _manifest(path: str, dest: str) -> str:
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    try:
        destination.inside(dest, path)
    except destination.UnsafePath:
        raise UserError(f"{path} is outside the destination {dest}") from None
    manifest = manifest_for(os.path.abspath(path))
    if not os.path.isfile(manifest):
        raise UserError(f"{path}: no manifest {os.path.basename(manifest)} beside it (not a finished backup)")
    try:
        destination.inside(dest, manifest)
    except destination.UnsafePath:
        raise UserError(f"{manifest} is outside the destination {dest}") from None
    return manifest
