"""Repository GC (tinabs_tasks/repo/gc.py): Proxmox Backup Server's mark-and-sweep, safe under backups.

Given blocks with old marks, GC removes those no index references and keeps referenced ones, those
marked within the grace, and those a backup re-marked; temp files older than the grace go.  The race of
a backup re-marking a block while the sweep removes it keeps the block.  With writer processes storing
blocks (new, and reusing old unreferenced ones) and then their indexes while GC runs over and over,
every block of every index is there afterwards.

The tests use a grace of minutes instead of a day.  That is safe here for the same reason the day is
in production: the grace only has to be longer than a backup runs (a writer here runs for seconds),
because a backup's marks are never older than its start; the old blocks the tests need swept are
back-dated by hours, so no test depends on how fast anything runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from helpers.repo_fixtures import key, repo  # noqa: F401  (fixtures)

from tinabs_tasks.repo.atomic import TEMP_PREFIX
from tinabs_tasks.repo.blocks import CONDEMNED_PREFIX
from tinabs_tasks.repo.errors import RepoError
from tinabs_tasks.repo.gc import collect_garbage, condemn

ROOT = Path(__file__).resolve().parent.parent
HOURS_AGO = time.time() - 3 * 3600
GRACE_S = 600




def _old(repo, data: bytes) -> str:
    """Store ``data`` as a block marked hours ago."""
    block_id, _ = repo.blocks.put(data)
    os.utime(repo.blocks.path(block_id), (HOURS_AGO, HOURS_AGO))
    return block_id


def test_gc_sweeps_old_unreferenced_blocks_and_temps_only(repo):
    """Given old referenced blocks, old unreferenced ones, a fresh unreferenced one, an old and a fresh
    temp block file, and an old half-written index
    When GC runs with the referenced ids
    Then only the old unreferenced blocks and the old temp files go, and the report counts them."""
    referenced = [_old(repo, b"kept %d" % n * 500) for n in range(3)]
    garbage = [_old(repo, os.urandom(2000)) for _ in range(4)]
    fresh, _ = repo.blocks.put(b"a backup is writing me" * 100)
    block_dir = os.path.dirname(repo.blocks.path(fresh))
    old_temp, new_temp = Path(block_dir, ".tmp.x.1.aa"), Path(block_dir, ".tmp.y.1.bb")
    old_temp.write_bytes(b"half")
    new_temp.write_bytes(b"half")
    os.utime(old_temp, (HOURS_AGO, HOURS_AGO))
    old_index_temp = Path(repo.index_dir(), ".tmp.backup-9.1.cc")
    old_index_temp.write_bytes(b"half an index")
    os.utime(old_index_temp, (HOURS_AGO, HOURS_AGO))
    freed = sum(os.path.getsize(repo.blocks.path(g)) for g in garbage) + 4 + 13
    report = collect_garbage(repo, lambda: iter(referenced + referenced[:1]), grace_s=GRACE_S)
    assert sorted(repo.blocks.block_ids()) == sorted(referenced + [fresh])
    assert not old_temp.exists() and not old_index_temp.exists() and new_temp.exists()
    assert (report.blocks_removed, report.blocks_kept, report.temps_removed) == (4, 4, 2)
    assert report.bytes_freed == freed and report.marked == 4 and not report.missing
    for block_id in referenced:
        assert repo.blocks.get(block_id)


def test_gc_reports_missing_and_stops_on_an_unreadable_index(repo):
    """Given an old unreferenced block
    When GC's referenced ids include a missing block, or reading the indexes fails midway
    Then the missing block is reported; a failure stops GC before it removes anything."""
    garbage = _old(repo, b"garbage" * 100)

    def broken_indexes():
        yield "f" * 64
        raise RepoError("index backup-7 is damaged")

    with pytest.raises(RepoError, match="backup-7"):
        collect_garbage(repo, broken_indexes(), grace_s=GRACE_S)
    assert repo.blocks.has(garbage)
    report = collect_garbage(repo, ["e" * 64], grace_s=GRACE_S)
    assert report.missing == ["e" * 64] and not repo.blocks.has(garbage)


def test_a_block_re_marked_during_the_sweep_is_kept(repo):
    """Given a block the sweep saw with an old mark
    When a backup re-marks it (put of the same data) before the sweep removes it
    Then the sweep keeps it (it looks again once the block is renamed away, where no backup can mark it)."""
    data = b"reused by tonight's backup" * 100
    block_id = _old(repo, data)
    cutoff = time.time() - GRACE_S
    assert os.stat(repo.blocks.path(block_id)).st_mtime < cutoff  # what the sweep saw
    assert repo.blocks.put(data) == (block_id, 0)  # the backup reuses it
    assert condemn(repo.blocks.path(block_id), cutoff) is False
    assert repo.blocks.get(block_id) == data
    assert condemn(repo.blocks.path(_old(repo, b"nobody's")), cutoff) is True


def test_a_gc_killed_mid_sweep_is_settled_by_the_next(repo):
    """Given blocks a killed GC left renamed away (``.gc.<id>.<random>``), one re-marked meanwhile
    When GC runs again
    Then the re-marked one is back under its name, the other is gone."""
    marked = _old(repo, b"marked" * 100)
    stale = _old(repo, b"stale" * 100)
    for block_id in (marked, stale):
        path = repo.blocks.path(block_id)
        os.rename(path, os.path.join(os.path.dirname(path), f"{CONDEMNED_PREFIX}{block_id}.0123456789ab"))
    left = [p for p in Path(repo.blocks.dir).rglob(CONDEMNED_PREFIX + "*")]
    os.utime(next(p for p in left if marked in p.name))  # a backup's mark, just before the GC died
    collect_garbage(repo, [], grace_s=GRACE_S)
    assert repo.blocks.has(marked) and not repo.blocks.has(stale)
    assert not list(Path(repo.blocks.dir).rglob(CONDEMNED_PREFIX + "*"))


def test_two_gcs_never_sweep_at_once(repo):
    """Given a GC in its mark phase
    When another GC starts
    Then the second is refused with a RepoError saying to wait."""
    started, release, errors = threading.Event(), threading.Event(), []

    def slow_indexes():
        started.set()
        release.wait(30)
        return iter(())

    first = threading.Thread(target=lambda: collect_garbage(repo, slow_indexes, grace_s=GRACE_S))
    first.start()
    try:
        assert started.wait(30)
        with pytest.raises(RepoError, match="another GC is running"):
            collect_garbage(repo, [], grace_s=GRACE_S)
    finally:
        release.set()
        first.join(30)
    assert not errors


_BACKUP = textwrap.dedent("""
    import json, os, sys, time
    from tinabs_tasks.repo.layout import open_repository
    repo_path, name, reuse = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    repo = open_repository(repo_path, bytes.fromhex(os.environ["TEST_REPO_KEY"]))
    ids = []
    # phase 1: new blocks, blocks shared with the other backups, and old blocks no index references
    for n in range(20):
        ids.append(repo.blocks.put(os.urandom(8192))[0])
        ids.append(repo.blocks.put(b"shared %d" % n * 1000)[0])
    for text in reuse:
        ids.append(repo.blocks.put(text.encode() * 100)[0])
    open(os.path.join(repo_path, "ready-" + name), "w").close()
    while not os.path.exists(os.path.join(repo_path, "go")):
        time.sleep(0.01)
    # phase 2: more of the same while GC runs over and over, then the index
    for n in range(40):
        ids.append(repo.blocks.put(os.urandom(8192))[0])
        ids.append(repo.blocks.put(b"late %d" % (n % 10) * 1000)[0])
    for text in reuse:
        ids.append(repo.blocks.put(text.encode() * 100)[0])
    repo.write_atomic("test-indexes/" + name, json.dumps(ids).encode())
