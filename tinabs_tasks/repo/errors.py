"""The repository's errors: each a ``RepoError`` whose message says what is wrong and how to fix it.

A message never holds the repository key (nor anything derived from it); it names paths, block
ids (which reveal nothing, being keyed hashes) and the command or setting that fixes the problem.
"""
from __future__ import annotations

import errno


class RepoError(Exception):
    """A repository problem a user can act on; the message says the fix."""


class NotInitialised(RepoError):
    """The path holds no repository (no config file): ``tinabs repo init PATH`` makes one."""


class KeyMissing(RepoError):
    """The repository is encrypted and no key was given."""


class KeyUnusable(RepoError):
    """A key source that cannot be used: unreadable, readable by others, or not a 32-byte key."""


class WrongKey(RepoError):
    """The key given is not the repository's (its key check does not match)."""


class RepoCorrupt(RepoError):
    """Stored data failed its check (authentication, decompression, hash) or is unreadable."""


class BlockMissing(RepoCorrupt):
    """A block an index references is not in the store."""

    def __init__(self, block_id: str, message: str = ""):
        self.block_id = block_id
        super().__init__(message or f"block {block_id} is missing from the repository; "
                                    "run `tinabs repo check` to see which backups it affects")

    def __reduce__(self):
        return type(self), (self.block_id, str(self))


class RepoFull(RepoError):
    """The repository's filesystem is full (or over quota); nothing was left under a real name."""


#: OSError numbers that mean "no room": a full disk, a quota, or a file-size limit
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE
