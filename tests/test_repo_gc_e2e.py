"""The repository's GC end to end: real workers, a real Redis, the simulator, beat, the CLI.

Given an encrypted repository in the config (gc_grace_h at its default 24 h) and block files
aged two days old with ``os.utime`` (standing for the nights that went by):

- GC running round after round, in a process of its own, while many VMs (cloned from one
  template, their disks changed since the last night) are backed up into the repository, never
  removes a block a backup uses: every backup, old and new, rebuilds to its manifest's sha256,
  every index is complete, and the blocks nothing references any more are gone;
- a worker killed with SIGKILL in the middle of the store stage leaves no index and no
  manifest; redelivered, the run stores the backup once, whole; aborted, the blocks the killed
  attempt wrote are orphans that GC reclaims, and no index loses a block;
- retention deletes repository backups like file backups (manifest, then index; `tinabs prune
  --dry-run` lists them and deletes nothing), and GC, `tinabs.repo_gc` on a worker, then frees
  exactly the blocks only the deleted backups used;
- beat sends `tinabs.repo_gc` from ``[schedule.gc]``; a ``[schedule.gc]`` without a
  ``[repository]`` is a one-line config error;
- a worker removes an index only from its own repository (a manifest naming another one is
  left alone, index and all).
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time

import pytest

from helpers import repo_race as R
from helpers import toml_write
from helpers.beat_proc import BeatProc
from helpers.deployment import FAULT_TUNING, Deployment
from helpers.procs import finish
from helpers.waiting import wait_for
from tinabs_tasks.repo.index import list_backups, remove_index_file
from tinabs_tasks.storage import catalog

POOL = "pool-a"
#: 8 VMs deployed from one template (they share its blocks), 24 MiB system disks exported at 10 MB/s
#: per host, so that a store stage lasts a few seconds
DEPLOYMENT_SIM_ARGS = ("--pools", "1", "--vms-per-pool", "8", "--disk-mib", "24", "--clone-from-template",
                       "--host-bandwidth-mbps", "10")
DEPLOYMENT_REPOSITORY = True


def _repo_backups(dest) -> list[catalog.Backup]:
    return [b for b in catalog.scan(str(dest), include_incomplete=True) if b.mode == "repo"]


def _store_windows(repo, manifests) -> list[tuple[float, float]]:
    """When each backup's store stage ran: it ends when its index is written (the index file's
    mtime: GC never touches indexes) and lasted the manifest's transfer time."""
    out = []
    for path in manifests:
        m = json.loads(open(path).read())
        end = os.stat(os.path.join(repo.index_dir(), m["backup_id"])).st_mtime
        out.append((end - m["timings"]["transfer"], end))
    return out


def _drift(dep, seed: int, fraction: float = 0.25) -> None:
    status, body = dep.sim.control_call("POST", "/sim/drift", {"fraction": fraction, "seed": seed})
    assert status == 200, body


# -- a. GC while backups run ----------------------------------------------------------------------
def _latest_runs(dep) -> list[dict]:
    r = dep.redis
    jobs = r.zrevrange("tinabs:jobs", 0, 0)
    return [r.hgetall(f"tinabs:run:{rid}") for rid in r.smembers(f"tinabs:job:{jobs[0]}:runs")] if jobs else []


def _mtime(repo, block_id: str) -> float:
    try:
        return os.stat(repo.blocks.path(block_id)).st_mtime
    except FileNotFoundError:
        return 0.0


