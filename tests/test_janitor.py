"""Retention and the janitor end to end: real sr-copy backups pruned by `tinabs prune` (files and
copied disks on the backup SR), litter of dead runs removed by `tinabs janitor`, and the pieces
(deleting a backup, stale partial files) on their own."""
from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pytest

from helpers import toml_write
from helpers.deployment import Deployment
from tinabs_tasks.storage import catalog
from tinabs_tasks.storage import janitor
from tinabs_tasks.storage import retention
from tinabs_tasks.runs.store import JobStore

SIM_ARGS = ("--pools", "1", "--vms-per-pool", "3", "--disk-mib", "8")
OLD = "2020-01-01T00:00:00Z"
DEAD = "deaddeadbeef"
ACTIVE = "a11ve0000001"


@pytest.fixture(scope="module")
def dep(redis_server, tmp_path_factory):
    """A deployment whose config has [retention] keep_last = 2 (applied by `tinabs prune` only, not
    after each backup, so the command's work can be watched) before its workers start."""
    d = Deployment(tmp_path_factory.mktemp("janitor"), redis_server, SIM_ARGS)
    try:
        cfg = toml_write.read(d.config)
        cfg["retention"] = {"keep_last": 2, "after_backup": False}
        cfg["janitor"] = {"max_age_h": 1}
        toml_write.write(d.config, cfg)
        d.start_worker("w1")
        yield d
    finally:
        d.stop()


def _vm(dep) -> dict:
    vms = [r for r in dep.sim.state()["pools"]["pool-a"]["VM"].values()
           if not (r["is_a_template"] or r["is_a_snapshot"] or r["is_control_domain"])]
    names = [r["name_label"] for r in vms]
    return next(r for r in vms if names.count(r["name_label"]) == 1)


def _vdis(dep) -> dict[str, dict]:
    return {r["uuid"]: r for r in dep.sim.state()["pools"]["pool-a"]["VDI"].values()}


def _copied(manifest: Path) -> list[str]:
    return [c["uuid"] for c in json.loads(manifest.read_text())["copied_vdis"]]


def test_prune_keeps_the_newest_and_destroys_the_pruned_copies(dep):
    vm = _vm(dep)
    # Given three sr-copy backups of one VM, a second apart at least
    for _ in range(3):
        code, job = dep.backup("--vm", vm["name_label"], "--pool", "pool-a", "--mode", "sr-copy")
        assert code == 0, job
        time.sleep(1.1)
    backups = catalog.scan(str(dep.dest), vm=vm["uuid"])
    assert len(backups) == 3
    oldest = backups[-1]
    manifests = [Path(b.manifest_path) for b in backups]
    copies = {m: _copied(m) for m in manifests}
    files_before, vdis_before = dep.files(), _vdis(dep)
    assert all(u in vdis_before for us in copies.values() for u in us)

    # When `tinabs prune --dry-run` runs: the plan names the oldest and its disk, nothing changes
    dry = dep.cli("prune", "--dry-run", check=True)
    assert "would delete" in dry.stdout and os.path.basename(oldest.manifest_path) in dry.stdout, dry.stdout
    assert copies[Path(oldest.manifest_path)][0] in dry.stdout
    assert "2 backup(s) kept, 1 would delete" in dry.stdout
    assert dep.files() == files_before and set(_vdis(dep)) == set(vdis_before)

    # When `tinabs prune` runs with keep_last = 2
    done = dep.cli("prune", "--json", check=True)
    result = json.loads(done.stdout)["results"]
    assert [d["manifest"] for r in result for d in r["deleted"]] == [oldest.manifest_path]
    # Then the oldest backup's manifest and metadata file are gone, the two newest stay
    remaining = catalog.scan(str(dep.dest), vm=vm["uuid"], include_incomplete=True)
    assert [b.manifest_path for b in remaining] == [b.manifest_path for b in backups[:2]]
    assert set(dep.files()) == set(files_before) - {Path(oldest.manifest_path), Path(oldest.path)}
    # And exactly its copied disk is destroyed on the backup SR
    vdis_after = _vdis(dep)
    assert set(vdis_before) - set(vdis_after) == set(copies[Path(oldest.manifest_path)])
    for m in manifests[:2]:
        (uuid,) = copies[m]
        other = vdis_after[uuid]["other_config"]
        assert other["tinabs:keep"] == "true"

    # And a second prune finds nothing more to delete
    again = dep.cli("prune", check=True)
    assert "2 backup(s) kept, 0 deleted" in again.stdout


