"""The simulator's seeded inventory and its control API, seen through XenAPI and plain HTTP.

Given a simulator started with a seed, then every pool looks like a real one
(control domains, templates, snapshots, tagged and untagged VMs, disks on
several SRs, VIFs, HA settings, CDs, local/shared/backup/ISO SRs), the same
seed gives the same pool, and ``/sim/state`` shows every object there is.
"""
from __future__ import annotations

import collections
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest
import XenAPI

WEEKDAYS = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"}
CLASSES = {"pool", "host", "SR", "PBD", "VDI", "VBD", "VIF", "network", "VM", "task", "session"}
MODULE_ARGS = ("--pools", "2", "--vms-per-pool", "8", "--hosts-per-pool", "2", "--disk-mib", "16")  # as conftest


def records(sim, pool: int) -> dict[str, dict]:
    """Every record of the classes an inventory check needs, fetched as a client would."""
    x = sim.session(pool).xenapi
    return {cls: getattr(x, cls).get_all_records() for cls in ("pool", "host", "SR", "PBD", "VDI", "VBD",
                                                                  "VIF", "network", "VM")}


def guests(db: dict) -> dict[str, dict]:
    return {ref: vm for ref, vm in db["VM"].items()
            if not (vm["is_a_template"] or vm["is_control_domain"] or vm["is_a_snapshot"])}


def disk_vbds(db: dict, vm: dict) -> list[dict]:
    return [db["VBD"][b] for b in vm["VBDs"] if db["VBD"][b]["type"] == "Disk"]


@pytest.fixture(scope="module")
def dbs(sim):
    return [records(sim, i) for i in range(len(sim.pools))]


# -- hosts, pool, SRs ----------------------------------------------------------
def test_hosts_look_like_xcp_ng_and_pool_master_is_the_master(sim, dbs):
    for i, db in enumerate(dbs):
        # Given a pool's hosts; when the pool's master is asked for
        s = sim.session(i)
        (pool_ref,) = db["pool"]
        master = s.xenapi.pool.get_master(pool_ref)
        # Then it is the host at the master URL, and every host reports a plausible version
        assert db["host"][master]["address"] == urllib.parse.urlsplit(sim.pool(i)["master"]).hostname
        assert len(db["host"]) == 2
        for host in db["host"].values():
            sw = host["software_version"]
            assert re.fullmatch(r"\d+\.\d+\.\d+", sw["product_version"]), sw
            assert sw["product_brand"] in ("XCP-ng", "XenServer") and sw["hostname"] == host["hostname"]
            assert re.fullmatch(r"\d+\.\d+(\.\d+)?", sw["xapi"]) and sw["build_number"]
            assert host["API_version_major"] == "2"  # ints travel as strings
            assert 0 <= int(host["API_version_minor"]) <= 30 and host["API_version_vendor"] == "XenSource"
        assert re.fullmatch(r"2\.\d+", s.API_version)


def test_members_answer_host_is_slave_with_master_address(sim):
    # Given a pool member; when a client logs in there
    member = XenAPI.Session(sim.pool(0)["members"][0])
    with pytest.raises(XenAPI.Failure) as refused:
        member.xenapi.login_with_password(sim.pool(0)["username"], sim.pool(0)["password"], "2.21", "t")
    # Then it is sent to the master's address
    assert refused.value.details == ["HOST_IS_SLAVE", "127.0.0.1"]


def test_storage_repositories(dbs):
    for db in dbs:
        srs = db["SR"]

        def pbd_hosts(sr):
            return sorted(db["PBD"][p]["host"] for p in srs[sr]["PBDs"])

        by_name = collections.defaultdict(list)
        for ref, sr in srs.items():
            by_name[sr["name_label"]].append(ref)
        all_hosts = sorted(db["host"])
        # a local, unshared SR per host, plugged only into that host
        local = [r for r, sr in srs.items() if not sr["shared"] and sr["content_type"] != "iso"]
        assert sorted(h for r in local for h in pbd_hosts(r)) == all_hosts
        assert all(len(pbd_hosts(r)) == 1 for r in local)
        # the shared NFS SR on every host is the pool's default SR
        (pool,) = db["pool"].values()
        default = pool["default_SR"]
        assert srs[default]["type"] == "nfs" and srs[default]["shared"] and pbd_hosts(default) == all_hosts
        # one backup SR, shared
        (backup,) = by_name["backup-sr"]
        assert backup != default and srs[backup]["shared"] and pbd_hosts(backup) == all_hosts
        # an ISO library
        isos = [r for r, sr in srs.items() if sr["content_type"] == "iso"]
        assert len(isos) == 1 and srs[isos[0]]["VDIs"]


