"""VM_metrics and VM_guest_metrics objects: made, copied, refreshed and destroyed with their VM.

xapi's rules, followed here:
* every VM has a VM_metrics from its creation (xapi_vm.ml ``create``: zero memory_actual and
  VCPUs_number, install_time now); snapshot, checkpoint, clone and copy get copies of the
  source's metrics *and* guest metrics (xapi_vm_clone.ml ``copy_vm_record`` →
  xapi_vm_helpers.ml ``copy_metrics``/``copy_guest_metrics``);
* ``VM.start`` deletes any guest metrics (xapi_vm.ml ``start`` → ``delete_guest_metrics``: they
  may be stale, e.g. a clone's IP addresses); the guest agent then reports fresh ones
  (xapi_guest_agent.ml ``all`` creates the object on the first report, ``live`` true);
* shutdown leaves both objects as they are (xapi_xenops.ml ``update_vm`` only replaces stale
  guest metrics at the next start);
* ``VM.revert`` replaces the VM's objects with copies of the snapshot's
  (xapi_vm_snapshot.ml ``update_metrics``/``update_guest_metrics``);
* ``VM.destroy`` destroys both (xapi_vm_helpers.ml ``destroy``).
There is no guest here, so what the agent would report is made up, deterministically from the
VM's ``mac_seed`` (inventory VMs get theirs from ``--seed``): Windows VMs report Windows.
"""
from __future__ import annotations

import hashlib
import random

from tinabs_tasks.sim.datamodel import EPOCH, NULL_REF
from tinabs_tasks.sim.tasks import now

_LINUX = (
    ("Debian GNU/Linux 12 (bookworm)", "debian", "12", ("4", "5", "6", "7"), "6.1.0-{n}-amd64"),
    ("Ubuntu 22.04.4 LTS", "ubuntu", "22", ("04",), "5.15.0-1{n}-generic"),
    ("Rocky Linux 9.3 (Blue Onyx)", "rocky", "9", ("3",), "5.14.0-362.{n}.1.el9_3.x86_64"),
)
_WINDOWS = (
    "Microsoft Windows Server 2022 Standard|C:\\Windows|\\Device\\Harddisk0\\Partition2",
    "Microsoft Windows Server 2019 Datacenter|C:\\Windows|\\Device\\Harddisk0\\Partition2",
)
#: control/feature-* keys a guest agent with PV drivers advertises (xapi_guest_agent.ml ``other``)
_FEATURES = ("feature-balloon", "feature-poweroff", "feature-reboot", "feature-shutdown", "feature-suspend",
             "feature-vcpu-hotplug", "platform-feature-multiprocessor-suspend",
             "platform-feature-xs_reset_watches")


def new_metrics(store) -> str:
    """The VM_metrics of a new VM (xapi_vm.ml create): never started, installed now."""
    return store.create("VM_metrics", {"install_time": now(), "VCPUs_params": {},
                                       "current_domain_type": "unspecified"})


def running_metrics(store, vm: str) -> None:
    """What xenopsd reports once the domain runs (xapi_xenops.ml update_vm)."""
    rec = store.record("VM", vm)
    metrics = _ensure_metrics(store, vm, rec)
    platform = rec["platform"]
    domain_type = rec["domain_type"] if rec["domain_type"] != "unspecified" else "hvm"
    store.update("VM_metrics", metrics, memory_actual=rec["memory_dynamic_max"],
                 VCPUs_number=rec["VCPUs_at_startup"], VCPUs_params=dict(rec["VCPUs_params"]),
                 start_time=now(), last_updated=now(), hvm=domain_type == "hvm",
                 nomigrate=platform.get("nomigrate") in ("true", "1"),
                 nested_virt=platform.get("nested-virt") in ("true", "1"), current_domain_type=domain_type)


def _ensure_metrics(store, vm: str, rec: dict) -> str:
    if store.exists("VM_metrics", rec["metrics"]):
        return rec["metrics"]
    ref = new_metrics(store)
    store.set("VM", vm, "metrics", ref)
    return ref


