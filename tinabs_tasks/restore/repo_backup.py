"""A repository backup sent to a pool: its XVA rebuilt from the index as the upload reads it.

``RebuiltXva`` is the body ``xapi.upload`` sends to ``/import``: its size is the index's
``stream_bytes`` (the Content-Length), and each ``pieces()`` rebuilds the stream from the
start (a redirect sends it again), one chunk in memory at a time and never a temp file.

What was sent is hashed as it goes and must be the manifest's sha256 and size.  The last
piece is held back until the whole stream checked out (the rebuild's own checks and this
hash), so a damaged backup never reaches the pool whole: the upload is cut short of its
Content-Length, the pool's import fails and rolls back, and RestoreFailed names the damaged
block (``repo.xva_rebuild``'s message) or the mismatch.
"""
from __future__ import annotations

import hashlib
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
        digest = hashlib.sha256()
        total, held = 0, None
        try:
            for piece in rebuild_xva(self.repo, self.index):
                total += len(piece)
                if total > self.size:
                    break
                digest.update(piece)
                if held is not None:
                    yield held
                held = piece
        except RepoError as exc:
            raise RestoreFailed(f"repository: {exc}") from None
        if total != self.size or digest.hexdigest() != self.sha256:
            raise RestoreFailed(f"the XVA rebuilt from repository backup {self.backup_id} is not the one backed up "
                                f"({'more than ' if total > self.size else ''}{total} bytes, sha256 "
                                f"{digest.hexdigest()}; the manifest says {self.size} bytes, sha256 {self.sha256}); "
                                "it was not sent whole")
        if held is not None:  # everything checked out: the end of the archive may go now
            yield held