def _sr(x, name: str) -> str:
    (ref,) = x.SR.get_by_name_label(name)
    return ref


def _litter_vdi(x, sr: str, run: str, created: str, keep: bool = False, role: str = "system-snapshot") -> str:
    other = {"tinabs:run": run, "tinabs:vm": "v", "tinabs:job": "j", "tinabs:role": role, "tinabs:created": created}
    if keep:
        other["tinabs:keep"] = "true"
    ref = x.VDI.create({"name_label": f"[tinabs] litter {role} {run}", "name_description": "", "SR": sr,
                        "virtual_size": "1048576", "type": "user", "sharable": False, "read_only": False,
                        "other_config": other, "xenstore_data": {}, "sm_config": {}, "tags": []})
    return x.VDI.get_uuid(ref)


def _partial(dep, run: str, age_s: float) -> Path:
    folder = dep.dest / "pool-a" / "litter--0000"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - age_s))
    path = folder / f"{stamp}-{run}.xva.partial"
    path.write_bytes(b"half")
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_janitor_removes_exactly_the_litter_of_dead_runs(dep):
    session = dep.sim.session("pool-a")
    x = session.xenapi
    try:
        sr = _sr(x, "backup-sr")
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        # Given litter of a dead run, old: two disks
        dead = {_litter_vdi(x, sr, DEAD, OLD), _litter_vdi(x, sr, DEAD, OLD, role="data-disk:1")}
        # And things the janitor must leave: a kept copy of the dead run, a young object of another
        # dead run, an old object of an active run, an object without an age
        kept = _litter_vdi(x, sr, DEAD, OLD, keep=True, role="system-copy")
        young = _litter_vdi(x, sr, "young0000001", now)
        active = _litter_vdi(x, sr, ACTIVE, OLD)
        no_age = _litter_vdi(x, sr, "noage0000001", "garbage")
    finally:
        session.xenapi.session.logout()
    JobStore(dep.redis).create_run(ACTIVE, {"job": "j", "pool": "pool-a", "vm_uuid": "v", "vm_name": "v"})
    stale = _partial(dep, DEAD, 3 * 3600)
    fresh = _partial(dep, "young0000001", 60)
    active_partial = _partial(dep, ACTIVE, 3 * 3600)
    before_files, before_vdis = set(dep.files()), set(_vdis(dep))

    # When `tinabs janitor --dry-run` runs: it lists exactly the litter and removes nothing
    dry = json.loads(dep.cli("janitor", "--dry-run", "--json", check=True).stdout)
    (res,) = dry["results"]
    assert {o["uuid"] for o in res["objects"]} == dead
    assert [f["path"] for f in res["files"]] == [str(stale)]
    skipped = {s["uuid"]: s["why"] for s in res["skipped"]}
    assert "active" in skipped[active] and "younger" in skipped[young] and "age unknown" in skipped[no_age]
    assert kept not in skipped and kept not in {o["uuid"] for o in res["objects"]}
    assert set(dep.files()) == before_files and set(_vdis(dep)) == before_vdis
    text = dep.cli("janitor", "--dry-run", check=True).stdout
    assert "would remove" in text and str(stale) in text and "nothing removed" in text

    # When it runs for real: exactly those are gone
    out = dep.cli("janitor", "--json", check=True)
    (res,) = json.loads(out.stdout)["results"]
    assert {o["uuid"] for o in res["objects"]} == dead and not res["errors"]
    assert set(_vdis(dep)) == before_vdis - dead
    assert set(dep.files()) == before_files - {stale}
    assert fresh.exists() and active_partial.exists()
    # the backups' kept copies are all still there
    for b in catalog.scan(str(dep.dest)):
        assert all(u in _vdis(dep) for u in _copied(Path(b.manifest_path)))


