"""The restore test (Xen Orchestra calls it a health check): import a backup, check its
skeleton, start it cut off from every production network, check it runs, remove all of it.

Network isolation: a new network (``network.create``, marked) is made and each VIF is
recreated on it with its device, MAC and MTU, so the VIF count and MACs stay checkable and
the test VM (which keeps the original's MACs) can never talk to the production networks.
Everything the test makes carries the test run's markers and is removed by marker.
"""
from __future__ import annotations

from tinabs_tasks.restore.backup_file import check_pool, load_backup
from tinabs_tasks.restore.into_pool import _xapi_for, new_run_id, remove, restore
from tinabs_tasks.xapi import markers
from tinabs_tasks.xapi.markers import RestoreRole as Role
from tinabs_tasks.backup.skeleton_fields import summary


def compare_skeleton(x, vm: str, skeleton: dict, *, macs: bool = True) -> list[str]:
    """What differs between the VM and the manifest's skeleton (empty when it matches).

    Not compared: names and uuids (new VM), ``ha_always_run`` (xapi sets it only when a
    protected VM runs), and MACs when ``macs`` is False."""
    got = summary(x, x.VM.get_record(vm))
    problems = []
    for key in ("VCPUs_max", "VCPUs_at_startup", "memory_static_max", "memory_dynamic_max",
                "memory_dynamic_min", "memory_static_min", "platform", "HVM_boot_params"):
        if key in skeleton and got[key] != skeleton[key]:
            problems.append(f"{key}: {got[key]!r}, backup has {skeleton[key]!r}")
    if "tags" in skeleton and sorted(got["tags"]) != sorted(skeleton["tags"]):
        problems.append(f"tags: {sorted(got['tags'])}, backup has {sorted(skeleton['tags'])}")
    for key in ("ha_restart_priority", "order", "start_delay", "shutdown_delay"):
        want = skeleton.get("ha", {}).get(key)
        if want is not None and got["ha"][key] != want:
            problems.append(f"{key}: {got['ha'][key]!r}, backup has {want!r}")

    def vif(v):
        return {k: v[k] for k in ("device", "MTU", "network", "qos_algorithm_type", *(("MAC",) if macs else ()))}

    if "vifs" in skeleton and [vif(v) for v in got["vifs"]] != [vif(v) for v in skeleton["vifs"]]:
        problems.append(f"VIFs: {[vif(v) for v in got['vifs']]}, backup has {[vif(v) for v in skeleton['vifs']]}")

    def disk(d):
        return {k: d.get(k) for k in ("userdevice", "type", "mode", "bootable", "virtual_size")}

    if "disks" in skeleton and [disk(d) for d in got["disks"]] != [disk(d) for d in skeleton["disks"]]:
        problems.append(f"disks: {[disk(d) for d in got['disks']]}, backup has "
                        f"{[disk(d) for d in skeleton['disks']]}")
    return problems


def health_check(xapi, backup: dict, sr: str, report=None) -> dict:
    """Returns {"ok", "problems", "steps", "run", "removed", ...}; never raises for a failed check."""
    report = report or (lambda **_: None)
    x = xapi.x
    m = backup["manifest"]
    run = new_run_id()
    ctx = {"run": run, "job": "restore-test", "vm": {"uuid": m["vm"]["uuid"], "name": m["vm"]["name"]}}
    problems: list[str] = []
    steps: list[str] = []
    protect = {c["uuid"] for c in m.get("copied_vdis", [])}
    out = {"run": run, "backup": backup["manifest_path"], "pool": xapi.pool.name, "vm_name": m["vm"]["name"]}
    try:
        res = restore(xapi, backup, sr=sr, name=markers.name(ctx, "restore-test"), macs="keep", run=run,
                      report=report, keep_markers=True)
        vm = res["vm"]
        steps.append(f"imported as {res['uuid']}")
        skeleton = m.get("skeleton", {})
        wrong = compare_skeleton(x, vm, skeleton)
        problems += [f"skeleton: {p}" for p in wrong]
        steps.append("skeleton matches the manifest" if not wrong else "skeleton differs")
        report(stage="isolate")
        macs_before = sorted((x.VIF.get_device(v), x.VIF.get_MAC(v)) for v in x.VM.get_VIFs(vm))
        net = isolate(x, vm, ctx)
        macs_after = sorted((x.VIF.get_device(v), x.VIF.get_MAC(v)) for v in x.VM.get_VIFs(vm))
        if macs_after != macs_before:
            problems.append(f"isolation changed the VIFs: {macs_after} != {macs_before}")
        steps.append(f"{len(macs_after)} VIF(s) moved to isolated network {x.network.get_uuid(net)}")
        report(stage="start")
        xapi.call_async("VM.start", vm, False, False)
        state = x.VM.get_power_state(vm)
        if state != "Running":
            problems.append(f"after VM.start the VM is {state}, not Running")
        else:
            steps.append("started: Running")
        xapi.call_async("VM.hard_shutdown", vm)
        steps.append(f"shut down: {x.VM.get_power_state(vm)}")
    except Exception as exc:
        from tinabs_tasks.xapi.errors import classify
        problems.append(f"restore test: {classify(exc, xapi.pool.name)}")
    finally:
        report(stage="cleanup")
        try:
            out["removed"] = len(remove(xapi, run, protect=protect))
            left = {cls: markers.find(x, cls, run) for cls in ("VM", "VDI", "VBD", "VIF", "network")}
            left = {cls: refs for cls, refs in left.items() if refs}
            if left:
                problems.append(f"cleanup left {left}")
            else:
                steps.append(f"removed {out['removed']} object(s)")
        except Exception as exc:
            problems.append(f"cleanup of run {run} incomplete: {exc}")
    out.update(ok=not problems, problems=problems, steps=steps)
    return out


def isolate(x, vm: str, ctx: dict) -> str:
    """Move every VIF of ``vm`` to a new, marked, unconnected network; returns the network."""
    vifs = [x.VIF.get_record(v) | {"ref": v} for v in x.VM.get_VIFs(vm)]
    mtu = max([int(v["MTU"]) for v in vifs] or [1500])
    net = x.network.create({"name_label": markers.name(ctx, "isolated network"),
                            "name_description": "tinabs restore test: no uplink, removed after the test",
                            "MTU": str(mtu), "other_config": markers.markers(ctx, Role.TEST_NETWORK), "tags": []})
    for rec in vifs:
        x.VIF.destroy(rec["ref"])
        x.VIF.create({"device": rec["device"], "network": net, "VM": vm, "MAC": rec["MAC"], "MTU": str(rec["MTU"]),
                      "other_config": {**markers.unmarked(rec["other_config"]), **markers.markers(ctx, Role.TEST_VIF)},
                      "qos_algorithm_type": rec["qos_algorithm_type"],
                      "qos_algorithm_params": rec["qos_algorithm_params"],
                      "locking_mode": rec.get("locking_mode", "network_default"),
                      "ipv4_allowed": rec.get("ipv4_allowed", []), "ipv6_allowed": rec.get("ipv6_allowed", [])})
    return net


def run_health_check(cfg, backup_path: str, pool: str, sr: str, report=None) -> dict:
    backup = load_backup(cfg.destination, backup_path, cfg.repository)  # this config's key, if repo mode
    check_pool(backup, pool)
    return health_check(_xapi_for(cfg, pool), backup, sr, report=report)
