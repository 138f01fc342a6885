"""`tinabs repo stats` and `tinabs repo check`: what the repository holds, and whether it is sound.

stats reads every index (its figures and block rows) and the block store's file sizes; the ratios
are repo/stats.py's.  ``logical_bytes`` is the sum of the indexes' ``logical_bytes`` (the disk
data the backups carry, as each backup's manifest says), so that two backups of the same disks
show a dedup ratio of exactly 2; ``xva_bytes`` is the sum of the original .xva streams (what
files mode would have written).  ``stored_bytes`` is every byte the repository takes on disk for
them: block files plus indexes (``block_bytes`` + ``index_bytes``).

check looks for every block each index references (a stat each), and with ``--read-data``
reads, decrypts, decompresses and re-hashes every distinct block (``--subset F``: a seeded random
fraction of them; the seed is printed, so a run can be repeated).  Every problem is one line
naming the block and the backups it affects, each with its VM and pool; exit 1 when there is any.
"""
from __future__ import annotations

import secrets

from tinabs_tasks.cli.common import UserError, human_bytes, printable
from tinabs_tasks.cli.repo import (fill_from_manifests, label, opened, print_json, problem, read_indexes,
                                   user_error, whose)
from tinabs_tasks.repo.check import check_blocks
from tinabs_tasks.repo.errors import RepoError
from tinabs_tasks.repo.stats import repository_stats


def add_stats_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output (numbers as numbers)")


def add_check_arguments(parser) -> None:
    parser.add_argument("--read-data", action="store_true",
                        help="also read every block: decrypt, decompress and re-hash it (as slow as restoring everything)")
    parser.add_argument("--subset", metavar="FRACTION",
                        help="read only this random fraction of the blocks (0 < FRACTION <= 1; implies --read-data)")
    parser.add_argument("--seed", type=int, help="with --subset: the sample's seed (default: random, printed)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _fraction(text: str | None) -> float | None:
    """--subset as a number; checked here, not by argparse, for a one-line error."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:  # NaN fails this too
        raise UserError(f"--subset {text}: give a fraction of the blocks above 0 and at most 1 (e.g. 0.1)")
    return value


# -- stats -------------------------------------------------------------------------------
def run_stats(args) -> int:
    _cfg, repo = opened(args)
    logical, xva, block_sizes = {}, 0, {}
    index_bytes, unreadable = 0, []
    for backup_id, index, why in read_indexes(repo):
        if index is None:
            unreadable.append(why)
            continue
        logical[backup_id] = int(index.figures.get("logical_bytes", 0))
        xva += int(index.figures.get("stream_bytes", 0))
        index_bytes += index.sealed_bytes
        for disk in index.disks:
            for row in disk.chunks:
                if row[1] is not None:
                    block_sizes[row[1]] = row[2]
    s = repository_stats(repo.blocks, logical, block_sizes)
    doc = {"path": repo.path, "id": repo.config.id, "backups": s.backups, "blocks": s.blocks,
           "logical_bytes": s.logical_bytes, "xva_bytes": xva, "unique_bytes": s.unique_bytes,
           "block_bytes": s.stored_bytes, "index_bytes": index_bytes, "stored_bytes": s.stored_bytes + index_bytes,
           "referenced_block_bytes": s.referenced_stored_bytes,
           "dedup_ratio": _round(s.dedup_ratio), "compression_ratio": _round(s.compression_ratio),
           "unreadable_indexes": len(unreadable)}
    if args.json:
        print_json(doc)
    else:
        print(f"repository     {printable(repo.path)} (id {repo.config.id})")
        print(f"backups        {s.backups}")
        print(f"logical        {human_bytes(s.logical_bytes)} ({s.logical_bytes} bytes of disk data)")
        print(f"unique         {human_bytes(s.unique_bytes)} (distinct blocks, before compression)")
        print(f"stored         {human_bytes(doc['stored_bytes'])} ({s.blocks} block(s): "
              f"{human_bytes(s.stored_bytes)}, indexes: {human_bytes(index_bytes)})")
        print(f"dedup ratio    {_ratio(s.dedup_ratio)}")
        print(f"compression    {_ratio(s.compression_ratio)}")
    for why in unreadable:
        problem(f"{why} (not counted; run `tinabs repo check`)")
    return 1 if unreadable else 0


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


# -- check -------------------------------------------------------------------------------
def run_check(args) -> int:
    args.subset = _fraction(args.subset)
    cfg, repo = opened(args)
    if args.seed is not None and args.subset is None:
        raise UserError("--seed goes with --subset (it chooses which blocks are read)")
    seed = args.seed if args.seed is not None else secrets.randbelow(1 << 31)
    referenced, owners, bad_indexes = {}, {}, {}
    for backup_id, index, why in read_indexes(repo):
        owners[backup_id] = whose(index)
        if index is None:
            bad_indexes[backup_id] = why
        else:
            referenced[backup_id] = set(index.block_ids())
    try:
        report = check_blocks(repo.blocks, referenced, read_data=args.read_data, subset=args.subset, seed=seed)
    except RepoError as exc:
        raise user_error(exc) from None
    affected = set(report.affected_backups()) | set(bad_indexes)
    fill_from_manifests({b: owners[b] for b in affected}, cfg.destination)

    def who(backup_ids) -> list[dict]:
        return [{"backup_id": b, **owners[b]} for b in sorted(backup_ids)]

    lines = [f"block {block_id} is missing; it affects {_labels(backups, owners)}"
             for block_id, backups in sorted(report.missing.items())]
    lines += [f"{report.reasons[block_id]}; it affects {_labels(backups, owners)}"
              for block_id, backups in sorted(report.damaged.items())]
    lines += [f"{why}; it affects {label(b, owners[b])}" for b, why in sorted(bad_indexes.items())]
    if args.json:
        print_json({"ok": not lines, "path": repo.path, "backups": report.backups + len(bad_indexes),
                    "blocks_referenced": report.blocks_referenced, "blocks_read": report.blocks_read,
                    "read_data": bool(args.read_data or args.subset), "subset": args.subset,
                    "seed": seed if args.subset is not None else None,
                    "missing": [{"block": k, "backups": who(v)} for k, v in sorted(report.missing.items())],
                    "damaged": [{"block": k, "reason": report.reasons[k], "backups": who(v)}
                                for k, v in sorted(report.damaged.items())],
                    "damaged_indexes": [{"reason": why, **who([b])[0]} for b, why in sorted(bad_indexes.items())],
                    "affected_backups": who(affected), "problems": lines})
    else:
        read = ""
        if args.subset is not None:
            read = f", {report.blocks_read} read (subset {args.subset:g}, seed {seed})"
        elif args.read_data:
            read = f", {report.blocks_read} read"
        verdict = "OK" if not lines else f"{len(lines)} problem(s), {len(affected)} backup(s) affected"
        print(f"checked {report.backups + len(bad_indexes)} backup(s), {report.blocks_referenced} "
              f"distinct block(s){read}: {verdict}")
        for line in lines:
            print(f"  - {printable(line)}")
    return 1 if lines else 0


def _labels(backup_ids, owners: dict) -> str:
    return ", ".join(label(b, owners[b]) for b in backup_ids)
