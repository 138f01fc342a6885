"""A repository backup sent to a pool: its XVA rebuilt from the index as the upload reads it.

``RebuiltXva`` is the body ``xapi.upload`` sends to ``/import``: its size is the index's
``stream_bytes`` (the Content-Length), and each ``pieces()`` rebuilds the stream from the
start (a redirect sends it again), one chunk in memory at a time and never a temp file.

The manifest's size and sha256 must be the index's (``load_backup`` checked that where the
restore runs; checked again here, it costs nothing), and the rebuild hashes the stream itself
and fails after its last piece when it is not the index's.  So the last piece is held back
until the rebuild ended cleanly: a damaged backup never reaches the pool whole, the upload is
cut short of its Content-Length, the pool's import fails and rolls back, and RestoreFailed
names the damaged block or the mismatch (``repo.xva_rebuild``'s message).  One hash of the
stream, not two: a restore is bound by its CPU on small hosts.
"""
from __future__ import annotations

from collections.abc import Iterator

from tinabs_tasks.repo.errors import RepoError
from tinabs_tasks.repo.xva_rebuild import rebuild_xva
from tinabs_tasks.restore.backup_file import RestoreFailed


class RebuiltXva:
    """The XVA of a repository backup from ``load_backup`` (opened), as an upload body."""

    def __init__(self, backup: dict):
        self.repo, self.index = backup["repo"], backup["index"]
        self.size = int(self.index.figures["stream_bytes"])
        self.sha256 = backup["manifest"].get("sha256")
        self.backup_id = self.index.backup_id

    def pieces(self) -> Iterator[bytes]:
        indexed = self.index.figures.get("stream_sha256")
        if self.sha256 != indexed:
            raise RestoreFailed(f"repository backup {self.backup_id} is not the one backed up: its index says sha256 "
                                f"{indexed}, its manifest {self.sha256}; nothing was sent")
        total, held = 0, None
        try:
            for piece in rebuild_xva(self.repo, self.index):  # raises after its last piece if not the index's
                total += len(piece)
                if total > self.size:
                    break
                if held is not None:
                    yield held
                held = piece
        except RepoError as exc:
            raise RestoreFailed(f"repository: {exc}") from None
        if total != self.size:
            raise RestoreFailed(f"the XVA rebuilt from repository backup {self.backup_id} is not the one backed up "
                                f"({'more than ' if total > self.size else ''}{total} bytes; the manifest says "
                                f"{self.size}); it was not sent whole")
        if held is not None:  # everything checked out: the end of the archive may go now
            yield held
