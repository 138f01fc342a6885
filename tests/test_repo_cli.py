"""`tinabs repo init|key|stats|check|gc|export-xva`: the real CLI on a real repository on disk.

Given an encrypted repository holding real repo-mode backups (a job on real workers against the
simulator, VMs cloned from one template so that they share blocks), when the `tinabs repo`
commands run as subprocesses, then: init makes the repository and a 0600 key file it warns
about, and refuses what it must; stats says what is on disk; check finds a deleted block and
(reading data) a flipped byte, naming the backups they break; export-xva writes the very stream
the pool sent, which the pool's /import takes back, and never overwrites or leaves a half file;
gc removes an aged orphan and keeps every referenced block, aged or not, and a second GC while one
runs changes nothing.  Tests that damage the repository work on a copy of it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import toml_write
from helpers import xapi_http as H
from helpers.sim_proc import wait_task
from helpers.xva_parse import read_xva

from tinabs_tasks.repo import keys
from tinabs_tasks.repo.index import load_index
from tinabs_tasks.repo.layout import open_repository

DEPLOYMENT_SIM_ARGS = ("--pools", "1", "--vms-per-pool", "3", "--disk-mib", "8", "--clone-from-template")
DEPLOYMENT_REPOSITORY = True
BLOCK_NAME = re.compile(r"[0-9a-f]{64}")
TWO_DAYS_AGO = time.time() - 2 * 86400


def tinabs(config, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**(env or os.environ), "TINABS_CONFIG": str(config)}
    return subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def ok(proc) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def refused(proc, status: int, *fragments: str) -> str:
    """Exit ``status``, no traceback, one `tinabs: ` line on stderr holding every fragment."""
    assert proc.returncode == status, f"exit {proc.returncode}, want {status}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinabs: "), proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, f"{fragment!r} not in {proc.stderr!r}"
    return proc.stderr


def block_files(repo_path) -> dict[str, Path]:
    """Every block file under blocks/, by id: found by walking the directory, not by tinabs."""
    return {p.name: p for p in Path(repo_path, "blocks").rglob("*") if p.is_file() and BLOCK_NAME.fullmatch(p.name)}


# -- a repository without a deployment -----------------------------------------------------
def write_config(tmp_path: Path, name: str = "tinabs.toml", **repository) -> Path:
    (tmp_path / "dest").mkdir(exist_ok=True)
    doc = {"broker_url": "redis://127.0.0.1:1/0", "destination": str(tmp_path / "dest"),
           "pools": {"pool-a": {"master": "http://127.0.0.1:1", "username": "root", "password_env": "NOPE",
                                "shared_sr": "nfs-shared"}}}
    if repository:
        doc["repository"] = repository
    path = tmp_path / name
    toml_write.write(path, doc)
    return path


def test_init_makes_the_repository_and_a_0600_key_file_it_warns_about(tmp_path):
    repo, key_file = tmp_path / "repo", tmp_path / "keys" / "repo.key"
    key_file.parent.mkdir()
    config = write_config(tmp_path, path=str(repo), key_file=str(key_file), level=7)
    proc = ok(tinabs(config, "repo", "init"))
    assert f"made repository {repo}" in proc.stdout
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "KEEP A COPY OF THIS KEY FILE SAFE" in proc.stderr and str(key_file) in proc.stderr
    assert "lost for good" in proc.stderr
    key_text = key_file.read_text().strip()
    assert key_text not in proc.stdout + proc.stderr
    made = json.loads((repo / "tinabs-repo.json").read_text())
    assert (made["encryption"], made["compression"], made["level"]) == ("aes-256-gcm", "zstd", 7)
    open_repository(str(repo), keys.read_key_file(str(key_file)))  # the key is the repository's
    refused(tinabs(config, "repo", "init"), 2, f"{repo} is already a tinabs repository")
    assert key_file.read_text().strip() == key_text


def test_init_refuses_a_non_empty_directory_and_leaves_no_key_file(tmp_path):
    repo, key_file = tmp_path / "repo", tmp_path / "repo.key"
    repo.mkdir()
    (repo / "precious").write_text("mine")
    config = write_config(tmp_path, path=str(repo), key_file=str(key_file))
    refused(tinabs(config, "repo", "init"), 2, f"{repo} is not empty (precious)")
    assert sorted(os.listdir(repo)) == ["precious"] and (repo / "precious").read_text() == "mine"
    assert not key_file.exists()  # made for a repository that was not: removed again
    refused(tinabs(write_config(tmp_path, path=str(tmp_path / "new"), key_file=str(tmp_path / "no-dir" / "k")),
                   "repo", "init"), 2, f"its directory {tmp_path / 'no-dir'} does not exist")
    assert not (tmp_path / "new").exists()


def test_init_uses_an_existing_key_file_or_a_key_env(tmp_path):
    key_file = tmp_path / "made.key"
    proc = ok(tinabs(write_config(tmp_path), "repo", "key", "generate", str(key_file)))
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and "KEEP A COPY" in proc.stderr
    key_text = key_file.read_text()
    assert key_text.strip() not in proc.stdout + proc.stderr
    refused(tinabs(write_config(tmp_path), "repo", "key", "generate", str(key_file)), 2, "already exists")
    assert key_file.read_text() == key_text

    ok(tinabs(write_config(tmp_path, path=str(tmp_path / "r1"), key_file=str(key_file)), "repo", "init"))
    assert key_file.read_text() == key_text
    open_repository(str(tmp_path / "r1"), keys.read_key_file(str(key_file)))

    config = write_config(tmp_path, path=str(tmp_path / "r2"), key_env="TINABS_TEST_REPO_KEY")
    env = {k: v for k, v in os.environ.items() if k != "TINABS_TEST_REPO_KEY"}
    refused(tinabs(config, "repo", "init", env=env), 2, "TINABS_TEST_REPO_KEY is not set",
            "tinabs repo key generate FILE")
    assert not (tmp_path / "r2").exists()
    ok(tinabs(config, "repo", "init", env={**env, "TINABS_TEST_REPO_KEY": key_text.strip()}))
    open_repository(str(tmp_path / "r2"), keys.read_key_file(str(key_file)))


def test_every_command_says_what_to_fix_in_the_repository_setup(tmp_path):
    commands = [("stats",), ("check", "--read-data"), ("gc",), ("export-xva", "x", "-o", str(tmp_path / "x.xva"))]
    repo, key_file = tmp_path / "repo", tmp_path / "repo.key"
    cases = [(write_config(tmp_path, "none.toml"), "the config has no [repository] table; add one"),
             (write_config(tmp_path, "repo.toml", path=str(repo), key_file=str(key_file)),
              f"make one with: tinabs repo init {repo}")]
    with ThreadPoolExecutor(4) as pool:  # independent processes: at once, to keep the module quick
        for config, message in cases:
            for proc in pool.map(lambda c: tinabs(config, "repo", *c), commands):
                refused(proc, 2, message)
        ok(tinabs(cases[1][0], "repo", "init"))
        (tmp_path / "other").mkdir()
        other = tmp_path / "other" / "other.key"
        keys.generate_key_file(str(other))
        wrong = write_config(tmp_path / "other", path=str(repo), key_file=str(other))
        for proc in pool.map(lambda c: tinabs(wrong, "repo", *c), commands):
            refused(proc, 2, f"is not the key of repository {repo}")
    assert not (tmp_path / "x.xva").exists()


# -- with real backups ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backups(deployment) -> list[dict]:
    """One repo-mode backup of each VM (manifests, with "manifest_path")."""
    code, job = deployment.backup("--all", "--mode", "repo")
    assert code == 0, json.dumps(job, indent=1)[:3000]
    out = []
    for run in job["runs"]:
        manifest = json.loads(Path(run["manifest"]).read_text())
        out.append({**manifest, "manifest_path": run["manifest"]})
    assert len(out) == 3
    return out


def repo_copy(dep, tmp_path: Path) -> tuple[Path, Path]:
    """(a config naming copies of the deployment's repository and destination, the repository's
    copy): for tests that damage them."""
    copy, dest = tmp_path / "repo-copy", tmp_path / "dest-copy"
    shutil.copytree(dep.repo_path, copy)  # copy2: mtimes (GC marks) kept
    shutil.copytree(dep.dest, dest)
    text = dep.config.read_text()
    for key, old, new in (("path", dep.repo_path, copy), ("destination", dep.dest, dest)):
        named = f'{key} = "{old}"'
        assert text.count(named) == 1
        text = text.replace(named, f'{key} = "{new}"')
    config = tmp_path / "tinabs.toml"
    config.write_text(text)
    return config, copy


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def users(repo_path: Path, dep, backups) -> dict[str, set[str]]:
    """block id -> the backups referencing it, from the indexes (the test's own reading)."""
    repo = open_repository(str(repo_path), keys.read_key_file(str(dep.repo_key_file)))
    out: dict[str, set[str]] = {}
    for b in backups:
        for block_id in load_index(repo, b["backup_id"]).block_ids():
            out.setdefault(block_id, set()).add(b["backup_id"])
    return out


def test_stats_are_what_is_on_disk(deployment, backups):
    dep = deployment
    stats = json.loads(ok(tinabs(dep.config, "repo", "stats", "--json")).stdout)
    files = block_files(dep.repo_path)
    block_bytes = sum(p.stat().st_size for p in files.values())
    index_bytes = sum(p.stat().st_size for p in Path(dep.repo_path, "indexes").iterdir())
    repo = dep.open_repo()
    unique = sum(len(repo.blocks.get(block_id)) for block_id in files)  # each block read back once
    logical = sum(b["logical_bytes"] for b in backups)
    assert stats["backups"] == 3 and stats["blocks"] == len(files)
    assert (stats["block_bytes"], stats["index_bytes"]) == (block_bytes, index_bytes)
    assert stats["stored_bytes"] == block_bytes + index_bytes
    assert stats["logical_bytes"] == logical and stats["xva_bytes"] == sum(b["size"] for b in backups)
    assert stats["unique_bytes"] == unique
    assert stats["dedup_ratio"] == pytest.approx(logical / unique, rel=1e-3)
    assert stats["compression_ratio"] == pytest.approx(unique / block_bytes, rel=1e-3)
    assert stats["dedup_ratio"] > 1.2  # clones of one template share blocks
    assert all(isinstance(stats[k], int) for k in ("blocks", "logical_bytes", "stored_bytes"))
    human = ok(tinabs(dep.config, "repo", "stats")).stdout
    assert f"{stats['dedup_ratio']:.2f}x" in human and f"{len(files)} block(s)" in human


def test_check_names_the_backups_a_missing_block_breaks(deployment, backups, tmp_path):
    dep = deployment
    config, copy = repo_copy(dep, tmp_path)
    proc = ok(tinabs(config, "repo", "check"))
    assert proc.stdout.startswith("checked 3 backup(s)") and ": OK" in proc.stdout
    owners = users(copy, dep, backups)
    block_id, lost = next((b, u) for b, u in sorted(owners.items()) if len(u) == 1)
    block_files(copy)[block_id].unlink()
    proc = tinabs(config, "repo", "check")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    problems = [line for line in proc.stdout.splitlines() if line.startswith("  - ")]
    assert len(problems) == 1 and f"block {block_id} is missing" in problems[0]
    by_id = {b["backup_id"]: b for b in backups}
    (victim,) = lost
    assert f"{victim} (VM {by_id[victim]['vm']['name']}, pool pool-a)" in problems[0]
    assert not any(b in proc.stdout for b in by_id if b != victim)
    doc = json.loads(tinabs(config, "repo", "check", "--json").stdout)
    assert doc["ok"] is False and [m["block"] for m in doc["missing"]] == [block_id]
    assert [b["backup_id"] for b in doc["affected_backups"]] == [victim]
    assert doc["affected_backups"][0]["vm"] == by_id[victim]["vm"]["name"]

    # a damaged index is a problem of its own; its VM and pool then come from the manifest
    other = next(b for b in by_id if b != victim)
    flip(copy / "indexes" / other)
    proc = tinabs(config, "repo", "check")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    problems = [line for line in proc.stdout.splitlines() if line.startswith("  - ")]
    assert len(problems) == 2 and f"block {block_id} is missing" in problems[0]
    assert f"the index of backup {other}" in problems[1] and "is damaged" in problems[1]
    assert problems[1].endswith(f"it affects {other} (VM {by_id[other]['vm']['name']}, pool pool-a)")


def test_check_read_data_finds_a_flipped_byte_in_a_shared_block(deployment, backups, tmp_path):
    dep = deployment
    config, copy = repo_copy(dep, tmp_path)
    owners = users(copy, dep, backups)
    block_id, hit = next((b, u) for b, u in sorted(owners.items()) if len(u) >= 2)
    flip(block_files(copy)[block_id])
    ok(tinabs(config, "repo", "check"))  # without reading data, a present block is all it checks
    for args in (("--read-data",), ("--subset", "1")):
        proc = tinabs(config, "repo", "check", *args)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        problems = [line for line in proc.stdout.splitlines() if line.startswith("  - ")]
        assert len(problems) == 1 and f"block {block_id} is damaged" in problems[0], problems
        assert all(b in problems[0] for b in hit)
        assert not any(b["backup_id"] in problems[0] for b in backups if b["backup_id"] not in hit)
    refused(tinabs(config, "repo", "check", "--subset", "0"), 2, "give a fraction of the blocks above 0")


def test_export_xva_is_the_stream_the_pool_sent_and_the_pool_imports_it(deployment, backups, tmp_path):
    dep = deployment
    backup = backups[0]
    out = tmp_path / "vm.xva"
    proc = ok(tinabs(dep.config, "repo", "export-xva", backup["backup_id"], "-o", str(out)))
    data = out.read_bytes()
    assert hashlib.sha256(data).hexdigest() == backup["sha256"] and len(data) == backup["size"]
    assert f"sha256 OK {backup['sha256']}" in proc.stdout
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert names[0] == "ova.xml" and any(n.endswith(".xxhash") for n in names)
    assert [p.name for p in tmp_path.iterdir()] == ["vm.xva"]  # no temp file left beside it

    # refused without --force, FILE untouched; by manifest path with --force
    before = out.stat()
    refused(tinabs(dep.config, "repo", "export-xva", backup["backup_id"], "-o", str(out)), 2,
            f"{out} exists; use --force")
    assert (out.stat().st_ino, out.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    other = backups[1]
    proc = ok(tinabs(dep.config, "repo", "export-xva", other["manifest_path"], "-o", str(out), "--force", "--json"))
    assert json.loads(proc.stdout)["sha256"] == other["sha256"]
    assert hashlib.sha256(out.read_bytes()).hexdigest() == other["sha256"]

    with open(out, "rb") as fh:
        xva = read_xva(fh)  # an independent reader: layout and every chunk's checksum
    (vm_object,) = xva.objects("VM")
    session = dep.sim.session(0)
    x = H.api(session)
    try:
        before = set(H.user_vms(x))
        task = x.task.create("import export-xva", "")
        reply = H.put(dep.sim.pool(0)["master"], "/import", {"session_id": H.handle(x), "task_id": task},
                      out.read_bytes())
        assert reply.status == 200, reply
        record = wait_task(x, task)
        assert record["status"] == "success", record
        (new,) = set(H.user_vms(x)) - before
        assert x.VM.get_name_label(new) == vm_object["snapshot"]["name_label"]
        assert other["vm"]["name"] in x.VM.get_name_label(new)
        def disks(vm):  # sizes, and every byte of the system disk (hashing 64 GiB data disks takes long)
            return [(vdi["virtual_size"], dep.sim.vdi_info(vdi["uuid"], sha256=vbd["userdevice"] == "0").get("sha256"))
                    for vbd, vdi in H.vm_disks(x, vm)]

        source = x.VM.get_by_uuid(other["vm"]["uuid"])
        assert disks(new) == disks(source)  # the backed-up VM's disks, in order
        for vbd, vdi in H.vm_disks(x, new):
            x.VDI.destroy(x.VDI.get_by_uuid(vdi["uuid"]))
        x.VM.destroy(new)
    finally:
        session.xenapi.session.logout()


def test_export_xva_with_a_missing_block_fails_and_leaves_nothing(deployment, backups, tmp_path):
    dep = deployment
    config, copy = repo_copy(dep, tmp_path)
    backup = backups[2]
    owners = users(copy, dep, backups)
    # a block of this backup that backups[0] does not use: the second half below rebuilds backups[0]
    block_id = next(b for b, u in sorted(owners.items())
                    if backup["backup_id"] in u and backups[0]["backup_id"] not in u)
    block_files(copy)[block_id].unlink()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    refused(tinabs(config, "repo", "export-xva", backup["backup_id"], "-o", str(out_dir / "vm.xva")), 1,
            f"block {block_id}", f"backup {backup['backup_id']} cannot be rebuilt", "nothing was written")
    assert list(out_dir.iterdir()) == []

    # blocks sound, but the manifest says another stream: refused, nothing left either
    intact = backups[0]
    manifest = Path(str(intact["manifest_path"]).replace(str(dep.dest), str(tmp_path / "dest-copy")))
    doc = json.loads(manifest.read_text())
    doc["sha256"] = "0" * 64
    manifest.write_text(json.dumps(doc))
    refused(tinabs(config, "repo", "export-xva", str(manifest), "-o", str(out_dir / "vm.xva")), 1,
            f"its manifest says {intact['size']} bytes, sha256 {'0' * 64}", "nothing was written")
    assert list(out_dir.iterdir()) == []


def test_gc_removes_an_aged_orphan_and_keeps_every_referenced_block(deployment, backups, tmp_path):
    dep = deployment
    config, copy = repo_copy(dep, tmp_path)
    referenced = block_files(copy)
    repo = open_repository(str(copy), keys.read_key_file(str(dep.repo_key_file)))
    orphan_id, orphan_bytes = repo.blocks.put(os.urandom(300_000))  # a block no index references
    orphan = block_files(copy)[orphan_id]
    temp = orphan.parent / ".tmp.left-by-a-killed-writer.1.abc"
    temp.write_bytes(b"x" * 1000)
    for path in [*referenced.values(), orphan, temp]:  # time passes: two days, past the 24 h grace
        os.utime(path, (TWO_DAYS_AGO, TWO_DAYS_AGO))

    dry = json.loads(ok(tinabs(config, "repo", "gc", "--dry-run", "--json")).stdout)
    assert (dry["blocks_removed"], dry["temps_removed"]) == (1, 1)
    assert dry["bytes_freed"] == orphan_bytes + 1000 and dry["marked"] == len(referenced)
    assert orphan.exists() and temp.exists()
    assert all(p.stat().st_mtime == pytest.approx(TWO_DAYS_AGO) for p in referenced.values())  # unmarked

    done = json.loads(ok(tinabs(config, "repo", "gc", "--json")).stdout)
    assert (done["blocks_removed"], done["temps_removed"], done["bytes_freed"]) == (1, 1, orphan_bytes + 1000)
    assert done["marked"] == len(referenced) and done["blocks_kept"] == len(referenced)
    assert not orphan.exists() and not temp.exists()
    assert set(block_files(copy)) == set(referenced)
    ok(tinabs(config, "repo", "check", "--read-data"))
    again = ok(tinabs(config, "repo", "gc")).stdout
    assert re.search(r"^removed +0 unreferenced block\(s\) and 0 temp file\(s\), freed 0 B$", again, re.M), again


def test_a_second_gc_while_one_runs_says_so_and_changes_nothing(deployment, backups, tmp_path):
    dep = deployment
    config, copy = repo_copy(dep, tmp_path)
    repo = open_repository(str(copy), keys.read_key_file(str(dep.repo_key_file)))
    orphan_id, _ = repo.blocks.put(os.urandom(1000))
    orphan = block_files(copy)[orphan_id]
    os.utime(orphan, (TWO_DAYS_AGO, TWO_DAYS_AGO))
    fd = os.open(copy / "gc.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running GC holds
        refused(tinabs(config, "repo", "gc"), 1, f"another GC is running on {copy}")
        assert orphan.exists()
    finally:
        os.close(fd)
    ok(tinabs(config, "repo", "gc"))
    assert not orphan.exists()


def test_gc_stops_before_removing_anything_when_an_index_is_unreadable(deployment, backups, tmp_path):
    """Its blocks would look unreferenced: a GC that went on would remove a backup's data."""
    dep = deployment
    config, copy = repo_copy(dep, tmp_path)
    files = block_files(copy)
    for path in files.values():
        os.utime(path, (TWO_DAYS_AGO, TWO_DAYS_AGO))
    flip(copy / "indexes" / backups[0]["backup_id"])
    refused(tinabs(config, "repo", "gc"), 1, "gc stopped before removing anything",
            f"the index of backup {backups[0]['backup_id']}")
    assert set(block_files(copy)) == set(files)
