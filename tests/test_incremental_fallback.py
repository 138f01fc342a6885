"""End to end: when an incremental backup falls back to a full one, it says why; never a wrong disk.

Given a VM with a repo-mode base, each way the base can become unusable makes the next backup
a full one whose reason is in the manifest and the run's record: `--full`, the base destroyed
by hand, the system disk resized, the base's backup pruned from the repository, the pool
refusing the delta.  A delta cut mid-stream is retried and the night stays incremental.  After
each, the VM has exactly one base (the new night's), nothing else is left on the pool, and
the night restores to the disk it had.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import XenAPI
from celery import Celery

from helpers.pool_checks import bases, litter
from helpers.xapi_http import api, guest_write
from test_restore import POOL, check_restored, disks, restore, source, vm_by_uuid  # noqa: F401  (fixture)

from tinabs_tasks.repo.index import remove_index_file

DISK_MIB = 24
DEPLOYMENT_SIM_ARGS = ("--pools", "1", "--vms-per-pool", "3", "--disk-mib", str(DISK_MIB))
DEPLOYMENT_REPOSITORY = True
#: a schedule entry that always takes full backups (sent to a worker below, as beat sends it)
DEPLOYMENT_CONFIG = """
[schedule]
timezone = "UTC"

[[schedule.backups]]
name = "weekly-full"
cron = "0 3 * * 0"
all = true
pools = ["pool-a"]
mode = "repo"
full = true
"""
MiB = 1 << 20


def night(dep, vm: dict, *extra: str) -> tuple[dict, dict]:
    code, job = dep.backup("--vm", vm["uuid"], "--pool", POOL, "--mode", "repo", *extra)
    assert code == 0, json.dumps(job, indent=1)[:3000]
    (run,) = job["runs"]
    manifest = json.loads(Path(run["manifest"]).read_text())
    state = dep.sim.state()
    assert [b["backup"] for b in bases(state) if b["vm"] == vm["uuid"]] == [manifest["backup_id"]]
    assert litter(state) == {}
    assert run.get("backup_kind") == manifest["backup_kind"] and run.get("full_reason") == manifest.get("full_reason")
    return run, manifest


def the_base(dep, vm: dict) -> dict:
    (base,) = [b for b in bases(dep.sim.state()) if b["vm"] == vm["uuid"]]
    return base


def system_uuid(dep, vm: dict) -> str:
    state = dep.sim.state()["pools"][POOL]
    return disks(state, vm_by_uuid(state, vm["uuid"]))["0"][1]["uuid"]


def write(dep, vm: dict, tag: bytes) -> None:
    guest_write(dep.sim, system_uuid(dep, vm), 5 * MiB + 7, tag * 100)


@pytest.fixture(scope="module")
def xapi(deployment):
    session = deployment.sim.session(0)
    yield api(session)
    session.xenapi.session.logout()


@pytest.fixture(scope="module")
def based(deployment, source):  # noqa: F811
    """The source VM with a repo base (its first night, full)."""
    _run, manifest = night(deployment, source)
    assert manifest["backup_kind"] == "full"
    return manifest


def test_full_flag_forces_a_full_backup_and_says_who_asked(deployment, source, based):  # noqa: F811
    write(deployment, source, b"full flag")
    _run, manifest = night(deployment, source, "--full")
    assert manifest["backup_kind"] == "full"
    assert manifest["full_reason"] == "a full backup was asked for (--full)"
    write(deployment, source, b"after the full")
    _run, after = night(deployment, source)
    assert after["backup_kind"] == "incremental" and after["base_backup"] == manifest["backup_id"]
    assert after["chain"] == 1


def test_a_base_destroyed_by_hand_gives_a_full_backup_saying_so(deployment, source, xapi, based):  # noqa: F811
    base = the_base(deployment, source)
    xapi.VDI.destroy(xapi.VDI.get_by_uuid(base["uuid"]))
    write(deployment, source, b"base gone")
    _run, manifest = night(deployment, source)
    assert manifest["backup_kind"] == "full"
    assert "base snapshot is gone from the pool" in manifest["full_reason"]


def test_a_pruned_base_backup_gives_a_full_backup(deployment, source, based):  # noqa: F811
    base = the_base(deployment, source)
    assert remove_index_file(str(deployment.repo_path), base["backup"])
    write(deployment, source, b"pruned")
    _run, manifest = night(deployment, source)
    assert manifest["backup_kind"] == "full"
    assert f"backup {base['backup']}" in manifest["full_reason"] and "no longer in the repository" in \
        manifest["full_reason"]


def test_a_pool_refusing_the_delta_gives_a_full_backup_in_the_same_run(deployment, source, based):  # noqa: F811
    deployment.sim.add_fault({"handler": "/export_raw_vdi", "error": ["VDI_NOT_SPARSE", "simulated"], "times": 1})
    try:
        write(deployment, source, b"refused")
        run, manifest = night(deployment, source)
    finally:
        deployment.sim.clear_faults()
    assert manifest["backup_kind"] == "full"
    assert "the pool refused a delta against the base (VDI_NOT_SPARSE" in manifest["full_reason"]
    assert not run.get("retries"), run


def test_a_delta_failing_on_every_attempt_gives_a_full_backup(deployment, source, based):  # noqa: F811
    """vhd-tool's errors are INTERNAL_ERRORs, worth a retry: after two failed attempts, a full."""
    deployment.sim.add_fault({"handler": "/export_raw_vdi", "error": ["INTERNAL_ERROR", "Vhd_tool_wrapper.send: "
                                                                      "base VDI is not a vhd"]})
    try:
        write(deployment, source, b"failing")
        run, manifest = night(deployment, source)
    finally:
        deployment.sim.clear_faults()
    assert manifest["backup_kind"] == "full"
    assert manifest["full_reason"].startswith("2 attempts of this incremental backup failed"), manifest["full_reason"]


