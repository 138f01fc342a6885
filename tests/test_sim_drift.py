"""Disks that change between nights, one inventory per seed, and bounded memory.

The simulator's control API (not xapi's) drives the writes; what a client sees of them
goes through the real XenAPI client.  xen-api facts relied on: VM records' is_a_template,
is_a_snapshot and is_control_domain tell user VMs from the rest, and a VM's system disk
is its userdevice "0" disk VBD (``ocaml/idl/datamodel_vm.ml``, ``datamodel.ml`` VBD
fields); VDI.create makes an empty sparse disk of ``virtual_size`` (``xapi_vdi.ml
create``); a VDI snapshot keeps its bytes when the live disk is written
(``xapi_vdi.ml snapshot``, SM copy on write).
"""
from __future__ import annotations

import hashlib
import time

import pytest

from helpers import xapi_http as H

MiB, GiB = 1 << 20, 1 << 30
FLEET = ("--pools", "1", "--vms-per-pool", "4", "--hosts-per-pool", "1", "--disk-mib", "96")


def chunk_hashes(sim, uuid: str) -> list[bytes | None]:
    """sha256 of every 1 MiB chunk of a (small) disk; None for an all-zero chunk."""
    data = sim.vdi_bytes(uuid)
    out = []
    for at in range(0, len(data), MiB):
        chunk = data[at: at + MiB]
        out.append(None if not chunk.strip(b"\0") else hashlib.sha256(chunk).digest())
    return out


def vdi_digests(sim) -> dict[str, str]:
    """Every VDI of every pool: uuid -> digest (reads only data; no sha256 of multi-GiB disks)."""
    state = sim.state()["pools"]
    return {rec["uuid"]: sim.vdi_info(rec["uuid"], sha256=False)["digest"]
            for pool in state.values() for rec in pool["VDI"].values()}


def system_disks(state_pool: dict) -> dict[str, str]:
    """user VM name_label+uuid -> system disk VDI uuid."""
    vms, vbds, vdis = state_pool["VM"], state_pool["VBD"], state_pool["VDI"]
    out = {}
    for ref, vm in vms.items():
        if vm["is_a_template"] or vm["is_a_snapshot"] or vm["is_control_domain"]:
            continue
        for vbd in vbds.values():
            if vbd["VM"] == ref and vbd["userdevice"] == "0" and vbd["type"] == "Disk":
                out[vm["uuid"]] = vdis[vbd["VDI"]]["uuid"]
    return out


def drift(sim, body) -> tuple[int, dict]:
    return sim.control_call("POST", "/sim/drift", body)


# -- seeded writes ----------------------------------------------------------------
def test_seeded_write_is_deterministic(sim):
    """xapi_vdi.ml ``create``: a new VDI is empty; the write itself is the simulator's (same seed, same
    bytes)."""
    x = H.api(sim.session(0))
    nfs = H.sr_by_name(x, "nfs-shared")

    def disk_after(seed: int) -> dict:
        vdi = x.VDI.create({"name_label": "seeded", "SR": nfs, "virtual_size": str(8 * MiB), "type": "user",
                            "sharable": False, "read_only": False, "other_config": {}})
        uuid = x.VDI.get_uuid(vdi)
        for offset, length in ((0, 3 * MiB), (5 * MiB + 4096, 12345)):
            status, body = sim.control_call("POST", f"/sim/vdi/{uuid}/write",
                                            {"offset": offset, "length": length, "seed": seed})
            assert (status, body) == (200, {"written": length})
        return sim.vdi_info(uuid)

    one, two, other = disk_after(11), disk_after(11), disk_after(12)
    assert (one["digest"], one["sha256"]) == (two["digest"], two["sha256"])
    assert one["nonzero_bytes"] == 3 * MiB + 1 * MiB  # 12345 bytes at 5 MiB+4 KiB: one partial chunk
    assert other["digest"] != one["digest"] and other["sha256"] != one["sha256"]


