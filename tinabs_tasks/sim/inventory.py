"""A pool that looks like a real one, generated from a seed.

Per pool: hosts (a control domain each, a local SR each), a shared NFS SR
(the pool's default SR), a backup SR, an ISO library, several networks,
default templates, and VMs: running and halted, tagged ``Mon``..``Sun`` or
not, 1-4 disks (system disk at userdevice 0, data disks on other SRs), VIFs
with MACs/MTUs/QoS, HA settings, some with a CD drive, some with existing
snapshots, and one duplicate VM name.

With ``clone_from_template`` (``tinabs sim --clone-from-template``) each pool
also holds a template VM with an OS image disk, and every VM's system disk is
a clone of that image plus 2-8 MiB written of its own, as a fleet deployed
from one template is.
"""
from __future__ import annotations

import random
import uuid as uuidlib

from tinabs_tasks.sim.datamodel import NULL_REF
from tinabs_tasks.sim.disks import CHUNK, SeededContent
from tinabs_tasks.sim.ops import Ctx
from tinabs_tasks.sim.ops import storage
from tinabs_tasks.sim.ops import vm as vm_ops
from tinabs_tasks.sim.ops import vm_metrics
from tinabs_tasks.sim.ops.construct import random_mac
from tinabs_tasks.sim.tasks import now

GiB = 1 << 30
MiB = 1 << 20
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
ROLES = ("web", "db", "mail", "dns", "app", "ci", "files", "proxy", "ldap", "monitor", "git", "erp")
NETWORKS = (("Pool-wide network associated with eth0", "xenbr0", 1500),
            ("Storage (VLAN 20)", "xapi1", 9000),
            ("DMZ (VLAN 30)", "xapi2", 1500))
TEMPLATES = ("Debian Bookworm 12", "Windows Server 2022 (64-bit)", "Other install media")
SOFTWARE = {"product_version": "8.3.0", "product_brand": "XCP-ng", "platform_version": "3.4.0",
            "xapi": "24.39", "xapi_build": "24.39.1", "build_number": "cloud", "date": "2024-10-01",
            "xen": "4.17.5-3"}


def populate(pool, index: int, hosts: int, vms: int, seed: int, disk_mib: int, addresses: list[str]) -> None:
    rng = random.Random(f"{seed}:{index}")
    ctx = Ctx(pool, None, NULL_REF)
    host_refs = [_host(pool, f"xcp-{pool.name}-{j + 1:02d}", addresses[j]) for j in range(hosts)]
    pool.set_master(host_refs[0])
    ctx.host_ref = host_refs[0]
    local = [_sr(pool, "Local storage", "ext", [h], 500 * GiB, shared=False) for h in host_refs]
    nfs = _sr(pool, "nfs-shared", "nfs", host_refs, 4096 * GiB)
    _sr(pool, "backup-sr", "nfs", host_refs, 8192 * GiB)
    iso_sr = _sr(pool, "ISO library", "iso", host_refs, 100 * GiB, content_type="iso")
    pool.store.create("pool", {"name_label": pool.name, "master": host_refs[0], "default_SR": nfs,
                               "suspend_image_SR": nfs, "crash_dump_SR": nfs, "other_config": {},
                               "ha_enabled": False, "coordinator_bias": True})
    nets = [pool.store.create("network", {"name_label": n, "bridge": b, "MTU": mtu, "managed": True,
                                          "other_config": {}}) for n, b, mtu in NETWORKS]
    isos = [storage.seeded_vdi(ctx, iso_sr, rng, {"name_label": name, "virtual_size": 64 * MiB, "type": "user",
                                                  "sharable": True, "read_only": True, "other_config": {}}, 0.5)
            for name in ("debian-12.7.0-amd64-netinst.iso", "guest-tools.iso")]
    for h, host in enumerate(host_refs):
        _dom0(pool, host, f"xcp-{pool.name}-{h + 1:02d}")
    for name in TEMPLATES:
        _vm(pool, rng, name, template=True)
    # its own generator: the inventory without templates images stays exactly as it was
    image_rng = random.Random(f"{seed}:{index}:image")
    image = _template_image(ctx, image_rng, nfs, disk_mib) if pool.settings.clone_from_template else None
    names = _vm_names(rng, vms)
    tags = _tag_plan(len(names), index)
    for i, name in enumerate(names):
        host_i = i % hosts
        sys_sr = local[host_i] if i % 3 == 2 else nfs
        data_srs = [nfs, local[host_i]]
        ref = _vm(pool, rng, name, tags=tags[i], affinity=host_refs[host_i])
        _disks(ctx, rng, ref, name, sys_sr, data_srs, disk_mib, isos if i % 4 == 1 else None)
        if image is not None:
            _clone_system_disk(ctx, image_rng, ref, image)
        _vifs(pool, rng, ref, nets)
        if i % 4 == 3:
            snap = vm_ops.snapshot(ctx, ref, f"{name} before upgrade")
            pool.store.set("VM", snap, "generation_id", _generation_id(pool))
        if i % 10 not in (4, 7):
            vm_ops.start(ctx, ref, False, False)


