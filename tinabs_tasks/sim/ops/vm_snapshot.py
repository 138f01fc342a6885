"""VM.checkpoint, VM.revert and VM.provision.

* checkpoint (xapi_vm_snapshot.ml ``checkpoint``): a snapshot of a live VM *with its memory*:
  the snapshot is Suspended and its ``suspend_VDI`` holds the memory image; the VM runs on.
* revert (xapi_vm.ml ``revert``, xapi_vm_snapshot.ml ``revert``): the snapshot's VM (re-made
  from the snapshot when it is gone: ``create_vm_from_snapshot``) takes back the snapshot's
  fields (``revert_vm_fields``; the simulator keeps no snapshot_metadata, so this is xapi's
  branch for an empty one: the snapshot record less ``extended_do_not_copy``), its disks are
  destroyed and replaced by clones of the snapshot's (the snapshot tree's ``snapshot_of`` moves
  to the clones), its VIFs by copies of the snapshot's (MACs kept), its metrics by copies of
  the snapshot's, ``parent`` becomes the snapshot and the power state is the snapshot's.
* provision (xapi_vm.ml ``provision``, xapi_templates.ml ``pre_install``/``create_disk``/
  ``post_install``): the template stops being one, each ``<disk>`` of ``other_config:disks``
  becomes a new empty VDI (named after its userdevice, "Created by template provisioner") in
  the SR whose uuid it names, with a VBD; then the ``disks``/``postinstall`` keys go.
"""
from __future__ import annotations

import uuid as uuidlib
import xml.etree.ElementTree as ET

from tinabs_tasks.sim.datamodel import NULL_REF, model
from tinabs_tasks.sim.errors import XapiError
from tinabs_tasks.sim.ops import Ctx, op
from tinabs_tasks.sim.ops import devices
from tinabs_tasks.sim.ops import storage
from tinabs_tasks.sim.ops import vm_metrics
from tinabs_tasks.sim.ops.vm import copy_record, snapshot_of
from tinabs_tasks.sim.ops.vm_lifecycle import refresh_allowed, vm_operation, vm_record
from tinabs_tasks.sim.ops.vm_power import drop_vdi, halt, new_suspend_vdi

#: xapi_vm_snapshot.ml extended_do_not_copy (do_not_copy plus the snapshot's identity), and
#: snapshot_info/snapshot_metadata, which describe the snapshot, not the VM it was taken of
_NOT_REVERTED = {
    "uuid", "suspend_VDI", "power_state", "parent", "current_operations", "allowed_operations", "metrics",
    "guest_metrics", "resident_on", "domid", "protection_policy", "snapshot_schedule",
    "scheduled_to_be_resident_on", "snapshots", "tags", "affinity", "consoles", "VBDs", "VIFs", "VGPUs",
    "VUSBs", "attached_PCIs", "name_label", "is_a_snapshot", "is_a_template", "is_default_template",
    "snapshot_of", "snapshot_time", "transportable_snapshot_id", "children", "snapshot_info",
    "snapshot_metadata",
}


@op("VM.checkpoint")
def checkpoint(ctx: Ctx, vm, new_name):
    with vm_operation(ctx, vm, "checkpoint"):
        ctx.pool.slow_op(ctx.task)
        with ctx.store.lock:
            rec = vm_record(ctx, vm)
            snap = snapshot_of(ctx, vm, str(new_name), set(), memory=True)
            image = (storage.clone_vdi(ctx, rec["suspend_VDI"]) if rec["power_state"] == "Suspended"
                     else new_suspend_vdi(ctx, rec))
            ctx.store.update("VM", snap, power_state="Suspended", suspend_VDI=image)
            refresh_allowed(ctx, snap)
    return snap


@op("VM.revert")
def revert(ctx: Ctx, snapshot):
    with vm_operation(ctx, snapshot, "revert"):
        vm = ctx.store.get("VM", snapshot, "snapshot_of")
        if not ctx.store.exists("VM", vm):
            vm = _vm_from_snapshot(ctx, snapshot, vm)
        with vm_operation(ctx, vm, "reverting"):
            ctx.pool.slow_op(ctx.task)
            with ctx.store.lock:
                _revert(ctx, vm, snapshot)
    return ""


def _revert(ctx: Ctx, vm: str, snapshot: str) -> None:
    snap = vm_record(ctx, snapshot)
    if ctx.store.get("VM", vm, "power_state") in ("Running", "Paused"):
        halt(ctx, vm)  # the VM's domain is destroyed before its disks are replaced
    rec = vm_record(ctx, vm)
    m = model("VM")
    fields = {k: v for k, v in snap.items() if k not in _NOT_REVERTED and m.ftype(k).kind != "refset"}
    fields.update(ha_always_run=False,  # revert overrides
                  generation_id=f"{uuidlib.uuid4().int % 2**63}:{uuidlib.uuid4().int % 2**63}")
    ctx.store.update("VM", vm, **fields)
    _replace_devices(ctx, vm, rec, snap)
    vm_metrics.replace_from_snapshot(ctx.store, vm, snap)
    image = storage.clone_vdi(ctx, snap["suspend_VDI"]) if ctx.store.exists("VDI", snap["suspend_VDI"]) else NULL_REF
    ctx.store.update("VM", vm, parent=snapshot, power_state=snap["power_state"], suspend_VDI=image)
    refresh_allowed(ctx, vm)


