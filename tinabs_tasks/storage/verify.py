"""Offline verification of a backup: re-read the ``.xva`` once, as a stream, and say what is wrong.

Checks (FACTS.md §7): the tar structure (512-byte headers, padding, the two
zero blocks at the end), member types (regular files only: no links, devices,
FIFOs, directories or GNU/pax extension headers) and names (no absolute
paths, no ``..``, only ``ova.xml``, ``Ref:N/NNNNNNNN`` and its checksum),
``ova.xml`` first and parseable, every chunk's ``.xxhash`` (XXH64, seed 0,
16 upper-case hex digits) or legacy ``.checksum`` (SHA-1 hex), each disk
rebuilt *sequentially* (gap of ``(n - previous - 1)`` MiB, then the member's
bytes) ending exactly at its VDI's ``virtual_size``, the file's size and
sha256 against the manifest, and the VM in ``ova.xml`` against the manifest's
``skeleton``.

Memory stays bounded whatever the file holds: the file is read in large
pieces, chunk data is hashed piece by piece and never kept; only ``ova.xml``
(capped) and the checksum members (a few bytes) are held.

The manifest and the data file are read only if they are regular files, not
symlinks (a link or FIFO planted in the destination is reported, never opened).
The tar walk is ``verify_tar``'s.  ``xva_headers.header_problems`` walks only the tar
headers, for a restore's quick check; ``ova.decode`` reads ova.xml for both.

A ``.metadata.xva`` (sr-copy) holds only ``ova.xml``; that the copied VDIs
still exist on the backup SR needs the pool and is checked elsewhere.

A repository backup (mode ``repo``) has no file: its XVA is rebuilt from the repository as a
stream (``verify_repo``) and goes through the same walk and the same comparisons.  A missing
or damaged block fails it, named.  When this host cannot open the repository (no
``[repository]``, no or a wrong key) that is said and no verdict is recorded: it is about
this host's config, not the backup.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field

from tinabs_tasks.storage import catalog
from tinabs_tasks.storage import destination
from tinabs_tasks.storage import verify_repo
from tinabs_tasks.storage import verify_tar
from tinabs_tasks.storage.verify_skeleton import compare_skeleton

MAX_PROBLEMS = 50


@dataclass
class Report:
    manifest: str
    data: str = ""
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    bytes: int = 0          # bytes of the data file read
    disks: int = 0          # disks rebuilt from chunks
    chunks: int = 0         # chunk members whose checksum was checked
    record_error: str = ""  # why the verdict could not be written into the manifest

    def as_dict(self) -> dict:
        return {"manifest": self.manifest, "data": self.data, "ok": self.ok, "problems": list(self.problems),
                "bytes": self.bytes, "disks": self.disks, "chunks": self.chunks, "record_error": self.record_error}


class Problems(list):
    """A list that stops growing (with one closing line) after MAX_PROBLEMS."""

    dropped = 0

    def add(self, text: str) -> None:
        if len(self) < MAX_PROBLEMS:
            self.append(text)
        else:
            self.dropped += 1

    def final(self) -> list[str]:
        return list(self) + ([f"... and {self.dropped} more problem(s)"] if self.dropped else [])


def verify_backup(manifest_path: str, *, record: bool = False, pool_check=None, repository=None) -> Report:
    """Verify one backup; ``pool_check(manifest) -> [problems]`` also checks what lives on a pool
    (the copies an sr-copy backup keeps on the backup SR); ``repository`` (the config's
    RepositoryConfig) opens a repository backup's repository, with this config's key."""
    report = Report(manifest=manifest_path)
    problems = Problems()
    manifest = _load_manifest(manifest_path, problems)
    if manifest is None:  # nothing to record the verdict in
        return _finish(report, problems, None, record=False)
    if manifest.get("mode") == "repo":
        walked = verify_repo.walk(manifest, problems, report, repository)
        if walked is verify_repo.NOT_HERE:  # this host's config or key, not the backup: no verdict
            return _finish(report, problems, manifest, record=False)
        metadata_only = False
    else:
        name = manifest.get("file")
        if not isinstance(name, str) or not name or os.path.basename(name) != name or name in (".", "..") \
                or "\0" in name:
            problems.add(f"manifest names no plain data file (file: {name!r})")
            return _finish(report, problems, manifest, record)
        metadata_only = name.endswith(".metadata.xva") or manifest.get("mode") == "sr-copy"
        walked = _walk_file(manifest_path, name, problems, report, metadata_only)
    if walked is None:  # unreadable, or cut by a missing block: what it says is the problem
        return _finish(report, problems, manifest, record)
    stream, header = walked
    report.bytes = stream.total
    if manifest.get("size") is not None and manifest.get("size") != stream.total:
        problems.add(f"size differs from the manifest (file has {stream.total} bytes, manifest says "
                     f"{manifest.get('size')})")
    digest = stream.sha.hexdigest()
    # an incremental repo backup (a synthetic full) was never streamed whole by a pool: it has no
    # sha256 to compare; each of its blocks was checked against its id as the walk read it
    synthetic = manifest.get("mode") == "repo" and manifest.get("backup_kind") == "incremental" \
        and manifest.get("sha256") is None
    if not synthetic and manifest.get("sha256") != digest:
        problems.add(f"sha256 differs from the manifest (manifest says {manifest.get('sha256')}, "
                     f"file hashes to {digest})")
    if header is not None:
        compare_skeleton(header, manifest.get("skeleton"), problems)
    if pool_check is not None and metadata_only:
        for problem in pool_check(manifest):
            problems.add(problem)
    return _finish(report, problems, manifest, record)


def _walk_file(manifest_path: str, name: str, problems: Problems, report: Report, metadata_only: bool):
    """(the stream read, the decoded ova.xml or None) of the data file; None if it cannot be read."""
    report.data = os.path.join(os.path.dirname(os.path.abspath(manifest_path)), name)
    try:
        fh = destination.open_regular(report.data)
    except destination.NotRegular as exc:  # a planted link or FIFO: never followed, never read
        problems.add(f"data file {name} is {exc.kind}: not followed, not read (tinabs writes only regular files)")
        return None
    except OSError as exc:
        problems.add(f"data file {name} cannot be read: {exc.strerror}")
        return None
    with fh:
        stream = verify_tar.Stream(fh)
        header = verify_tar.read_tar(stream, problems, report, metadata_only)
        stream.drain()
    return stream, header


def _load_manifest(path: str, problems: Problems) -> dict | None:
    try:
        with destination.open_regular(path) as fh:
            manifest = json.loads(fh.read())
    except destination.NotRegular as exc:  # a planted link: never read, nor replaced by a verdict
        problems.add(f"manifest {path} is {exc.kind}: not followed, not read")
        return None
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict):
        problems.add(f"manifest {path} is missing or not valid JSON")
        return None
    return manifest


def verify_all(dest: str, *, record: bool = False, pool_check=None, repository=None) -> list[tuple[str, Report]]:
    """Every backup with a manifest under ``dest`` (incomplete ones too: they fail; repository
    backups too), in path order."""
    manifests = sorted({b.manifest_path for b in catalog.scan(dest, include_incomplete=True) if b.manifest_path})
    return [(path, verify_backup(path, record=record, pool_check=pool_check, repository=repository))
            for path in manifests]


def _finish(report: Report, problems: Problems, manifest: dict | None, record: bool) -> Report:
    report.problems = problems.final()
    report.ok = not report.problems
    if record and manifest is not None:
        manifest["verified"] = {"state": "ok" if report.ok else "failed",
                                "at": dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
                                "problems": report.problems}
        try:
            destination.write_json_atomic(report.manifest, manifest)
        except OSError as exc:  # a read-only copy of the backups: the verdict stands, unrecorded
            report.record_error = f"could not record the result in {report.manifest}: {exc.strerror or exc}"
    return report
