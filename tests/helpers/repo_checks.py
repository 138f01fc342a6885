"""What end-to-end tests check about repo-mode backups: the repository and the destination agree.

A good repo backup is one manifest ``<stamp>-<run>.json`` in the VM's folder (no data file)
naming an index that is in the repository and whose rebuilt stream has the manifest's size
and sha256 (an incremental one, a synthetic full no pool ever streamed, has no sha256: its size
and the backup it was built from are checked).  A repository in order holds no index without a
manifest (orphan blocks are allowed: GC reclaims them), and nothing under a block's real name
that does not open.

The base rules (the one object per VM that tinabs keeps on a pool, ``xapi/bases.py``): every VM
with a backup in the repository has exactly one base, its backup is in the repository, and the
system disk that backup's index describes is byte for byte the base VDI: a base is never a
wrong disk.  Each backup says how it was taken: incremental, or full with the reason in words.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tinabs_tasks.repo import synthetic
from tinabs_tasks.repo.atomic import TEMP_PREFIX
from tinabs_tasks.repo.index import list_backups, load_index
from tinabs_tasks.repo.xva_rebuild import rebuild_xva

from .pool_checks import litter, tinabs_objects


def repo_run_id(run: dict) -> str:
    """A repo run's manifest is ``<stamp>-<run>.json`` (it has no data file)."""
    return Path(run["manifest"]).name.removesuffix(".json").split("-", 1)[1]


def repo_manifests(dep) -> dict[str, dict]:
    """backup id -> manifest, of every repo-mode manifest in the destination."""
    out = {}
    for path in dep.dest.rglob("*.json"):
        manifest = json.loads(path.read_text())
        if manifest.get("mode") == "repo":
            out[manifest["backup_id"]] = manifest
    return out


def rebuilt(repo, backup_id: str) -> tuple[int, str]:
    """(size, sha256) of the XVA the repository rebuilds for ``backup_id``."""
    digest, size = hashlib.sha256(), 0
    for piece in rebuild_xva(repo, load_index(repo, backup_id)):
        digest.update(piece)
        size += len(piece)
    return size, digest.hexdigest()


def assert_one_repo_backup(dep, run: dict, repo=None) -> dict:
    """Exactly one backup from this repo run: its manifest alone in the VM folder, its index in the
    repository (``repo``, else the deployment's) rebuilding to the manifest's size and sha256,
    nothing kept on the pool."""
    assert run["state"] == "succeeded" and run["mode"] == "repo", run
    rid = repo_run_id(run)
    folder = Path(run["manifest"]).parent
    names = sorted(p.name for p in folder.iterdir() if rid in p.name)
    assert names == [Path(run["manifest"]).name], names
    manifest = json.loads(Path(run["manifest"]).read_text())
    assert manifest["run"] == rid and manifest["mode"] == "repo" and manifest["file"] is None, manifest
    assert manifest["backup_id"] == run["backup_id"] == Path(run["manifest"]).name.removesuffix(".json")
    repo = repo or dep.open_repo()
    size, sha256 = rebuilt(repo, manifest["backup_id"])
    if manifest.get("backup_kind") == "incremental":
        # a synthetic full (repo/synthetic.py): never one stream from a pool, so no sha256 to match
        figures = load_index(repo, manifest["backup_id"]).figures
        assert manifest["sha256"] is None and figures["stream_sha256"] is None, manifest
        assert (size, figures["synthetic_of"]) == (manifest["size"], manifest["base_backup"]), (size, figures)
    else:
        assert (size, sha256) == (manifest["size"], manifest["sha256"])
    assert int(run["size"]) == manifest["size"] and int(run["stored_bytes"]) == manifest["stored_bytes"]
    ours = [rec.get("name_label") for objs in tinabs_objects(dep.sim.state()).values()
            for _pool, _ref, rec in objs if str(rec.get("name_label", "")).endswith(rid)
            or (rec.get("other_config") or {}).get("tinabs:run") == rid]
    assert ours == [], ours
    return manifest


