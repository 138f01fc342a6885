"""VDI.copy(vdi, sr, base_vdi, into_vdi) as the simulator does it (FACTS.md §10): a sparse copy,
into a new VDI or an existing one, of every chunk with data or, with a base, of only the chunks
that differ; its checks, its duration and the bytes it copied (GET /sim/stats).

Driven through the XenAPI client; every disk copied or written is the tests' own.
"""
from __future__ import annotations

import time

import pytest
import XenAPI

from helpers import xapi_http as H
from helpers.sim_proc import wait_task

MiB = 1 << 20
NULL = H.NULL


def _own_disk(x, sr) -> str:
    uuid = next(d["uuid"] for vm in H.user_vms(x) for b, d in H.vm_disks(x, vm)
                if b["userdevice"] == "0" and d["SR"] == sr)
    return x.VDI.clone(x.VDI.get_by_uuid(uuid), {})


def _new_vdi(x, sr, size) -> str:
    return x.VDI.create({"name_label": "copy target", "name_description": "", "SR": sr, "virtual_size": str(size),
                         "type": "user", "sharable": False, "read_only": False, "other_config": {},
                         "xenstore_data": {}, "sm_config": {}, "tags": []})


def _copied(sim) -> int:
    return sim.control_call("GET", "/sim/stats")[1]["pools"][sim.pool(0)["name"]]["copied_bytes"]


def _sha(sim, x, vdi) -> str:
    return sim.vdi_info(x.VDI.get_uuid(vdi))["sha256"]


def _data_chunk_bytes(sim, x, vdi) -> int:
    raw = sim.vdi_bytes(x.VDI.get_uuid(vdi))
    return sum(len(raw[k:k + MiB]) for k in range(0, len(raw), MiB) if raw[k:k + MiB].count(0) != len(raw[k:k + MiB]))


def _failure(call, *args) -> list[str]:
    with pytest.raises(XenAPI.Failure) as err:
        call(*args)
    return err.value.details


def test_copy_with_base_into_an_existing_vdi_writes_only_the_changed_chunks(sim, x, nfs):
    """xapi_vdi.ml ``copy`` (into_vdi a valid ref: written into; base_vdi: Sm_fs_ops.copy_vdi
    ?base, a sparse_dd of only the blocks that differ):
    Given snapshot s1 of our disk copied to a new VDI on the SR (every chunk with data, counted),
    and guest writes into three chunks before snapshot s2
    When VDI.copy(s2, NULL, base=s1, into=that copy) runs
    Then it returns the copy, whose bytes are now s2's, and the simulator counted exactly the three
    changed chunks (3 MiB) as copied."""
    disk = _own_disk(x, nfs)
    s1 = x.VDI.snapshot(disk, {})
    before = _copied(sim)
    copy = x.VDI.copy(s1, nfs, NULL, NULL)
    assert _copied(sim) - before == _data_chunk_bytes(sim, x, s1) > 0
    assert _sha(sim, x, copy) == _sha(sim, x, s1)
    uuid = x.VDI.get_uuid(disk)
    for offset in (2 * MiB + 10, 7 * MiB, 12 * MiB + MiB - 1):
        H.guest_write(sim, uuid, offset, b"\xc3")
    s2 = x.VDI.snapshot(disk, {})
    assert _sha(sim, x, s2) != _sha(sim, x, copy)
    before = _copied(sim)
    assert x.VDI.copy(s2, NULL, s1, copy) == copy
    assert _copied(sim) - before == 3 * MiB
    assert _sha(sim, x, copy) == _sha(sim, x, s2)
    assert x.VDI.get_SR(copy) == nfs and x.VDI.get_virtual_size(copy) == x.VDI.get_virtual_size(s2)