def test_gc_running_during_backups_never_loses_a_block(deployment, tmp_path):
    dep = deployment
    repo = dep.open_repo()
    # Given a night of repo-mode backups of every VM
    code, job = dep.backup("--all", "--mode", "repo")
    assert code == 0, [(r["vm_name"], r["state"], r.get("error")) for r in job["runs"]]
    gone_runs, kept_runs = job["runs"][:4], job["runs"][4:]
    # And four of them deleted as retention would (manifest, then index): their VMs' own blocks
    # become orphans, which the next night's backups of the same VMs will use again
    blocks_of = {r["vm_uuid"]: R.index_blocks(repo, [r["manifest"].rsplit("/", 1)[1][:-5]]) for r in gone_runs}
    size_of = {r["vm_uuid"]: json.loads(open(r["manifest"]).read())["size"] for r in gone_runs}
    for r in gone_runs:
        os.unlink(r["manifest"])
        assert remove_index_file(str(dep.repo_path), r["manifest"].rsplit("/", 1)[1][:-5])
    night1 = [r["manifest"] for r in kept_runs]
    left = R.referenced(repo)
    orphans_of = {uuid: blocks - left for uuid, blocks in blocks_of.items()}
    junk = R.plant_junk(repo, 5)  # and what killed backups left
    orphans = set().union(*orphans_of.values()) | set(junk)
    assert all(orphans_of.values()) and orphans == set(R.block_files(repo)) - left
    # And two days gone by: every block is past the grace; and the disks changed since
    R.age_everything(repo)
    _drift(dep, seed=11)
    loop = R.GcLoop(dep.env, tmp_path)  # armed, not yet running
    # When every VM is backed up again, and GC starts running round after round the moment a
    # backup has taken an orphan again (refreshing its mark) and is still storing, its index unwritten
    backup = subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "backup", "--all", "--mode", "repo",
                               "--wait", "--json"], env=dep.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    recent = time.time() - 86400

    def reuse_in_flight():
        for run in _latest_runs(dep):
            uuid = run.get("vm_uuid")
            if uuid in orphans_of and run.get("stage", "").startswith("store") \
                    and int(run.get("bytes") or 0) < 0.8 * size_of[uuid]:
                taken = {b for b in orphans_of[uuid] if _mtime(repo, b) > recent}
                if taken:
                    return uuid, taken
        return None

    uuid, taken = wait_for(reuse_in_flight, 90, "a backup storing an orphan block again, its mark refreshed "
                           "(BlockStore.put of a block that exists marks it)", interval=0.02)
    loop.go()
    code, out, err = finish(backup, "the second night", 150)
    rounds = loop.stop()
    job = json.loads(out)
    assert code == 0, [(r["vm_name"], r["state"], r.get("error")) for r in job["runs"]]
    night2 = [r["manifest"] for r in job["runs"]]
    figures = [json.loads(open(p).read()) for p in night2]
    assert sum(m["new_blocks"] for m in figures) and sum(m["reused_blocks"] for m in figures)
    # Then the first GC round ran while that backup held the orphans it took, not yet indexed
    (raced_manifest,) = [r["manifest"] for r in job["runs"] if r["vm_uuid"] == uuid]
    raced_index = os.path.join(repo.index_dir(), json.loads(open(raced_manifest).read())["backup_id"])
    assert rounds and rounds[0]["t1"] < os.stat(raced_index).st_mtime, "the backup ended before GC ran"
    # And GC ran all along the stores
    raced, seconds = R.overlap(rounds, _store_windows(repo, night2))
    removed, put_back = sum(r["removed"] for r in rounds), sum(r["restored"] for r in rounds)
    print(f"\nGC rounds: {len(rounds)}, {raced} of them while a store ran; {seconds:.2f} s of GC work inside "
          f"store windows; {len(taken)} orphan block(s) taken again by a backup storing as GC began; removed "
          f"{removed} block(s); put back while condemned {put_back}")
    assert raced >= 5 and seconds > 0.5, (len(rounds), raced, seconds)
    assert all(r["grace"] == 24 * 3600 for r in rounds)  # the config's grace, not a test's
    # And it swept while they ran, and never found a referenced block missing
    assert removed >= sum(len(r["planted"]) for r in rounds) + len(junk)
    assert all(r["missing"] == 0 for r in rounds), rounds
    # And every backup of both nights rebuilds to its manifest's sha256, every index is complete
    assert sorted(b.manifest_path for b in _repo_backups(dep.dest)) == sorted(night1 + night2)
    assert all(b.status == catalog.COMPLETE for b in _repo_backups(dep.dest))
    rebuilt = {R.check_rebuild(repo, p) for p in night1 + night2}
    assert rebuilt == set(list_backups(repo))
    assert R.incomplete_indexes(repo) == {}
    stored, used = set(R.block_files(repo)), R.referenced(repo)
    assert taken <= stored and taken <= used
    # And what nothing references any more is gone: the orphans no backup took again, all the junk
    gone = (orphans | {b for r in rounds for b in r["planted"]}) - used
    assert gone and not gone & stored
    assert stored == used, "an unreferenced block survived"


