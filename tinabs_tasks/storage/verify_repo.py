"""``verify`` of a repository backup: its XVA rebuilt from the repository and walked as a file's is.

The repository the manifest names must be the one the config's ``[repository]`` opens (with
this host's key); the backup's index is loaded and ``repo.xva_rebuild`` gives the stream,
which ``verify_tar`` reads through the same ``Stream`` (sha256 as it comes in, bounded
memory) and the same tar walk as a file; ``verify`` then compares size, sha256 and skeleton
with the manifest, as for a file.  Each block is checked as it is read (authenticated,
re-hashed against its id): a missing or damaged one ends the walk with a problem naming the
block and the chunk.
"""
from __future__ import annotations

from collections.abc import Iterator

from tinabs_tasks.repo.configured import OtherRepository, open_recorded
from tinabs_tasks.repo.errors import RepoError
from tinabs_tasks.repo.index import load_index
from tinabs_tasks.repo.xva_rebuild import rebuild_xva
from tinabs_tasks.storage import verify_tar

#: ``walk``'s answer when this host cannot open the repository (its config or key)
NOT_HERE = object()


class _PiecesReader:
    """A read-only file over an iterator of byte pieces: ``read`` gives the next piece (any length)."""

    def __init__(self, pieces: Iterator[bytes]):
        self._pieces = pieces

    def read(self, _n: int = -1) -> bytes:
        return next(self._pieces, b"")


def walk(manifest: dict, problems, report, repo_cfg):
    """(stream, decoded ova.xml or None) of the rebuilt XVA, as ``verify`` walks a file's; None when
    the backup cannot be rebuilt (a problem says why); NOT_HERE when this host cannot open its
    repository."""
    recorded = manifest.get("repository") if isinstance(manifest.get("repository"), dict) else {}
    backup_id = manifest.get("backup_id")
    if not isinstance(backup_id, str):
        problems.add(f"manifest names no repository backup (backup_id: {backup_id!r})")
        return None
    try:
        repo = open_recorded(repo_cfg, recorded)
    except OtherRepository as exc:
        problems.add(f"backup {backup_id}: {exc}; not verified (no verdict recorded)")
        return NOT_HERE
    except RepoError as exc:
        problems.add(f"the repository cannot be opened here, so backup {backup_id} was not verified "
                     f"(no verdict recorded): {exc}")
        return NOT_HERE
    try:
        index = load_index(repo, backup_id)
    except RepoError as exc:
        problems.add(str(exc))
        return None
    stream = verify_tar.Stream(_PiecesReader(rebuild_xva(repo, index)))
    try:
        header = verify_tar.read_tar(stream, problems, report, False)
        stream.drain()
    except RepoError as exc:  # a missing or damaged block, named; nothing after it can be read
        problems.add(str(exc))
        return None
    return stream, header
