"""`tinabs repo export-xva BACKUP -o FILE [--force] [--json]`: a repository backup as a standard .xva.

BACKUP is a repo-mode manifest (``<stamp>-<run>.json`` in the destination) or a backup id; an id
the destination does not know is looked up in the repository's own indexes (a backup whose
manifest was lost is still exportable).  The XVA is rebuilt from the index and the blocks, each
block checked as it is read, and its sha256 compared with the index's and with the manifest's
(when there is one) before it is put in place: it is written under a temp name beside FILE,
fsynced, and only then linked to FILE (so an existing FILE is never replaced without
``--force``, even by a race).  On any failure nothing is left under FILE or beside it.
"""
from __future__ import annotations

import json
import os

from tinabs_tasks.cli.common import UserError, human_bytes, printable
from tinabs_tasks.cli.repo import opened, print_json, problem
from tinabs_tasks.repo.atomic import fsync_dir, temp_name
from tinabs_tasks.repo.configured import OtherRepository, check_recorded
from tinabs_tasks.repo.errors import RepoCorrupt, RepoError
from tinabs_tasks.repo.index import BackupNotFound, InvalidBackupId, load_index
from tinabs_tasks.repo.xva_rebuild import write_xva_file
from tinabs_tasks.storage import catalog, destination


def add_export_xva_arguments(parser) -> None:
    parser.add_argument("backup", metavar="BACKUP", help="a repository backup: its .json manifest or its backup id")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="the .xva file to write")
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run_export_xva(args) -> int:
    cfg, repo = opened(args)
    out = os.path.abspath(args.output)
    if os.path.isdir(out):
        raise UserError(f"{out} is a directory; give the .xva file to write (e.g. {os.path.join(out, 'vm.xva')})")
    if os.path.lexists(out) and not args.force:
        raise UserError(f"{out} exists; use --force to replace it, or choose another name")
    if not os.path.isdir(os.path.dirname(out)):
        raise UserError(f"{os.path.dirname(out)} does not exist; make it first, or choose another place")
    backup_id, manifest_path, manifest = _resolve(cfg.destination, repo, args.backup)
    try:
        figures = _write(repo, backup_id, out, manifest, args.force)
    except RepoError as exc:  # a missing or damaged block or index, a full disk, a race on FILE
        return problem(f"{exc}; nothing was written to {out}")
    size, sha = int(figures["stream_bytes"]), figures["stream_sha256"]
    if args.json:
        print_json({"backup_id": backup_id, "manifest": manifest_path, "path": out, "size": size,
                    "sha256": sha, "sha256_ok": True})
    else:
        checked = "the index's and the manifest's" if manifest else "the index's"
        print(f"wrote {printable(out)} ({human_bytes(size)}, {size} bytes) from backup {backup_id}")
        print(f"sha256 OK {sha} ({checked})")
    return 0


def _resolve(dest: str, repo, name: str) -> tuple[str, str | None, dict | None]:
    """(backup id, manifest path or None, the manifest or None) of what the user named."""
    try:
        path = catalog.resolve(dest, name)
    except catalog.NotABackup as exc:
        if not os.path.lexists(name):
            try:
                load_index(repo, name)
                return name, None, None  # known to the repository only: its manifest is gone
            except (BackupNotFound, InvalidBackupId):
                pass
            except RepoError:
                return name, None, None  # it is there; the export says what is wrong with it
            raise UserError(f"{exc}; nor is it a backup id in the repository at {repo.path}") from None
        raise UserError(str(exc)) from None
    try:
        with destination.open_regular(path) as fh:
            manifest = json.loads(fh.read())
    except (OSError, ValueError, destination.NotRegular) as exc:
        raise UserError(f"{path}: cannot read the manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("mode") != "repo":
        data = manifest.get("file") if isinstance(manifest, dict) else None
        raise UserError(f"{path} is not a repository backup (mode {manifest.get('mode') if isinstance(manifest, dict) else None!r})"
                        + (f"; its .xva is already a file: {os.path.join(os.path.dirname(path), data)}" if data else ""))
    backup_id = manifest.get("backup_id")
    where = manifest.get("repository") if isinstance(manifest.get("repository"), dict) else {}
    if not isinstance(backup_id, str):
        raise UserError(f"{path}: the manifest names no backup id; it is damaged")
    if where.get("id"):  # (a manifest without one is checked by its sha256 against the export)
        try:
            check_recorded(repo, where)
        except OtherRepository as exc:
            raise UserError(f"backup {backup_id}: {exc}") from None
    return backup_id, path, manifest


def _write(repo, backup_id: str, out: str, manifest: dict | None, force: bool) -> dict:
    """Rebuild into a temp file beside ``out``, check it, then put it at ``out``; the figures."""
    directory = os.path.dirname(out)
    temp = os.path.join(directory, temp_name(os.path.basename(out)))
    try:
        figures = write_xva_file(repo, backup_id, temp)  # its own temp, renamed to ours once checked
        if manifest is not None:
            want = (manifest.get("size"), manifest.get("sha256"))
            got = (int(figures["stream_bytes"]), figures["stream_sha256"])
            if want != got:
                raise RepoCorrupt(f"backup {backup_id} rebuilt to {got[0]} bytes, sha256 {got[1]}, but its manifest "
                                  f"says {want[0]} bytes, sha256 {want[1]}: the manifest or the index is damaged")
        try:
            if force:
                os.rename(temp, out)
            else:
                os.link(temp, out)  # fails if FILE appeared meanwhile: never replaced without --force
        except FileExistsError:
            raise RepoError(f"{out} appeared while the backup was exported; use --force to replace it") from None
        except OSError as exc:
            raise RepoError(f"cannot write {out}: {exc.strerror}") from None
        fsync_dir(directory)
        return figures
    finally:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
