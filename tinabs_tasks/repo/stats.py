"""``tinabs repo stats``: what the repository holds against what its backups would take as files.

Figures (all bytes are counted exactly, not estimated):

* ``blocks``: block files in the store (``blocks/``), referenced or awaiting GC.
* ``stored_bytes``: the sizes of those files as stored (sealed: header, nonce and tag included);
  temp files, indexes and the config are not counted.
* ``backups``: backups given (one index each).
* ``logical_bytes``: the sum of the backups' logical sizes as the caller gives them (``tinabs repo
  stats`` gives each backup's ``logical_bytes``: the disk data its XVA carries, the same figure as
  in its manifest; the streams' own sizes are its ``xva_bytes``).
* ``unique_bytes``: the plaintext bytes of the distinct blocks the backups reference (each block
  once, its length as the indexes record it).
* ``dedup_ratio``: ``logical_bytes / unique_bytes``: how many times over the backups use the
  distinct content (1.0 for a single backup of unique data).
* ``compression_ratio``: ``unique_bytes / referenced_stored_bytes``, where the denominator is the
  stored size of those same distinct blocks: compression's gain (below 1 for incompressible data,
  by the few bytes of header and tag per block).

So ``logical_bytes / referenced_stored_bytes = dedup_ratio * compression_ratio``.  Ratios are None
when their denominator is 0 (an empty repository).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tinabs_tasks.repo.blocks import BlockStore


@dataclass(frozen=True)
class RepoStats:
    blocks: int
    stored_bytes: int
    backups: int
    logical_bytes: int
    unique_bytes: int
    referenced_stored_bytes: int
    dedup_ratio: float | None
    compression_ratio: float | None


def repository_stats(store: BlockStore, logical_bytes: Mapping[str, int],
                     block_sizes: Mapping[str, int]) -> RepoStats:
    """The figures above, for the backups whose logical sizes ``logical_bytes`` gives (backup id ->
    bytes) and the distinct blocks they reference (``block_sizes``: block id -> plaintext length)."""
    blocks = stored = referenced_stored = 0
    for kind, block_id, st in store.scan():
        if kind != "block" or st is None:
            continue
        blocks += 1
        stored += st.st_size
        if block_id in block_sizes:
            referenced_stored += st.st_size
    logical = sum(logical_bytes.values())
    unique = sum(block_sizes.values())
    return RepoStats(blocks=blocks, stored_bytes=stored, backups=len(logical_bytes), logical_bytes=logical,
                     unique_bytes=unique, referenced_stored_bytes=referenced_stored,
                     dedup_ratio=logical / unique if unique else None,
                     compression_ratio=unique / referenced_stored if referenced_stored else None)
