"""`tinabs list [--pool P] [--vm NAME|UUID] [--json] [--all]`: the backups in the destination.

Read from the manifests on disk, never from the broker: it works after Redis is
wiped, with the broker down, and from a host that never ran a job.  A repository backup
(mode ``repo``) shows its backup id where a file backup shows its path; ``--json`` gives
its ``backup_id``, ``repository`` and ``stored_bytes`` (what it added to the repository).
A repo or sr-copy backup's KIND says how it was taken: ``incremental`` (a delta against its
base) or ``full``; ``--json`` gives ``backup_kind``, the ``full_reason`` of a full one, the
``base_backup`` of an incremental one and ``chain``.  An export backup's KIND is ``-`` (always
full, with no base: nothing to say).
"""
from __future__ import annotations

import json
import os

from tinabs_tasks.storage import catalog
from tinabs_tasks.cli.common import UserError, human_bytes, load_config, printable


def add_arguments(parser) -> None:
    parser.add_argument("--pool", help="only this pool's backups")
    parser.add_argument("--vm", metavar="NAME|UUID", help="only this VM's backups (name or uuid)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--all", action="store_true",
                        help="also show incomplete files (partial, no manifest, corrupt manifest, missing data), "
                             "marked with their status")


def run(args) -> int:
    dest = load_config(args).destination
    if not os.path.isdir(dest):
        raise UserError(f"destination {dest} does not exist or is not a directory")
    items = catalog.scan(dest, pool=args.pool, vm=args.vm, include_incomplete=args.all)
    if args.json:
        print(json.dumps([b.to_dict() for b in items], indent=2))
    elif not items:
        print(f"no backups in {dest}")
    else:
        print(render(items, show_status=args.all))
    return 0


def render(items: list[catalog.Backup], show_status: bool = False) -> str:
    headers = ["VM", "POOL", "MODE", "KIND", "UTC TIME", "SIZE", "SHA256", "VERIFIED"] + \
        (["STATUS"] if show_status else [])
    rows = []
    for b in items:
        row = [b.vm_name, b.pool, b.mode or "", b.backup_kind or "-",
               b.created.strftime("%Y-%m-%d %H:%M:%SZ") if b.created else "",
               human_bytes(b.size) if b.size is not None else "", (b.sha256 or "")[:12], b.verified or "-"]
        if show_status:
            row.append(b.status)
        # a repository backup has no file: its id names it (`tinabs restore`/`verify` take it)
        rows.append([printable(c) for c in row + [b.path or b.backup_id or b.manifest_path or ""]])
    headers.append("PATH")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers[:-1])]
    right = {headers.index("SIZE")}
    lines = []
    for row in [headers, *rows]:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells + [row[-1]]))
    return "\n".join(lines)
