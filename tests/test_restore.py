"""End to end: `tinabs restore` and the restore test, on real workers, a real Redis and the simulator.

Given backups made by `tinabs backup` in both modes, and a guest write to the
source disk after each backup, when they are restored (on a worker, or
--local), then the restored VM has the original's skeleton and the system
disk as it was at snapshot time, data disks empty, MACs by policy, the kept
sr-copy disk untouched; a failed import leaves nothing; the restore test
passes and removes what it made; CLI mistakes are one line, exit 2.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.pool_checks import backupable_vms, litter, normalise as _norm
from helpers.xapi_http import counts, guest_write

DEPLOYMENT_SIM_ARGS = ("--pools", "2", "--vms-per-pool", "4", "--disk-mib", "8")
POOL = "pool-a"
SKELETON = ("VCPUs_max", "VCPUs_at_startup", "VCPUs_params", "memory_static_max", "memory_static_min",
            "memory_dynamic_max", "memory_dynamic_min", "platform", "HVM_boot_policy", "HVM_boot_params",
            "PV_args", "actions_after_shutdown", "actions_after_reboot", "actions_after_crash", "domain_type",
            "ha_restart_priority", "order", "start_delay", "shutdown_delay", "recommendations")


def tinabs(dep, *args, timeout=180):
    return subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", *args], env=dep.env, capture_output=True,
                          text=True, timeout=timeout)


def restore(dep, *args) -> dict:
    proc = tinabs(dep, "restore", *args, "--json")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


def skeleton(state: dict, vm: dict) -> dict:
    out = {f: _norm(vm[f]) for f in SKELETON}
    out["tags"] = sorted(vm["tags"])
    out["other_config"] = {k: v for k, v in vm["other_config"].items() if not k.startswith("tinabs:")}
    out["vifs"] = sorted((state["VIF"][v]["device"], state["network"][state["VIF"][v]["network"]]["uuid"],
                          str(state["VIF"][v]["MTU"])) for v in vm["VIFs"])
    return out


def macs(state: dict, vm: dict) -> dict:
    return {state["VIF"][v]["device"]: state["VIF"][v]["MAC"] for v in vm["VIFs"]}


def disks(state: dict, vm: dict) -> dict:
    """userdevice -> (type, VDI record or None)."""
    out = {}
    for b in vm["VBDs"]:
        rec = state["VBD"][b]
        out[rec["userdevice"]] = (rec["type"], state["VDI"].get(rec["VDI"]))
    return out


def vm_by_uuid(state: dict, uuid: str) -> dict:
    return next(v for v in state["VM"].values() if v["uuid"] == uuid)


@pytest.fixture(scope="module")
def source(deployment):
    """The VM to back up: the one with the most devices (data disks, VIFs) and HA settings."""
    state = deployment.sim.state()
    pool = state["pools"][POOL]
    candidates = [v for v in backupable_vms(state, POOL) if v["VIFs"]]

    def richness(v):
        data = sum(1 for b in v["VBDs"] if pool["VBD"][b]["type"] == "Disk" and pool["VBD"][b]["userdevice"] != "0")
        return (data > 0, int(v["order"]) + int(v["start_delay"]) + int(v["shutdown_delay"]) > 0, len(v["VIFs"]))

    return max(candidates, key=richness)


def backup_then_write(dep, vm: dict, mode: str) -> tuple[dict, str]:
    """A backup of ``vm`` (its job run) and the system disk's sha256 at snapshot time; then a guest
    write changes the live disk, so a restore of the live disk would show."""
    code, job = dep.backup("--vm", vm["uuid"], "--pool", POOL, "--mode", mode)
    assert code == 0, job
    (run,) = job["runs"]
    state = dep.sim.state()["pools"][POOL]
    system = disks(state, vm_by_uuid(state, vm["uuid"]))["0"][1]
    at_snapshot = dep.sim.vdi_info(system["uuid"])["sha256"]
    guest_write(dep.sim, system["uuid"], 4096, f"written after backup {run['path']}".encode() * 10)
    assert dep.sim.vdi_info(system["uuid"])["sha256"] != at_snapshot
    return run, at_snapshot


def check_restored(dep, result: dict, original: dict, before: dict, at_snapshot: str) -> dict:
    state = dep.sim.state()["pools"][POOL]
    vm = vm_by_uuid(state, result["uuid"])
    assert vm["uuid"] != original["uuid"]
    assert vm["power_state"] == "Halted"
    assert skeleton(state, vm) == skeleton(before, original)
    got = disks(state, vm)
    want = disks(before, original)
    assert {d: t for d, (t, _) in got.items()} == {d: t for d, (t, _) in want.items()}
    for device, (kind, vdi) in want.items():
        if kind != "Disk" or vdi is None:
            continue
        restored = got[device][1]
        assert int(restored["virtual_size"]) == int(vdi["virtual_size"])
        if device == "0":
            assert dep.sim.vdi_info(restored["uuid"])["sha256"] == at_snapshot, "restored the live disk"
        else:  # (vdi_info would hash the whole multi-GiB data disk: its recorded utilisation says it)
            assert int(restored["physical_utilisation"]) == 0, f"data disk {device} not empty"
    assert litter(dep.sim.state()) == {}  # markers removed on success, nothing else of the run
    return vm


def test_export_backup_restores_on_a_worker_with_new_macs(deployment, source):
    dep = deployment
    before = dep.sim.state()["pools"][POOL]
    run, at_snapshot = backup_then_write(dep, source, "export")
    result = restore(dep, run["path"], "--pool", POOL)
    vm = check_restored(dep, result, source, before, at_snapshot)
    state = dep.sim.state()["pools"][POOL]
    # the original still exists: a name that cannot be confused with it, and new MACs
    assert vm["name_label"].startswith(f"{source['name_label']} (restored ")
    assert result["macs"] == "new"
    assert set(macs(state, vm).values()).isdisjoint(macs(before, source).values())
    assert set(macs(state, vm)) == set(macs(before, source))


def test_export_restore_keep_macs_local_and_name(deployment, source):
    dep = deployment
    before = dep.sim.state()["pools"][POOL]
    run, at_snapshot = backup_then_write(dep, source, "export")
    result = restore(dep, run["manifest"], "--pool", POOL, "--keep-macs", "--name", "web restored", "--local")
    vm = check_restored(dep, result, source, before, at_snapshot)
    state = dep.sim.state()["pools"][POOL]
    assert vm["name_label"] == "web restored"
    assert macs(state, vm) == macs(before, source)


@pytest.mark.parametrize("where", ["clone-on-backup-sr", "copy-to-sr"])
def test_sr_copy_backup_restores_and_keeps_the_kept_copy(deployment, source, where):
    dep = deployment
    before = dep.sim.state()["pools"][POOL]
    run, at_snapshot = backup_then_write(dep, source, "sr-copy")
    manifest = json.loads(Path(run["manifest"]).read_text())
    (kept,) = manifest["copied_vdis"]
    kept_sha = dep.sim.vdi_info(kept["uuid"])["sha256"]
    args = ["--pool", POOL, "--start"]
    if where == "copy-to-sr":
        args += ["--sr", "nfs-shared", "--local"]
    result = restore(dep, run["path"], *args)
    state = dep.sim.state()["pools"][POOL]
    vm = vm_by_uuid(state, result["uuid"])
    assert vm["power_state"] == "Running" and result["started"]
    # the skeleton and the disk at snapshot time
    assert skeleton(state, vm) == skeleton(before, source)
    system = disks(state, vm)["0"][1]
    assert system["uuid"] != kept["uuid"]
    assert dep.sim.vdi_info(system["uuid"])["sha256"] == at_snapshot
    sr_name = state["SR"][system["SR"]]["name_label"]
    assert sr_name == ("backup-sr" if where == "clone-on-backup-sr" else "nfs-shared")
    for device, (kind, vdi) in disks(before, source).items():
        if kind == "Disk" and device != "0":
            restored = disks(state, vm)[device][1]
            assert int(restored["virtual_size"]) == int(vdi["virtual_size"])
            assert int(restored["physical_utilisation"]) == 0
    # the kept copy: still there, same bytes, not attached to anything
    kept_rec = next(v for v in state["VDI"].values() if v["uuid"] == kept["uuid"])
    assert dep.sim.vdi_info(kept["uuid"])["sha256"] == kept_sha
    assert kept_rec["VBDs"] == [] and kept_rec["other_config"].get("tinabs:keep") == "true"
    assert litter(dep.sim.state()) == {}


@pytest.mark.parametrize("fault,local", [
    ({"handler": "/import", "error": ["SR_FULL", "OpaqueRef:x"]}, False),
    ({"handler": "/import", "drop_after_bytes": 200000}, True),
])
def test_failed_import_leaves_nothing(deployment, source, fault, local):
    dep = deployment
    code, job = dep.backup("--vm", source["uuid"], "--pool", POOL, "--mode", "export")
    assert code == 0, job
    path = job["runs"][0]["path"]
    before = counts(dep.sim, POOL)
    dep.sim.add_fault({**fault, "pool": POOL})
    try:
        proc = tinabs(dep, "restore", path, "--pool", POOL, *(["--local"] if local else []))
    finally:
        dep.sim.clear_faults()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    reason = proc.stderr.strip().splitlines()[-1]
    assert reason.startswith("tinabs: restore failed: ") and reason.count("restore failed") == 1, reason
    assert ("SR_FULL" in reason) if "error" in fault else ("IMPORT_ERROR" in reason or "reach" in reason), reason
    assert counts(dep.sim, POOL) == before
    assert litter(dep.sim.state()) == {}


def test_health_check_task_passes_and_cleans_up(deployment, source):
    dep = deployment
    code, job = dep.backup("--vm", source["uuid"], "--pool", POOL, "--mode", "export")
    assert code == 0, job
    before = counts(dep.sim, POOL)
    # `tinabs verify --restore-test` sends tinabs.restore_test to the pool's workers and waits
    proc = tinabs(dep, "verify", job["runs"][0]["manifest"], "--restore-test", "--pool", POOL, "--sr",
                  "nfs-shared", "--json")
    assert_health_check_passed(dep, proc, before)


def assert_health_check_passed(dep, proc, before: dict) -> None:
    """`tinabs verify --restore-test --json` passed: the VM ran on an isolated network, and the
    pool is as it was before."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"], report
    assert any("Running" in s for s in report["steps"]) and any("isolated network" in s for s in report["steps"])
    assert counts(dep.sim, POOL) == before
    assert litter(dep.sim.state()) == {}


