"""Which fields of the original VM make its skeleton, and a summary for the manifest."""
from __future__ import annotations

from tinabs_tasks.xapi.port import NULL_REF

#: VM.create fields copied from the original (the 25 required ones plus the
#: optional ones that describe the VM rather than its runtime).
COPIED = (
    "user_version", "affinity", "memory_static_max", "memory_dynamic_max", "memory_dynamic_min",
    "memory_static_min", "VCPUs_params", "VCPUs_max", "VCPUs_at_startup", "actions_after_shutdown",
    "actions_after_reboot", "actions_after_crash", "PV_bootloader", "PV_kernel", "PV_ramdisk", "PV_args",
    "PV_bootloader_args", "PV_legacy_args", "HVM_boot_policy", "HVM_boot_params", "platform", "PCI_bus",
    "recommendations", "name_description", "memory_target", "HVM_shadow_multiplier", "xenstore_data",
    "ha_always_run", "ha_restart_priority", "tags", "order", "start_delay", "shutdown_delay",
    "hardware_platform_version", "has_vendor_device", "domain_type", "NVRAM", "actions_after_softreboot",
)
#: other_config keys that belong to xapi or to another run, not to the VM
DROPPED_OTHER_CONFIG = ("default_template", "xensource_internal", "import_task")
HA_FIELDS = ("ha_restart_priority", "order", "start_delay", "shutdown_delay", "ha_always_run")


def create_args(original: dict) -> dict:
    args = {k: original[k] for k in COPIED if k in original}
    args["is_a_template"] = False
    args["other_config"] = {k: v for k, v in original["other_config"].items()
                            if k not in DROPPED_OTHER_CONFIG and not k.startswith("tinabs:")}
    return args


def summary(x, rec: dict, vbds: dict | None = None, vdis: dict | None = None, vif_records: dict | None = None) -> dict:
    """What the manifest records about the skeleton (no secrets, no refs); ``vbds``/``vdis``/
    ``vif_records``: the VM's VBD, disk and VIF records by ref, when the caller has read them."""
    vbds, vdis, vif_records = vbds or {}, vdis or {}, vif_records or {}
    vifs, networks = [], {}
    for vif in rec["VIFs"]:
        v = vif_records.get(vif) or x.VIF.get_record(vif)
        if v["network"] not in networks:
            networks[v["network"]] = x.network.get_name_label(v["network"])
        vifs.append({"device": v["device"], "MAC": v["MAC"], "MTU": int(v["MTU"]),
                     "network": networks[v["network"]], "qos_algorithm_type": v["qos_algorithm_type"]})
    disks = []
    for vbd in rec["VBDs"]:
        b = vbds.get(vbd) or x.VBD.get_record(vbd)
        entry = {"userdevice": b["userdevice"], "type": b["type"], "mode": b["mode"], "bootable": b["bootable"]}
        if b["VDI"] != NULL_REF and b["type"] == "Disk":
            d = vdis.get(b["VDI"]) or x.VDI.get_record(b["VDI"])
            entry.update(virtual_size=int(d["virtual_size"]), vdi_type=d["type"], name=d["name_label"])
        disks.append(entry)
    return {
        "name": rec["name_label"], "uuid": rec["uuid"], "VCPUs_max": int(rec["VCPUs_max"]),
        "VCPUs_at_startup": int(rec["VCPUs_at_startup"]),
        "memory_static_max": int(rec["memory_static_max"]), "memory_dynamic_max": int(rec["memory_dynamic_max"]),
        "memory_dynamic_min": int(rec["memory_dynamic_min"]), "memory_static_min": int(rec["memory_static_min"]),
        "platform": rec["platform"], "HVM_boot_params": rec["HVM_boot_params"], "tags": rec["tags"],
        "ha": {k: (int(rec[k]) if k in ("order", "start_delay", "shutdown_delay") else rec[k]) for k in HA_FIELDS},
        "vifs": sorted(vifs, key=lambda v: int(v["device"])),
        "disks": sorted(disks, key=lambda d: int(d["userdevice"]) if d["userdevice"].isdigit() else 99),
    }
