"""The backup a restore reads: found in the catalog, checked before a byte of it reaches a pool.

``load_backup`` checks the backup (on the command's host and again on the
worker): a complete catalog entry inside the destination, a mode that fits
its file, and tar headers and ova.xml fit for an XVA (``check_archive``: no
absolute or ``..`` names, no links, devices or extension headers, exactly one
VM).  Names read from the backup are data: they go to the pool with what XML
cannot carry replaced (``plain``), and never into a path.

A repository backup (mode ``repo``) has no file: its manifest names its id and repository.
Where the restore runs (the worker, or ``--local``), ``load_backup`` is given the config's
``[repository]`` and opens it with that config's key (a missing or wrong key is a BadBackup
before anything reaches a pool), checks the manifest names that very repository, loads the
index and checks its ova.xml and member names as ``check_archive`` checks a file's (its
members are ``ova.xml`` and ``Ref:N/NNNNNNNN`` by construction).  Without it (a command's
host, the web console: they may not hold the key) only the catalog entry is checked.
"""
from __future__ import annotations

import os

from tinabs_tasks.repo.configured import OtherRepository, open_recorded
from tinabs_tasks.repo.errors import RepoError
from tinabs_tasks.repo.index import load_index
from tinabs_tasks.storage import catalog
from tinabs_tasks.storage import destination
from tinabs_tasks.storage import ova
from tinabs_tasks.storage import xva_headers


class BadBackup(ValueError):
    """The named backup cannot be restored (not found, outside the destination, incomplete)."""


class RestoreFailed(Exception):
    """A restore that cannot succeed, with the reason for the user (permanent)."""


#: ``load_backup``'s default: a repository backup's repository is not opened (no key needed)
CATALOG_ONLY = object()


def load_backup(dest: str, path: str, repository=CATALOG_ONLY) -> dict:
    """The backup at ``path`` (data file, manifest, or a repository backup's id), which must be a
    complete catalog entry inside ``dest``: {"manifest_path", "path", "mode", "manifest"}; for a
    repository backup ``path`` is None and, when ``repository`` (the config's RepositoryConfig,
    or None when it has none) is given, "repo" and "index" are the opened repository and index."""
    try:
        manifest_path = catalog.resolve(dest, path)
    except catalog.NotABackup as exc:
        raise BadBackup(str(exc)) from None
    vm_dir = os.path.dirname(manifest_path)
    pool_dir = os.path.basename(os.path.dirname(vm_dir))
    found = [b for b in catalog.scan(dest, pool=pool_dir, vm=os.path.basename(vm_dir), include_incomplete=True)
             if b.manifest_path and os.path.realpath(b.manifest_path) == manifest_path]
    if not found:
        raise BadBackup(f"{path}: no manifest {os.path.basename(manifest_path)} in the catalog "
                        "(not a finished backup)")
    entry = found[0]
    if not entry.complete:
        raise BadBackup(f"{path}: backup is {entry.status}; it cannot be restored")
    manifest = destination.read_manifest(entry.manifest_path)
    if not isinstance(manifest, dict):
        raise BadBackup(f"{path}: its manifest cannot be read")
    if entry.mode == "repo":
        found = {"manifest_path": entry.manifest_path, "path": None, "mode": "repo", "manifest": manifest,
                 "backup_id": entry.backup_id}
        return found if repository is CATALOG_ONLY else _open_repo_backup(path, found, repository)
    suffix = ".metadata.xva" if entry.mode == "sr-copy" else ".xva"
    if entry.mode not in ("export", "sr-copy") or not entry.path.endswith(suffix) \
            or (entry.mode == "export" and entry.path.endswith(".metadata.xva")):
        raise BadBackup(f"{path}: manifest mode {entry.mode!r} does not fit data file "
                        f"{os.path.basename(entry.path)}; it cannot be restored")
    if entry.mode == "sr-copy" and not manifest.get("copied_vdis"):
        raise BadBackup(f"{path}: sr-copy manifest names no copied disk")
    check_archive(entry.path)
    return {"manifest_path": entry.manifest_path, "path": entry.path, "mode": entry.mode, "manifest": manifest}


