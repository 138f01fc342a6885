"""End to end: `tinabs backup --mode repo` on real workers, a real Redis and the simulator over HTTP.

Given an encrypted repository in the config, when a job backs up every VM of a pool in repo
mode, then each VM has a manifest in the destination naming its index in the repository, the
rebuilt XVA is byte for byte what the pool streamed (its sha256 the manifest's), and the
repository holds no plaintext.
"""
from __future__ import annotations

import hashlib
import json

from helpers.pool_checks import backupable_vms, litter

from tinabs_tasks.repo.index import list_backups, load_index
from tinabs_tasks.repo.xva_rebuild import rebuild_xva

DEPLOYMENT_SIM_ARGS = ("--pools", "1", "--vms-per-pool", "3", "--disk-mib", "8")
DEPLOYMENT_REPOSITORY = True


def _disks(state: dict, vm_uuid: str) -> list[dict]:
    vm = next(v for v in state["VM"].values() if v["uuid"] == vm_uuid)
    return [state["VBD"][b] for b in vm["VBDs"]
            if state["VBD"][b]["type"] == "Disk" and state["VBD"][b]["VDI"] in state["VDI"]]


def test_repo_mode_backs_up_every_vm_into_the_repository(deployment):
    dep = deployment
    before = dep.sim.state()
    code, job = dep.backup("--all", "--mode", "repo")
    assert code == 0, json.dumps(job["runs"], indent=1)[:3000]
    runs = job["runs"]
    expected = {vm["uuid"] for vm in backupable_vms(before, "pool-a")}
    assert {r["vm_uuid"] for r in runs} == expected
    assert all(r["state"] == "succeeded" for r in runs), runs
    repo = dep.open_repo()
    ids = list_backups(repo)
    assert len(ids) == len(runs)
    logical = []
    for r in runs:
        manifest = json.loads(open(r["manifest"]).read())
        assert manifest["mode"] == "repo" and manifest["backup_id"] in ids
        index = load_index(repo, manifest["backup_id"])
        digest = hashlib.sha256()
        size = 0
        for piece in rebuild_xva(repo, index):
            digest.update(piece)
            size += len(piece)
        assert (size, digest.hexdigest()) == (manifest["size"], manifest["sha256"])
        assert manifest["transferred_bytes"] == manifest["size"]
        assert manifest["new_blocks"] + manifest["reused_blocks"] == index.figures["chunks"]
        assert manifest["logical_bytes"] == index.figures["logical_bytes"]
        # every disk of the VM is in the XVA, its system disk included (its data disks empty)
        assert len(index.disks) == len(_disks(before["pools"]["pool-a"], r["vm_uuid"])), index.disks
        logical.append(manifest["logical_bytes"])
    assert max(logical) >= 2 << 20  # a system disk's first and last chunks at least
    assert litter(dep.sim.state()) == {}
    listed = json.loads(dep.cli("list", "--json", check=True).stdout)
    repo_rows = [b for b in listed if b["mode"] == "repo"]
    assert sorted(b["backup_id"] for b in repo_rows) == ids