def test_health_check_reports_a_broken_skeleton(deployment, source, tmp_path):
    """A manifest that disagrees with the backup's content fails the check (and still cleans up)."""
    from tinabs_tasks.config import model as config
    from tinabs_tasks.restore import into_pool as restore_mod
    from tinabs_tasks.restore import health_check as restore_test
    dep = deployment
    code, job = dep.backup("--vm", source["uuid"], "--pool", POOL, "--mode", "export")
    assert code == 0, job
    before = counts(dep.sim, POOL)
    cfg = config.load(str(dep.config))
    backup = restore_mod.load_backup(cfg.destination, job["runs"][0]["path"])
    backup["manifest"]["skeleton"]["VCPUs_max"] += 1
    report = restore_test.health_check(restore_mod._xapi_for(cfg, POOL), backup, "nfs-shared")
    assert not report["ok"] and any("VCPUs_max" in p for p in report["problems"]), report
    assert counts(dep.sim, POOL) == before


def test_cli_errors_are_one_line_exit_2(deployment, source, tmp_path):
    dep = deployment
    code, job = dep.backup("--vm", source["uuid"], "--pool", POOL, "--mode", "export")
    assert code == 0, job
    proc = tinabs(dep, "restore", job["runs"][0]["path"], "--pool", "no-such-pool")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "unknown pool" in proc.stderr
    outside = tmp_path / "elsewhere.xva"
    outside.write_bytes(Path(job["runs"][0]["path"]).read_bytes())
    proc = tinabs(dep, "restore", str(outside), "--pool", POOL)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "outside the destination" in proc.stderr
    proc = tinabs(dep, "restore", str(dep.dest / "nope.xva"), "--pool", POOL)
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_the_janitor_leaves_a_restored_vm_alone(deployment, source):
    """Given a restored VM (its disks came from a backup made of [tinabs] objects), when the janitor
    runs with no age limit, then the restored VM and its disks are all still there."""
    dep = deployment
    run, _ = backup_then_write(dep, source, "export")
    result = restore(dep, run["path"], "--pool", POOL)
    state = dep.sim.state()["pools"][POOL]
    vm = vm_by_uuid(state, result["uuid"])
    vdis = {state["VBD"][b]["VDI"] for b in vm["VBDs"]} - {"OpaqueRef:NULL"}
    proc = tinabs(dep, "janitor", "--max-age-h", "0", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = dep.sim.state()["pools"][POOL]
    assert vm["uuid"] in {v["uuid"] for v in after["VM"].values()}
    assert vdis <= set(after["VDI"])
