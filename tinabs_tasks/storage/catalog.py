"""The catalog: every backup in a destination, read from the manifests on disk.

Nothing here asks the broker: the files are the truth, so the catalog works
after Redis is wiped and from a host that never ran a job.  The walk knows the
layout (``<dest>/<pool>/<vm-name>--<vm-uuid>/<stamp>-<run>.<ext>``) and goes
exactly three levels deep with ``os.scandir``; it parses only manifests and
hashes nothing.  Symlinks are never followed (a link in the destination cannot
pull files from elsewhere into the catalog), and the pool and VM filters are
applied to directory names before any manifest is opened.  A path a user names
(``resolve``) must lead, without a link out of the destination, to a manifest that
is a regular file.

A backup is *complete* only when its manifest parses and names a data file
that is beside it, a regular file, with the manifest's size.  Everything else
is reported only with ``include_incomplete`` and carries its status:

* ``partial``: a ``.partial`` file (a transfer or manifest still being written,
  or left by an interrupted run);
* ``no-manifest``: a data file no manifest names (a failed or interrupted run);
* ``corrupt-manifest``: a manifest that is not valid JSON or lacks fields;
* ``missing-data``: a valid manifest whose data file is absent, not a regular
  file, or not of the manifest's size.

A repository backup (``mode: "repo"``) has no data file: its manifest names the backup's id
and the repository it is in, and it is complete when that repository holds the index (a
``stat``: the catalog never needs the key).  Its ``path`` is None; it is named by its
manifest or its id (``resolve``).

A repo or sr-copy backup also says how it was taken (``manifest.KIND_FIELDS``): incremental,
against which backup, or full and why.  An export backup has none of that (always full).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import asdict, dataclass

from tinabs_tasks.storage import destination
from tinabs_tasks.storage.destination import safe_name

COMPLETE, PARTIAL, NO_MANIFEST, CORRUPT, MISSING = (
    "complete", "partial", "no-manifest", "corrupt-manifest", "missing-data")
DATA_SUFFIXES = (".metadata.xva", ".xva")  # longest first
MANIFEST_SUFFIX = ".json"
PARTIAL_SUFFIX = ".partial"
VERIFIED_STATES = ("ok", "failed")


@dataclass
class Backup:
    vm_uuid: str
    vm_name: str
    pool: str
    mode: str | None
    created: dt.datetime | None  # UTC
    size: int | None
    sha256: str | None
    verified: str | None  # None (never verified), "ok" or "failed"
    path: str | None  # the data file
    manifest_path: str | None
    run: str | None
    job: str | None
    status: str = COMPLETE
    #: a repository backup's id and repository path (None for a file backup)
    backup_id: str | None = None
    repository: str | None = None
    #: bytes this backup added to the repository (repo mode)
    stored_bytes: int | None = None
    #: repo and sr-copy: "incremental" (a delta against ``base_backup``, ``chain`` incrementals
    #: since the last full) or "full" (``full_reason``); None for an export backup
    backup_kind: str | None = None
    full_reason: str | None = None
    base_backup: str | None = None
    chain: int | None = None

    @property
    def complete(self) -> bool:
        return self.status == COMPLETE

    def to_dict(self) -> dict:
        out = asdict(self)
        out["created"] = self.created.strftime("%Y-%m-%dT%H:%M:%SZ") if self.created else None
        return out


def scan(dest: str, pool: str | None = None, vm: str | None = None,
         include_incomplete: bool = False) -> list[Backup]:
    """Backups under ``dest``, grouped per VM, newest first within each VM."""
    found: list[Backup] = []
    pool_dir = safe_name(pool, "pool") if pool else None
    vm_want = _VmFilter(vm) if vm else None
    for pool_entry in _dirs(dest):
        if pool_dir is not None and pool_entry.name != pool_dir:
            continue
        for vm_entry in _dirs(pool_entry.path):
            name, _, uuid = vm_entry.name.rpartition("--")
            if not name:
                name, uuid = vm_entry.name, ""
            if vm_want is not None and not vm_want.dir_matches(vm_entry.name, name, uuid):
                continue
            found.extend(_scan_vm_dir(vm_entry.path, pool_entry.name, name, uuid, vm_want, include_incomplete))
    found.sort(key=_order)
    return found


class _VmFilter:
    def __init__(self, vm: str):
        self.raw, self.lower, self.safe = vm, vm.lower(), safe_name(vm)

    def dir_matches(self, dir_name: str, name: str, uuid: str) -> bool:
        return self.raw == dir_name or self.safe in (name, uuid) or self.lower == uuid.lower()

    def manifest_matches(self, dir_name: str, m_name: str, m_uuid: str) -> bool:
        # exact VM name, uuid (any case), or the on-disk directory name as the user sees it
        return self.raw == m_name or self.lower == m_uuid.lower() or self.raw == dir_name \
            or self.raw == safe_name(m_name) or self.raw == safe_name(m_uuid, "uuid")


def _dirs(path: str):
    try:
        with os.scandir(path) as it:
            entries = [e for e in it if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    return entries


def _scan_vm_dir(path: str, pool: str, name: str, uuid: str, vm_want, include_incomplete: bool):
    manifests, data, partials = [], {}, []
    try:
        with os.scandir(path) as it:
            for entry in it:
                fname = entry.name
                if fname.endswith(MANIFEST_SUFFIX):
                    if entry.is_file(follow_symlinks=False):
                        manifests.append(entry)
                elif fname.endswith(PARTIAL_SUFFIX):
                    partials.append(entry)
                elif fname.endswith(DATA_SUFFIXES):
                    data[fname] = entry
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    dir_name = os.path.basename(path)
    out: list[Backup] = []
    for entry in manifests:
        item = _from_manifest(entry, data, pool, name, uuid)
        if vm_want is not None and item.status != CORRUPT \
                and not vm_want.manifest_matches(dir_name, item.vm_name, item.vm_uuid):
            continue
        if item.status == COMPLETE or include_incomplete:
            out.append(item)
    if include_incomplete:
        for entry in data.values():  # what no manifest claimed
            out.append(_stray(entry, NO_MANIFEST, pool, name, uuid))
        for entry in partials:
            out.append(_stray(entry, PARTIAL, pool, name, uuid))
    return out


def _from_manifest(entry, data: dict, pool: str, name: str, uuid: str) -> Backup:
    mpath = entry.path
    base = entry.name[:-len(MANIFEST_SUFFIX)]
    try:
        with open(mpath, "rb") as fh:
            m = json.loads(fh.read())
        vm = m["vm"]
        if m.get("mode") == "repo":
            return _from_repo_manifest(m, mpath, base, pool)
        fname, size = m["file"], m["size"]
        if not isinstance(fname, str) or os.path.basename(fname) != fname or fname in ("", ".", ".."):
            raise ValueError("bad file")
        if not isinstance(size, int) or isinstance(size, bool):
            raise ValueError("bad size")
        item = Backup(vm_uuid=str(vm["uuid"]), vm_name=str(vm["name"]), pool=str(m.get("pool") or pool),
                      mode=m.get("mode"), created=_stamp(m.get("created")) or _stamp(base),
                      size=size, sha256=m.get("sha256"), verified=_verified(m.get("verified")),
                      path=os.path.join(os.path.dirname(mpath), fname), manifest_path=mpath,
                      run=m.get("run"), job=m.get("job"), **_kind(m))
    except (OSError, ValueError, KeyError, TypeError):
        return Backup(vm_uuid=uuid, vm_name=name, pool=pool, mode=None, created=_stamp(base), size=None,
                      sha256=None, verified=None, path=None, manifest_path=mpath, run=_run(base), job=None,
                      status=CORRUPT)
    target = data.pop(fname, None)  # claimed: not an orphan
    if target is not None:
        try:
            ok = target.is_file(follow_symlinks=False) and target.stat(follow_symlinks=False).st_size == size
        except OSError:
            ok = False
    else:
        ok = False
    if not ok:
        item.status = MISSING
    return item


def _from_repo_manifest(m: dict, mpath: str, base: str, pool: str) -> Backup:
    """A repo backup: complete when its repository holds its index (ValueError/KeyError: corrupt)."""
    bid, repo = m["backup_id"], m["repository"]["path"]
    if not isinstance(bid, str) or bid != base or not isinstance(repo, str) or not os.path.isabs(repo):
        raise ValueError("bad repository backup")
    size, stored = m["size"], m.get("stored_bytes")
    if not isinstance(size, int) or isinstance(size, bool):
        raise ValueError("bad size")
    item = Backup(vm_uuid=str(m["vm"]["uuid"]), vm_name=str(m["vm"]["name"]), pool=str(m.get("pool") or pool),
                  mode="repo", created=_stamp(m.get("created")) or _stamp(base), size=size, sha256=m.get("sha256"),
                  verified=_verified(m.get("verified")), path=None, manifest_path=mpath, run=m.get("run"),
                  job=m.get("job"), backup_id=bid, repository=repo,
                  stored_bytes=stored if isinstance(stored, int) and not isinstance(stored, bool) else None,
                  **_kind(m))
    if not os.path.isfile(os.path.join(repo, "indexes", bid)):
        item.status = MISSING
    return item


def _kind(m: dict) -> dict:
    """How the backup was taken, as its manifest says (what is not of the expected type: None)."""
    kind, chain = m.get("backup_kind"), m.get("chain")
    if kind not in ("full", "incremental"):
        return {}
    text = {k: m[k] if isinstance(m.get(k), str) else None for k in ("full_reason", "base_backup")}
    counted = isinstance(chain, int) and not isinstance(chain, bool)
    return {"backup_kind": kind, **text, "chain": chain if counted else None}


def _stray(entry, status: str, pool: str, name: str, uuid: str) -> Backup:
    fname = entry.name
    base = fname[:-len(PARTIAL_SUFFIX)] if fname.endswith(PARTIAL_SUFFIX) else fname
    for suffix in (MANIFEST_SUFFIX, *DATA_SUFFIXES):
        if base.endswith(suffix):
            base = base[:-len(suffix)]
            break
    try:
        size = entry.stat(follow_symlinks=False).st_size
    except OSError:
        size = None
    mode = "sr-copy" if fname.startswith(base + ".metadata.xva") else "export" if ".xva" in fname[len(base):] else None
    return Backup(vm_uuid=uuid, vm_name=name, pool=pool, mode=mode, created=_stamp(base), size=size, sha256=None,
                  verified=None, path=entry.path, manifest_path=None, run=_run(base), job=None, status=status)


def _stamp(text) -> dt.datetime | None:
    """``20260101T120000Z`` (alone or at the start of a file name) as an aware UTC datetime."""
    if not isinstance(text, str) or len(text) < 16 or text[8] != "T" or text[15] != "Z":
        return None
    try:
        return dt.datetime(int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[9:11]), int(text[11:13]),
                           int(text[13:15]), tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def _run(base: str) -> str | None:
    return base[17:] or None if _stamp(base) and len(base) > 17 and base[16] == "-" else None


def _verified(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("state", value.get("result"))
    return value if value in VERIFIED_STATES else None


def _order(b: Backup):
    # per VM (pool, name, uuid), newest first; undated entries last
    return (b.pool, b.vm_name, b.vm_uuid, -b.created.timestamp() if b.created else float("inf"),
            b.path or b.manifest_path or "")


def vm_groups(dest: str, pool: str | None = None, vm: str | None = None) -> list[tuple[str, str]]:
    """(pool, vm uuid) of every VM with a manifest in the destination."""
    seen = []
    for b in scan(dest, pool=pool, vm=vm, include_incomplete=True):
        key = (b.pool, b.vm_uuid)
        if b.manifest_path and b.vm_uuid and key not in seen:
            seen.append(key)
    return seen


_BACKUP_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[A-Za-z0-9]+\Z")


def _manifest_of_id(dest: str, backup_id: str) -> str:
    """The manifest named ``<backup id>.json`` anywhere in the destination (the id itself if none)."""
    for pool_entry in _dirs(dest):
        for vm_entry in _dirs(pool_entry.path):
            candidate = os.path.join(vm_entry.path, backup_id + MANIFEST_SUFFIX)
            if os.path.lexists(candidate):
                return candidate
    return backup_id


class NotABackup(ValueError):
    """A path a user gave does not name a backup in the destination; the message says why."""


def resolve(dest: str, path: str) -> str:
    """The manifest of the backup a user named by its data file or its manifest, inside ``dest``.

    The manifest must be a regular file, not a symlink: one planted in the destination could
    otherwise make a command read (and record a verdict beside) a file from elsewhere."""
    if not os.path.lexists(path) and _BACKUP_ID.match(path):
        path = _manifest_of_id(dest, path)
    if not os.path.lexists(path):
        raise NotABackup(f"{path}: no such file — name a backup by the path of its .xva or .json under "
                         f"{dest}, or a repository backup by its id (`tinabs list` shows them)")
    try:
        destination.inside(dest, path)
    except destination.UnsafePath:
        raise NotABackup(f"{path} is outside the destination {dest} (or reached through a link that leads "
                         "out of it); only backups inside the destination are read") from None
    manifest = os.path.realpath(path)
    for suffix in DATA_SUFFIXES:
        if manifest.endswith(suffix):
            manifest = manifest[: -len(suffix)] + MANIFEST_SUFFIX
            break
    if not manifest.endswith(MANIFEST_SUFFIX):
        raise NotABackup(f"{path}: not a backup (give its .xva, .metadata.xva or .json)")
    name = os.path.basename(manifest)
    try:
        destination.open_regular(manifest).close()
    except destination.NotRegular as exc:
        raise NotABackup(f"{path}: its manifest {name} is {exc.kind}, not a regular file; tinabs never "
                         "writes one like that, nor follows it") from None
    except FileNotFoundError:
        raise NotABackup(f"{path}: no manifest {name} beside it (not a finished backup)") from None
    except OSError as exc:
        raise NotABackup(f"{path}: its manifest {name} cannot be read: {exc.strerror}") from None
    return manifest
