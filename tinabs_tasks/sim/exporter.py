"""GET /export and /export_metadata bodies (ocaml/xapi/export.ml)."""
from __future__ import annotations

from tinabs_tasks.sim import ovaxml
from tinabs_tasks.sim.disks import CHUNK
from tinabs_tasks.sim.xva import END_OF_ARCHIVE, disk_members, member


class ConnectionDropped(Exception):
    """A fault cut the stream (or the client went away)."""


def disks_of(pool, table: dict[str, str]) -> list[tuple[str, str]]:
    """(export id, VDI ref) in the order xapi streams them: string order of the ids."""
    return sorted((eid, ref) for eid, ref in table.items() if pool.store.exists("VDI", ref)
                  and ref in pool.disks and eid.startswith("Ref:"))


def expected_size(pool, header: bytes, disks) -> int:
    total = 512 + len(header) + 1024
    for _, vdi in disks:
        content = pool.content(vdi)
        total += content.nonzero_bytes() + 2 * CHUNK + 2048 * content.chunk_count() // 64
    return total


def stream_xva(pool, vm: str, write, *, task: str | None) -> int:
    """Write the XVA of ``vm`` through ``write(bytes)``; returns the bytes written."""
    found = ovaxml.collect(pool.store, vm, snapshots=False)
    header, table = ovaxml.build(pool, found, preserve_power_state=False)
    disks = disks_of(pool, {eid: ref for eid, ref in table.items() if ref in found["VDI"]})
    total = expected_size(pool, header, disks)
    sent = 0
    for piece in member("ova.xml", header):
        sent += write(piece)
    for eid, vdi in disks:
        for parts in disk_members(eid, pool.content(vdi), pool.settings.export_keepalive_s):
            for piece in parts:
                sent += write(piece)
            pool.tasks.check_cancel(task)
            if task:
                pool.tasks.progress(task, min(0.99, sent / total))
    sent += write(END_OF_ARCHIVE)
    return sent


def metadata_vms(store, *, include_dom0: bool) -> list[str]:
    """The VMs of ``/export_metadata?all=true`` (export.ml ``metadata_handler``).

    Every VM but the default templates (``is_default_template``, or a template whose
    other_config says ``default_template=true``); snapshots and custom templates
    included; the control domains only with ``include_dom0`` (default true).
    """
    out = []
    for ref, rec in store.all_records("VM").items():
        default_template = rec["is_default_template"] or (
            rec["is_a_template"] and rec["other_config"].get("default_template") == "true")
        if not default_template and (include_dom0 or not rec["is_control_domain"]):
            out.append(ref)
    return out


def metadata_tar(pool, vms: list[str], *, snapshots: bool, excluded: set[str]) -> bytes:
    found = ovaxml.collect(pool.store, vms, snapshots=snapshots, excluded=excluded, cd_images=True)
    header, _ = ovaxml.build(pool, found, preserve_power_state=True, snapshot_metadata=snapshots)
    return b"".join(member("ova.xml", header)) + END_OF_ARCHIVE
