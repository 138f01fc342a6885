"""The block store: each block once, named by a (keyed) hash of its plaintext, sealed on disk.

A block's id is HMAC-SHA256 of its plaintext under the block-id subkey when the repository is
encrypted (so that names reveal nothing: the same data has another id under another key), plain
SHA-256 when it is not; 64 lower-case hex digits.  Its file is ``blocks/<first 4 hex>/<id>``
(65536 directories at most, made when first needed, so that no directory grows past a few
thousand entries for tens of millions of blocks), sealed by ``codec`` with the id as associated
data.

Writers never conflict: a block is written to a temp name in its own directory, fsynced and
linked to its real name; the same content always has the same name, so when two writers race
the second finds the name taken and drops its copy.  A crash leaves only a temp file, which GC
reclaims once older than its grace.

A block's mtime is its GC mark (see gc.py): ``put`` of a block that exists, and ``touch``,
set it to now.  A backup must ``put`` or ``touch`` every block its index will reference, during
the backup: that is what keeps GC from removing a block of a backup whose index is not yet
written.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterator

from tinabs_tasks.repo.atomic import TEMP_PREFIX, write_atomic
from tinabs_tasks.repo.codec import Codec, SealError
from tinabs_tasks.repo.errors import BlockMissing, RepoCorrupt, RepoError, RepoFull, is_no_space

BLOCKS_DIR = "blocks"
FANOUT = 4
BLOCK_ID = re.compile(r"[0-9a-f]{64}")
#: a block GC is about to remove (renamed away first: see gc.py)
CONDEMNED_PREFIX = ".gc."


class BlockStore:
    """The blocks of the repository at ``root`` (its ``blocks/`` directory)."""

    def __init__(self, root: str, codec: Codec, id_key: bytes | None):
        self.root = root
        self.dir = os.path.join(root, BLOCKS_DIR)
        self._codec = codec
        self._id_key = id_key

    def block_id(self, data: bytes) -> str:
        if self._id_key is None:
            return hashlib.sha256(data).hexdigest()
        return hmac.new(self._id_key, data, hashlib.sha256).hexdigest()

    def path(self, block_id: str) -> str:
        if not BLOCK_ID.fullmatch(block_id):
            raise RepoError(f"{block_id!r} is not a block id (64 lower-case hex digits)")
        return os.path.join(self.dir, block_id[:FANOUT], block_id)

    def put(self, data: bytes) -> tuple[str, int]:
        """Store ``data``; (its id, bytes newly stored: 0 when the block was there, which refreshes
        its GC mark).  RepoFull when the disk is full, with nothing left under a real name."""
        block_id = self.block_id(data)
        return block_id, self.store(block_id, data)

    def store(self, block_id: str, data: bytes) -> int:
        """``put`` of data whose id the caller computed (``block_id(data)``): bytes newly stored."""
        path = self.path(block_id)
        if self._mark(path):
            return 0
        sealed = self._codec.seal(data, block_id.encode("ascii"), checksum=False)
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        except OSError as exc:
            if is_no_space(exc):
                raise RepoFull(f"no space left for block directory {os.path.dirname(path)}; free space on "
                               "the repository's filesystem (or run `tinabs repo gc`), then retry") from None
            raise
        try:
            # link, not rename: a racing writer's copy stays, so its mark (mtime) is not rolled back
            write_atomic(path, sealed, mode=0o600, replace=False)
        except FileExistsError:  # another writer stored it meanwhile: same content, same name
            self._mark(path)
            return 0
        return len(sealed)

    def get(self, block_id: str, *, rehash: bool | None = None) -> bytes:
        """The block's plaintext, checked: authentication (encrypted), decompression, and its hash
        against its id.  BlockMissing / RepoCorrupt name the block.

        ``rehash`` None: the hash is checked only when the block is not encrypted.  AES-GCM already
        authenticated the content under its id (the id is the associated data), so hashing it
        again proves nothing more and costs a third of a restore's CPU; `tinabs repo check
        --read-data` asks for it anyway (``rehash=True``), as its documentation says."""
        path = self.path(block_id)
        try:
            with open(path, "rb") as f:
                sealed = f.read()
        except FileNotFoundError:
            raise BlockMissing(block_id) from None
        except OSError as exc:
            raise RepoCorrupt(f"block {block_id} cannot be read: {exc.strerror}") from None
        try:
            data = self._codec.open(sealed, block_id.encode("ascii"))
        except SealError as exc:
            raise RepoCorrupt(f"block {block_id} is damaged: {exc}; run `tinabs repo check` "
                              "to see which backups it affects") from None
        if rehash is None:
            rehash = not self._codec.encrypted
        if rehash and not hmac.compare_digest(self.block_id(data), block_id):
            raise RepoCorrupt(f"block {block_id} is damaged: its content does not hash to its id; "
                              "run `tinabs repo check` to see which backups it affects")
        return data

    def has(self, block_id: str) -> bool:
        """Whether the block is stored (this is no GC mark: use ``touch`` for a block kept)."""
        return os.path.exists(self.path(block_id))

    def touch(self, block_id: str) -> None:
        """Mark the block as in use now (GC keeps it); BlockMissing if it is not stored."""
        if not self._mark(self.path(block_id)):
            raise BlockMissing(block_id)

    def stored_size(self, block_id: str) -> int:
        """Bytes the block's file takes (header and tag included)."""
        try:
            return os.stat(self.path(block_id)).st_size
        except FileNotFoundError:
            raise BlockMissing(block_id) from None

    def block_ids(self) -> Iterator[str]:
        """Every stored block's id (directory order)."""
        for entry in self.scan():
            if entry[0] == "block":
                yield entry[1]

    def scan(self) -> Iterator[tuple[str, str, os.stat_result | None]]:
        """(kind, name, stat) of every file under blocks/: kind "block" (name = id), "temp",
        "condemned" or "other" (name = path); stat None when the file went meanwhile."""
        try:
            top = sorted(os.scandir(self.dir), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for sub in top:
            if not sub.is_dir(follow_symlinks=False):
                continue
            try:
                entries = list(os.scandir(sub.path))
            except FileNotFoundError:
                continue
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                if BLOCK_ID.fullmatch(entry.name) and entry.name[:FANOUT] == sub.name:
                    yield "block", entry.name, st
                elif entry.name.startswith(TEMP_PREFIX):
                    yield "temp", entry.path, st
                elif entry.name.startswith(CONDEMNED_PREFIX):
                    yield "condemned", entry.path, st
                else:
                    yield "other", entry.path, st

    @staticmethod
    def _mark(path: str) -> bool:
        """Set the file's mtime (and atime) to now; False if there is no such file."""
        try:
            os.utime(path)
            return True
        except FileNotFoundError:
            return False