def guest_agent_report(store, vm: str) -> None:
    """A started guest's agent reports (xapi_guest_agent.ml all): a fresh, live VM_guest_metrics."""
    rec = store.record("VM", vm)
    if rec["is_control_domain"]:
        return  # dom0 runs no guest agent
    delete_guest_metrics(store, vm)
    vifs = sorted(store.get("VIF", v, "device") for v in rec["VIFs"])
    ref = store.create("VM_guest_metrics", guest_report(rec, vifs))
    store.set("VM", vm, "guest_metrics", ref)


def guest_report(rec: dict, vif_devices: list[str]) -> dict:
    """Deterministic, plausible guest agent data for a VM record."""
    seed = rec["other_config"].get("mac_seed") or rec["uuid"]
    rng = random.Random(hashlib.sha256(f"{seed}:{rec['name_label']}".encode()).digest())
    windows = (rec["platform"].get("viridian") == "true"
               or "windows" in rec["other_config"].get("base_template_name", "").lower())
    if windows:
        os_version = {"name": rng.choice(_WINDOWS), "distro": "windows", "major": "10", "minor": "0",
                      "spmajor": "0", "spminor": "0"}
        drivers = {"major": "9", "minor": "4", "micro": "0", "build": str(rng.randint(100, 160))}
    else:
        from_debian = "debian" in rec["other_config"].get("base_template_name", "").lower()
        name, distro, major, minors, uname = _LINUX[0] if from_debian else rng.choice(_LINUX)
        os_version = {"name": name, "uname": uname.format(n=rng.randint(10, 30)), "distro": distro,
                      "major": major, "minor": rng.choice(minors)}
        drivers = {"major": "8", "minor": "4", "micro": "0", "build": "1"}
    networks = {}
    for device in vif_devices:
        ipv4 = f"10.{20 + int(device)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}"
        networks.update({f"{device}/ip": ipv4, f"{device}/ipv4/0": ipv4,
                         f"{device}/ipv6/0": "fe80::%x:%x:%x:%x" % tuple(rng.randrange(1, 0xffff) for _ in range(4))})
    other = dict.fromkeys(_FEATURES, "1")
    other["has-vendor-device"] = "1" if rec["has_vendor_device"] else "0"
    return {"os_version": os_version, "netbios_name": {}, "PV_drivers_version": drivers,
            "PV_drivers_up_to_date": True, "PV_drivers_detected": True, "memory": {}, "disks": {},
            "networks": networks, "other": other, "last_updated": now(), "other_config": {}, "live": True,
            "can_use_hotplug_vbd": "yes", "can_use_hotplug_vif": "yes"}


def delete_guest_metrics(store, vm: str) -> None:
    """xapi_vm_helpers.ml delete_guest_metrics."""
    gm = store.get("VM", vm, "guest_metrics")
    store.set("VM", vm, "guest_metrics", NULL_REF)
    if store.exists("VM_guest_metrics", gm):
        store.destroy("VM_guest_metrics", gm)


def _copy(store, cls: str, ref: str) -> str:
    if not store.exists(cls, ref):
        return NULL_REF
    fields = store.record(cls, ref)
    del fields["uuid"]
    return store.create(cls, fields)


def copies_for(store, src: dict) -> dict:
    """The metrics/guest_metrics fields of a VM copied from ``src`` (copy_vm_record)."""
    metrics = _copy(store, "VM_metrics", src["metrics"])
    if metrics == NULL_REF:  # copy_metrics makes a blank one when the source has none
        metrics = store.create("VM_metrics", {"install_time": EPOCH})
    return {"metrics": metrics, "guest_metrics": _copy(store, "VM_guest_metrics", src["guest_metrics"])}


def replace_from_snapshot(store, vm: str, snapshot: dict) -> None:
    """xapi_vm_snapshot.ml update_guest_metrics / update_metrics of a revert."""
    rec = store.record("VM", vm)
    for cls, field in (("VM_guest_metrics", "guest_metrics"), ("VM_metrics", "metrics")):
        if store.exists(cls, rec[field]):
            store.destroy(cls, rec[field])
        store.set("VM", vm, field, _copy(store, cls, snapshot[field]))


def destroy_metrics(store, rec: dict) -> None:
    """xapi_vm_helpers.ml destroy: the VM's metrics objects go with it."""
    for cls, field in (("VM_metrics", "metrics"), ("VM_guest_metrics", "guest_metrics")):
        if store.exists(cls, rec[field]):
            store.destroy(cls, rec[field])