# -- b. a worker killed mid-store -----------------------------------------------------------------
@pytest.fixture(scope="module")
def fault_dep(redis_server, tmp_path_factory):
    """A deployment of its own (Redis DB 1) with the short visibility timeout of the fault tests
    and exports slow enough (3 MB/s) to catch a store stage in the middle."""
    dep = Deployment(tmp_path_factory.mktemp("gc-kill"), redis_server,
                     ("--pools", "1", "--vms-per-pool", "5", "--disk-mib", "16", "--host-bandwidth-mbps", "3"),
                     db=1, tuning=FAULT_TUNING, repository=True)
    try:
        for name in ("k1", "k2"):
            dep.start_worker(name)
        yield dep
    finally:
        dep.stop()


def _kill_mid_store(dep, repo, vm: str):
    """Start a repo backup of ``vm``, SIGKILL the worker running its store stage once it has
    written blocks; (the CLI process, the run, the blocks written before the kill)."""
    before = set(R.block_files(repo))
    proc = subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "backup", "--vm", vm, "--pool", POOL,
                             "--mode", "repo", "--wait", "--json"], env=dep.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def storing():
        r = dep.redis
        jobs = r.zrevrange("tinabs:jobs", 0, 0)
        runs = r.smembers(f"tinabs:job:{jobs[0]}:runs") if jobs else ()
        run = r.hgetall(f"tinabs:run:{next(iter(runs))}") if runs else {}
        written = set(R.block_files(repo)) - before
        return run if run.get("stage", "").startswith("store") and len(written) >= 3 else None

    run = wait_for(storing, 60, "a store stage that has written 3 blocks", interval=0.05)
    pid = int(run["worker"].rsplit(":", 1)[1])
    (victim,) = [w for w in dep.workers if pid in w.child_pids() or pid == w.proc.pid]
    victim.kill()
    dep.workers.remove(victim)
    written = set(R.block_files(repo)) - before
    # Then nothing of the killed attempt is a backup: no index, no manifest
    assert not [b for b in list_backups(repo) if b.endswith(run["id"])]
    assert not list(dep.dest.rglob(f"*{run['id']}*.json"))
    dep.start_worker(f"r{time.monotonic_ns()}")
    return proc, run, written


def test_a_worker_killed_mid_store_leaves_only_orphans_gc_reclaims(fault_dep):
    dep = fault_dep
    repo = dep.open_repo()
    code, job = dep.backup("--vm", "mail-01", "--pool", POOL, "--mode", "repo")
    assert code == 0, job
    kept = job["runs"][0]["manifest"]
    # When the worker storing db-01's backup is killed and the stage redelivered to another
    proc, run, _ = _kill_mid_store(dep, repo, "db-01")
    code, out, err = finish(proc, "the redelivered backup", 120)
    (done,) = json.loads(out)["runs"]
    # Then the same run stored the backup once, whole: one index for it, which rebuilds
    assert code == 0 and done["state"] == "succeeded", done
    assert os.path.basename(done["manifest"]).endswith(f"-{run['id']}.json"), (done, run)
    assert [b for b in list_backups(repo) if b.endswith("-" + run["id"])] == [R.check_rebuild(repo, done["manifest"])]
    # When the worker storing dns-01's backup is killed and the job aborted before redelivery
    proc, run, written = _kill_mid_store(dep, repo, "dns-01")
    job_id = dep.redis.zrevrange("tinabs:jobs", 0, 0)[0]
    dep.cli("abort", job_id, check=True)
    code, out, err = finish(proc, "the aborted backup", 120)
    (aborted,) = json.loads(out)["runs"]
    assert code != 0 and aborted["state"] != "succeeded", aborted
    # Then the killed attempt left blocks that no index references, and no backup
    assert len(list_backups(repo)) == 2 and len(_repo_backups(dep.dest)) == 2
    orphans = written - R.referenced(repo)
    assert len(orphans) >= 3, "the killed attempt left no orphan: the test would prove nothing"
    # When the grace has passed (every block file aged) and GC runs on a worker
    R.age_everything(repo)
    gc = R.run_task(dep, "tinabs.repo_gc")
    # Then the orphans (and any temp file the kill left) are gone, and no index lost a block
    stored = set(R.block_files(repo))
    assert not orphans & stored and R.temp_files(repo) == []
    assert gc["blocks_removed"] >= len(orphans) and gc["missing_blocks"] == 0, gc
    assert stored == R.referenced(repo) and R.incomplete_indexes(repo) == {}
    for manifest in (kept, done["manifest"]):
        R.check_rebuild(repo, manifest)


