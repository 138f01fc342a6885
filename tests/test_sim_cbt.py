"""Changed block tracking as xapi and SM do it, through the real XenAPI client.

Facts relied on (xen-api ``ocaml/xapi/xapi_vdi.ml``, SM ``drivers/VDI.py``,
blktap ``include/cbt-util.h``, SM ``drivers/XE_SR_ERRORCODES.xml``):
* ``change_cbt_status``: enable_cbt/disable_cbt do nothing when CBT already is so.
* ``check_operation_error``: enable/disable_cbt on a snapshot -> OPERATION_NOT_ALLOWED
  ["VDI is a snapshot: <ref>"]; CBT operations need the SR's VDI_CONFIG_CBT feature
  (SR_OPERATION_NOT_SUPPORTED [sr]); a cbt_metadata VDI refuses clone, copy and snapshot
  (VDI_INCOMPATIBLE_TYPE [vdi, "cbt_metadata"]); data_destroy of a non-snapshot ->
  OPERATION_NOT_ALLOWED ["VDI is not a snapshot: <ref>"], of a VDI without CBT ->
  VDI_NO_CBT_METADATA [vdi]; list_changed_blocks refuses an attached vdi_to
  (VDI_IN_USE [vdi, "list_changed_blocks"]).
* ``_data_destroy`` / ``wait_for_vbds_to_be_unplugged_and_destroyed``: the type becomes
  cbt_metadata; VBDs still there after 4 s -> VDI_IN_USE [vdi, "data_destroy"].
* SM ``VDI._cbt_snapshot``: the snapshot takes the VDI's log and has CBT; ``list_changed_blocks``
  ORs the logs from vdi_from's child to vdi_to, else CBTChangedBlocksError (code 460, "Failed to
  calculate changed blocks for given VDIs.") with "Source and target VDI are unrelated" / "are
  same"; the bitmap is byte-reversed into a big-endian bitarray: bit i = 64 KiB block i, MSB first.
  ``configure_blocktracking`` (disable) unlinks the log: a new enable starts a new chain.
  ``VDI.delete`` merges a deleted snapshot's bitmap into its child's.
* ``cbt-util.h bitmap_size``: ceil(ceil(size / 64 KiB) / 8) bytes.
"""
from __future__ import annotations

import base64
import time

import pytest
import XenAPI

from helpers import xapi_http as H

KiB, MiB = 1 << 10, 1 << 20
BLOCK = 64 * KiB
SIZE = 8 * MiB  # 128 blocks: a 16-byte bitmap


def new_vdi(x, sr, size=SIZE, name="cbt test") -> str:
    return x.VDI.create({"name_label": name, "name_description": "", "SR": sr, "virtual_size": str(size),
                         "type": "user", "sharable": False, "read_only": False, "other_config": {}})


def write(sim, x, vdi, offset, length, seed=None):
    uuid = x.VDI.get_uuid(vdi)
    body = ({"offset": offset, "hex": "5a" * length} if seed is None
            else {"offset": offset, "length": length, "seed": seed})
    status, reply = sim.control_call("POST", f"/sim/vdi/{uuid}/write", body)
    assert status == 200, reply


def changed(x, vdi_from, vdi_to) -> bytes:
    return base64.b64decode(x.VDI.list_changed_blocks(vdi_from, vdi_to))