""")


def test_gc_during_concurrent_backups_keeps_every_referenced_block(repo, key):
    """Given a repository with an old backup's index, old blocks it references, old unreferenced blocks,
    and old unreferenced blocks that tonight's backups will reuse
    When four backup processes store blocks (new, shared, reused) and then, while GC runs over and over
    (grace 10 min), store more and write their indexes
    Then every block of every index (old and new) reads back, and the old garbage is gone."""
    index_dir = Path(repo.path, "test-indexes")

    def referenced():
        for index in sorted(index_dir.iterdir()):
            if not index.name.startswith(TEMP_PREFIX):  # an index being written
                yield from json.loads(index.read_bytes())

    old_index = [_old(repo, b"last night %d" % n * 300) for n in range(10)]
    repo.write_atomic("test-indexes/last-night", json.dumps(old_index).encode())
    garbage = [_old(repo, b"pruned %d" % n * 300) for n in range(10)]
    reuse = [f"template block {n}" for n in range(10)]
    reused = [_old(repo, text.encode() * 100) for text in reuse]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TEST_REPO_KEY": key.hex()}
    names = [f"tonight-{n}" for n in range(4)]
    procs = [subprocess.Popen([sys.executable, "-c", _BACKUP, repo.path, name, json.dumps(reuse)], env=env)
             for name in names]
    try:
        deadline = time.monotonic() + 60
        while not all(Path(repo.path, "ready-" + n).exists() for n in names):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.01)
        # every backup has stored (or re-marked) its blocks, and no index of tonight's is written
        first = collect_garbage(repo, referenced, grace_s=GRACE_S)
        assert first.blocks_removed == len(garbage)
        assert all(repo.blocks.has(b) for b in reused + old_index)
        Path(repo.path, "go").touch()
        runs = 0
        while any(p.poll() is None for p in procs) or runs < 3:
            collect_garbage(repo, referenced, grace_s=GRACE_S)
            runs += 1
        assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    collect_garbage(repo, referenced, grace_s=GRACE_S)
    indexes = {index.name: json.loads(index.read_bytes()) for index in index_dir.iterdir()}
    assert not any(name.startswith(TEMP_PREFIX) for name in indexes)
    assert sorted(indexes) == sorted(names + ["last-night"])
    for block_ids in indexes.values():
        for block_id in block_ids:
            repo.blocks.get(block_id)
    assert not any(repo.blocks.has(g) for g in garbage)
