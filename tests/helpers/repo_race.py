"""The repository as the GC end-to-end tests look at it: its block files, their ages, the indexes'
completeness, a backup rebuilt and checked against its manifest, and a GC that loops in a
process of its own (``GcLoop``), logging when each round ran and what it did."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tinabs_tasks.repo.index import list_backups, load_index
from tinabs_tasks.repo.xva_rebuild import rebuild_xva

#: "two days ago": past the default 24 h grace, as if the nights had gone by
AGED_S = 2 * 86400


def block_files(repo) -> dict[str, os.stat_result]:
    """Every stored block: id -> stat."""
    return {name: st for kind, name, st in repo.blocks.scan() if kind == "block" and st is not None}


def temp_files(repo) -> list[str]:
    """Temp files under blocks/ (what a killed writer leaves)."""
    return [name for kind, name, st in repo.blocks.scan() if kind == "temp"]


def age_everything(repo, seconds: float = AGED_S) -> int:
    """Set the mtime of every file under blocks/ to ``seconds`` ago (time passing, past the grace)."""
    when = time.time() - seconds
    n = 0
    for kind, name, st in repo.blocks.scan():
        path = repo.blocks.path(name) if kind == "block" else name
        try:
            os.utime(path, (when, when))
            n += 1
        except FileNotFoundError:
            pass
    return n


def referenced(repo) -> set[str]:
    """Every block id some index references."""
    out: set[str] = set()
    for bid in list_backups(repo):
        out |= set(load_index(repo, bid).block_ids())
    return out


def index_blocks(repo, backup_ids) -> set[str]:
    out: set[str] = set()
    for bid in backup_ids:
        out |= set(load_index(repo, bid).block_ids())
    return out


def incomplete_indexes(repo) -> dict[str, int]:
    """backup id -> how many of its blocks are missing, for every index missing any."""
    stored = set(block_files(repo))
    out = {}
    for bid in list_backups(repo):
        missing = set(load_index(repo, bid).block_ids()) - stored
        if missing:
            out[bid] = len(missing)
    return out


def check_rebuild(repo, manifest_path) -> str:
    """Rebuild the backup's XVA from its index; assert its size and sha256 are the manifest's (an
    incremental backup, a synthetic full, has no sha256: every block it reads is checked against
    its id, and a missing one raises)."""
    manifest = json.loads(Path(manifest_path).read_text())
    digest, size = hashlib.sha256(), 0
    for piece in rebuild_xva(repo, load_index(repo, manifest["backup_id"])):
        digest.update(piece)
        size += len(piece)
    if manifest.get("backup_kind") == "incremental":
        assert manifest["sha256"] is None and size == manifest["size"], manifest_path
    else:
        assert (size, digest.hexdigest()) == (manifest["size"], manifest["sha256"]), manifest_path
    return manifest["backup_id"]


def plant_junk(repo, n: int, age_s: float = AGED_S) -> list[str]:
    """``n`` blocks no index references, aged: what killed backups leave behind."""
    when = time.time() - age_s
    ids = []
    for _ in range(n):
        block_id, _stored = repo.blocks.put(os.urandom(4096))
        os.utime(repo.blocks.path(block_id), (when, when))
        ids.append(block_id)
    return ids


def run_task(dep, name: str, timeout: float = 60):
    """Send task ``name`` by name to the default queue, as beat does, and wait for its result."""
    from celery import Celery
    app = Celery("test", broker=dep.redis_url, backend=dep.redis_url)
    try:
        return app.send_task(name, queue="tinabs").get(timeout=timeout)
    finally:
        app.close()


# -- a GC looping beside the backups -------------------------------------------------------------
_LOOP = """
import json, os, sys, time
from tinabs_tasks.config import model
from tinabs_tasks.repo.configured import open_configured
from tinabs_tasks.repo.gc import collect_garbage
from tinabs_tasks.repo.index import all_referenced_block_ids

log_path, go_path, stop_path, junk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cfg = model.load()
repo = open_configured(cfg.repository)
grace = cfg.repository.gc_grace_h * 3600
while not os.path.exists(go_path):  # armed: the first round starts the moment the test says go
    time.sleep(0.002)
with open(log_path, "a") as log:
    while not os.path.exists(stop_path):
        old = time.time() - 2 * 86400
        planted = []
        for _ in range(junk):  # litter of killed backups, past the grace: each round has work to do
            bid, _n = repo.blocks.put(os.urandom(4096))
            os.utime(repo.blocks.path(bid), (old, old))
            planted.append(bid)
        t0 = time.time()
        r = collect_garbage(repo, lambda: all_referenced_block_ids(repo), grace_s=grace)
        t1 = time.time()
        log.write(json.dumps({"t0": t0, "t1": t1, "grace": grace, "planted": planted, "marked": r.marked,
                              "missing": len(r.missing), "removed": r.blocks_removed, "freed": r.bytes_freed,
                              "temps": r.temps_removed, "restored": r.restored}) + "\\n")
        log.flush()
        time.sleep(0.01)
"""


class GcLoop:
    """``collect_garbage`` with the config's grace, round after round, in its own process (the
    repository opened with the config's key), from ``go()`` until ``stop()``."""

    def __init__(self, env: dict, workdir: Path, junk_per_round: int = 2):
        workdir = Path(workdir)
        self.log, self.go_file, self.stop_file = (workdir / f"gc-loop.{n}" for n in ("jsonl", "go", "stop"))
        for path in (self.log, self.go_file, self.stop_file):
            path.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-c", _LOOP, str(self.log), str(self.go_file),
                                      str(self.stop_file), str(junk_per_round)], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def go(self) -> None:
        self.go_file.touch()

    def rounds(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.endswith("}")]

    def stop(self, timeout: float = 30) -> list[dict]:
        self.go_file.touch()
        self.stop_file.touch()
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        assert self.proc.returncode == 0, f"the GC loop failed:\n{err}"
        return self.rounds()


def overlap(rounds: list[dict], windows: list[tuple[float, float]]) -> tuple[int, float]:
    """(GC rounds that ran while some store window was open, seconds of GC work inside the windows)."""
    raced, seconds = 0, 0.0
    for r in rounds:
        inside = [(max(r["t0"], a), min(r["t1"], b)) for a, b in windows if r["t0"] < b and a < r["t1"]]
        raced += bool(inside)
        if inside:  # the union of the overlaps, so two stores at once are not counted twice
            inside.sort()
            end = inside[0][0]
            for a, b in inside:
                seconds += max(0.0, b - max(a, end))
                end = max(end, b)
    return raced, seconds
