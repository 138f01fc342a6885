"""The repository's block store, keys and layout (tinabs_tasks/repo), on real files.

Given a repository made by ``init_repository``, blocks round-trip through ``put``/``get``
(compressed when that helps, encrypted and authenticated), the same block is stored once
whoever writes it, and block names reveal nothing (another key, another name).  A wrong,
missing or unusable key, or a path that is no repository, is refused in one line before
anything is written; a flipped byte, or a block file under another block's name, is a
``RepoCorrupt`` naming the block; a full disk is ``RepoFull`` with nothing under a real name;
a writer killed mid-write leaves only temp files, which GC reclaims.  ``check`` and ``stats``
give the right figures on known data.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers.repo_fixtures import key, repo  # noqa: F401  (fixtures)

from tinabs_tasks.repo import keys
from tinabs_tasks.repo.atomic import TEMP_PREFIX
from tinabs_tasks.repo.check import check_blocks
from tinabs_tasks.repo.codec import HEADER, MAGIC
from tinabs_tasks.repo.errors import (BlockMissing, KeyMissing, KeyUnusable, NotInitialised, RepoCorrupt,
                                      RepoError, RepoFull, WrongKey)
from tinabs_tasks.repo.gc import collect_garbage
from tinabs_tasks.repo.layout import CONFIG_NAME, init_repository, open_repository
from tinabs_tasks.repo.stats import repository_stats

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``path``: (size, mtime_ns), to see that nothing was written."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*"))}


def _files(path: Path, prefix: str) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file() and p.name.startswith(prefix)]




@pytest.mark.parametrize("compression,encryption", [("zstd", "aes-256-gcm"), ("none", "aes-256-gcm"),
                                                    ("zstd", "none"), ("none", "none")])
def test_blocks_round_trip(tmp_path, key, compression, encryption):
    """Given a repository with each compression and encryption setting
    When compressible, incompressible and empty blocks are put and read back (after reopening)
    Then each comes back whole; compressible data is stored smaller with zstd; encrypted block files
    do not contain the plaintext."""
    path = str(tmp_path / "repo")
    repo_key = key if encryption != "none" else None
    repo = init_repository(path, compression=compression, encryption=encryption, key=repo_key)
    text = b"the same line, over and over\n" * 40000
    noise = os.urandom(MIB)
    ids = {data: repo.blocks.put(data) for data in (text, noise, b"")}
    reopened = open_repository(path, repo_key)
    for data, (block_id, stored) in ids.items():
        assert reopened.blocks.get(block_id) == data
        raw = Path(reopened.blocks.path(block_id)).read_bytes()
        assert raw[:4] == MAGIC and len(raw) == stored
        if encryption != "none" and data:
            assert data[:64] not in raw
    text_stored, noise_stored = ids[text][1], ids[noise][1]
    if compression == "zstd":
        assert text_stored < len(text) // 50
    else:
        assert text_stored >= len(text)
    assert noise_stored <= len(noise) + HEADER.size + 12 + 16  # kept raw when zstd does not shrink it


def test_sealed_objects_are_bound_to_their_name(repo):
    """Given data sealed by the repository with an associated name (as indexes are)
    When it is opened with that name, another name, or a flipped byte
    Then it opens only with its own name, intact; otherwise RepoCorrupt names what."""
    sealed = repo.seal(b"index body" * 100, aad=b"index-1")
    assert repo.open_sealed(sealed, aad=b"index-1") == b"index body" * 100
    with pytest.raises(RepoCorrupt, match="index index-2"):
        repo.open_sealed(sealed, aad=b"index-2", what="index index-2")
    damaged = bytearray(sealed)
    damaged[-5] ^= 1
    with pytest.raises(RepoCorrupt):
        repo.open_sealed(bytes(damaged), aad=b"index-1")


_WRITER = textwrap.dedent("""
    import os, sys
    from tinabs_tasks.repo.layout import open_repository
    repo = open_repository(sys.argv[1], bytes.fromhex(os.environ["TEST_REPO_KEY"]))
    data = bytes(range(256)) * 4096
    print(repo.blocks.put(data)[1])
""")


def test_same_block_is_stored_once_across_writers(repo, key):
    """Given eight processes that put the same 1 MiB block at the same time
    When they are done
    Then there is one block file, exactly one writer reports new bytes, and no temp file is left."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TEST_REPO_KEY": key.hex()}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, repo.path], env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(8)]
    stored = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(list(repo.blocks.block_ids())) == 1
    assert sum(1 for n in stored if n > 0) == 1
    assert not _files(Path(repo.path), TEMP_PREFIX)


