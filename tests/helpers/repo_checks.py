"""What end-to-end tests check about repo-mode backups: the repository and the destination agree.

A good repo backup is one manifest ``<stamp>-<run>.json`` in the VM's folder (no data file)
naming an index that is in the repository and whose rebuilt stream has the manifest's size
and sha256.  A repository in order holds no index without a manifest (orphan blocks are
allowed: GC reclaims them), and nothing under a block's real name that does not open.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

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
    assert rebuilt(repo or dep.open_repo(), manifest["backup_id"]) == (manifest["size"], manifest["sha256"])
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