def repo_files(dep, path=None) -> dict[str, int]:
    """Every file under the repository (``path``, else the deployment's; relative path -> size):
    to show that nothing changed."""
    root = Path(path or dep.repo_path)
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def assert_repo_consistent(dep, repo=None) -> None:
    """No index without its manifest, every manifest's index present and readable; under a real
    name only whole blocks (each opens and hashes to its id): a writer that died or met a full
    disk left at most temp files (``.tmp.*``), which GC reclaims.  ``repo``: another repository
    than the deployment's (then only the manifests naming it count)."""
    repo = repo or dep.open_repo()
    manifests = {bid for bid, m in repo_manifests(dep).items() if m["repository"]["id"] == repo.config.id}
    assert sorted(list_backups(repo)) == sorted(manifests), (list_backups(repo), manifests)
    for bid in manifests:
        load_index(repo, bid)  # RepoCorrupt if it were half-written
    blocks = Path(repo.path) / "blocks"
    for path in blocks.rglob("*") if blocks.exists() else ():
        if path.is_file() and not path.name.startswith(TEMP_PREFIX):
            repo.blocks.get(path.name)  # RepoCorrupt/BlockMissing if a half-written block had its real name


def assert_nothing_on_pools(dep) -> None:
    assert litter(dep.sim.state()) == {}


def config_variant(dep, name: str, edit) -> str:
    """A copy of the deployment's config, ``edit(text) -> text`` applied, as ``<root>/<name>.toml``:
    for a process (the CLI, a worker) that must see another config than the rest."""
    path = dep.root / f"{name}.toml"
    path.write_text(edit(dep.config.read_text()))
    os.chmod(path, 0o600)
    return str(path)


# -- the base rules ---------------------------------------------------------------------------
def index_system_disk(repo, backup_id: str) -> tuple[int, str]:
    """(virtual size, sha256) of the system disk as backup ``backup_id``'s index describes it,
    without a restore: the disk's run is found through its ova.xml (``synthetic.disk_layout``),
    each row ``[chunk number, block id, length]`` is mapped to its 1 MiB chunk of the disk
    (``synthetic.disk_chunks`` replays keep-alives), and a chunk without a row is a hole: zeros."""
    index = load_index(repo, backup_id)
    disk = synthetic.system_disk(synthetic.disk_layout(index.ova_xml))
    (run,) = [r for r in index.disks if r.export_id == disk.export_id]
    rows = synthetic.disk_chunks(run, disk)
    assert set(rows) <= set(range(disk.chunk_count)), (backup_id, sorted(rows), disk)
    digest = hashlib.sha256()
    for k in range(disk.chunk_count):
        length = disk.chunk_length(k)
        if k in rows:
            block_id, row_length = rows[k]
            data = repo.blocks.get(block_id)
            assert row_length == length == len(data), (backup_id, k, row_length, length, len(data))
        else:
            data = bytes(length)
        digest.update(data)
    return disk.virtual_size, digest.hexdigest()


def pool_bases(state: dict) -> list[dict]:
    """Every base on the pools: {pool, uuid, vm (its uuid), backup, mode, repository, snapshot_of,
    virtual_size}, from the markers ``xapi/bases.py`` gives it."""
    out = []
    for pool, _ref, rec in tinabs_objects(state).get("VDI", []):
        other = rec.get("other_config") or {}
        if other.get("tinabs:role") == "base":
            out.append({"pool": pool, "uuid": rec["uuid"], "vm": other.get("tinabs:vm"),
                        "backup": other.get("tinabs:base"), "mode": other.get("tinabs:base-mode"),
                        "repository": other.get("tinabs:base-repository"), "snapshot_of": rec.get("snapshot_of"),
                        "virtual_size": int(rec.get("virtual_size") or 0), "keep": other.get("tinabs:keep")})
    return out


