"""End to end: incremental repo-mode backups on real workers, a real Redis and the simulator over HTTP.

Given a VM backed up once in repo mode (a full backup: no base yet), when its system disk
drifts and it is backed up again, then the second night reads only the ova.xml and the VHD
delta against the kept base (a few MiB, not the disk), writes a complete index, keeps exactly
one base per VM (the new one; the old destroyed), and restoring or verifying the second night's
backup, after more drift and a third night, gives exactly the disk as it was that night.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.pool_checks import bases, litter
from helpers.xapi_http import guest_write
from helpers.xva_parse import read_xva
from test_restore import POOL, check_restored, disks, restore, source, vm_by_uuid  # noqa: F401  (fixture)

from tinabs_tasks.repo.index import load_index

DISK_MIB = 48
DEPLOYMENT_SIM_ARGS = ("--pools", "1", "--vms-per-pool", "3", "--disk-mib", str(DISK_MIB))
DEPLOYMENT_REPOSITORY = True
#: a full backup when the last full and the incremental ones since make 4 nights
DEPLOYMENT_CONFIG = "\n[retention]\nfull_every = 4\n"
MiB = 1 << 20


def night(dep, vm: dict, *extra: str) -> tuple[dict, dict, str]:
    """A repo backup of ``vm``: (its run, its manifest, the system disk's sha256 at snapshot time,
    read from the base the night kept)."""
    code, job = dep.backup("--vm", vm["uuid"], "--pool", POOL, "--mode", "repo", *extra)
    assert code == 0, json.dumps(job, indent=1)[:3000]
    (run,) = job["runs"]
    manifest = json.loads(Path(run["manifest"]).read_text())
    state = dep.sim.state()
    mine = [b for b in bases(state) if b["vm"] == vm["uuid"]]
    assert [b["backup"] for b in mine] == [manifest["backup_id"]], mine
    assert litter(state) == {}
    return run, manifest, dep.sim.vdi_info(mine[0]["uuid"])["sha256"]


def drift(dep, vm: dict, seed: int) -> None:
    """Guest writes to three places of the system disk (one of them in the last chunk)."""
    system = disks(dep.sim.state()["pools"][POOL], vm_by_uuid(dep.sim.state()["pools"][POOL], vm["uuid"]))["0"][1]
    for offset in (3 * MiB + 100, 17 * MiB, DISK_MIB * MiB - 4096):
        guest_write(dep.sim, system["uuid"], offset, b"night %d " % seed * 200)


@pytest.fixture(scope="module")
def nights(deployment, source):  # noqa: F811
    dep = deployment
    before = dep.sim.state()["pools"][POOL]
    system = disks(before, source)["0"][1]
    for mib in range(0, DISK_MIB, 2):  # data in half the chunks: a full night reads them all
        guest_write(dep.sim, system["uuid"], mib * MiB, b"mib %d" % mib)
    out = [night(dep, source)]
    session = dep.sim.session(0)
    try:
        x = session.xenapi
        vm = x.VM.get_by_uuid(source["uuid"])
        for seed in (2, 3):
            drift(dep, source, seed)
            # the VM's structure changes too: each night's backup holds that night's skeleton
            x.VM.remove_from_other_config(vm, "night")
            x.VM.add_to_other_config(vm, "night", str(seed))
            out.append((*night(dep, source), dep.sim.state()["pools"][POOL]))
    finally:
        session.xenapi.session.logout()
    return before, out


def test_first_night_is_full_and_says_why(nights):
    _before, ((run, manifest, _sha), *_rest) = nights
    assert manifest["backup_kind"] == "full"
    assert "first backup" in manifest["full_reason"]
    assert run["backup_kind"] == "full" and run["full_reason"] == manifest["full_reason"]


def test_second_night_reads_only_the_changes(deployment, nights):
    _before, ((_r1, m1, _s1), (run, m2, *_s2), _third) = nights
    assert m2["backup_kind"] == "incremental", m2.get("full_reason")
    assert m2["base_backup"] == m1["backup_id"] and m2["chain"] == 1
    assert run["backup_kind"] == "incremental" and run["base_backup"] == m1["backup_id"]
    # three 2 MiB blocks changed: the delta (and the ova.xml) only, not the disk's 24 MiB of data
    assert m2["transferred_bytes"] < 8 * MiB < m1["transferred_bytes"], (m1["transferred_bytes"], m2["transferred_bytes"])
    assert m2["logical_bytes"] >= m1["logical_bytes"]
    index = load_index(deployment.open_repo(), m2["backup_id"])
    assert index.figures["synthetic_of"] == m1["backup_id"]
    assert index.figures["changed_chunks"] >= 3


def test_an_incremental_backup_restores_to_the_disk_of_its_night(deployment, source, nights):  # noqa: F811
    dep = deployment
    _before, (_first, (_run, m2, at_night2, state2), (_r3, m3, at_night3, state3)) = nights
    assert at_night2 != at_night3  # the third night's drift changed the disk since
    result = restore(dep, m2["backup_id"], "--pool", POOL)
    vm = check_restored(dep, result, vm_by_uuid(state2, source["uuid"]), state2, at_night2)
    assert vm["other_config"]["night"] == "2"
    result = restore(dep, m3["backup_id"], "--pool", POOL)
    vm = check_restored(dep, result, vm_by_uuid(state3, source["uuid"]), state3, at_night3)
    assert vm["other_config"]["night"] == "3"


def test_verify_of_an_incremental_backup_passes(deployment, nights):
    _before, (_first, (_run, m2, *_s), _third) = nights
    proc = deployment.cli("verify", m2["backup_id"], "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_full_every_n_nights_takes_a_full_backup_then_builds_on_it(deployment, source, nights):  # noqa: F811
    """Nights 1 (full), 2 and 3 (incremental), then 4: [retention] full_every = 4 makes one full
    backup in every 4 nights, so night 5 is full, saying why, and night 6 builds on it."""
    drift(deployment, source, 4)
    _run, m4, _sha = night(deployment, source)
    assert (m4["backup_kind"], m4["chain"]) == ("incremental", 3), m4
    drift(deployment, source, 5)
    _run, m5, _sha = night(deployment, source)
    assert m5["backup_kind"] == "full", m5
    assert m5["full_reason"] == ("a full backup every 4 nights ([retention] full_every): 3 incremental backups "
                                 "since the last full one")
    drift(deployment, source, 6)
    _run, m6, _sha = night(deployment, source)
    assert (m6["backup_kind"], m6["base_backup"], m6["chain"]) == ("incremental", m5["backup_id"], 1)


def copied_bytes(dep) -> int:
    return dep.sim.control_call("GET", "/sim/stats")[1]["pools"][POOL]["copied_bytes"]


def sr_copy_night(dep, vm: dict) -> tuple[dict, dict, str]:
    before = copied_bytes(dep)
    code, job = dep.backup("--vm", vm["uuid"], "--pool", POOL, "--mode", "sr-copy")
    assert code == 0, json.dumps(job, indent=1)[:3000]
    (run,) = job["runs"]
    manifest = json.loads(Path(run["manifest"]).read_text())
    manifest["copied"] = copied_bytes(dep) - before
    state = dep.sim.state()
    mine = [b for b in bases(state) if b["vm"] == vm["uuid"]]
    assert len(mine) == 1 and litter(state) == {}, (mine, litter(state))
    return run, manifest, dep.sim.vdi_info(mine[0]["uuid"])["sha256"]


def test_sr_copy_second_night_copies_only_the_changes(deployment, nights):
    """sr-copy of another VM: its first night is full, the next copies only the changed blocks
    into a clone of the last copy, and each copy is exactly its night's disk; the older copy is
    untouched."""
    dep = deployment
    vm = next(v for v in dep.sim.state()["pools"][POOL]["VM"].values()
              if not v["is_a_template"] and not v["is_control_domain"] and not v["name_label"].startswith("[tinabs]")
              and not v["is_a_snapshot"] and v["uuid"] != nights[1][0][1]["vm"]["uuid"])
    system = disks(dep.sim.state()["pools"][POOL], vm)["0"][1]
    for mib in range(0, DISK_MIB, 2):
        guest_write(dep.sim, system["uuid"], mib * MiB, b"sr-copy mib %d" % mib)
    _r1, m1, at1 = sr_copy_night(dep, vm)
    assert m1["backup_kind"] == "full"
    drift(dep, vm, 7)
    run, m2, at2 = sr_copy_night(dep, vm)
    assert m2["backup_kind"] == "incremental" and m2["base_backup"] and m2["chain"] == 1, m2.get("full_reason")
    assert run["backup_kind"] == "incremental"
    assert m2["copied"] <= 8 * MiB < m1["copied"], (m1["copied"], m2["copied"])
    copy1, copy2 = m1["copied_vdis"][0]["uuid"], m2["copied_vdis"][0]["uuid"]
    assert copy1 != copy2
    assert dep.sim.vdi_info(copy2)["sha256"] == at2 != at1
    assert dep.sim.vdi_info(copy1)["sha256"] == at1
    # a worker killed right after cloning the last copy left the clone unmarked (the copy's own
    # name and markers): the next night's clone of that copy removes it first
    session = dep.sim.session(0)
    try:
        x = session.xenapi
        stray = x.VDI.get_uuid(x.VDI.clone(x.VDI.get_by_uuid(copy2), {}))
    finally:
        session.xenapi.session.logout()
    drift(dep, vm, 8)
    _run, m3, at3 = sr_copy_night(dep, vm)
    assert (m3["backup_kind"], m3["base_backup"]) == ("incremental", f"{m2['created']}-{m2['run']}"), m3
    assert stray not in {v["uuid"] for v in dep.sim.state()["pools"][POOL]["VDI"].values()}
    assert dep.sim.vdi_info(m3["copied_vdis"][0]["uuid"])["sha256"] == at3
    # and so does a full night (--full): a stray clone of the base's copy never outlives a night
    session = dep.sim.session(0)
    try:
        x = session.xenapi
        stray = x.VDI.get_uuid(x.VDI.clone(x.VDI.get_by_uuid(m3["copied_vdis"][0]["uuid"]), {}))
    finally:
        session.xenapi.session.logout()
    code, job = dep.backup("--vm", vm["uuid"], "--pool", POOL, "--mode", "sr-copy", "--full")
    assert code == 0, job
    assert json.loads(Path(job["runs"][0]["manifest"]).read_text())["backup_kind"] == "full"
    assert stray not in {v["uuid"] for v in dep.sim.state()["pools"][POOL]["VDI"].values()}


def test_export_xva_of_an_incremental_backup_is_a_whole_importable_xva(deployment, nights, tmp_path):
    """The synthetic full gives a standard .xva: ova.xml of its night, every disk, every chunk's
    checksum right (an independent reader), the system disk's sha256 the one of its night."""
    _before, (_first, (_run, m2, at_night2, _state), _third) = nights
    out = tmp_path / "night2.xva"
    proc = deployment.cli("repo", "export-xva", m2["backup_id"], "-o", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.stat().st_size == m2["size"]
    with open(out, "rb") as fh:
        xva = read_xva(fh)
    vbds = [o["snapshot"] for o in xva.objects("VBD") if o["snapshot"].get("type") == "Disk"]
    system_ref = next(v["VDI"] for v in vbds if str(v["userdevice"]) == "0")
    assert set(xva.disks) == {v["VDI"] for v in vbds}
    assert xva.disks[system_ref].sha256 == at_night2