def test_block_names_reveal_nothing(tmp_path):
    """Given the same data in two encrypted repositories with different keys, and in an unencrypted one
    Then the encrypted ids differ from each other and from the data's SHA-256; unencrypted, the id is it."""
    data = b"a block every VM of the template has" * 1000
    one = init_repository(str(tmp_path / "one"), key=keys.generate_key())
    two = init_repository(str(tmp_path / "two"), key=keys.generate_key())
    plain = init_repository(str(tmp_path / "plain"), encryption="none", key=None)
    sha = hashlib.sha256(data).hexdigest()
    id_one, id_two, id_plain = one.blocks.put(data)[0], two.blocks.put(data)[0], plain.blocks.put(data)[0]
    assert id_one != id_two and sha not in (id_one, id_two)
    assert id_plain == sha


def test_wrong_or_missing_key_is_refused_before_any_write(repo, tmp_path):
    """Given an encrypted repository holding a block
    When it is opened with another key, or none
    Then WrongKey / KeyMissing say the fix in one line, show no key, and nothing in it changed."""
    repo.blocks.put(b"x" * 1000)
    before = _tree(Path(repo.path))
    other = keys.generate_key()
    with pytest.raises(WrongKey) as wrong:
        open_repository(repo.path, other)
    with pytest.raises(KeyMissing) as missing:
        open_repository(repo.path, None)
    with pytest.raises(KeyUnusable):
        open_repository(repo.path, b"short")
    for exc in (wrong.value, missing.value):
        message = str(exc)
        assert "\n" not in message and "key" in message and other.hex() not in message
    assert "tinabs repo init" in str(wrong.value)
    assert _tree(Path(repo.path)) == before


def test_not_initialised_names_the_fix(tmp_path):
    """Given a path that does not exist, and an empty directory
    When either is opened as a repository
    Then NotInitialised says to run `tinabs repo init PATH`, and nothing is created."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (tmp_path / "absent", empty):
        with pytest.raises(NotInitialised, match=f"tinabs repo init {path}$"):
            open_repository(str(path), keys.generate_key())
    assert not (tmp_path / "absent").exists() and not list(empty.iterdir())


def test_init_refuses_a_used_directory_and_bad_settings(tmp_path, key):
    """Given a directory with other files, an existing repository, and bad settings
    Then init refuses each, and never overwrites a repository's config."""
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "photo.jpg").write_bytes(b"x")
    with pytest.raises(RepoError, match="not empty"):
        init_repository(str(busy), key=key)
    repo = init_repository(str(tmp_path / "repo"), key=key)
    config = Path(repo.path, CONFIG_NAME).read_bytes()
    with pytest.raises(RepoError, match="already a tinabs repository"):
        init_repository(repo.path, key=keys.generate_key())
    assert Path(repo.path, CONFIG_NAME).read_bytes() == config
    with pytest.raises(KeyMissing):
        init_repository(str(tmp_path / "nokey"), key=None)
    with pytest.raises(RepoError, match="compression"):
        init_repository(str(tmp_path / "c"), compression="lz4", key=key)
    assert key.hex() not in config.decode() and json.loads(config)["encryption"] == "aes-256-gcm"


def test_key_files(tmp_path):
    """Given a key file made by generate_key_file, one readable by others, a missing one, a directory,
    one that holds no key, and a base64 key in an environment variable
    Then the good ones give the key; each bad one is KeyUnusable with the fix, never the key; an
    existing key file is never overwritten."""
    path = tmp_path / "repo.key"
    key = keys.generate_key_file(str(path))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert keys.read_key_file(str(path)) == key
    with pytest.raises(KeyUnusable, match="already exists"):
        keys.generate_key_file(str(path))
    assert keys.read_key_file(str(path)) == key
    path.chmod(0o644)
    with pytest.raises(KeyUnusable, match=f"chmod 600 {path}") as loose:
        keys.read_key_file(str(path))
    assert key.hex() not in str(loose.value)
    for bad in (tmp_path / "absent.key", tmp_path):
        with pytest.raises(KeyUnusable, match="cannot read"):
            keys.read_key_file(str(bad))
    junk = tmp_path / "junk.key"
    junk.write_text("not a key at all\n")
    junk.chmod(0o600)
    with pytest.raises(KeyUnusable, match="does not hold a repository key"):
        keys.read_key_file(str(junk))
    from tinabs_tasks.config.sources import SecretRef
    os.environ["TINABS_TEST_REPO_KEY"] = keys.encode_key(key, "base64")
    try:
        assert keys.load_key(SecretRef("env", "TINABS_TEST_REPO_KEY")) == key
    finally:
        del os.environ["TINABS_TEST_REPO_KEY"]
    with pytest.raises(KeyMissing):
        keys.load_key(None)


