"""Stage 4: the original VM's VIFs, cloned onto the backup VM.

Creates: one VIF per original VIF (device, network, MAC, MTU, QoS, locking).
Earlier attempt: VIFs already on the backup VM are skipped by device.
Undone by: VM.destroy (VIF records go with their VM).
"""
from __future__ import annotations


def run(env, ctx: dict) -> dict:
    xapi = env.xapi
    x = xapi.x
    backup_vm = ctx["refs"]["backup_vm"]
    taken = {x.VIF.get_device(vif) for vif in x.VM.get_VIFs(backup_vm)}
    source = ctx["refs"]["source_vm"]
    records = xapi.records_where("VIF", "VM", source, lambda: x.VM.get_VIFs(source))
    for rec in sorted(records.values(), key=lambda r: r["device"]):
        if rec["device"] in taken:
            continue
        x.VIF.create({
            "device": rec["device"], "network": rec["network"], "VM": backup_vm, "MAC": rec["MAC"],
            "MTU": str(rec["MTU"]), "other_config": rec["other_config"],
            "qos_algorithm_type": rec["qos_algorithm_type"], "qos_algorithm_params": rec["qos_algorithm_params"],
            "locking_mode": rec["locking_mode"], "ipv4_allowed": rec["ipv4_allowed"],
            "ipv6_allowed": rec["ipv6_allowed"]})
    return ctx
