"""The disks an sr-copy backup keeps on its pool's backup SR: still there, on that SR, same size.

Verify checks them for every sr-copy backup (``pool_check``), one session per pool.
"""
from __future__ import annotations

import XenAPI

from tinabs_tasks.xapi.connect import PoolSession
from tinabs_tasks.xapi.errors import classify
from tinabs_tasks.xapi.port import Xapi


def check_copied_vdis(xapi, manifest: dict) -> list[str]:
    """The disks an sr-copy backup keeps on the backup SR: still there, on that SR, same size."""
    problems = []
    x = xapi.x
    wanted_sr = (manifest.get("backup_sr") or {}).get("uuid")
    for copied in manifest.get("copied_vdis") or []:
        try:
            vdi = x.VDI.get_by_uuid(copied["uuid"])
        except XenAPI.Failure:
            problems.append(f"copied disk {copied['uuid']} is gone from pool {manifest.get('pool')}")
            continue
        sr_uuid = x.SR.get_uuid(x.VDI.get_SR(vdi))
        if wanted_sr and sr_uuid != wanted_sr:
            problems.append(f"copied disk {copied['uuid']} is on SR {sr_uuid}, not the backup SR {wanted_sr}")
        size = int(x.VDI.get_virtual_size(vdi))
        if size != int(copied.get("virtual_size", size)):
            problems.append(f"copied disk {copied['uuid']} has size {size}, manifest says {copied['virtual_size']}")
    if not manifest.get("copied_vdis"):
        problems.append("an sr-copy manifest without copied_vdis: nothing to restore from")
    return problems


def pool_check(cfg):
    """Checks an sr-copy backup's kept disks on its pool, one session per pool."""
    sessions = {}

    def check(manifest: dict) -> list[str]:
        pool = manifest.get("pool")
        if pool not in cfg.pools:
            return [f"pool {pool!r} is not in the config: the copied disks were not checked"]
        try:
            if pool not in sessions:
                sessions[pool] = Xapi(PoolSession(cfg.pool(pool)))
            return check_copied_vdis(sessions[pool], manifest)
        except Exception as exc:  # unreachable pool, bad credentials: say so, per backup
            return [f"could not check the copied disks: {classify(exc, pool)}"]

    return check