def test_a_flipped_byte_is_corruption_naming_the_block(tmp_path, key):
    """Given a block in an encrypted and in an unencrypted repository
    When one byte of its file is flipped
    Then get raises RepoCorrupt naming the block."""
    for name, encryption, repo_key in (("enc", "aes-256-gcm", key), ("plain", "none", None)):
        repo = init_repository(str(tmp_path / name), encryption=encryption, key=repo_key)
        block_id, _ = repo.blocks.put(os.urandom(4096) + b"\0" * 60000)
        path = Path(repo.blocks.path(block_id))
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x40
        path.write_bytes(bytes(raw))
        with pytest.raises(RepoCorrupt, match=block_id):
            repo.blocks.get(block_id)


def test_a_block_under_another_name_fails(tmp_path, key):
    """Given two blocks A and B
    When A's file is copied over B's name
    Then reading B fails (authentication when encrypted, the hash when not), naming B."""
    for name, encryption, repo_key in (("enc", "aes-256-gcm", key), ("plain", "none", None)):
        repo = init_repository(str(tmp_path / name), encryption=encryption, key=repo_key)
        id_a, _ = repo.blocks.put(b"A" * 5000)
        id_b, _ = repo.blocks.put(b"B" * 5000)
        Path(repo.blocks.path(id_b)).write_bytes(Path(repo.blocks.path(id_a)).read_bytes())
        with pytest.raises(RepoCorrupt, match=id_b):
            repo.blocks.get(id_b)
    with pytest.raises(BlockMissing, match="0" * 64):
        repo.blocks.get("0" * 64)


def _assert_nothing_half_written(repo) -> None:
    for block_id in repo.blocks.block_ids():
        repo.blocks.get(block_id)  # raises if a block file is not whole
    assert not _files(Path(repo.path), TEMP_PREFIX)


_FILL = textwrap.dedent("""
    import os, resource, signal, sys
    from tinabs_tasks.repo.errors import RepoFull
    from tinabs_tasks.repo.layout import open_repository
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit is then EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (300 * 1024, 300 * 1024))
    repo = open_repository(sys.argv[1], bytes.fromhex(os.environ["TEST_REPO_KEY"]))
    sizes = [100 * 1024, 200 * 1024, 400 * 1024]
    for size in sizes:
        try:
            repo.blocks.put(os.urandom(size))
        except RepoFull as exc:
            print("RepoFull:", exc)
            sys.exit(3)
    sys.exit(0)
""")


def test_disk_full_is_repo_full_and_leaves_no_block(tmp_path, key):
    """Given a repository on a 2 MiB tmpfs (when this host lets us mount; else a process whose file-size
    limit, RLIMIT_FSIZE, is below the block's size)
    When blocks and an index are written until the disk is full
    Then the write that does not fit is RepoFull (saying to free space), every block under a real name
    reads back whole, and no temp file is left."""
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                             capture_output=True).returncode == 0
    try:
        repo = init_repository(str(mount / "repo"), key=key)
        if mounted:
            with pytest.raises(RepoFull, match="free space"):
                for _ in range(64):
                    repo.blocks.put(os.urandom(256 * 1024))
            with pytest.raises(RepoFull):
                repo.write_atomic("indexes/backup-1", os.urandom(3 * MIB))
            assert not Path(repo.index_dir(), "backup-1").exists()
        else:
            env = {**os.environ, "PYTHONPATH": str(ROOT), "TEST_REPO_KEY": key.hex()}
            proc = subprocess.run([sys.executable, "-c", _FILL, repo.path], env=env, capture_output=True,
                                  text=True, timeout=60)
            assert proc.returncode == 3, proc.stdout + proc.stderr
            assert "free space" in proc.stdout
            assert len(list(repo.blocks.block_ids())) == 2
        _assert_nothing_half_written(repo)
    finally:
        if mounted:
            subprocess.run(["umount", str(mount)], check=True)


_CRASH = textwrap.dedent("""
    import os, signal, sys
    from tinabs_tasks.repo.layout import open_repository
    repo = open_repository(sys.argv[1], bytes.fromhex(os.environ["TEST_REPO_KEY"]))
    real_fsync, calls = os.fsync, [0]
    def fsync(fd):
        real_fsync(fd)
        calls[0] += 1
        if calls[0] == int(sys.argv[2]):  # the block's data is in its temp file, not yet renamed
            os.kill(os.getpid(), signal.SIGKILL)
    os.fsync = fsync
    for n in range(1000):
        repo.blocks.put(os.urandom(64 * 1024))
""")