def _open_repo_backup(path: str, backup: dict, repo_cfg) -> dict:
    """``backup`` with its repository opened (this config's key) and its index loaded and checked."""
    recorded = backup["manifest"].get("repository") or {}
    try:
        repo = open_recorded(repo_cfg, recorded)
    except OtherRepository as exc:
        raise BadBackup(f"{path}: {exc}") from None
    except RepoError as exc:
        raise BadBackup(f"{path}: its repository {recorded.get('path')} cannot be opened: {exc}") from None
    try:
        index = load_index(repo, backup["backup_id"])
    except RepoError as exc:
        raise BadBackup(f"{path}: {exc}") from None
    figures, manifest = index.figures, backup["manifest"]
    if (figures.get("stream_bytes"), figures.get("stream_sha256")) != (manifest.get("size"), manifest.get("sha256")):
        raise BadBackup(f"{path}: the manifest says {manifest.get('size')} bytes, sha256 {manifest.get('sha256')}, "
                        f"but the repository's index of backup {index.backup_id} says {figures.get('stream_bytes')} "
                        f"bytes, sha256 {figures.get('stream_sha256')}; it cannot be restored")
    odd = [d.export_id for d in index.disks if not xva_headers.CHUNK_NAME.match(f"{d.export_id}/00000000")]
    if odd:
        raise BadBackup(f"{path}: refused, the index names disk member {odd[0]!r}, not Ref:N")
    ova_objects(decode_ova(index.ova_xml))
    return {**backup, "repo": repo, "index": index}


def check_archive(path: str) -> None:
    """Refuse an XVA whose tar headers or ova.xml are unsafe or broken before a byte of it goes to a
    pool: members with absolute or ``..`` names, links, devices, tar extension headers (xapi
    writes none), ova.xml not first or not one VM.  Reads only headers and ova.xml."""
    try:
        problems = xva_headers.header_problems(path)
    except (OSError, ValueError) as exc:
        raise BadBackup(f"{path}: cannot be read ({exc})") from None
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise BadBackup(f"{path}: refused, not a well-formed XVA: {problems[0]}{more} — "
                        f"`tinabs verify {path}` lists every problem")
    ova_objects(read_ova(path))


def read_ova(path: str) -> dict:
    """The decoded ova.xml (the first tar member) of an XVA or metadata XVA."""
    try:
        return ova.read(path)
    except ova.BadOva as exc:
        raise BadBackup(str(exc)) from None


def decode_ova(data: bytes) -> dict:
    try:
        return ova.decode(data)
    except ova.BadOva as exc:
        raise BadBackup(str(exc)) from None


def backup_ova(backup: dict) -> dict:
    """The decoded ova.xml of a backup from ``load_backup``: its file's, or its index's."""
    return decode_ova(backup["index"].ova_xml) if backup["mode"] == "repo" else read_ova(backup["path"])


def ova_objects(header: dict) -> tuple[dict, dict[str, dict]]:
    """(the VM's record, id -> object) of a decoded ova.xml; the VM is the non-snapshot one."""
    objects = header["objects"]
    by_id = {o["id"]: o for o in objects}
    vms = [o for o in objects if o["class"] == "VM" and not is_true(o["snapshot"].get("is_a_snapshot"))]
    if len(vms) != 1:
        raise BadBackup(f"ova.xml holds {len(vms)} VMs, expected 1")
    return vms[0], by_id


def check_pool(backup: dict, pool: str) -> None:
    """sr-copy backups live partly on their pool's backup SR: they restore only there."""
    if backup["mode"] == "sr-copy" and backup["manifest"].get("pool") != pool:
        raise BadBackup(f"an sr-copy backup restores only into its own pool "
                        f"`{backup['manifest'].get('pool')}` (its disk is on that pool's backup SR)")


def name_problem(name: str) -> str | None:
    """Why a name given for a restored VM cannot be used (None if it can): a name is one line of
    text, so no control character at all (tab and newline included), and not blank."""
    if not name.strip():
        return "needs a non-empty value"
    if any(c < " " or "\x7f" <= c <= "\x9f" for c in name) or plain(name) != name:
        return "must not contain control characters"
    return None


def plain(text) -> str:
    """``text`` with what XML 1.0 cannot carry (NUL and other C0 controls but tab and newlines,
    surrogates, U+FFFE/U+FFFF) replaced by U+FFFD: a name read from a manifest may hold anything,
    and XML-RPC would send it as a document the pool cannot parse."""
    return "".join("\ufffd" if (c < " " and c not in "\t\n\r") or "\ud800" <= c <= "\udfff"
                   or c in "\ufffe\uffff" else c for c in str(text))


def is_true(value) -> bool:
    """An XAPI boolean as ova.xml or a record carries it."""
    return value is True or value in ("true", "1", 1)