def _generation_id(pool) -> str:
    """A VM.snapshot's fresh generation id, from the pool's seeded ids while the inventory is built."""
    return ":".join(str(uuidlib.UUID(pool.store.new_uuid()).int % 2**63) for _ in range(2))


def _template_image(ctx, rng: random.Random, sr: str, disk_mib: int) -> str:
    """A template VM whose one disk looks like an installed OS: 25-50 % of it written."""
    store = ctx.store
    fields = _vm_fields(rng, "Debian Bookworm 12 golden image")
    fields.update(is_a_template=True, other_config={**fields["other_config"], "tinabs_sim_image": "true"})
    vm = store.create("VM", fields)
    store.set("VM", vm, "allowed_operations", vm_ops.allowed_operations(store.record("VM", vm)))
    size = disk_mib * MiB
    vdi = storage.new_vdi(ctx, sr, {
        "name_label": "Debian Bookworm 12 golden image system", "name_description": "", "virtual_size": size,
        "type": "system", "sharable": False, "read_only": False, "other_config": {}, "snapshot_time": now()},
        SeededContent(rng.getrandbits(48), size, rng.uniform(0.25, 0.5)))
    store.create("VBD", {"VM": vm, "VDI": vdi, "userdevice": "0", "bootable": True, "mode": "RW", "type": "Disk",
                         "empty": False, "other_config": {"owner": "true"}, "qos_algorithm_type": "",
                         "qos_algorithm_params": {}, "unpluggable": False, "device": "xvda"})
    return vdi


def _clone_system_disk(ctx, rng: random.Random, vm: str, image: str) -> None:
    """The VM's system disk becomes the image's bytes (shared, copy on write, as an SM clone is)
    plus 2-8 whole MiB chunks written of its own."""
    store, pool = ctx.store, ctx.pool
    (vdi,) = [store.get("VBD", v, "VDI") for v in store.get("VM", vm, "VBDs")
              if store.get("VBD", v, "userdevice") == "0"]
    content = pool.content(image)
    pool.disks[vdi] = content
    own_seed = rng.getrandbits(48)
    for k in sorted(rng.sample(range(content.chunk_count()), min(content.chunk_count(), rng.randint(2, 8)))):
        pool.seeded_write(vdi, k * CHUNK, content.chunk_length(k), own_seed)
    written = pool.content(vdi).nonzero_bytes()
    store.set("VDI", vdi, "physical_utilisation", written)
    storage.refresh_sr(ctx, store.get("VDI", vdi, "SR"))


def _vm_names(rng: random.Random, count: int) -> list[str]:
    names = [f"{ROLES[i % len(ROLES)]}-{i // len(ROLES) + 1:02d}" for i in range(count)]
    if count >= 3:
        names[-1] = names[0]  # real pools have duplicate names; tinabs must back both up
    return names


def _tag_plan(count: int, pool_index: int) -> list[list[str]]:
    """Every 5th VM untagged; the others take the weekdays in turn (offset per pool), so
    seven tagged VMs cover the week and a nightly run always finds work."""
    plan, day = [], pool_index
    for i in range(count):
        if i % 5 == 4:
            plan.append([])
            continue
        tags = [WEEKDAYS[day % 7]]
        day += 1
        if i % 6 == 0:
            tags.append(WEEKDAYS[(day + 2) % 7])
        if i % 3 == 0:
            tags.append("prod")
        plan.append(tags)
    return plan


def _host(pool, name: str, address: str) -> str:
    ref = pool.store.create("host", {
        "name_label": name, "hostname": name, "address": address, "enabled": True,
        "API_version_major": 2, "API_version_minor": 21, "API_version_vendor": "XenSource",
        "software_version": {**SOFTWARE, "hostname": name}, "edition": "xcp-ng",
        "cpu_info": {"cpu_count": "8", "vendor": "GenuineIntel"}, "other_config": {},
        "license_server": {"address": "localhost", "port": "27000"},
    })
    pool.add_host_endpoint(ref, address)
    return ref


def _sr(pool, name: str, kind: str, hosts: list[str], size: int, shared: bool = True,
        content_type: str = "user") -> str:
    sr = pool.store.create("SR", {"name_label": name, "type": kind, "content_type": content_type,
                                  "shared": shared, "physical_size": size, "other_config": {},
                                  "sm_config": {}, "allowed_operations": ["scan", "vdi_create", "vdi_destroy"]})
    for host in hosts:
        pool.store.create("PBD", {"host": host, "SR": sr, "device_config": {}, "currently_attached": True,
                                  "other_config": {}})
    return sr


def _dom0(pool, host: str, hostname: str) -> None:
    ref = pool.store.create("VM", {
        **_vm_fields(random.Random(hostname), f"Control domain on host: {hostname}"),
        "is_control_domain": True, "power_state": "Running", "resident_on": host, "domid": 0,
        "allowed_operations": [],
    })
    vm_metrics.running_metrics(pool.store, ref)  # xenopsd reports dom0 as any running domain