def test_crash_mid_write_leaves_only_temp_files_which_gc_reclaims(repo, key):
    """Given a process writing many blocks, killed with SIGKILL right after a block's data reached its
    temp file (its 21st fsync: each block is a file fsync then a directory fsync)
    Then the blocks under real names are the 10 finished ones, each whole, plus one temp file; and
    GC (the temp file older than the grace) removes the temp file and keeps the blocks."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TEST_REPO_KEY": key.hex()}
    proc = subprocess.run([sys.executable, "-c", _CRASH, repo.path, "21"], env=env, capture_output=True,
                          timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    temps = _files(Path(repo.path), TEMP_PREFIX)
    assert len(temps) == 1
    finished = list(repo.blocks.block_ids())
    assert len(finished) == 10
    for block_id in finished:
        repo.blocks.get(block_id)
    os.utime(temps[0], (1, 1))  # long ago: older than any grace
    report = collect_garbage(repo, finished, grace_s=3600)
    assert report.temps_removed == 1 and report.blocks_removed == 0
    _assert_nothing_half_written(repo)
    assert sorted(repo.blocks.block_ids()) == sorted(finished)


def test_check_names_the_backups_a_bad_block_affects(repo):
    """Given three backups sharing blocks, one block deleted (used by b1 and b2) and one damaged (used by b3)
    When check runs without reading data, reading all, and reading a seeded half twice
    Then the missing block names b1 and b2 either way; reading data finds the damaged one naming b3;
    the half sample reads the same ceil(n/2) blocks each time."""
    ids = [repo.blocks.put(bytes([n]) * 3000 + os.urandom(100))[0] for n in range(7)]
    backups = {"b1": ids[0:3], "b2": ids[2:5], "b3": ids[4:7] + ids[4:5]}
    os.unlink(repo.blocks.path(ids[2]))
    damaged = Path(repo.blocks.path(ids[6]))
    raw = bytearray(damaged.read_bytes())
    raw[-1] ^= 1
    damaged.write_bytes(bytes(raw))
    quick = check_blocks(repo.blocks, backups)
    assert quick.missing == {ids[2]: ["b1", "b2"]} and not quick.damaged and quick.blocks_read == 0
    full = check_blocks(repo.blocks, backups, read_data=True)
    assert full.blocks_referenced == 7 and full.blocks_read == 6
    assert full.damaged == {ids[6]: ["b3"]} and full.affected_backups() == ["b1", "b2", "b3"]
    assert any(ids[6] in line and "b3" in line for line in full.problems())
    half_a = check_blocks(repo.blocks, backups, subset=0.5, seed=7)
    half_b = check_blocks(repo.blocks, backups, subset=0.5, seed=7)
    assert half_a.blocks_read == 3 and half_a == half_b
    with pytest.raises(RepoError, match="subset"):
        check_blocks(repo.blocks, backups, subset=1.5)


def test_stats_on_known_data(repo):
    """Given two backups of two 1 MiB blocks each, one block shared (zeros, which compress to almost
    nothing), the others random, one unreferenced block and a crashed writer's temp file
    Then stats counts every block file and its bytes, and the ratios follow their definitions."""
    zeros, a, b, orphan = b"\0" * MIB, os.urandom(MIB), os.urandom(MIB), os.urandom(1000)
    id_zero, id_a, id_b, id_orphan = (repo.blocks.put(d)[0] for d in (zeros, a, b, orphan))
    sizes = {block_id: os.path.getsize(repo.blocks.path(block_id)) for block_id in (id_zero, id_a, id_b, id_orphan)}
    Path(os.path.dirname(repo.blocks.path(id_a)), TEMP_PREFIX + "half.1.aa").write_bytes(b"x" * 5000)  # no block
    logical = {"b1": 2 * MIB + 5 * 512, "b2": 2 * MIB + 5 * 512}
    stats = repository_stats(repo.blocks, logical, {id_zero: MIB, id_a: MIB, id_b: MIB})
    assert stats.blocks == 4 and stats.stored_bytes == sum(sizes.values())
    assert stats.backups == 2 and stats.logical_bytes == 4 * MIB + 10 * 512
    assert stats.unique_bytes == 3 * MIB
    assert stats.referenced_stored_bytes == sizes[id_zero] + sizes[id_a] + sizes[id_b]
    assert stats.dedup_ratio == pytest.approx((4 * MIB + 10 * 512) / (3 * MIB))
    assert stats.compression_ratio == pytest.approx(3 * MIB / stats.referenced_stored_bytes)
    assert 1.4 < stats.compression_ratio < 1.6  # the zeros block costs ~nothing, the random ones a bit more
    empty = repository_stats(repo.blocks, {}, {})
    assert empty.dedup_ratio is None and empty.compression_ratio is None