# -- VMs ---------------------------------------------------------------------------
def test_control_domain_per_host(dbs):
    for db in dbs:
        dom0s = [vm for vm in db["VM"].values() if vm["is_control_domain"]]
        assert sorted(vm["resident_on"] for vm in dom0s) == sorted(db["host"])
        assert all(vm["power_state"] == "Running" and vm["domid"] == "0" for vm in dom0s)


def test_default_templates_and_snapshots(dbs):
    for db in dbs:
        vms = db["VM"]
        templates = [vm for vm in vms.values() if vm["is_a_template"] and not vm["is_a_snapshot"]]
        assert templates and all(t["is_default_template"] for t in templates)
        snapshots = {ref: vm for ref, vm in vms.items() if vm["is_a_snapshot"]}
        assert snapshots
        for ref, snap in snapshots.items():
            origin = vms[snap["snapshot_of"]]
            assert not origin["is_a_snapshot"] and ref in origin["snapshots"]
            assert disk_vbds(db, snap)


def test_running_and_halted_vms_and_a_duplicate_name(dbs):
    for db in dbs:
        vms = guests(db).values()
        states = collections.Counter(vm["power_state"] for vm in vms)
        assert states["Running"] and states["Halted"]
        running = [vm for vm in vms if vm["power_state"] == "Running"]
        assert all(vm["resident_on"] in db["host"] for vm in running)
        names = collections.Counter(vm["name_label"] for vm in vms)
        assert max(names.values()) == 2


def test_disks_system_disk_first_data_disks_elsewhere(dbs):
    counts, data_elsewhere = set(), 0
    for db in dbs:
        for vm in guests(db).values():
            disks = disk_vbds(db, vm)
            counts.add(len(disks))
            (system,) = [d for d in disks if d["userdevice"] == "0"]
            assert system["bootable"] and db["VDI"][system["VDI"]]["type"] == "system"
            assert len({d["userdevice"] for d in disks}) == len(disks)
            system_sr = db["VDI"][system["VDI"]]["SR"]
            data_elsewhere += any(db["VDI"][d["VDI"]]["SR"] != system_sr for d in disks)
    assert counts <= {1, 2, 3, 4} and 1 in counts and max(counts) >= 3
    assert data_elsewhere


def test_cd_drives_some_with_an_iso(dbs):
    with_iso = 0
    for db in dbs:
        cds = [v for v in db["VBD"].values() if v["type"] == "CD"]
        assert cds
        for cd in cds:
            if cd["empty"]:
                assert cd["VDI"] == "OpaqueRef:NULL"
            else:
                with_iso += 1
                assert db["SR"][db["VDI"][cd["VDI"]]["SR"]]["content_type"] == "iso" and cd["mode"] == "RO"
    assert with_iso