# -- c. retention, then GC ------------------------------------------------------------------------
def test_retention_deletes_repo_backups_and_gc_frees_their_blocks(redis_server, tmp_path):
    dep = Deployment(tmp_path, redis_server, ("--pools", "1", "--vms-per-pool", "3", "--disk-mib", "16",
                                              "--clone-from-template"), db=2, repository=True)
    try:
        cfg = toml_write.read(dep.config)
        cfg["retention"] = {"keep_last": 1, "after_backup": False}  # pruned by `tinabs prune` here
        toml_write.write(dep.config, cfg)
        dep.start_worker("c1")
        repo = dep.open_repo()
        # Given two nights of repo-mode backups, the disks changed in between
        nights = []
        for seed in (21, 22):
            code, job = dep.backup("--all", "--mode", "repo")
            assert code == 0, job
            nights.append(sorted(r["manifest"] for r in job["runs"]))
            _drift(dep, seed)
            time.sleep(1.1)  # the next night's backups have later stamps
        old, new = nights
        old_ids = [os.path.basename(p)[:-5] for p in old]
        # When `tinabs prune --dry-run` runs
        dry = dep.cli("prune", "--dry-run", check=True).stdout
        # Then it lists the older repository backups and their indexes, and deletes nothing
        lines = dry.splitlines()
        assert sum(line.startswith("would delete") for line in lines) == 3, dry
        assert sum("would remove index" in line for line in lines) == 3, dry
        assert all(bid in dry for bid in old_ids) and "3 backup(s) kept, 3 would delete" in dry, dry
        assert len(list_backups(repo)) == 6 and all(os.path.exists(p) for p in old + new)
        # When `tinabs prune` runs
        out = dep.cli("prune", check=True).stdout
        # Then the older backups' manifests and indexes are gone, the newer ones are kept
        assert "3 backup(s) kept, 3 deleted" in out, out
        assert sorted(b.manifest_path for b in _repo_backups(dep.dest)) == new
        assert not any(os.path.exists(p) for p in old) and list_backups(repo) == sorted(
            os.path.basename(p)[:-5] for p in new)
        # And the janitor, even with no age limit, takes nothing of them for litter
        assert dep.cli("janitor", "--max-age-h", "0", check=True).returncode == 0
        assert sorted(b.manifest_path for b in _repo_backups(dep.dest)) == new
        # (their blocks stay until GC: the pruned backups' unique ones, by size)
        only_old = set(R.block_files(repo)) - R.referenced(repo)
        assert only_old, "the nights share every block: the test would prove nothing"
        sizes = {b: st.st_size for b, st in R.block_files(repo).items()}
        # When the grace has passed and `tinabs.repo_gc` runs on a worker
        R.age_everything(repo)
        gc = R.run_task(dep, "tinabs.repo_gc")
        # Then it freed exactly the blocks only the deleted backups used, and says so in figures only
        assert (gc["blocks_removed"], gc["bytes_freed"]) == (len(only_old), sum(sizes[b] for b in only_old)), gc
        assert gc["missing_blocks"] == 0 and gc["blocks_kept"] == len(R.referenced(repo)), gc
        assert set(gc) == {"repository", "grace_s", "start", "cutoff", "duration_s", "marked", "missing_blocks",
                           "blocks_kept", "bytes_kept", "blocks_removed", "bytes_freed", "temps_removed", "restored"}
        assert not only_old & set(R.block_files(repo))
        # And the kept backups rebuild with the right sha256
        for manifest in new:
            R.check_rebuild(repo, manifest)
        # And while another GC holds the repository's gc.lock, the task says so and touches nothing
        fd = os.open(os.path.join(repo.path, "gc.lock"), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            busy = R.run_task(dep, "tinabs.repo_gc")
        finally:
            os.close(fd)
        assert "another GC is running" in busy["skipped"], busy
    finally:
        dep.stop()


# -- d. beat runs the GC; the config needs a repository for it -----------------------------------
def test_beat_runs_the_gc_from_schedule_gc(deployment):
    dep = deployment
    repo = dep.open_repo()
    base = dep.config.read_text()
    dep.config.write_text(base + '\n[schedule]\ntimezone = "UTC"\nlock_timeout_s = 3\n\n[schedule.daily]\n'
                                 'enabled = false\n\n[schedule.gc]\nevery = "2s"\n')
    beat = None
    try:
        junk = R.plant_junk(repo, 4)
        shown = dep.cli("schedule", "show", "--json", "--offline", check=True).stdout
        (row,) = [r for r in json.loads(shown)["schedules"] if r["name"] == "gc"]
        assert (row["task"], row["every_s"], row["enabled"]) == ("tinabs.repo_gc", 2, True)
        # When beat runs with [schedule.gc]
        beat = BeatProc("gc", dep.env, dep.root).start()
        send = wait_for(lambda: next((s for s in beat.sends() if s.entry == "gc"), None), 30,
                        "beat sending the gc entry", explain=beat.log)
        # Then a worker runs tinabs.repo_gc and returns its figures; the planted junk is gone
        from celery import Celery
        client = Celery("test", broker=dep.redis_url, backend=dep.redis_url)
        result = client.AsyncResult(send.task_id).get(timeout=30)
        client.close()
        assert result["repository"] == str(dep.repo_path) and result["grace_s"] == 24 * 3600, result
        assert result.get("skipped") or result["missing_blocks"] == 0, result
        wait_for(lambda: not set(junk) & set(R.block_files(repo)), 30, "the junk blocks swept by a scheduled GC")
        assert R.incomplete_indexes(repo) == {}
    finally:
        if beat:
            beat.stop()
        dep.config.write_text(base)


def test_schedule_gc_without_a_repository_is_a_one_line_config_error(tmp_path):
    config = tmp_path / "tinabs.toml"
    config.write_text('broker_url = "redis://127.0.0.1:1/0"\ndestination = "/srv/b"\n\n[pools.a]\n'
                      'master = "http://a"\nusername = "root"\npassword_env = "X"\nshared_sr = "s"\n\n'
                      '[schedule]\ntimezone = "UTC"\n\n[schedule.gc]\ncron = "0 5 * * *"\n')
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TINABS_")}, "TINABS_CONFIG": str(config)}
    proc = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "check-config", "--offline"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "[schedule.gc]" in line]
    assert len(lines) == 1 and "needs a [repository] table" in lines[0], proc.stderr


