"""``tinabs repo check``: every block the backups reference is there, and (``read_data``) sound.

Given each backup's referenced block ids (from the indexes), check reports the blocks that are
missing and, reading data, those that fail authentication, decompression or their hash, each
with the backups it affects.  Reading every block is as slow as a restore of everything;
``subset`` reads a fraction of the distinct blocks, chosen by a seeded random sample so that a
run can be repeated (and successive runs with other seeds cover other blocks).
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tinabs_tasks.repo.blocks import BlockStore
from tinabs_tasks.repo.errors import BlockMissing, RepoCorrupt, RepoError


@dataclass
class CheckReport:
    """What check found.  ``missing`` and ``damaged`` map a block id to the sorted backups that
    reference it (``damaged`` also says why, in ``reasons``)."""
    backups: int = 0
    blocks_referenced: int = 0  # distinct
    blocks_read: int = 0
    missing: dict[str, list[str]] = field(default_factory=dict)
    damaged: dict[str, list[str]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.damaged

    def affected_backups(self) -> list[str]:
        return sorted({b for backups in (*self.missing.values(), *self.damaged.values()) for b in backups})

    def problems(self) -> list[str]:
        """One line per bad block, naming the backups it affects."""
        lines = [f"block {block_id} is missing; it affects {', '.join(backups)}"
                 for block_id, backups in sorted(self.missing.items())]
        lines += [f"{self.reasons[block_id]}; it affects {', '.join(backups)}"
                  for block_id, backups in sorted(self.damaged.items())]
        return lines


def check_blocks(store: BlockStore, referenced: Mapping[str, Iterable[str]], *, read_data: bool = False,
                 subset: float | None = None, seed: int = 0) -> CheckReport:
    """Check the blocks each backup (``referenced``: backup id -> its block ids) needs; ``read_data``
    reads every distinct block, ``subset`` (0 < f <= 1, implies reading) a seeded sample of them."""
    if subset is not None and not 0 < subset <= 1:
        raise RepoError(f"--subset is a fraction of the blocks, above 0 and at most 1 (got {subset})")
    users: dict[str, set[str]] = {}
    for backup_id, block_ids in referenced.items():
        for block_id in block_ids:
            users.setdefault(block_id, set()).add(backup_id)
    report = CheckReport(backups=len(referenced), blocks_referenced=len(users))
    present = []
    for block_id in sorted(users):
        if store.has(block_id):
            present.append(block_id)
        else:
            report.missing[block_id] = sorted(users[block_id])
    if subset is not None:
        present = sorted(random.Random(seed).sample(present, math.ceil(len(present) * subset)))
    elif not read_data:
        present = []
    for block_id in present:
        try:
            store.get(block_id, rehash=True)
        except BlockMissing:  # went since it was looked for (GC of a backup pruned meanwhile)
            report.missing[block_id] = sorted(users[block_id])
        except RepoCorrupt as exc:
            report.damaged[block_id] = sorted(users[block_id])
            report.reasons[block_id] = str(exc).split("; run `tinabs repo check`")[0]
        report.blocks_read += 1
    return report