def test_vifs_macs_mtus_networks(dbs):
    for db in dbs:
        vifs = [db["VIF"][v] for vm in guests(db).values() for v in vm["VIFs"]]
        macs = [v["MAC"] for v in vifs]
        assert all(re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", m) for m in macs)
        assert len(set(macs)) == len(macs)
        assert len({v["network"] for v in vifs}) >= 2
        assert {v["MTU"] for v in vifs} == {"1500", "9000"}
        assert all(v["MTU"] == db["network"][v["network"]]["MTU"] for v in vifs)


def test_ha_settings(dbs):
    vms = [vm for db in dbs for vm in guests(db).values()]
    assert {vm["ha_restart_priority"] for vm in vms} == {"restart", "best-effort", ""}
    assert any(int(vm["order"]) > 0 for vm in vms)
    assert any(int(vm["start_delay"]) > 0 for vm in vms)


def test_every_weekday_tagged_and_some_untagged(fresh_sim):
    # Given enough VMs per pool
    sim = fresh_sim("--pools", "2", "--vms-per-pool", "14", "--hosts-per-pool", "1", "--disk-mib", "1")
    tags, untagged = set(), 0
    for i in range(2):
        for vm in guests(records(sim, i)).values():
            tags |= set(vm["tags"])
            untagged += not (set(vm["tags"]) & WEEKDAYS)
    # Then every weekday is a tag somewhere, and some VMs have none
    assert WEEKDAYS <= tags
    assert untagged


# -- seeds -------------------------------------------------------------------------
def fingerprint(sim) -> dict:
    """Per pool: (name, tags, MACs, system-disk sha256) of every guest and snapshot."""
    out = {}
    for i, pool in enumerate(sim.pools):
        db = records(sim, i)
        rows = []
        for vm in db["VM"].values():
            if vm["is_control_domain"] or (vm["is_a_template"] and not vm["is_a_snapshot"]):
                continue
            macs = sorted(db["VIF"][v]["MAC"] for v in vm["VIFs"])
            system = [db["VDI"][d["VDI"]]["uuid"] for d in disk_vbds(db, vm) if d["userdevice"] == "0"]
            shas = [sim.vdi_info(uuid)["sha256"] for uuid in system]
            sizes = sorted(int(db["VDI"][d["VDI"]]["virtual_size"]) for d in disk_vbds(db, vm))
            rows.append((vm["name_label"], sorted(vm["tags"]), macs, shas, sizes, vm["power_state"]))
        out[pool["name"]] = sorted(rows)
    return out


def test_same_seed_same_inventory_other_seed_other(sim, fresh_sim):
    # Given the module's simulator (seed 1), another with seed 1 and one with seed 2
    same = fresh_sim(*MODULE_ARGS, "--seed", "1")
    other = fresh_sim(*MODULE_ARGS, "--seed", "2")
    # When their inventories are compared
    base, again, changed = fingerprint(sim), fingerprint(same), fingerprint(other)
    # Then seed 1 reproduces it exactly, and seed 2 gives other MACs and other disk bytes
    assert again == base
    assert base != changed

    def column(fp, k):
        return {x for rows in fp.values() for row in rows for x in row[k]}

    assert column(base, 2).isdisjoint(column(changed, 2))
    assert column(base, 3).isdisjoint(column(changed, 3))


# -- control API ---------------------------------------------------------------------
def http(method: str, url: str, body: bytes | None = None) -> tuple[int, str, object]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers["Content-Type"], json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], json.loads(err.read())


def test_state_has_every_object_of_every_class(sim):
    # Given a session and a task on pool-a
    x = sim.session(0).xenapi
    task = x.task.create("visible in state", "")
    # When the state is read
    status, ctype, state = http("GET", sim.control + "/sim/state")
    # Then each pool has every class, with the very objects XenAPI sees
    try:
        assert status == 200 and ctype == "application/json"
        assert set(state["pools"]) == {"pool-a", "pool-b"}
        for i, name in enumerate(("pool-a", "pool-b")):
            pool = state["pools"][name]
            assert CLASSES <= set(pool)
            xi = sim.session(i).xenapi
            for cls in CLASSES - {"session"}:
                assert set(pool[cls]) == set(getattr(xi, cls).get_all()), cls
        a = state["pools"]["pool-a"]
        assert task in a["task"] and a["task"][task]["name_label"] == "visible in state"
        assert a["session"]
        vm, rec = next(iter(x.VM.get_all_records().items()))
        assert {k: a["VM"][vm][k] for k in ("uuid", "name_label", "power_state")} == {
            k: rec[k] for k in ("uuid", "name_label", "power_state")}
    finally:
        x.task.destroy(task)


def test_created_vm_appears_in_state_and_destroyed_vm_goes(sim):
    # Given a VM created through XenAPI from a template's record
    x = sim.session(1).xenapi
    template = x.VM.get_record(x.VM.get_by_name_label("Other install media")[0])
    vm = x.VM.create({**template, "name_label": "made-by-test", "is_a_template": False})
    # When the state is read before and after destroying it
    before = sim.state()["pools"]["pool-b"]["VM"]
    x.VM.destroy(vm)
    after = sim.state()["pools"]["pool-b"]["VM"]
    # Then it is there, then gone
    assert before[vm]["name_label"] == "made-by-test"
    assert vm not in after


