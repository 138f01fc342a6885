"""Does the skeleton recorded in ova.xml agree with the one in the manifest?

Compared: CPUs, memory limits, tags, HA settings (ha_restart_priority, order,
start_delay, shutdown_delay), platform, HVM boot parameters, every VIF's MAC and
MTU by device, and every disk's userdevice and virtual size.  Each difference is
one problem sentence naming the field and both values.
"""
from __future__ import annotations


def to_int(value, default=None):
    """ova.xml carries ints as strings; anything unparsable gives ``default``."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


_INT_FIELDS = ("VCPUs_max", "VCPUs_at_startup", "memory_static_max", "memory_static_min",
               "memory_dynamic_max", "memory_dynamic_min")
_HA_INT = ("order", "start_delay", "shutdown_delay")


def _vm_record(header: dict) -> dict | None:
    vms = [o["snapshot"] for o in header["objects"] if o["class"] == "VM"]
    plain = [v for v in vms if not _truthy(v.get("is_a_snapshot"))]
    return (plain or vms or [None])[0]


def _truthy(value) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def compare_skeleton(header: dict, skeleton, problems) -> None:
    if not isinstance(skeleton, dict) or not skeleton:
        problems.add("the manifest has no skeleton to compare ova.xml with")
        return
    vm = _vm_record(header)
    if vm is None:
        problems.add("ova.xml holds no VM")
        return

    def differ(what: str, found, wanted) -> None:
        problems.add(f"ova.xml VM {what} {found} but manifest says {wanted}")

    for key in _INT_FIELDS:
        if key in skeleton and to_int(vm.get(key), vm.get(key)) != skeleton[key]:
            differ(key, vm.get(key), skeleton[key])
    if "tags" in skeleton and sorted(vm.get("tags") or []) != sorted(skeleton["tags"] or []):
        differ("tags", vm.get("tags"), skeleton["tags"])
    ha = skeleton.get("ha") or {}
    for key in ("ha_restart_priority", *_HA_INT):
        if key not in ha:
            continue
        found = to_int(vm.get(key), vm.get(key)) if key in _HA_INT else vm.get(key)
        if found != ha[key]:
            differ(key, vm.get(key), ha[key])
    for key in ("platform", "HVM_boot_params"):
        if key in skeleton and (vm.get(key) or {}) != (skeleton[key] or {}):
            differ(key, vm.get(key), skeleton[key])
    objects = {o["id"]: o for o in header["objects"]}
    _compare_vifs(vm, objects, skeleton.get("vifs"), problems)
    _compare_disks(vm, objects, skeleton.get("disks"), problems)


def _compare_vifs(vm: dict, objects: dict, wanted, problems) -> None:
    if wanted is None:
        return
    found = {}
    for ref in vm.get("VIFs") or []:
        if ref in objects and objects[ref]["class"] == "VIF":
            v = objects[ref]["snapshot"]
            found[str(v.get("device"))] = v
    want = {str(v.get("device")): v for v in wanted}
    for device in sorted(set(found) | set(want), key=lambda d: to_int(d, 99)):
        if device not in found:
            problems.add(f"ova.xml has no VIF {device} but the manifest has one (MAC {want[device].get('MAC')})")
            continue
        if device not in want:
            problems.add(f"ova.xml has VIF {device} (MAC {found[device].get('MAC')}) but the manifest has none")
            continue
        f, w = found[device], want[device]
        if str(f.get("MAC", "")).lower() != str(w.get("MAC", "")).lower():
            problems.add(f"ova.xml VIF {device} MAC {f.get('MAC')} but manifest says {w.get('MAC')}")
        if to_int(f.get("MTU"), f.get("MTU")) != w.get("MTU"):
            problems.add(f"ova.xml VIF {device} MTU {f.get('MTU')} but manifest says {w.get('MTU')}")


def _compare_disks(vm: dict, objects: dict, wanted, problems) -> None:
    if wanted is None:
        return
    found = {}
    for ref in vm.get("VBDs") or []:
        if ref in objects and objects[ref]["class"] == "VBD":
            b = objects[ref]["snapshot"]
            if b.get("type") == "Disk":
                vdi = objects.get(b.get("VDI"))
                size = to_int(vdi["snapshot"].get("virtual_size")) if vdi and vdi["class"] == "VDI" else None
                found[str(b.get("userdevice"))] = size
    want = {str(d.get("userdevice")): d.get("virtual_size") for d in wanted if d.get("type") == "Disk"}
    for dev in sorted(set(found) | set(want), key=lambda d: to_int(d, 99)):
        if dev not in found:
            problems.add(f"ova.xml has no disk at userdevice {dev} but the manifest has one")
        elif dev not in want:
            problems.add(f"ova.xml has a disk at userdevice {dev} but the manifest has none")
        elif found[dev] is not None and want[dev] is not None and found[dev] != want[dev]:
            problems.add(f"ova.xml disk at userdevice {dev} virtual_size {found[dev]} but manifest says "
                         f"{want[dev]}")