@pytest.mark.parametrize("body, words", [
    ({"offset": 0, "length": 10}, "hex"),
    ({"offset": 0, "length": 10, "seed": "x"}, "seed"),
    ({"offset": 0, "length": 0, "seed": 1}, "outside"),
    ({"offset": 8 * MiB, "length": 10, "seed": 1}, "outside"),
    ({"offset": True, "length": 10, "seed": 1}, "seeded write"),
])
def test_bad_seeded_writes_are_400(sim, body, words):
    """The simulator's control API validates writes; nothing is written (VDI.create: the disk stays empty)."""
    x = H.api(sim.session(0))
    vdi = x.VDI.create({"name_label": "bad writes", "SR": H.sr_by_name(x, "nfs-shared"),
                        "virtual_size": str(8 * MiB), "type": "user", "sharable": False, "read_only": False,
                        "other_config": {}})
    uuid = x.VDI.get_uuid(vdi)
    status, reply = sim.control_call("POST", f"/sim/vdi/{uuid}/write", body)
    assert status == 400 and words in reply["error"]
    assert sim.vdi_info(uuid)["nonzero_bytes"] == 0


# -- drift ------------------------------------------------------------------------
def test_drift_changes_the_fraction_of_every_user_system_disk_and_nothing_else(fresh_sim):
    """datamodel_vm.ml is_a_template / is_a_snapshot / is_control_domain and the VBD userdevice "0" tell
    user VMs' system disks; xapi_vdi.ml ``snapshot``: snapshots keep their bytes when the live disk
    changes."""
    sim = fresh_sim(*FLEET, "--seed", "3")
    pool = sim.state()["pools"]["pool-a"]
    disks = system_disks(pool)
    before = {uuid: chunk_hashes(sim, uuid) for uuid in disks.values()}
    digests = vdi_digests(sim)
    status, reply = drift(sim, {"fraction": 0.25, "seed": 42})
    assert status == 200, reply
    assert set(reply["vdis"]) == set(disks.values())
    runs = chosen = 0
    new_data: dict[int, set] = {}
    for uuid, changed in reply["vdis"].items():
        allocated = [k for k, h in enumerate(before[uuid]) if h is not None]
        after = chunk_hashes(sim, uuid)
        differing = [k for k, (old, new) in enumerate(zip(before[uuid], after)) if old != new]
        assert changed["chunks"] == differing
        assert len(differing) == round(0.25 * len(allocated)) and set(differing) <= set(allocated)
        assert changed["bytes"] == len(differing) * MiB
        places = [allocated.index(k) for k in differing]
        runs += 1 + sum(b != a + 1 for a, b in zip(places, places[1:]))
        chosen += len(differing)
        for k in differing:
            new_data.setdefault(k, set()).add(after[k])
    # runs of 1-4 neighbouring allocated chunks: about 2.4 chunks a run (scattered single chunks: ~1.3)
    assert runs / chosen <= 0.6, (runs, chosen)
    # each VM's own data: one chunk number changed on several disks got different bytes on each
    assert any(len(hashes) > 1 for hashes in new_data.values())
    assert all(len(hashes) == sum(k in v["chunks"] for v in reply["vdis"].values())
               for k, hashes in new_data.items())
    untouched = {u: d for u, d in vdi_digests(sim).items() if u not in reply["vdis"]}
    assert untouched == {u: d for u, d in digests.items() if u not in reply["vdis"]}  # data disks, snapshots...


def test_drift_is_reproducible_and_differs_per_vm_and_seed(fresh_sim):
    """Same inventory (xapi objects by uuid) and same seed give the same night; VDI uuids come from the
    datamodel's ``uuid`` field."""
    one, two = fresh_sim(*FLEET, "--seed", "3"), fresh_sim(*FLEET, "--seed", "3")
    first, second = drift(one, {"fraction": 0.1, "seed": 9})[1], drift(two, {"fraction": 0.1, "seed": 9})[1]
    assert first == second
    assert vdi_digests(one) == vdi_digests(two)
    chunks = [tuple(v["chunks"]) for v in first["vdis"].values()]
    assert len(set(chunks)) > 1  # each disk's own choice
    again = drift(one, {"fraction": 0.1, "seed": 10, "pool": "pool-a"})[1]
    assert [v["chunks"] for v in again["vdis"].values()] != [v["chunks"] for v in first["vdis"].values()]