def test_copy_into_without_base_writes_the_chunks_with_data_only(sim, x, nfs):
    """sm_fs_ops.ml ``copy_vdi``: a sparse copy (the SR need not have zeroes written) writes the
    source's allocated blocks and nothing else, so into an empty VDI it makes the source's bytes,
    while into a VDI holding data where the source has none that data stays.
    Given our disk, an empty VDI of its size and one with data in a chunk the disk has none in
    When the disk is copied into each (no base)
    Then the empty one gets exactly the disk's bytes, counted as the disk's data chunks; the other
    gets the disk's bytes everywhere but in that chunk, which keeps its data."""
    disk = _own_disk(x, nfs)
    size = int(x.VDI.get_virtual_size(disk))
    raw = sim.vdi_bytes(x.VDI.get_uuid(disk))
    empty_chunk = next(k for k in range(size // MiB) if raw[k * MiB:(k + 1) * MiB].count(0) == MiB)
    empty, dirty = _new_vdi(x, nfs, size), _new_vdi(x, nfs, size)
    H.guest_write(sim, x.VDI.get_uuid(dirty), empty_chunk * MiB, b"\xee" * 4096)
    before = _copied(sim)
    x.VDI.copy(disk, NULL, NULL, empty)
    assert _copied(sim) - before == _data_chunk_bytes(sim, x, disk)
    assert _sha(sim, x, empty) == _sha(sim, x, disk)
    x.VDI.copy(disk, NULL, NULL, dirty)
    expected = bytearray(raw)
    expected[empty_chunk * MiB: empty_chunk * MiB + 4096] = b"\xee" * 4096
    assert sim.vdi_bytes(x.VDI.get_uuid(dirty)) == expected


def test_copy_checks_the_destination(sim, x, nfs):
    """xapi_vdi.ml ``copy``: a read-only destination is VDI_READONLY [dst]; a smaller one
    VDI_TOO_SMALL [dst, source virtual_size]; an into_vdi that is no valid ref is none
    (``Db.is_valid_ref``), so a new VDI is made on ``sr``; with into_vdi, ``sr`` is not used."""
    disk = _own_disk(x, nfs)
    size = x.VDI.get_virtual_size(disk)
    snap = x.VDI.snapshot(disk, {})
    assert _failure(x.VDI.copy, disk, NULL, NULL, snap) == ["VDI_READONLY", snap]
    small = _new_vdi(x, nfs, int(size) - MiB)
    assert _failure(x.VDI.copy, disk, NULL, NULL, small) == ["VDI_TOO_SMALL", small, size]
    made = x.VDI.copy(disk, nfs, NULL, "OpaqueRef:no-such-vdi")
    assert x.VDI.get_SR(made) == nfs and _sha(sim, x, made) == _sha(sim, x, disk)
    local = x.SR.get_by_name_label("Local storage")[0]
    target = _new_vdi(x, nfs, int(size))
    assert x.VDI.copy(disk, local, NULL, target) == target and x.VDI.get_SR(target) == nfs


def test_copy_time_follows_the_bytes_copied_and_a_copy_can_be_cancelled(fresh_sim):
    """sm_fs_ops.ml ``copy_vdi`` (TaskHelper.set_cancellable; sparse_dd's progress callback raises
    when the task is cancelling): the simulated storage moves copy_bandwidth bytes a second.
    Given a simulator whose storage copies 4 MB/s and a 16 MiB disk a quarter full
    When the disk is copied in full, then a one-chunk delta of it into that copy, then copied
    again through Async and the task cancelled
    Then the full copy takes about its data / 4 MB/s, the delta a quarter of a second, and the
    cancelled task ends cancelled."""
    sim = fresh_sim("--pools", "1", "--vms-per-pool", "1", "--hosts-per-pool", "1", "--disk-mib", "16",
                    "--copy-bandwidth-mbps", "4")
    x = H.api(sim.session(0))
    nfs = H.sr_by_name(x, "nfs-shared")
    disk = _own_disk(x, nfs)
    s1 = x.VDI.snapshot(disk, {})
    data = _data_chunk_bytes(sim, x, s1)
    began = time.monotonic()
    copy = x.VDI.copy(s1, nfs, NULL, NULL)
    full = time.monotonic() - began
    H.guest_write(sim, x.VDI.get_uuid(disk), 3 * MiB, b"\x01")
    s2 = x.VDI.snapshot(disk, {})
    began = time.monotonic()
    x.VDI.copy(s2, NULL, s1, copy)
    delta = time.monotonic() - began
    assert data / 4e6 <= full < data / 4e6 + 1.0
    assert MiB / 4e6 <= delta < 0.8
    task = x.Async.VDI.copy(s1, nfs, NULL, NULL)
    time.sleep(0.2)
    x.task.cancel(task)
    assert wait_task(x, task)["status"] == "cancelled"
