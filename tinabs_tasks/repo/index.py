"""A backup's index: everything but the disk blocks that rebuilding its ``.xva`` byte for byte needs.

An index holds the XVA's ova.xml; per disk (in stream order) the ordered chunk rows
``[number, block id, length]`` (a keep-alive member has block id None and length 0; a
chunk number skipped because its data was all zeros is a hole: no row); the framing
(``xva_framing``: template tar headers and, per member, only what differs from them);
the end of the tar and anything after it; and the figures of the backup
(``stream_bytes``, ``stream_sha256``, ``logical_bytes``, ``transferred_bytes``,
``stored_bytes``, ``new_blocks``, ``reused_blocks``, ...).

On disk: compact JSON, sealed by the repository (compressed, and encrypted with the
backup id as associated data, so an index cannot be passed off under another id),
written atomically as ``<index dir>/<backup id>``.  An index is written last, once
every block it names is stored: a backup without an index does not exist.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Iterator

from tinabs_tasks.repo.atomic import fsync_dir
from tinabs_tasks.repo.errors import RepoCorrupt, RepoError
from tinabs_tasks.repo.xva_framing import b64, unb64

FORMAT = "tinabs-xva-index"
VERSION = 1
_BACKUP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,199}\Z", re.ASCII)


class InvalidBackupId(RepoError):
    """A backup id that cannot name an index file."""


class BackupNotFound(RepoError):
    """No index under this backup id."""


class BackupExists(RepoError):
    """An index already has this backup id."""


def check_backup_id(backup_id: str) -> str:
    """``backup_id`` if it can name an index: 1-200 characters of letters, digits and ``._:@+-``,
    starting with a letter or digit (no path separators, no hidden or temp names)."""
    if not isinstance(backup_id, str) or not _BACKUP_ID.match(backup_id):
        raise InvalidBackupId(f"backup id {backup_id!r} is not usable: use 1-200 letters, digits or "
                              "'._:@+-', starting with a letter or digit (a run id is fine)")
    return backup_id


def _aad(backup_id: str) -> bytes:
    return b"tinabs-index/" + backup_id.encode("ascii")


@dataclass
class DiskRun:
    """The members of one disk (``Ref:N``) in stream order: rows ``[number, block_id, length]`` and,
    when a member's framing is not the default, a fourth element: a dict of its exceptions
    (``h``/``sh`` header codes of the chunk / checksum member, ``k`` checksum kind, ``st`` raw
    checksum text, ``p``/``sp`` raw padding)."""
    export_id: str
    checksum_kind: str = "xxhash"
    chunks: list = field(default_factory=list)


@dataclass
class BackupIndex:
    backup_id: str
    ova_xml: bytes = b""
    #: member framing of ova.xml: {"h": header code, "p"?: raw padding}
    ova_framing: dict = field(default_factory=dict)
    templates: list[bytes] = field(default_factory=list)
    disks: list[DiskRun] = field(default_factory=list)
    #: bytes after the two end-of-archive blocks: this many zeros, or ``trailer_raw``
    trailer_zeros: int = 0
    trailer_raw: bytes | None = None
    figures: dict = field(default_factory=dict)
    #: what the caller records with the backup (VM uuid, run id, ...): JSON values
    meta: dict = field(default_factory=dict)
    created: str = ""
    #: the size of the sealed index on disk (set by save_index and load_index; not serialised)
    sealed_bytes: int = 0

    def block_ids(self) -> Iterator[str]:
        """Every block id the backup references, in stream order (repeats included)."""
        for disk in self.disks:
            for row in disk.chunks:
                if row[1] is not None:
                    yield row[1]

    @property
    def stream_sha256(self) -> str:
        return self.figures["stream_sha256"]

    # -- serialisation ----------------------------------------------------------------
    def to_bytes(self) -> bytes:
        doc = {"format": FORMAT, "version": VERSION, "backup_id": self.backup_id, "created": self.created,
               "figures": self.figures, "meta": self.meta,
               "ova_xml": self.ova_xml.decode("utf-8", "surrogateescape"), "ova_framing": self.ova_framing,
               "templates": [b64(t) for t in self.templates],
               "disks": [{"export_id": d.export_id, "checksum_kind": d.checksum_kind, "chunks": d.chunks}
                         for d in self.disks],
               "trailer_zeros": self.trailer_zeros,
               "trailer_raw": None if self.trailer_raw is None else b64(self.trailer_raw)}
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes, backup_id: str) -> "BackupIndex":
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT:
                raise ValueError(f"format {doc.get('format')!r}")
            if doc.get("version") != VERSION:
                raise RepoError(f"index of backup {backup_id} has format version {doc.get('version')}, "
                                f"this tinabs reads version {VERSION}: upgrade tinabs")
            if doc["backup_id"] != backup_id:
                raise ValueError(f"it says it is backup {doc['backup_id']!r}")
            return cls(backup_id=backup_id, created=doc["created"], figures=doc["figures"], meta=doc["meta"],
                       ova_xml=doc["ova_xml"].encode("utf-8", "surrogateescape"), ova_framing=doc["ova_framing"],
                       templates=[unb64(t) for t in doc["templates"]],
                       disks=[DiskRun(d["export_id"], d["checksum_kind"], d["chunks"]) for d in doc["disks"]],
                       trailer_zeros=doc["trailer_zeros"],
                       trailer_raw=None if doc["trailer_raw"] is None else unb64(doc["trailer_raw"]))
        except RepoError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RepoCorrupt(f"the index of backup {backup_id} is damaged ({exc}); "
                              "restore it from a copy of the repository or delete the backup") from None


# -- the index directory ------------------------------------------------------------------
def _rel_path(repo, backup_id: str) -> str:
    return os.path.join(os.path.relpath(repo.index_dir(), repo.path), check_backup_id(backup_id))


def _path(repo, backup_id: str) -> str:
    return os.path.join(repo.index_dir(), check_backup_id(backup_id))


def save_index(repo, index: BackupIndex) -> int:
    """Seal and write ``index`` atomically; returns its size on disk.  Write it only once every
    block it names is stored.  BackupExists if the id is taken (an index is never replaced)."""
    check_backup_id(index.backup_id)
    if os.path.exists(_path(repo, index.backup_id)):
        raise BackupExists(f"backup {index.backup_id} already exists in the repository; "
                           "give the new backup another id")
    sealed = repo.seal(index.to_bytes(), aad=_aad(index.backup_id))
    repo.write_atomic(_rel_path(repo, index.backup_id), sealed)
    index.sealed_bytes = len(sealed)
    return len(sealed)


def load_index(repo, backup_id: str) -> BackupIndex:
    """The index of ``backup_id``; BackupNotFound, or RepoCorrupt if it fails its check."""
    path = _path(repo, backup_id)
    try:
        with open(path, "rb") as fh:
            sealed = fh.read()
    except FileNotFoundError:
        raise BackupNotFound(f"there is no backup {backup_id} in the repository at {repo.path}; "
                             "`tinabs list` shows the backups there") from None
    except OSError as exc:
        raise RepoCorrupt(f"cannot read the index of backup {backup_id} ({exc.strerror}); "
                          "check the repository's filesystem and permissions") from None
    plain = repo.open_sealed(sealed, aad=_aad(backup_id), what=f"the index of backup {backup_id}")
    index = BackupIndex.from_bytes(plain, backup_id)
    index.sealed_bytes = len(sealed)
    return index


def list_backups(repo) -> list[str]:
    """The ids of every backup (every complete index), sorted; temp files of writers are not."""
    try:
        names = os.listdir(repo.index_dir())
    except FileNotFoundError:
        return []
    return sorted(n for n in names if _BACKUP_ID.match(n))


def delete_index(repo, backup_id: str) -> None:
    """Remove a backup (its blocks stay until GC finds nothing references them)."""
    path = _path(repo, backup_id)
    try:
        os.unlink(path)
    except FileNotFoundError:
        raise BackupNotFound(f"there is no backup {backup_id} in the repository at {repo.path}") from None
    fsync_dir(repo.index_dir())


def remove_index_file(repo_path: str, backup_id: str) -> bool:
    """Remove backup ``backup_id`` from the repository at ``repo_path`` without opening it (no key
    is needed to delete: a backup is its index file); False if it was not there."""
    from tinabs_tasks.repo.layout import INDEX_DIR
    directory = os.path.join(repo_path, INDEX_DIR)
    try:
        os.unlink(os.path.join(directory, check_backup_id(backup_id)))
    except FileNotFoundError:
        return False
    fsync_dir(directory)
    return True


def referenced_blocks(repo) -> Iterator[tuple[str, set[str]]]:
    """(backup id, the set of block ids it references), one index at a time (for GC and check)."""
    for backup_id in list_backups(repo):
        try:
            index = load_index(repo, backup_id)
        except BackupNotFound:      # deleted (pruned) since the listing: it references nothing
            continue
        yield backup_id, set(index.block_ids())


def all_referenced_block_ids(repo) -> Iterator[str]:
    """Every block id any index references (repeats included), one index in memory at a time:
    what ``gc.collect_garbage`` takes as ``referenced``."""
    for _, block_ids in referenced_blocks(repo):
        yield from block_ids
