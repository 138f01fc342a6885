"""Benchmark: `catalog.scan` over a destination of 10,000 backups.

Fabricates 20 pools x 500 VMs, one complete backup each (a small dummy data
file and a realistic manifest, skeleton included), plus some partial files and
orphan data files, in a temporary directory.  Times ``catalog.scan`` (best of
3) and, as the in-run baseline, a plain ``os.walk`` that lists the same files
without parsing anything (best of 3).  Prints ``name: value`` lines:
catalog_10k_s (target < 2 s), walk_10k_s, catalog_vs_walk_ratio, listed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid as uuidlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tinabs_tasks.storage import catalog# noqa: E402
from tinabs_tasks.storage.destination import safe_name# noqa: E402

POOLS, VMS = 20, 500
EXTRA_PARTIAL, EXTRA_ORPHAN = 200, 200
SKELETON = {
    "VCPUs_max": "2", "VCPUs_at_startup": "2", "memory_static_max": "4294967296",
    "memory_static_min": "1073741824", "memory_dynamic_max": "4294967296", "memory_dynamic_min": "1073741824",
    "platform": {"acpi": "1", "apic": "true", "pae": "true", "viridian": "true", "nx": "true"},
    "HVM_boot_policy": "BIOS order", "HVM_boot_params": {"order": "cdn"}, "PV_args": "", "PV_bootloader": "",
    "actions_after_shutdown": "destroy", "actions_after_reboot": "restart", "actions_after_crash": "restart",
    "domain_type": "hvm", "tags": ["prod", "web"], "other_config": {"base_template_name": "Debian 12"},
    "VIFs": [{"device": "0", "network": "Pool-wide network", "MAC": "aa:bb:cc:dd:ee:01", "MTU": "1500"}],
    "VBDs": [{"userdevice": "0", "type": "Disk", "mode": "RW", "bootable": True,
              "VDI": {"virtual_size": "21474836480", "name_label": "system"}}],
}


def fabricate(dest: str) -> int:
    n = 0
    payload = b"x" * 1024
    digest = hashlib.sha256(payload).hexdigest()
    for p in range(POOLS):
        pool = f"pool-{p:02d}"
        for v in range(VMS):
            vm_uuid, name = str(uuidlib.uuid4()), f"vm-{p:02d}-{v:03d}"
            folder = os.path.join(dest, safe_name(pool), f"{safe_name(name)}--{vm_uuid}")
            os.makedirs(folder)
            stamp, run = f"2026{(v % 12) + 1:02d}{(v % 28) + 1:02d}T{v % 24:02d}0000Z", uuidlib.uuid4().hex[:12]
            mode = "export" if v % 4 else "sr-copy"
            base = os.path.join(folder, f"{stamp}-{run}")
            data = base + (".xva" if mode == "export" else ".metadata.xva")
            with open(data, "wb") as fh:
                fh.write(payload)
            manifest = {
                "format": 1, "vm": {"uuid": vm_uuid, "name": name}, "pool": pool, "job": uuidlib.uuid4().hex[:12],
                "run": run, "mode": mode, "file": os.path.basename(data), "size": len(payload), "sha256": digest,
                "created": stamp, "completed": stamp,
                "timings": {"snapshot": 1.2, "export": 30.5, "transfer": 30.1, "cleanup": 0.4},
                "skeleton": SKELETON,
                "pool_software": {"product_brand": "XCP-ng", "product_version": "8.2.1", "xapi": "1.20"},
            }
            if mode == "sr-copy":
                manifest.update(backup_sr="backup-sr", copied_vdis=[{"uuid": str(uuidlib.uuid4()), "userdevice": "0"}])
            with open(base + ".json", "w") as fh:
                json.dump(manifest, fh, indent=2, sort_keys=True)
            n += 1
            if v < EXTRA_PARTIAL // POOLS:
                with open(os.path.join(folder, f"20270101T000000Z-{uuidlib.uuid4().hex[:12]}.xva.partial"), "wb") as fh:
                    fh.write(payload)
            elif v < (EXTRA_PARTIAL + EXTRA_ORPHAN) // POOLS:
                with open(os.path.join(folder, f"20270102T000000Z-{uuidlib.uuid4().hex[:12]}.xva"), "wb") as fh:
                    fh.write(payload)
    return n


def walk(dest: str) -> int:
    return sum(len(files) for _, _, files in os.walk(dest))


def best_of(fn, n=3):
    best, result = float("inf"), None
    for _ in range(n):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> int:
    tmp = tempfile.mkdtemp(prefix="tinabs-catalog-bench-")
    try:
        made = fabricate(tmp)
        catalog_s, listed = best_of(lambda: catalog.scan(tmp))
        walk_s, files = best_of(lambda: walk(tmp))
        assert len(listed) == made, (len(listed), made)
        everything = catalog.scan(tmp, include_incomplete=True)
        assert len(everything) == made + EXTRA_PARTIAL + EXTRA_ORPHAN, len(everything)
        print(f"fabricated: {made} backups, {files} files")
        print(f"catalog_10k_s: {catalog_s:.3f}")
        print(f"walk_10k_s: {walk_s:.3f}")
        print(f"catalog_vs_walk_ratio: {catalog_s / walk_s:.2f}")
        print(f"listed: {len(listed)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
