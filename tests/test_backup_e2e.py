"""End to end: `tinabs backup` on real workers, a real Redis and the simulator over HTTP.

Given two simulated pools and two worker processes, when jobs run in both
modes at once, then every selected VM has exactly one complete backup whose
content matches the VM, and the pools keep nothing of tinabs but the sr-copy
disks.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from helpers.pool_checks import backupable_vms, bases, litter, normalise as _norm, tinabs_objects
from helpers.xva_parse import read_xva

DEPLOYMENT_SIM_ARGS = ("--pools", "2", "--vms-per-pool", "5", "--disk-mib", "8")
SKELETON_FIELDS = (
    "VCPUs_max", "VCPUs_at_startup", "VCPUs_params", "memory_static_max", "memory_static_min",
    "memory_dynamic_max", "memory_dynamic_min", "platform", "HVM_boot_policy", "HVM_boot_params",
    "PV_bootloader", "PV_kernel", "PV_ramdisk", "PV_args", "actions_after_shutdown", "actions_after_reboot",
    "actions_after_crash", "domain_type", "tags", "ha_restart_priority", "order", "start_delay",
    "shutdown_delay", "recommendations",
)


def _skeleton(record: dict) -> dict:
    out = {f: _norm(record[f]) for f in SKELETON_FIELDS if f in record}
    out["other_config"] = {k: v for k, v in record["other_config"].items() if not k.startswith("tinabs:")}
    return out


def _popen_backup(dep, *args):
    return subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "backup", *args, "--wait", "--json"],
                            env=dep.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _system_vdi(state_pool: dict, vm: dict) -> dict:
    for vbd in vm["VBDs"]:
        rec = state_pool["VBD"][vbd]
        if rec["userdevice"] == "0":
            return state_pool["VDI"][rec["VDI"]]
    raise AssertionError(f"{vm['name_label']} has no system disk")


def test_both_modes_in_parallel_on_two_pools(deployment):
    dep = deployment
    before = dep.sim.state()
    # When an export job of one pool and an sr-copy job of the other run at the same time, and then the
    # other way round (a VM is in one run at a time, so two jobs never take the same VM at once)
    export_runs, copy_runs = [], []
    for export_pool, copy_pool in (("pool-a", "pool-b"), ("pool-b", "pool-a")):
        jobs = [_popen_backup(dep, "--all", "--pool", export_pool, "--mode", "export"),
                _popen_backup(dep, "--all", "--pool", copy_pool, "--mode", "sr-copy")]
        results = []
        for proc in jobs:
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, f"{out}\n{err}"
            results.append(json.loads(out))
        export_runs += results[0]["runs"]
        copy_runs += results[1]["runs"]
    # Then each mode has one succeeded run per backupable VM of each pool
    expected = {(pool, vm["uuid"]) for pool in before["pools"] for vm in backupable_vms(before, pool)}
    for runs in (export_runs, copy_runs):
        assert sorted((r["pool"], r["vm_uuid"]) for r in runs) == sorted(expected)
        assert all(r["state"] == "succeeded" for r in runs), runs
    after = dep.sim.state()
    # And the .xva of every VM carries its skeleton, its system disk bytes and empty data disks
    for run in export_runs:
        _check_export(dep, before["pools"][run["pool"]], run)
    # And every sr-copy backup has its disk on the backup SR with the system disk's bytes
    for run in copy_runs:
        _check_sr_copy(dep, before["pools"][run["pool"]], after["pools"][run["pool"]], run)
    # And nothing of tinabs is left on the pools but the kept sr-copy disks and one base per sr-copy VM
    assert litter(after) == {}
    kept = [o for o in tinabs_objects(after).get("VDI", []) if o[2]["other_config"].get("tinabs:role") != "base"]
    assert len(kept) == len(copy_runs)
    assert sorted(b["vm"] for b in bases(after)) == sorted(r["vm_uuid"] for r in copy_runs)
    # And the destination holds exactly one data file and one manifest per run, no partial file
    files = dep.files()
    assert not [f for f in files if f.name.endswith(".partial")]
    assert len([f for f in files if f.suffix == ".json"]) == len(export_runs) + len(copy_runs)


def _check_export(dep, pool_state: dict, run: dict) -> None:
    manifest = json.loads(Path(run["manifest"]).read_text())
    path = Path(run["path"])
    assert path.exists() and path.parent.parent.parent == dep.dest
    assert manifest["size"] == path.stat().st_size and manifest["mode"] == "export"
    with open(path, "rb") as fh:
        xva = read_xva(fh)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest["sha256"]
    original = next(v for v in pool_state["VM"].values() if v["uuid"] == run["vm_uuid"])
    (vm_obj,) = xva.objects("VM")
    backup_vm = vm_obj["snapshot"]
    assert _skeleton(backup_vm) == _skeleton(original), run["vm_name"]
    # VIFs: same device, MAC, MTU and network as the original
    ids = xva.by_id()
    got_vifs = {v["snapshot"]["device"]: (v["snapshot"]["MAC"], str(v["snapshot"]["MTU"]),
                                          ids[v["snapshot"]["network"]]["snapshot"]["uuid"])
                for v in xva.objects("VIF")}
    want_vifs = {pool_state["VIF"][v]["device"]: (pool_state["VIF"][v]["MAC"], str(pool_state["VIF"][v]["MTU"]),
                                                  pool_state["network"][pool_state["VIF"][v]["network"]]["uuid"])
                 for v in original["VIFs"]}
    assert got_vifs == want_vifs
    # Disks: the system disk's bytes; data disks present, same size and empty
    system = _system_vdi(pool_state, original)
    vdis = {o["id"]: o["snapshot"] for o in xva.objects("VDI")}
    by_device = {}
    for vbd in xva.objects("VBD"):
        rec = vbd["snapshot"]
        by_device[rec["userdevice"]] = (rec["type"], vdis.get(rec["VDI"]), xva.disks.get(rec["VDI"]))
    want_devices = {pool_state["VBD"][b]["userdevice"]: pool_state["VBD"][b] for b in original["VBDs"]}
    assert set(by_device) == set(want_devices)
    for device, (vbd_type, vdi, disk) in by_device.items():
        want = want_devices[device]
        assert vbd_type == want["type"]
        if want["type"] == "CD":
            continue
        source = pool_state["VDI"][want["VDI"]]
        assert int(vdi["virtual_size"]) == int(source["virtual_size"])
        if device == "0":
            assert disk.sha256 == dep.sim.vdi_info(system["uuid"])["sha256"]
        else:
            assert disk.written == int(source["virtual_size"])
            nonempty = [no for no, n in zip(disk.numbers, disk.lengths) if n]
            assert set(nonempty) <= set(disk.zero_members), f"data disk {device} of {run['vm_name']} not empty"


def _check_sr_copy(dep, before_pool: dict, after_pool: dict, run: dict) -> None:
    manifest = json.loads(Path(run["manifest"]).read_text())
    assert manifest["mode"] == "sr-copy" and Path(run["path"]).name.endswith(".metadata.xva")
    original = next(v for v in before_pool["VM"].values() if v["uuid"] == run["vm_uuid"])
    system = _system_vdi(before_pool, original)
    (copied,) = manifest["copied_vdis"]
    copy_rec = next(v for v in after_pool["VDI"].values() if v["uuid"] == copied["uuid"])
    backup_sr = next(s for s in after_pool["SR"].values() if s["name_label"] == "backup-sr")
    assert copy_rec["SR"] in after_pool["SR"] and after_pool["SR"][copy_rec["SR"]]["uuid"] == backup_sr["uuid"]
    assert dep.sim.vdi_info(copied["uuid"])["sha256"] == dep.sim.vdi_info(system["uuid"])["sha256"]
    with open(run["path"], "rb") as fh:
        meta = read_xva(fh)
    assert meta.names[0] == "ova.xml" and not meta.disks
    vdis = {o["id"]: o["snapshot"] for o in meta.objects("VDI")}
    system_vbd = next(v["snapshot"] for v in meta.objects("VBD") if v["snapshot"]["userdevice"] == "0")
    assert vdis[system_vbd["VDI"]]["uuid"] == copied["uuid"]
    assert _skeleton(meta.objects("VM")[0]["snapshot"]) == _skeleton(original)