def bitmap(blocks, size=SIZE) -> bytes:
    """The expected bitmap, written out independently of the simulator's encoder."""
    out = bytearray(-(-(-(-size // BLOCK)) // 8))
    for b in blocks:
        out[b // 8] |= 1 << (7 - b % 8)
    return bytes(out)


def failure(call, *args) -> list[str]:
    with pytest.raises(XenAPI.Failure) as err:
        call(*args)
    return err.value.details


def unrelated(reason="unrelated") -> list[str]:
    return ["SR_BACKEND_FAILURE_460", "",
            f"Failed to calculate changed blocks for given VDIs. [opterr=Source and target VDI are {reason}]", ""]


def test_bitmap_has_exactly_the_blocks_written_between_snapshots(sim, x, nfs):
    """SM VDI.py ``_cbt_snapshot`` / ``list_changed_blocks`` (chain walk, byte-reversed bitarray),
    ``VDI.delete`` (bitmap coalesced into the child); xapi_vdi.ml ``change_cbt_status`` (idempotent)."""
    vdi = new_vdi(x, nfs)
    x.VDI.enable_cbt(vdi)
    x.VDI.enable_cbt(vdi)  # idempotent
    assert x.VDI.get_cbt_enabled(vdi) is True
    monday = x.VDI.snapshot(vdi)
    assert x.VDI.get_cbt_enabled(monday) is True
    write(sim, x, vdi, 0, 1)                          # block 0
    write(sim, x, vdi, 5 * BLOCK + 100, BLOCK)        # blocks 5 and 6
    write(sim, x, vdi, 1 * MiB, 1 * MiB, seed=7)      # blocks 16..31
    tuesday = x.VDI.snapshot(vdi)
    # written out by hand: MSB first, block 0 -> 0x80, 5 -> 0x04, 6 -> 0x02
    assert changed(x, monday, tuesday) == bytes([0x86, 0x00, 0xFF, 0xFF]) + bytes(12)
    assert len(changed(x, monday, tuesday)) == 16
    write(sim, x, vdi, 100 * BLOCK, 10)               # block 100
    wednesday = x.VDI.snapshot(vdi)
    assert changed(x, tuesday, wednesday) == bitmap({100})
    assert changed(x, monday, wednesday) == bitmap({0, 5, 6, *range(16, 32), 100})
    write(sim, x, vdi, SIZE - 1, 1)                   # the last block, on the live (detached) disk
    assert changed(x, wednesday, vdi) == bitmap({127})
    assert changed(x, monday, vdi) == bitmap({0, 5, 6, *range(16, 32), 100, 127})
    # deleting Tuesday merges its log into Wednesday's: Monday..Wednesday stays right
    x.VDI.destroy(tuesday)
    assert changed(x, monday, wednesday) == bitmap({0, 5, 6, *range(16, 32), 100})
    assert failure(x.VDI.list_changed_blocks, monday, monday) == unrelated("same")


def test_bitmap_length_follows_the_disk_size(sim, x, nfs):
    """blktap cbt-util.h ``bitmap_size``: ceil(ceil(size / 64 KiB) / 8) bytes; SM ``list_changed_blocks``
    MSB-first bits."""
    vdi = new_vdi(x, nfs, size=MiB + 1)  # 17 blocks -> 3 bytes
    x.VDI.enable_cbt(vdi)
    base = x.VDI.snapshot(vdi)
    write(sim, x, vdi, MiB, 1)           # block 16, in the last, partial byte
    assert changed(x, base, vdi) == bytes([0, 0, 0x80])


def test_data_destroy_keeps_the_log_and_refuses_data_operations(sim, x, nfs):
    """xapi_vdi.ml ``_data_destroy`` (type cbt_metadata, idempotent) and ``check_operation_error``
    (cbt_metadata refuses clone/copy/snapshot; data_destroy needs a CBT snapshot); SM ``data_destroy``
    keeps the cbtlog."""
    vdi = new_vdi(x, nfs)
    write(sim, x, vdi, 0, 2 * MiB, seed=1)
    x.VDI.enable_cbt(vdi)
    base = x.VDI.snapshot(vdi)
    assert int(x.VDI.get_physical_utilisation(base)) > 0
    x.VDI.data_destroy(base)
    rec = x.VDI.get_record(base)
    assert (rec["type"], rec["cbt_enabled"], rec["physical_utilisation"]) == ("cbt_metadata", True, "0")
    assert sim.vdi_info(rec["uuid"])["nonzero_bytes"] == 0
    x.VDI.data_destroy(base)  # already done: nothing to do
    write(sim, x, vdi, 3 * BLOCK, 1)
    later = x.VDI.snapshot(vdi)
    assert changed(x, base, later) == bitmap({3})   # still usable as vdi_from
    for call, args in ((x.VDI.clone, (base,)), (x.VDI.snapshot, (base,)), (x.VDI.copy, (base, nfs))):
        assert failure(call, *args) == ["VDI_INCOMPATIBLE_TYPE", base, "cbt_metadata"]
    assert failure(x.VDI.data_destroy, vdi) == ["OPERATION_NOT_ALLOWED", f"VDI is not a snapshot: {vdi}"]
    plain = x.VDI.snapshot(new_vdi(x, nfs))
    assert failure(x.VDI.data_destroy, plain) == ["VDI_NO_CBT_METADATA", plain]


def test_data_destroy_waits_for_the_vbds_of_a_vm_snapshot(sim, x):
    """xapi_vdi.ml ``wait_for_vbds_to_be_unplugged_and_destroyed`` (4 s, then VDI_IN_USE [vdi,
    "data_destroy"]) and ``_data_destroy`` (the type is put back on failure)."""
    source = next(ref for ref, rec in H.user_vms(x).items() if rec["power_state"] == "Halted")
    vm = H.own_vm(x, "cbt vm snapshot", source)
    disk = x.VBD.get_VDI(H.system_vbd(x, vm))
    x.VDI.enable_cbt(disk)
    snap_vm = x.VM.snapshot(vm, "nightly")
    (snap_vbd,) = [b for b in x.VM.get_VBDs(snap_vm) if x.VBD.get_type(b) == "Disk"]
    snap_disk = x.VBD.get_VDI(snap_vbd)
    began = time.monotonic()
    assert failure(x.VDI.data_destroy, snap_disk) == ["VDI_IN_USE", snap_disk, "data_destroy"]
    assert time.monotonic() - began >= 3.5  # it waited (4 s) for the VBD to go
    assert x.VDI.get_type(snap_disk) == "system"  # put back
    x.VBD.destroy(snap_vbd)
    x.VDI.data_destroy(snap_disk)
    assert x.VDI.get_type(snap_disk) == "cbt_metadata"


def test_list_changed_blocks_refuses_an_attached_vdi_to(sim, x):
    """xapi_vdi.ml ``check_operation_error``: list_changed_blocks is not a live operation (VDI_IN_USE [vdi,
    op]) while enable/disable_cbt and snapshot are."""
    source = next(ref for ref, rec in H.user_vms(x).items() if rec["power_state"] == "Halted")
    vm = H.own_vm(x, "cbt running", source)
    disk = x.VBD.get_VDI(H.system_vbd(x, vm))
    x.VDI.enable_cbt(disk)
    base = x.VDI.snapshot(disk)
    x.VM.start(vm, False, False)
    try:
        assert failure(x.VDI.list_changed_blocks, base, disk) == ["VDI_IN_USE", disk, "list_changed_blocks"]
        x.VDI.disable_cbt(disk)  # allowed live
        x.VDI.enable_cbt(disk)
        newer = x.VDI.snapshot(disk)  # a snapshot of a running VM's disk is fine
        assert changed(x, newer, x.VDI.snapshot(disk)) == bitmap(set(), int(x.VDI.get_virtual_size(disk)))
    finally:
        x.VM.hard_shutdown(vm)


def test_disable_ends_the_history_and_unrelated_vdis_fail(sim, x, nfs):
    """SM VDI.py ``configure_blocktracking`` (disable deletes the log, nulls the parent's child) and
    ``list_changed_blocks`` (CBTChangedBlocksError 460 for unrelated VDIs); xapi_vdi.ml
    ``change_cbt_status``."""
    vdi = new_vdi(x, nfs)
    x.VDI.enable_cbt(vdi)
    monday = x.VDI.snapshot(vdi)
    write(sim, x, vdi, 0, 1)
    tuesday = x.VDI.snapshot(vdi)
    x.VDI.disable_cbt(vdi)
    x.VDI.disable_cbt(vdi)  # idempotent
    assert x.VDI.get_cbt_enabled(vdi) is False
    assert x.VDI.get_cbt_enabled(tuesday) is True  # snapshots keep their logs
    assert changed(x, monday, tuesday) == bitmap({0})
    assert failure(x.VDI.list_changed_blocks, tuesday, vdi) == unrelated()
    x.VDI.enable_cbt(vdi)  # a new history: the old snapshots are unrelated to it
    write(sim, x, vdi, BLOCK, 1)
    wednesday = x.VDI.snapshot(vdi)
    assert failure(x.VDI.list_changed_blocks, tuesday, wednesday) == unrelated()
    write(sim, x, vdi, 2 * BLOCK, 1)
    assert changed(x, wednesday, x.VDI.snapshot(vdi)) == bitmap({2})
    other = new_vdi(x, nfs)
    x.VDI.enable_cbt(other)
    assert failure(x.VDI.list_changed_blocks, monday, x.VDI.snapshot(other)) == unrelated()


def test_cbt_refusals_follow_check_operation_error(sim, x, nfs):
    """xapi_vdi.ml ``check_operation_error`` (snapshot: OPERATION_NOT_ALLOWED; no VDI_CONFIG_CBT:
    SR_OPERATION_NOT_SUPPORTED) and ``create``/``copy`` (new VDIs start with cbt_enabled false)."""
    vdi = new_vdi(x, nfs)
    snap = x.VDI.snapshot(vdi)
    assert x.VDI.get_cbt_enabled(snap) is False  # no CBT, no log to take
    for call in (x.VDI.enable_cbt, x.VDI.disable_cbt):
        assert failure(call, snap) == ["OPERATION_NOT_ALLOWED", f"VDI is a snapshot: {snap}"]
    iso = H.sr_by_name(x, "ISO library")
    iso_vdi = x.SR.get_VDIs(iso)[0]
    assert failure(x.VDI.enable_cbt, iso_vdi) == ["SR_OPERATION_NOT_SUPPORTED", iso]
    x.VDI.enable_cbt(vdi)
    # clones and copies are new disks without CBT (VDI.create ~cbt_enabled:false)
    assert x.VDI.get_cbt_enabled(x.VDI.clone(vdi)) is False
    assert x.VDI.get_cbt_enabled(x.VDI.copy(vdi, nfs)) is False
    assert failure(x.VDI.enable_cbt, "OpaqueRef:NULL") == ["HANDLE_INVALID", "VDI", "OpaqueRef:NULL"]