@pytest.mark.parametrize("method,path", [
    ("GET", "/"), ("GET", "/sim"), ("GET", "/sim/nope"), ("GET", "/sim/state/extra"),
    ("POST", "/sim/state"), ("POST", "/sim/nope"), ("DELETE", "/sim/state"), ("GET", "/sim/vdi/x/y/z"),
])
def test_unknown_endpoints_are_json_404(sim, method, path):
    status, ctype, body = http(method, sim.control + path, b"{}" if method == "POST" else None)
    assert status == 404 and ctype == "application/json" and body["error"]


@pytest.mark.parametrize("method", ["PUT", "PATCH", "OPTIONS"])
def test_unsupported_methods_answer_json(sim, method):
    status, ctype, body = http(method, sim.control + "/sim/faults", b"{}")
    assert 400 <= status < 600 and ctype == "application/json" and method in body["error"]


@pytest.mark.parametrize("method,suffix", [("GET", ""), ("GET", "/data"), ("POST", "/write")])
def test_unknown_vdi_is_404(sim, method, suffix):
    body = json.dumps({"offset": 0, "hex": "00"}).encode() if method == "POST" else None
    url = f"{sim.control}/sim/vdi/00000000-0000-0000-0000-000000000000{suffix}"
    status, ctype, reply = http(method, url, body)
    assert status == 404 and ctype == "application/json" and "00000000" in reply["error"]


BAD_WRITES = {
    "not JSON": b"offset=0",
    "a list": b"[0, \"00\"]",
    "no hex": b'{"offset": 0}',
    "no offset": b'{"hex": "00"}',
    "offset a string": b'{"offset": "0", "hex": "00"}',
    "offset a bool": b'{"offset": true, "hex": "00"}',
    "hex not hex": b'{"offset": 0, "hex": "zz"}',
    "negative offset": b'{"offset": -1, "hex": "00"}',
    "past the end": b'{"offset": 16777215, "hex": "0000"}',
}


def test_bad_guest_writes_are_400_and_change_nothing(sim):
    # Given a 16 MiB system disk
    x = sim.session(0).xenapi
    vm = x.VM.get_by_name_label("mail-01")[0]
    vbd = next(b for b in x.VM.get_VBDs(vm) if x.VBD.get_userdevice(b) == "0")
    uuid = x.VDI.get_uuid(x.VBD.get_VDI(vbd))
    before = sim.vdi_info(uuid)
    assert before["virtual_size"] == 16 << 20
    # When nonsense writes are posted
    replies = {name: http("POST", f"{sim.control}/sim/vdi/{uuid}/write", body) for name, body in BAD_WRITES.items()}
    # Then each is refused with a reason, and the disk is unchanged
    for name, (status, ctype, body) in replies.items():
        assert (status, ctype) == (400, "application/json"), name
        assert body["error"], name
    assert sim.vdi_info(uuid)["sha256"] == before["sha256"]


def test_state_is_one_consistent_snapshot_while_vms_change(sim):
    # Given a client that keeps snapshotting a VM and destroying the snapshot
    x = sim.session(0).xenapi
    vm = x.VM.get_by_name_label("mail-01")[0]
    stop, errors = threading.Event(), []

    def churn():
        cx = sim.session(0).xenapi
        try:
            while not stop.is_set():
                snap = cx.VM.snapshot(vm, "churn")
                vdis = [cx.VBD.get_VDI(b) for b in cx.VM.get_VBDs(snap) if cx.VBD.get_type(b) == "Disk"]
                cx.VM.destroy(snap)
                for vdi in vdis:
                    cx.VDI.destroy(vdi)
        except Exception as exc:  # reported by the assertion below
            errors.append(repr(exc))

    worker = threading.Thread(target=churn)
    worker.start()
    # When the state is read meanwhile
    dangling = []
    try:
        for _ in range(40):
            pool = sim.state()["pools"]["pool-a"]
            for ref, vbd in pool["VBD"].items():
                if vbd["VM"] not in pool["VM"] or vbd["VDI"] not in {**pool["VDI"], "OpaqueRef:NULL": 0}:
                    dangling.append(ref)
            for rec in pool["VM"].values():
                dangling += [b for b in rec["VBDs"] if b not in pool["VBD"]]
    finally:
        stop.set()
        worker.join(timeout=30)
    # Then every reference in every state points at an object of the same state
    assert errors == []
    assert dangling == []