# -- the pieces on their own --------------------------------------------------------------------------
def _write_backup(root: Path, stamp: str, run: str, copied=None) -> catalog.Backup:
    folder = root / "p" / "vm--u1"
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{stamp}-{run}.metadata.xva"
    data.write_bytes(b"xx")
    manifest = {"vm": {"uuid": "u1", "name": "vm"}, "pool": "p", "run": run, "mode": "sr-copy",
                "file": data.name, "size": 2, "created": stamp,
                "copied_vdis": [{"uuid": u, "userdevice": "0"} for u in copied or []]}
    (folder / f"{stamp}-{run}.json").write_text(json.dumps(manifest))
    return next(b for b in catalog.scan(str(root)) if b.run == run)


class _FakeVDI:
    def __init__(self, records):
        self.records, self.destroyed = records, []

    def get_by_uuid(self, uuid):
        import XenAPI
        if uuid not in self.records:
            raise XenAPI.Failure(["UUID_INVALID", "VDI", uuid])
        return "ref:" + uuid

    def get_record(self, ref):
        return self.records[ref[4:]]

    def destroy(self, ref):
        self.destroyed.append(ref[4:])


class _FakeXapi:
    def __init__(self, records):
        self.x = type("X", (), {})()
        self.x.VDI = _FakeVDI(records)


def test_delete_backup_touches_only_kept_copies_of_its_run(tmp_path):
    b = _write_backup(tmp_path, "20260101T000000Z", "run1", copied=["ok", "other-run", "not-kept", "gone"])
    fake = _FakeXapi({"ok": {"other_config": {"tinabs:keep": "true", "tinabs:run": "run1"}},
                      "other-run": {"other_config": {"tinabs:keep": "true", "tinabs:run": "run2"}},
                      "not-kept": {"other_config": {"tinabs:run": "run1"}}})
    dry = janitor.delete_backup(b, lambda pool: fake, dry_run=True)
    assert dry["vdis"] == ["ok"] and not fake.x.VDI.destroyed and os.path.exists(b.manifest_path)
    done = janitor.delete_backup(b, lambda pool: fake)
    assert done["vdis"] == ["ok"] and fake.x.VDI.destroyed == ["ok"]
    assert {s["uuid"] for s in done["skipped_vdis"]} == {"other-run", "not-kept", "gone"}
    assert not os.path.exists(b.manifest_path) and not os.path.exists(b.path)


def test_delete_backup_leaves_everything_when_the_pool_is_unreachable(tmp_path):
    b = _write_backup(tmp_path, "20260101T000000Z", "run1", copied=["ok"])

    def unreachable(pool):
        raise OSError("connection refused")
    done = janitor.delete_backup(b, unreachable)
    assert "connection refused" in done["error"]
    assert os.path.exists(b.manifest_path) and os.path.exists(b.path)


def test_prune_vm_dry_run_deletes_nothing(tmp_path):
    for day in ("01", "02", "03"):
        _write_backup(tmp_path, f"202601{day}T000000Z", f"run{day}")
    before = sorted(tmp_path.rglob("*"))
    out = janitor.prune_vm(str(tmp_path), "p", "u1", retention.Policy(keep_last=1), None, dry_run=True)
    assert [d["action"] for d in out["decisions"]] == ["keep", "delete", "delete"]
    assert len(out["deleted"]) == 2 and sorted(tmp_path.rglob("*")) == before
    out = janitor.prune_vm(str(tmp_path), "p", "u1", retention.Policy(keep_last=1), None)
    assert [b.run for b in catalog.scan(str(tmp_path), include_incomplete=True)] == ["run03"]


def test_stale_partials_by_age_and_activity(tmp_path):
    folder = tmp_path / "p" / "vm--u1"
    folder.mkdir(parents=True)
    paths = {}
    for run, age in (("dead", 7200), ("live", 7200), ("young", 60)):
        p = folder / f"20260101T000000Z-{run}.xva.partial"
        p.write_bytes(b"x")
        os.utime(p, (time.time() - age,) * 2)
        paths[run] = str(p)
    found = janitor.stale_partials(str(tmp_path), "p", lambda run: run == "live", 3600)
    assert [f["path"] for f in found] == [paths["dead"]]
    assert janitor.stale_partials(str(tmp_path), "other", lambda run: False, 3600) == []
