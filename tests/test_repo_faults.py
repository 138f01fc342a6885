"""Repo mode with bad input and faults: real CLI, real workers, real Redis, the simulator, real disks.

- A config whose key is wrong, names an unset variable or a missing file, whose repository is not
  initialised, or that has no [repository]: `tinabs backup --mode repo` says so in one line (exit
  2) before any work: nothing sent to the broker, nothing on the pool, in the repository or in
  the destination, and the key in no message.
- A worker whose own config has the wrong key (the producer's is right): the run fails at the
  store stage with that reason, without retries; compensation leaves nothing on the pool, and no
  index and no manifest.
- A repository on a small disk (a real tmpfs): with less than a backup's floor free, the run
  fails before streaming, as a full destination does; a disk that fills up while the stream is
  being stored fails the run with "no space left", not retried, with no index, no manifest, and
  nothing under a block's real name that does not open; once space is freed the next backup
  succeeds.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.pool_checks import bases, litter
from helpers.repo_checks import assert_one_repo_backup, assert_repo_consistent, config_variant, repo_files
from helpers.small_fs import fill, free_bytes, tmpfs
from helpers.xapi_http import guest_write
from helpers.workers import WorkerProc

from tinabs_tasks.repo import keys
from tinabs_tasks.repo.index import list_backups
from tinabs_tasks.repo.layout import init_repository, open_repository

DEPLOYMENT_SIM_ARGS = ("--pools", "1", "--vms-per-pool", "3", "--disk-mib", "8")
DEPLOYMENT_REPOSITORY = True
DEPLOYMENT_WORKERS = 0  # each test starts the workers it needs, with the config it needs
VM = "db-01"
UNSET = "TINABS_TEST_REPO_KEY_NOT_SET"


@pytest.fixture
def workers(deployment):
    """Start a worker for this test (``config``: its own TINABS_CONFIG); all stopped after it."""
    started: list[WorkerProc] = []

    def start(name: str, config: str | None = None) -> WorkerProc:
        env = {**deployment.env, **({"TINABS_CONFIG": config} if config else {})}
        worker = WorkerProc(name, env, deployment.root).start()
        started.append(worker)
        return worker

    deployment.sim.clear_faults()
    yield start
    for worker in started:
        worker.stop()
    deployment.sim.clear_faults()


def _other_key(dep) -> str:
    path = dep.root / "other.key"
    if not path.exists():
        keys.generate_key_file(str(path))
    return str(path)


def _variants(dep) -> dict[str, tuple]:
    """name -> (config edit, what the error must say)."""
    key_line = f'key_file = "{dep.repo_key_file}"'
    empty = dep.root / "empty-repo"
    empty.mkdir(exist_ok=True)
    missing = dep.root / "no-such.key"
    return {
        "wrong key": (lambda t: t.replace(str(dep.repo_key_file), _other_key(dep)),
                      f"is not the key of repository {dep.repo_path}"),
        "key_env unset": (lambda t: t.replace(key_line, f'key_env = "{UNSET}"'), UNSET),
        "key_file missing": (lambda t: t.replace(key_line, f'key_file = "{missing}"'), str(missing)),
        "not initialised": (lambda t: t.replace(f'path = "{dep.repo_path}"', f'path = "{empty}"'),
                            f"make one with: tinabs repo init {empty}"),
        "no [repository]": (lambda t: t.split("\n[repository]\n")[0] + "\n", "[repository]"),
    }


@pytest.mark.parametrize("what", ["wrong key", "key_env unset", "key_file missing", "not initialised",
                                  "no [repository]"])
def test_a_repository_the_producer_cannot_use_stops_the_backup_before_any_work(deployment, what):
    dep = deployment
    edit, says = _variants(dep)[what]
    config = config_variant(dep, what.replace(" ", "-").strip("[]"), edit)
    assert Path(config).read_text() != dep.config.read_text()
    env = {k: v for k, v in dep.env.items() if k != UNSET}
    before = (sorted(dep.redis.keys("*")), dep.sim.state(), repo_files(dep), dep.files())
    # When `tinabs backup --mode repo` runs with that config (no worker runs: a message sent would stay queued)
    proc = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "backup", "--all", "--mode", "repo", "--wait"],
                          env={**env, "TINABS_CONFIG": config}, capture_output=True, text=True, timeout=60)
    # Then one clear line, exit 2
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("tinabs: ") and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    # And nothing happened: no key, job or message in Redis; the pool, the repository, the destination as they were
    assert (sorted(dep.redis.keys("*")), dep.sim.state(), repo_files(dep), dep.files()) == before
    for key_file in (dep.repo_key_file, Path(_other_key(dep))):
        assert key_file.read_text().strip() not in proc.stderr


def test_a_worker_with_the_wrong_key_fails_the_run_and_leaves_nothing(deployment, workers):
    dep = deployment
    # Given the only worker has a config whose key is not the repository's (the producer's is right)
    worker = workers("wrongkey", config_variant(dep, "worker-wrong-key",
                                                lambda t: t.replace(str(dep.repo_key_file), _other_key(dep))))
    before_repo, before_files = repo_files(dep), dep.files()
    # When a VM is backed up in repo mode
    code, job = dep.backup("--vm", VM, "--mode", "repo")
    # Then its run fails at the store stage, saying the key is wrong, without a retry
    (run,) = job["runs"]
    assert code == 1 and run["state"] == "failed" and run["failed_stage"] == "store", run
    assert "repository:" in run["error"] and "is not the key of repository" in run["error"], run["error"]
    assert "retries" not in run and run.get("compensation") == "done", run
    # And compensation left nothing on the pool; no index, no block, no manifest
    assert litter(dep.sim.state()) == {}
    assert repo_files(dep) == before_repo and dep.files() == before_files
    assert_repo_consistent(dep)
    # And neither key is in the run's record or the worker's log
    record = json.dumps(dep.redis.hgetall(f"tinabs:run:{run['id']}"))
    log = worker.log_path.read_text(errors="replace")
    for key_file in (dep.repo_key_file, Path(_other_key(dep))):
        secret = key_file.read_text().strip()
        assert secret not in record and secret not in log


def _small_repository(dep, mount: Path, name: str) -> str:
    """A repository (the deployment's key) on ``mount``, and a config naming it; the config's path."""
    init_repository(str(mount / "repo"), key=keys.read_key_file(str(dep.repo_key_file)))
    return config_variant(dep, name, lambda t: t.replace(f'path = "{dep.repo_path}"', f'path = "{mount / "repo"}"'))


def _backup(dep, config: str, *args: str) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "backup", "--vm", VM, "--mode", "repo",
                           "--wait", "--json", *args], env={**dep.env, "TINABS_CONFIG": config},
                          capture_output=True, text=True, timeout=180)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON from tinabs backup (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def _assert_failed_cleanly(dep, code: int, job: dict, repo, dest_before) -> dict:
    (run,) = job["runs"]
    assert code == 1 and run["state"] == "failed" and run["failed_stage"] == "store", run
    assert "retries" not in run and run.get("compensation") == "done", run  # a full disk is not retried
    assert litter(dep.sim.state()) == {}
    assert dep.files() == dest_before  # no manifest
    assert list_backups(repo) == []  # no index
    assert_repo_consistent(dep, repo)  # and no block under its real name that does not open
    return run


def test_a_repository_without_room_for_a_backup_fails_it_before_streaming(deployment, workers, tmp_path):
    dep = deployment
    with tmpfs(tmp_path / "small", 32) as mount:
        # Given a repository on a 32 MiB disk, under the floor a backup needs to start
        config = _small_repository(dep, mount, "small-repo")
        workers("small", config)
        repo = open_repository(str(mount / "repo"), keys.read_key_file(str(dep.repo_key_file)))
        before, dest_before = repo_files(dep, mount / "repo"), dep.files()
        # When a VM is backed up into it
        code, job = _backup(dep, config)
        # Then the run fails at once with how much is free and what to do, leaving nothing
        run = _assert_failed_cleanly(dep, code, job, repo, dest_before)
        assert "MB free" in run["error"] and "tinabs repo gc" in run["error"], run["error"]
        assert repo_files(dep, mount / "repo") == before


def test_a_repository_disk_filling_up_mid_stream_fails_the_run_cleanly(deployment, workers, tmp_path):
    dep = deployment
    with tmpfs(tmp_path / "filling", 300) as mount:
        # Given a repository with room to start a backup (above the 256 MiB floor)
        config = _small_repository(dep, mount, "filling-repo")
        workers("filling", config)
        repo = open_repository(str(mount / "repo"), keys.read_key_file(str(dep.repo_key_file)))
        dest_before = dep.files()
        # And a pool whose export stalls a moment, so the disk can fill once the backup has started
        dep.sim.add_fault({"handler": "/export", "delay_s": 3.0, "pool": "pool-a", "times": 1})
        proc = subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "backup", "--vm", VM, "--mode", "repo",
                                 "--wait", "--json"], env={**dep.env, "TINABS_CONFIG": config},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        dep.sim.wait_fired()
        # When another writer takes every free byte of the disk while the stream is on its way
        ballast = fill(mount)
        assert free_bytes(mount) < 64 << 10
        out, err = proc.communicate(timeout=180)
        # Then the run fails with "no space left", not retried, with no index, no manifest, nothing on the pool
        run = _assert_failed_cleanly(dep, proc.returncode, json.loads(out), repo, dest_before)
        assert "repository" in run["error"] and "no space left" in run["error"], run["error"]
        # When the space is freed, the next backup into the same repository succeeds
        Path(ballast).unlink()
        code, job = _backup(dep, config)
        (good,) = job["runs"]
        assert code == 0, good
        assert_one_repo_backup(dep, good, repo)
        assert_repo_consistent(dep, repo)


def test_a_repository_filling_up_mid_delta_fails_the_night_and_keeps_the_base(deployment, workers, tmp_path):
    """An incremental night meets a full repository while it stores the delta's blocks: the run
    fails with "no space left", not retried (not the pool's fault), adds no index or manifest and
    leaves the VM's base as it was; with room again, the next night builds on that base."""
    dep = deployment
    with tmpfs(tmp_path / "filling-delta", 300) as mount:
        config = _small_repository(dep, mount, "delta-repo")
        workers("delta", config)
        repo = open_repository(str(mount / "repo"), keys.read_key_file(str(dep.repo_key_file)))
        code, job = _backup(dep, config)
        assert code == 0, job
        (first,) = job["runs"]
        base = [b for b in bases(dep.sim.state()) if b["backup"] == first["backup_id"]]
        assert len(base) == 1, bases(dep.sim.state())
        system = base[0]["snapshot_of"]
        state = dep.sim.state()["pools"]["pool-a"]
        system_uuid = state["VDI"][system]["uuid"]
        guest_write(dep.sim, system_uuid, 1 << 20, os.urandom(3 << 20))  # new data: new blocks to store
        ids_before, dest_before = list_backups(repo), dep.files()
        dep.sim.add_fault({"handler": "/export_raw_vdi", "delay_s": 3.0, "pool": "pool-a", "times": 1})
        proc = subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "backup", "--vm", VM, "--mode", "repo",
                                 "--wait", "--json"], env={**dep.env, "TINABS_CONFIG": config},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        dep.sim.wait_fired()
        ballast = fill(mount)
        out, _err = proc.communicate(timeout=180)
        (run,) = json.loads(out)["runs"]
        assert proc.returncode == 1 and run["state"] == "failed" and run["failed_stage"] == "store", run
        assert run["error"].startswith("store: repository: no space left"), run["error"]
        assert not run.get("retries"), run
        assert list_backups(repo) == ids_before and dep.files() == dest_before
        assert [b["uuid"] for b in bases(dep.sim.state()) if b["backup"] == first["backup_id"]] == [base[0]["uuid"]]
        assert litter(dep.sim.state()) == {}
        Path(ballast).unlink()
        code, job = _backup(dep, config)
        assert code == 0, job
        (good,) = job["runs"]
        manifest = json.loads(Path(good["manifest"]).read_text())
        assert (manifest["backup_kind"], manifest["base_backup"]) == ("incremental", first["backup_id"])
        assert_repo_consistent(dep, repo)