@pytest.mark.parametrize("body, words", [
    ({"fraction": 0, "seed": 1}, "fraction"),
    ({"fraction": 1.5, "seed": 1}, "fraction"),
    ({"fraction": "0.1", "seed": 1}, "fraction"),
    ({"fraction": True, "seed": 1}, "fraction"),
    ({"fraction": 0.1}, "seed"),
    ({"fraction": 0.1, "seed": 1.5}, "seed"),
    ({"fraction": 0.1, "seed": 1, "pool": "pool-z"}, "unknown pool"),
    ({"fraction": 0.1, "seed": 1, "when": "tonight"}, "unknown drift keys"),
    ([0.1, 1], "fraction"),
])
def test_bad_drift_requests_are_400_and_change_nothing(sim, body, words):
    """The simulator's control API validates drift requests; VM/VBD/VDI fields as in datamodel_vm.ml and
    datamodel.ml."""
    disks = system_disks(sim.state()["pools"]["pool-a"])
    before = {u: sim.vdi_info(u)["digest"] for u in disks.values()}
    status, reply = drift(sim, body)
    assert status == 400 and words in reply["error"], reply
    assert {u: sim.vdi_info(u)["digest"] for u in disks.values()} == before


# -- one seed, one inventory --------------------------------------------------------
def identity(sim) -> list:
    """Everything that names objects: per pool and class, refs and uuids, VIF MACs, mac_seeds,
    generation ids."""
    out = []
    for name, pool in sorted(sim.state()["pools"].items()):
        for cls, objects in sorted(pool.items()):
            for ref, rec in sorted(objects.items()):
                out.append((name, cls, ref, rec.get("uuid"), rec.get("MAC"), rec.get("generation_id"),
                            rec.get("other_config", {}).get("mac_seed")))
    return out


def test_same_seed_same_inventory_uuids_and_bytes(fresh_sim):
    """Every xapi object has a uuid and an OpaqueRef (datamodel.ml); VIF.MAC and VM.other_config mac_seed /
    generation_id as xapi_vm_clone.ml sets them; network.create (implicit constructor) makes a fresh
    random uuid, as Ref.make/Uuid.make do."""
    small = ("--pools", "2", "--vms-per-pool", "5", "--hosts-per-pool", "2", "--disk-mib", "8")
    one, two, other = fresh_sim(*small, "--seed", "5"), fresh_sim(*small, "--seed", "5"), \
        fresh_sim(*small, "--seed", "6")
    assert identity(one) == identity(two)
    assert vdi_digests(one) == vdi_digests(two)
    uuids = {row[3] for row in identity(one)}
    assert not uuids & {row[3] for row in identity(other)}
    # objects clients make later are random, as xapi's are
    made = [H.api(s.session(0)).network.create({"name_label": "n", "other_config": {}}) for s in (one, two)]
    assert made[0] != made[1]


# -- bounded memory ---------------------------------------------------------------
def test_a_64_gib_sparse_disk_costs_megabytes_and_answers_fast(fresh_sim):
    """xapi_vdi.ml ``create``: a VDI of virtual_size bytes, sparse on a thin (nfs) SR."""
    sim = fresh_sim("--pools", "1", "--vms-per-pool", "1", "--hosts-per-pool", "1", "--disk-mib", "4")
    x = H.api(sim.session(0))
    rss_before = sim.rss_bytes()
    vdi = x.VDI.create({"name_label": "big", "SR": H.sr_by_name(x, "nfs-shared"), "virtual_size": str(64 * GiB),
                        "type": "user", "sharable": False, "read_only": False, "other_config": {}})
    uuid = x.VDI.get_uuid(vdi)
    for k in range(32):  # 32 MiB of literal writes, spread over the disk
        H.guest_write(sim, uuid, k * 2 * GiB + 4096, bytes([k + 1]) * MiB)
    status, body = sim.control_call("POST", f"/sim/vdi/{uuid}/write",
                                    {"offset": 41 * GiB, "length": 48 * MiB, "seed": 3})
    assert status == 200, body
    grown = sim.rss_bytes() - rss_before
    assert grown < 24 * MiB, f"the simulator grew by {grown / MiB:.1f} MiB for 80 MiB written to a 64 GiB disk"
    began = time.monotonic()
    info = sim.vdi_info(uuid)
    assert time.monotonic() - began < 5
    assert "sha256" not in info and len(info["digest"]) == 64
    assert info["nonzero_bytes"] == 32 * 2 * MiB + 48 * MiB  # each literal write straddles two chunks
    assert int(info["virtual_size"]) == 64 * GiB