def system_disk_ref(state: dict, pool: str, vm_uuid: str) -> str:
    """The ref of the VDI at userdevice 0 of the VM ``vm_uuid`` on ``pool`` (its system disk now)."""
    objects = state["pools"][pool]
    (vm,) = [v for v in objects["VM"].values() if v["uuid"] == vm_uuid]
    (vdi,) = [objects["VBD"][b]["VDI"] for b in vm["VBDs"]
              if objects["VBD"][b]["userdevice"] == "0" and objects["VBD"][b]["type"] == "Disk"]
    return vdi


def assert_bases_sound(dep, repo=None) -> dict[str, dict]:
    """The base rules across the pools, for the repository ``repo`` (else the deployment's):
    nothing of tinabs left but kept objects (``litter``: at most one base per VM); every VM with a
    backup in the repository has exactly one base, a kept repo-mode base for this repository and
    a snapshot of the VM's system disk; the backup it names is in the repository, and the system
    disk that backup's index describes is byte-identical to the base VDI.  Returns vm uuid -> base."""
    repo = repo or dep.open_repo()
    state = dep.sim.state()
    assert litter(state) == {}, litter(state)
    backed_up = {m["vm"]["uuid"] for m in repo_manifests(dep).values() if m["repository"]["id"] == repo.config.id}
    mine = [b for b in pool_bases(state) if b["repository"] == repo.config.id]
    by_vm = {b["vm"]: b for b in mine}
    assert len(by_vm) == len(mine) and set(by_vm) == backed_up, (mine, sorted(backed_up))
    indexed = set(list_backups(repo))
    for vm, base in by_vm.items():
        assert base["mode"] == "repo" and base["keep"] == "true", base
        assert base["snapshot_of"] == system_disk_ref(state, base["pool"], vm), base
        assert base["backup"] in indexed, (base, sorted(indexed))
        disk = index_system_disk(repo, base["backup"])
        assert disk == (base["virtual_size"], dep.sim.vdi_info(base["uuid"])["sha256"]), \
            f"base {base['uuid']} of VM {vm} is not the disk its backup {base['backup']} holds"
    return by_vm


def assert_kind_stated(manifest: dict) -> None:
    """A repo backup says how it was taken: incremental on a named base backup, or full with a
    reason in words (never empty)."""
    kind = manifest.get("backup_kind")
    if kind == "incremental":
        assert manifest.get("base_backup") and int(manifest["chain"]) >= 1 and not manifest.get("full_reason"), manifest
    else:
        reason = manifest.get("full_reason")
        assert kind == "full" and int(manifest.get("chain", -1)) == 0, manifest
        assert isinstance(reason, str) and len(reason.split()) >= 4, f"a full backup without a stated reason: {reason!r}"


def assert_night_kept(dep, run: dict, disk_sha256: str | None = None, repo=None) -> tuple[dict, dict]:
    """A good repo night (after ``assert_bases_sound``): it says how it was taken, its index's
    system disk is ``disk_sha256`` (the disk as it was that night; None: the VM's system disk now,
    for a test that wrote nothing to it since), and the VM's base is the one this night promoted
    (its backup id).  Returns (its manifest, the VM's base)."""
    repo = repo or dep.open_repo()
    manifest = json.loads(Path(run["manifest"]).read_text())
    if disk_sha256 is None:
        state = dep.sim.state()
        system = system_disk_ref(state, manifest["pool"], manifest["vm"]["uuid"])
        disk_sha256 = dep.sim.vdi_info(state["pools"][manifest["pool"]]["VDI"][system]["uuid"])["sha256"]
    assert_kind_stated(manifest)
    assert run.get("backup_kind") == manifest["backup_kind"], (run, manifest["backup_kind"])
    assert index_system_disk(repo, manifest["backup_id"])[1] == disk_sha256, \
        f"backup {manifest['backup_id']} does not hold the system disk of its night"
    (base,) = [b for b in pool_bases(dep.sim.state()) if b["vm"] == manifest["vm"]["uuid"]]
    assert base["backup"] == manifest["backup_id"], (base, manifest["backup_id"])
    return manifest, base
