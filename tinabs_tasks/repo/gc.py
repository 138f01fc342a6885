"""Garbage collection that never stops backups: Proxmox Backup Server's mark-and-sweep rule.

1. Record the GC's start, on the repository filesystem's own clock (the mtime of ``gc.lock``
   touched now), so that a worker's or an NFS client's clock skew does not matter.
2. Mark: set the mtime of every block an index references to now (``referenced`` is read only
   now, after the start: an index written later belongs to a backup that marked its own blocks).
3. Sweep: remove every block whose mark is older than ``start - grace``, and temp files as old
   (under ``blocks/`` and ``indexes/``: what killed writers left).

Why no backup loses a block: a backup marks every block it will reference (``put`` of an
existing block and ``touch`` refresh the mark) while it runs, and a backup runs for less than the
grace, so its marks are younger than ``start - grace`` until its index is written, and from then
the mark phase of every later GC marks them.  A finished backup's index was on disk when the mark
phase read the indexes.  The grace (24 h + 5 min by default) must be longer than the longest
backup; a shorter one is only for tests whose writers are known to be quicker.

The one race left, a backup re-marking a block between the sweep's look at its mark and its
removal, is closed by renaming the block away first (``.gc.<id>.<random>``, after which a backup's
mark finds no file and the backup stores the block afresh) and looking at the mark again on the
renamed file: a mark that arrived before the rename puts the block back.  A GC killed between
rename and removal leaves the ``.gc.`` file, which the next GC puts back or removes by the same
rule.  Two GCs never sweep at once (``gc.lock``, a flock); backups never take that lock.
"""
from __future__ import annotations

import fcntl
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tinabs_tasks.repo.atomic import TEMP_PREFIX
from tinabs_tasks.repo.blocks import CONDEMNED_PREFIX
from tinabs_tasks.repo.errors import BlockMissing, RepoError
from tinabs_tasks.repo.layout import Repository

#: longer than any backup can run (a backup is stopped long before: see the run deadlines)
DEFAULT_GRACE_S = 24 * 3600 + 300
LOCK_NAME = "gc.lock"


class GcBusy(RepoError):
    """Another GC holds the repository's ``gc.lock``."""


@dataclass
class GcReport:
    """What a GC did.  ``start`` and ``cutoff`` are on the repository filesystem's clock (epoch s)."""
    start: float
    cutoff: float
    marked: int = 0
    missing: list[str] = field(default_factory=list)  # referenced, but not stored
    blocks_kept: int = 0
    bytes_kept: int = 0
    blocks_removed: int = 0
    bytes_freed: int = 0
    temps_removed: int = 0
    restored: int = 0  # blocks re-marked while being condemned, put back


def collect_garbage(repo: Repository, referenced: Iterable[str] | Callable[[], Iterable[str]], *,
                    grace_s: float = DEFAULT_GRACE_S) -> GcReport:
    """Remove blocks no index references and temp files crashed writers left.

    ``referenced`` yields the id of every block of every index (repeats are fine); pass a
    callable, or a lazy iterable, that reads the indexes when called: it is read after the GC's
    start is recorded.  If it raises (an unreadable index) the GC stops before sweeping anything.
    GcBusy (a RepoError) if another GC is running."""
    lock_path = os.path.join(repo.path, LOCK_NAME)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GcBusy(f"another GC is running on {repo.path}; wait for it to finish") from None
        os.utime(fd)
        start = os.fstat(fd).st_mtime
        report = GcReport(start=start, cutoff=start - grace_s)
        _mark(repo, referenced() if callable(referenced) else referenced, report)
        _sweep(repo, report)
        return report
    finally:
        os.close(fd)  # releases the flock


def plan_garbage(repo: Repository, referenced: Iterable[str] | Callable[[], Iterable[str]], *,
                 grace_s: float = DEFAULT_GRACE_S) -> GcReport:
    """What ``collect_garbage`` would remove now, by the same sweep, changing nothing: no lock, no
    mark (a referenced block counts as marked), nothing removed.  The clock is this host's: a dry
    run writes nothing, so it cannot read the filesystem's as a GC does.  ``marked`` counts each
    stored referenced block once."""
    start = time.time()
    report = GcReport(start=start, cutoff=start - grace_s)
    wanted = set(referenced() if callable(referenced) else referenced)
    stored: set[str] = set()
    _sweep(repo, report, dry=(wanted, stored))
    report.marked = len(wanted & stored)
    report.missing = sorted(wanted - stored)
    return report


def _mark(repo: Repository, referenced: Iterable[str], report: GcReport) -> None:
    missing = set()
    for block_id in referenced:
        try:
            repo.blocks.touch(block_id)
            report.marked += 1
        except BlockMissing:
            missing.add(block_id)
    report.missing = sorted(missing)


def _sweep(repo: Repository, report: GcReport, dry: tuple[set[str], set[str]] | None = None) -> None:
    """Remove what is older than the cutoff; ``dry`` (plan_garbage's): (the referenced ids, a set
    to fill with the stored ones), and nothing is removed: a referenced block counts as marked."""
    for kind, name, st in repo.blocks.scan():
        if st is None:
            continue
        if kind == "block":
            if dry is not None:
                dry[1].add(name)
            if st.st_mtime >= report.cutoff or (dry is not None and name in dry[0]):
                report.blocks_kept += 1
                report.bytes_kept += st.st_size
            elif dry is not None or condemn(repo.blocks.path(name), report.cutoff):
                report.blocks_removed += 1
                report.bytes_freed += st.st_size
            else:
                report.restored += 1
                report.blocks_kept += 1
                report.bytes_kept += st.st_size
        elif kind == "temp" and st.st_mtime < report.cutoff:
            if dry is not None or _unlink(name):
                report.temps_removed += 1
                report.bytes_freed += st.st_size
        elif kind == "condemned" and dry is None:  # a GC was killed between rename and removal
            _settle(name, _real_name(name), report.cutoff)
    for directory, _, names in os.walk(repo.index_dir()):  # indexes a killed backup left half-written
        for name in names:
            path = os.path.join(directory, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if name.startswith(TEMP_PREFIX) and st.st_mtime < report.cutoff and (dry is not None or _unlink(path)):
                report.temps_removed += 1
                report.bytes_freed += st.st_size


def condemn(path: str, cutoff: float) -> bool:
    """Remove the block at ``path`` if its mark is still older than ``cutoff`` once nobody can mark
    it any more (renamed away); True if removed, False if kept (put back, or gone meanwhile)."""
    directory, block_id = os.path.split(path)
    condemned = os.path.join(directory, f"{CONDEMNED_PREFIX}{block_id}.{secrets.token_hex(6)}")
    try:
        os.rename(path, condemned)
    except FileNotFoundError:
        return False
    return _settle(condemned, path, cutoff)


def _settle(condemned: str, path: str, cutoff: float) -> bool:
    """Remove ``condemned`` if its mark is older than ``cutoff``, else put it back at ``path``."""
    try:
        mtime = os.stat(condemned).st_mtime
    except FileNotFoundError:
        return False
    if mtime >= cutoff:
        os.rename(condemned, path)  # a writer that stored it again meanwhile stored the same bytes
        return False
    return _unlink(condemned)


def _real_name(condemned: str) -> str:
    directory, name = os.path.split(condemned)
    return os.path.join(directory, name[len(CONDEMNED_PREFIX):].split(".")[0])


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