def _vm_fields(rng: random.Random, name: str) -> dict:
    static_max = rng.choice((1, 2, 4, 8, 16)) * GiB
    vcpus = rng.choice((1, 2, 4, 8))
    windows = rng.random() < 0.3
    return {
        "name_label": name, "name_description": f"{name} (simulated)", "user_version": 1,
        "is_a_template": False, "affinity": NULL_REF,
        "memory_static_max": static_max, "memory_dynamic_max": static_max,
        "memory_dynamic_min": static_max // 2, "memory_static_min": static_max // 4, "memory_target": static_max,
        "VCPUs_params": {"weight": str(rng.choice((128, 256, 512)))}, "VCPUs_max": vcpus,
        "VCPUs_at_startup": rng.randint(1, vcpus), "actions_after_shutdown": "destroy",
        "actions_after_reboot": "restart", "actions_after_crash": "restart",
        "PV_bootloader": "", "PV_kernel": "", "PV_ramdisk": "", "PV_args": "", "PV_bootloader_args": "",
        "PV_legacy_args": "", "HVM_boot_policy": "BIOS order",
        "HVM_boot_params": {"order": "cdn", "firmware": "uefi" if windows else "bios"},
        "platform": {"timeoffset": "0", "device-model": "qemu-upstream-compat", "nx": "true", "acpi": "1",
                     "apic": "true", "pae": "true", "viridian": "true" if windows else "false",
                     "secureboot": "false", "cores-per-socket": str(vcpus)},
        "PCI_bus": "", "other_config": {"mac_seed": str(uuidlib.UUID(int=rng.getrandbits(128))),
                                        "base_template_name": TEMPLATES[1 if windows else 0]},
        "recommendations": '<restrictions><restriction field="memory-static-max" max="137438953472"/></restrictions>',
        "domain_type": "hvm", "domid": -1, "generation_id": "0:0", "hardware_platform_version": 2,
        "has_vendor_device": windows, "NVRAM": {},
    }


def _vm(pool, rng: random.Random, name: str, template: bool = False, tags=(), affinity=NULL_REF) -> str:
    fields = _vm_fields(rng, name)
    if template:
        fields.update(is_a_template=True, is_default_template=True, other_config={"default_template": "true"})
    else:
        priority = rng.choice(("restart", "best-effort", ""))
        fields.update(tags=list(tags), affinity=affinity, ha_restart_priority=priority,
                      ha_always_run=priority == "restart", order=rng.randint(0, 5),
                      start_delay=rng.choice((0, 10, 30, 60)), shutdown_delay=rng.choice((0, 15, 30)))
    ref = pool.store.create("VM", fields)
    pool.store.set("VM", ref, "metrics", vm_metrics.new_metrics(pool.store))  # as VM.create makes one
    pool.store.set("VM", ref, "allowed_operations", vm_ops.allowed_operations(pool.store.record("VM", ref)))
    return ref


def _disks(ctx, rng, vm, name, sys_sr, data_srs, disk_mib, isos) -> None:
    specs = [(sys_sr, disk_mib * MiB, "system", 0.25)]
    for _ in range(rng.randint(0, 3)):
        specs.append((rng.choice(data_srs), rng.choice((4, 16, 64)) * GiB, "user", 0.001))
    for n, (sr, size, kind, density) in enumerate(specs):
        vdi = storage.seeded_vdi(ctx, sr, rng, {
            "name_label": f"{name} {'system' if n == 0 else f'data {n}'}", "name_description": "",
            "virtual_size": size, "type": kind, "sharable": False, "read_only": False,
            "other_config": {}, "snapshot_time": now()}, density)
        ctx.store.create("VBD", {"VM": vm, "VDI": vdi, "userdevice": str(n if n < 3 else n + 1),
                                 "bootable": n == 0, "mode": "RW", "type": "Disk", "empty": False,
                                 "other_config": {"owner": "true"}, "qos_algorithm_type": "",
                                 "qos_algorithm_params": {}, "unpluggable": n > 0, "device": f"xvd{'abcdef'[n]}"})
    if isos is not None:
        iso = rng.choice(isos + [NULL_REF])
        ctx.store.create("VBD", {"VM": vm, "VDI": iso, "userdevice": "3", "bootable": False, "mode": "RO",
                                 "type": "CD", "empty": iso == NULL_REF, "other_config": {},
                                 "qos_algorithm_type": "", "qos_algorithm_params": {}, "device": "xvdd"})


def _vifs(pool, rng, vm, nets) -> None:
    for device in range(rng.randint(1, 3)):
        net = nets[device % len(nets)]
        limited = rng.random() < 0.3
        pool.store.create("VIF", {
            "VM": vm, "network": net, "device": str(device), "MAC": random_mac(rng),
            "MTU": pool.store.get("network", net, "MTU"), "other_config": {},
            "qos_algorithm_type": "ratelimit" if limited else "",
            "qos_algorithm_params": {"kbps": "102400"} if limited else {},
            "locking_mode": "network_default"})