def _replace_devices(ctx: Ctx, vm: str, rec: dict, snap: dict) -> None:
    """update_vifs_vbds_vgpus_and_vusbs: old VBDs/VIFs go, so do the disks the snapshot has copies of."""
    snap_disks = [ctx.store.record("VBD", b) for b in snap["VBDs"]]
    snapshotted = {ctx.store.get("VDI", b["VDI"], "snapshot_of") for b in snap_disks
                   if b["type"] == "Disk" and ctx.store.exists("VDI", b["VDI"])}
    old_disks = [ctx.store.get("VBD", b, "VDI") for b in rec["VBDs"] if ctx.store.get("VBD", b, "type") == "Disk"]
    for vbd in rec["VBDs"]:
        ctx.store.destroy("VBD", vbd)
    for vdi in [rec["suspend_VDI"], *[d for d in old_disks if d in snapshotted]]:
        drop_vdi(ctx, vdi)
    for vbd in snap_disks:
        vdi = vbd["VDI"]
        if vbd["type"] == "Disk" and ctx.store.exists("VDI", vdi):
            clone = storage.clone_vdi(ctx, vdi)
            tree = ctx.store.get("VDI", vdi, "snapshot_of")
            for other in ctx.store.find("VDI", snapshot_of=tree) if tree != NULL_REF else [vdi]:
                ctx.store.set("VDI", other, "snapshot_of", clone)
            vdi = clone
        devices.new_vbd(ctx, vm, vdi, vbd)
    for vif in rec["VIFs"]:
        ctx.store.destroy("VIF", vif)
    for vif in snap["VIFs"]:
        devices.new_vif(ctx, vm, ctx.store.record("VIF", vif), mac=None)


def _vm_from_snapshot(ctx: Ctx, snapshot: str, old_vm: str) -> str:
    """xapi_vm_snapshot.ml create_vm_from_snapshot: a VM again, that the snapshots now belong to."""
    snap = vm_record(ctx, snapshot)
    with ctx.store.lock:
        fields = copy_record(ctx, snap, snap["name_label"], regenerate_mac_seed=False)
        fields.update(is_a_snapshot=False, is_a_template=False, snapshot_of=NULL_REF, parent=NULL_REF,
                      snapshot_info={}, metrics=vm_metrics.new_metrics(ctx.store), guest_metrics=NULL_REF)
        new = ctx.store.create("VM", fields)
        for other in ctx.store.find("VM", snapshot_of=old_vm):
            ctx.store.set("VM", other, "snapshot_of", new)
        refresh_allowed(ctx, new)
    return new


@op("VM.provision")
def provision(ctx: Ctx, vm):
    with vm_operation(ctx, vm, "provision"):
        disks = _provision_spec(ctx.store.get("VM", vm, "other_config"))
        srs = [ctx.store.by_uuid("SR", disk["sr"]) for disk in disks]  # UUID_INVALID [SR, uuid] first
        ctx.pool.slow_op(ctx.task)
        with ctx.store.lock:
            ctx.store.set("VM", vm, "is_a_template", False)
            for disk, sr in zip(disks, srs):
                _create_disk(ctx, vm, sr, disk)
            other = ctx.store.get("VM", vm, "other_config")
            for key in ("disks", "postinstall"):
                other.pop(key, None)
            ctx.store.set("VM", vm, "other_config", other)
    return ""


def _provision_spec(other_config: dict) -> list[dict]:
    """xapi_templates.ml disks_of_xml: <provision><disk device size sr bootable type/>...</provision>."""
    text = other_config.get("disks")
    if not text:
        return []
    try:
        root = ET.fromstring(text)
        if root.tag != "provision" or root.attrib:
            raise ValueError
        disks = []
        for el in root:
            if el.tag != "disk" or len(el):
                raise ValueError
            kind = el.get("type", "system")
            if kind not in ("system", "user", "ephemeral", "suspend", "crashdump"):
                kind = "system"
            disks.append({"device": el.attrib["device"], "size": int(el.attrib["size"]), "sr": el.attrib["sr"],
                          "bootable": el.attrib["bootable"] == "true", "type": kind})
        return disks
    except (ET.ParseError, KeyError, ValueError):
        # Parse_failure escapes xapi unhandled: the catch-all makes it an INTERNAL_ERROR
        raise XapiError("INTERNAL_ERROR", "Xapi_templates.Parse_failure") from None


def _create_disk(ctx: Ctx, vm: str, sr: str, disk: dict) -> None:
    vdi = storage.new_vdi(ctx, sr, {
        "name_label": disk["device"], "name_description": "Created by template provisioner",
        "virtual_size": disk["size"], "type": disk["type"], "sharable": False, "read_only": False,
        "other_config": {}, "sm_config": {"vmhint": ctx.store.get("VM", vm, "uuid")}},
        storage.empty_content(disk["size"]))
    ctx.store.create("VBD", {"VM": vm, "VDI": vdi, "userdevice": disk["device"], "bootable": disk["bootable"],
                             "mode": "RW", "type": "Disk", "unpluggable": disk["type"] != "system",
                             "empty": False, "qos_algorithm_type": "", "qos_algorithm_params": {},
                             "other_config": {"owner": ""}, "device": "", "currently_attached": False})