def test_prune_removes_an_index_only_from_the_workers_own_repository(tmp_path):
    """Given a repo backup's manifest naming a repository, delete_backup removes its manifest and
    then its index (no key needed) from the worker's own repository, and leaves a backup of
    another repository (or any, on a worker without one) whole: a manifest deleted without its
    index would keep that index's blocks forever."""
    from tinabs_tasks.storage import janitor

    bid, repo_dir = "20260101T000000Z-abc123", tmp_path / "repo"
    (repo_dir / "indexes").mkdir(parents=True)
    vm_dir = tmp_path / "dest" / POOL / "vm--u1"
    vm_dir.mkdir(parents=True)

    def backup() -> catalog.Backup:
        (repo_dir / "indexes" / bid).write_bytes(b"sealed")
        (vm_dir / f"{bid}.json").write_text(json.dumps({
            "vm": {"uuid": "u1", "name": "vm"}, "pool": POOL, "mode": "repo", "run": "abc123", "size": 1,
            "sha256": "0" * 64, "backup_id": bid, "repository": {"path": str(repo_dir), "id": "r"}}))
        (found,) = catalog.scan(str(tmp_path / "dest"))
        assert found.status == catalog.COMPLETE and found.path is None
        return found

    for other in (None, str(tmp_path / "elsewhere")):
        done = janitor.delete_backup(backup(), None, repository=other)
        assert "left alone" in done["error"] and (vm_dir / f"{bid}.json").exists()
        assert (repo_dir / "indexes" / bid).exists()
    dry = janitor.delete_backup(backup(), None, dry_run=True, repository=str(repo_dir))
    assert dry["index"] == {"repository": str(repo_dir), "backup_id": bid, "removed": False}
    assert (vm_dir / f"{bid}.json").exists() and (repo_dir / "indexes" / bid).exists()
    done = janitor.delete_backup(backup(), None, repository=str(repo_dir) + "/")
    assert "error" not in done and done["index"]["removed"], done
    assert not (vm_dir / f"{bid}.json").exists() and not (repo_dir / "indexes" / bid).exists()