def test_a_delta_cut_mid_stream_is_retried_and_stays_incremental(deployment, source, based):  # noqa: F811
    before = the_base(deployment, source)
    guest_write(deployment.sim, system_uuid(deployment, source), 9 * MiB, b"x" * (3 * MiB))
    deployment.sim.add_fault({"handler": "/export_raw_vdi", "drop_after_bytes": 1 << 20, "times": 1})
    try:
        _run, manifest = night(deployment, source)
        fired = deployment.sim.faults()
    finally:
        deployment.sim.clear_faults()
    assert fired == [] or all(f.get("fired") for f in fired), fired
    assert manifest["backup_kind"] == "incremental", manifest.get("full_reason")
    assert manifest["base_backup"] == before["backup"]
    at_night = deployment.sim.vdi_info(the_base(deployment, source)["uuid"])["sha256"]
    write(deployment, source, b"since")
    state = deployment.sim.state()["pools"][POOL]
    result = restore(deployment, manifest["backup_id"], "--pool", POOL)
    check_restored(deployment, result, source, state, at_night)


def test_a_resized_system_disk_gives_a_full_backup(deployment, source, xapi, based):  # noqa: F811
    vdi = xapi.VDI.get_by_uuid(system_uuid(deployment, source))
    try:
        xapi.VDI.resize(vdi, str((DISK_MIB + 4) * MiB))
    except XenAPI.Failure as exc:  # the simulator must let an offline disk grow, as xapi does
        pytest.fail(f"VDI.resize refused: {exc.details}")
    _run, manifest = night(deployment, source)
    assert manifest["backup_kind"] == "full"
    assert "resized" in manifest["full_reason"]


def test_bases_lists_the_base_and_forget_makes_the_next_backup_full(deployment, source, based):  # noqa: F811
    base = the_base(deployment, source)
    listed = json.loads(deployment.cli("bases", "--json", check=True).stdout)
    mine = [b for b in listed["bases"] if b["vm_uuid"] == source["uuid"]]
    assert [(b["uuid"], b["backup_id"], b["mode"]) for b in mine] == [(base["uuid"], base["backup"], "repo")]
    proc = deployment.cli("bases", "forget", source["uuid"], "--pool", POOL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "next backup will be a full one" in proc.stdout
    assert [b for b in bases(deployment.sim.state()) if b["vm"] == source["uuid"]] == []
    write(deployment, source, b"forgotten")
    _run, manifest = night(deployment, source)
    assert manifest["backup_kind"] == "full"
    assert "base snapshot is gone from the pool" in manifest["full_reason"]


def test_a_schedule_entry_with_full_takes_full_backups_saying_so(deployment, source, based):  # noqa: F811
    """The tick of a `full = true` entry, sent to a worker as beat sends it: every VM it backs up
    is a full backup, the entry named as the reason, even the source VM that has a base."""
    dep = deployment
    assert the_base(dep, source)
    app = Celery("test", broker=dep.redis_url, backend=dep.redis_url)
    try:
        last = app.send_task("tinabs.scheduled_backup", args=["backup:weekly-full"], queue="tinabs").get(timeout=60)
    finally:
        app.close()
    job = dep.wait_job(last["job"], timeout=180)
    assert job["runs"] and all(r["state"] == "succeeded" for r in job["runs"]), job["runs"]
    for run in job["runs"]:
        manifest = json.loads(Path(run["manifest"]).read_text())
        assert manifest["backup_kind"] == "full"
        assert manifest["full_reason"] == "a full backup was asked for (schedule weekly-full)"
    assert source["uuid"] in {r["vm_uuid"] for r in job["runs"]}
    assert litter(dep.sim.state()) == {}


def test_a_replaced_system_disk_gives_a_full_backup_and_retires_the_old_base(deployment, source, xapi,  # noqa: F811
                                                                           based):
    """The VM's system disk swapped for another VDI: its base is a snapshot of a disk the VM no
    longer has.  The night is full, saying so, and its cleanup destroys the old disk's base."""
    dep = deployment
    old_base = the_base(dep, source)
    vm = xapi.VM.get_by_uuid(source["uuid"])
    if xapi.VM.get_power_state(vm) != "Halted":
        xapi.VM.hard_shutdown(vm)
    vbd = next(b for b in xapi.VM.get_VBDs(vm) if xapi.VBD.get_userdevice(b) == "0")
    rec = xapi.VBD.get_record(vbd)
    old_vdi = rec["VDI"]
    new_vdi = xapi.VDI.copy(old_vdi, xapi.VDI.get_SR(old_vdi))
    xapi.VBD.destroy(vbd)
    xapi.VBD.create({k: rec[k] for k in ("VM", "userdevice", "bootable", "mode", "type", "empty", "other_config",
                                         "qos_algorithm_type", "qos_algorithm_params")} | {"VDI": new_vdi})
    _run, manifest = night(dep, source)
    assert manifest["backup_kind"] == "full"
    assert "system disk was replaced" in manifest["full_reason"], manifest["full_reason"]
    assert old_base["uuid"] not in {b["uuid"] for b in bases(dep.sim.state())}
    assert the_base(dep, source)["snapshot_of"] != old_base["snapshot_of"]
