"""Fault injection on the simulator (POST/GET/DELETE /sim/faults), seen through real clients.

Given a running simulator, when a test posts a fault spec, then XenAPI calls,
Async tasks and the HTTP handlers fail (or stall, or are cut) exactly as the
spec says, and only as often and only where it says.
"""
from __future__ import annotations

import io
import json
import socket
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import xmlrpc.client

import pytest
import XenAPI

from helpers.sim_proc import wait_task

SM_FAULT = ["SR_BACKEND_FAILURE_44", "", "insufficient space"]
INJECTED = ["INTERNAL_ERROR", "injected by a test"]


@pytest.fixture(autouse=True)
def no_faults_left(sim):
    sim.clear_faults()
    yield
    sim.clear_faults()


# -- helpers -------------------------------------------------------------------
def by_name(x, cls: str, name: str) -> str:
    refs = getattr(x, cls).get_by_name_label(name)
    assert len(refs) == 1, f"{cls} {name!r}: {refs}"
    return refs[0]


def system_vdi(x, vm: str) -> str:
    for vbd in x.VM.get_VBDs(vm):
        if x.VBD.get_userdevice(vbd) == "0":
            return x.VBD.get_VDI(vbd)
    raise AssertionError(f"{vm} has no system disk")


def raw_call(url: str, method: str, *params):
    """One XML-RPC call without XenAPI's re-login: the raw result struct."""
    proxy = xmlrpc.client.ServerProxy(url, allow_none=True)
    return getattr(proxy, method)(*params)


def http_get(url: str) -> tuple[int, dict, bytes, bool]:
    """(status, headers, body, cut) of a GET read until EOF; follows 302 once per hop."""
    for _hop in range(3):
        parts = urllib.parse.urlsplit(url)
        with socket.create_connection((parts.hostname, parts.port), timeout=60) as conn:
            conn.sendall(f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
            data, cut = bytearray(), False
            while True:
                try:
                    piece = conn.recv(1 << 20)
                except ConnectionResetError:
                    cut = True
                    break
                if not piece:
                    break
                data += piece
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        if status != 302:
            return status, headers, body, cut
        url = headers["location"]
    raise AssertionError("too many redirects")


def export_url(sim, pool: int, session: str, vm: str, task: str) -> str:
    query = urllib.parse.urlencode({"session_id": session, "ref": vm, "task_id": task})
    return f"{sim.pool(pool)['master']}/export?{query}"


def put_import(sim, pool: int, session: str, task: str, body: bytes) -> int:
    query = urllib.parse.urlencode({"session_id": session, "task_id": task})
    req = urllib.request.Request(f"{sim.pool(pool)['master']}/import?{query}", data=body, method="PUT",
                                 headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def post_raw(sim, body: bytes) -> tuple[int, str, object]:
    req = urllib.request.Request(sim.control + "/sim/faults", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], json.loads(err.read())


def active_faults(sim) -> list[dict]:
    status, body = sim.control_call("GET", "/sim/faults")
    assert status == 200, body
    return body["faults"]


# -- method faults ---------------------------------------------------------------
def test_vdi_copy_error_fires_once_then_copies(sim):
    # Given a one-shot SM failure on VDI.copy
    x = sim.session(0).xenapi
    vdi, backup = system_vdi(x, by_name(x, "VM", "mail-01")), by_name(x, "SR", "backup-sr")
    sim.add_fault({"method": "VDI.copy", "error": SM_FAULT, "times": 1})
    # When VDI.copy is called twice
    with pytest.raises(XenAPI.Failure) as failed:
        x.VDI.copy(vdi, backup)
    copy = x.VDI.copy(vdi, backup)
    # Then the first fails with exactly that ErrorDescription, the second copies
    try:
        assert failed.value.details == SM_FAULT
        assert x.VDI.get_SR(copy) == backup
        assert active_faults(sim) == []
    finally:
        x.VDI.destroy(copy)


def test_async_vdi_copy_fault_fails_the_task(sim):
    # Given a one-shot SM failure on VDI.copy
    x = sim.session(0).xenapi
    vdi, backup = system_vdi(x, by_name(x, "VM", "mail-01")), by_name(x, "SR", "backup-sr")
    sim.add_fault({"method": "VDI.copy", "error": SM_FAULT, "times": 1})
    # When it is called through Async.VDI.copy
    task = x.Async.VDI.copy(vdi, backup)
    rec = wait_task(x, task)
    # Then the call itself returned a task, and the task failed with that error
    assert task.startswith("OpaqueRef:")
    assert rec["status"] == "failure"
    assert rec["error_info"] == SM_FAULT
    assert active_faults(sim) == []


def test_delay_makes_snapshot_slow(sim):
    # Given a 2 s delay on VM.snapshot
    x = sim.session(0).xenapi
    vm = by_name(x, "VM", "mail-01")
    sim.add_fault({"method": "VM.snapshot", "delay_s": 2})
    # When a snapshot is taken
    began = time.monotonic()
    snap = x.VM.snapshot(vm, "delayed")
    elapsed = time.monotonic() - began
    # Then it succeeds, but only after the delay
    try:
        assert x.VM.get_snapshot_of(snap) == vm
        assert elapsed >= 2.0
    finally:
        _destroy_snapshot(x, snap)


def _destroy_snapshot(x, snap: str) -> None:
    vdis = [x.VBD.get_VDI(b) for b in x.VM.get_VBDs(snap) if x.VBD.get_type(b) == "Disk"]
    x.VM.destroy(snap)
    for vdi in vdis:
        x.VDI.destroy(vdi)


# -- handler faults --------------------------------------------------------------
def _snapshot_bigger_than(sim, nbytes: int) -> tuple[int, str]:
    """(pool index, ref) of the smallest existing VM snapshot with more than nbytes of data."""
    best = None
    for pool in range(len(sim.pools)):
        x = sim.session(pool).xenapi
        for ref, rec in x.VM.get_all_records().items():
            if not rec["is_a_snapshot"]:
                continue
            used = sum(int(x.VDI.get_physical_utilisation(x.VBD.get_VDI(b)))
                       for b in rec["VBDs"] if x.VBD.get_type(b) == "Disk")
            if used > nbytes and (best is None or used < best[0]):
                best = (used, pool, ref)
    assert best, f"no snapshot holds more than {nbytes} bytes"
    return best[1], best[2]


def test_export_drop_cuts_at_exact_byte_and_fails_task_once(sim):
    # Given a VM snapshot with more than 5 MB of data and a one-shot drop after 5,000,000 bytes
    pool, snap = _snapshot_bigger_than(sim, 5_500_000)
    s = sim.session(pool)
    x = s.xenapi
    sim.add_fault({"handler": "/export", "drop_after_bytes": 5_000_000, "times": 1})
    # When it is exported twice
    first_task = x.task.create("export 1", "")
    status, headers, cut_body, cut = http_get(export_url(sim, pool, s.handle, snap, first_task))
    first = wait_task(x, first_task)
    second_task = x.task.create("export 2", "")
    status2, _, body, cut2 = http_get(export_url(sim, pool, s.handle, snap, second_task))
    second = wait_task(x, second_task)
    # Then the first stream stops after exactly 5,000,000 body bytes and its task fails ...
    assert status == 200 and headers.get("task-id") == first_task
    assert len(cut_body) == 5_000_000
    assert first["status"] == "failure"
    # ... and the second is a whole XVA, and its task succeeds
    assert status2 == 200 and not cut2
    assert len(body) > 5_000_000 and body.endswith(bytes(1024))
    names = tarfile.open(fileobj=io.BytesIO(body)).getnames()
    assert names[0] == "ova.xml" and any(n.endswith(".xxhash") for n in names)
    assert second["status"] == "success"
    for task in (first_task, second_task):
        x.task.destroy(task)


def _template_xva(sim, pool: int) -> bytes:
    """The XVA of a template with no disks: a copy of "Other install media" (the default template
    itself would not import: import.ml maps a default template onto the pool's own)."""
    s = sim.session(pool)
    task = s.xenapi.task.create("template export", "")
    found = s.xenapi.VM.get_by_name_label("Install media copy")
    vm = found[0] if found else s.xenapi.VM.clone(by_name(s.xenapi, "VM", "Other install media"),
                                                  "Install media copy")
    status, _, body, cut = http_get(export_url(sim, pool, s.handle, vm, task))
    assert status == 200 and not cut
    assert wait_task(s.xenapi, task)["status"] == "success"
    return body


def test_import_error_fails_request_and_task_once(sim):
    # Given a small valid XVA and a one-shot error on /import
    s = sim.session(0)
    x = s.xenapi
    xva = _template_xva(sim, 0)
    sim.add_fault({"handler": "/import", "error": ["IMPORT_ERROR", "injected"], "times": 1})
    # When it is imported twice
    first_task, second_task = x.task.create("import 1", ""), x.task.create("import 2", "")
    status = put_import(sim, 0, s.handle, first_task, xva)
    first = wait_task(x, first_task)
    status2 = put_import(sim, 0, s.handle, second_task, xva)
    second = wait_task(x, second_task)
    # Then the first import is refused with that error on its task, the second imports the VM
    assert status >= 400
    assert first["status"] == "failure" and first["error_info"] == ["IMPORT_ERROR", "injected"]
    assert status2 == 200 and second["status"] == "success", second
    imported = xmlrpc.client.loads(
        f"<methodResponse><params><param>{second['result']}</param></params></methodResponse>")[0][0]
    assert len(imported) == 1 and x.VM.get_name_label(imported[0]) == "Install media copy"
    x.VM.destroy(imported[0])


# -- sessions --------------------------------------------------------------------
def test_expire_sessions_invalidates_refs_and_xenapi_relogs_in(sim):
    # Given a logged-in XenAPI session
    s = sim.session(0)
    old = s.handle
    assert s.xenapi.VM.get_all()
    # When every session is expired
    reply = sim.add_fault({"expire_sessions": True})
    # Then the old ref gets SESSION_INVALID on a raw call, and XenAPI logs in again by itself
    raw = raw_call(sim.pool(0)["master"], "VM.get_all", old)
    assert reply["expired_sessions"] >= 1 and reply["ids"] == []
    assert raw["Status"] == "Failure" and raw["ErrorDescription"] == ["SESSION_INVALID", old]
    assert s.xenapi.VM.get_all()
    assert s.handle != old
    assert active_faults(sim) == []  # not stored


def test_expire_sessions_of_one_pool_only(sim):
    # Given sessions on both pools
    a, b = sim.session(0), sim.session(1)
    # When only pool-b's sessions are expired
    sim.add_fault({"expire_sessions": True, "pool": "pool-b"})
    # Then pool-a's ref still works and pool-b's does not
    assert raw_call(sim.pool(0)["master"], "VM.get_all", a.handle)["Status"] == "Success"
    assert raw_call(sim.pool(1)["master"], "VM.get_all", b.handle)["ErrorDescription"] == [
        "SESSION_INVALID", b.handle]


def test_expire_sessions_effect_fires_when_that_call_comes(sim):
    # Given a fault that expires pool-a's sessions when VM.get_record is called, once
    s = sim.session(0)
    x = s.xenapi
    vm = by_name(x, "VM", "db-01")
    old = s.handle
    sim.add_fault({"method": "VM.get_record", "expire_sessions": True, "pool": "pool-a", "times": 1})
    # When other calls are made, the session still works
    assert x.VM.get_all() and s.handle == old
    # And when VM.get_record comes, that very call meets SESSION_INVALID (XenAPI logs in again by itself)
    raw = raw_call(sim.pool(0)["master"], "VM.get_record", old, vm)
    assert raw["ErrorDescription"] == ["SESSION_INVALID", old]
    assert x.VM.get_record(vm)["name_label"] == "db-01" and s.handle != old
    assert active_faults(sim) == []


def test_expire_sessions_effect_on_a_handler_refuses_that_transfer(sim):
    # Given a fault that expires the sessions when an export starts
    x = sim.session(0).xenapi
    session = sim.session(0)
    vm = by_name(session.xenapi, "VM", "db-01")
    task = session.xenapi.task.create("export", "")
    sim.add_fault({"handler": "/export", "expire_sessions": True, "pool": "pool-a", "times": 1})
    # When the export is requested with a session that was valid a moment ago
    status, _headers, _body, _cut = http_get(export_url(sim, 0, session.handle, vm, task))
    # Then it is refused as an unauthenticated request, and a new login exports fine
    assert status == 401 and active_faults(sim) == []
    assert x.VM.get_all()


# -- outages -------------------------------------------------------------------------
def test_a_pool_taken_offline_refuses_connections_then_comes_back(sim):
    # Given a working session to pool-b, and pool-a untouched
    b = sim.session(1)
    vms_before = sorted(b.xenapi.VM.get_all())
    assert vms_before
    host, port = urllib.parse.urlsplit(sim.pool(1)["master"]).hostname, urllib.parse.urlsplit(
        sim.pool(1)["master"]).port
    # When pool-b goes offline for 2 seconds
    status, reply = sim.control_call("POST", "/sim/pools/pool-b/offline", {"seconds": 2})
    assert status == 200 and reply == {"pool": "pool-b", "offline_s": 2}
    # Then new connections are refused and the open keep-alive session fails too, while pool-a answers
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=2).close()
    with pytest.raises((ConnectionError, OSError)):
        b.xenapi.VM.get_all()
    assert sim.session(0).xenapi.VM.get_all()
    # And a second outage of the same pool is refused while it lasts
    assert sim.control_call("POST", "/sim/pools/pool-b/offline", {"seconds": 1})[0] == 409
    # And after the outage the pool serves again, with its state as before
    deadline = time.monotonic() + 10
    while True:
        try:
            vms_after = sorted(sim.session(1).xenapi.VM.get_all())
            break
        except (ConnectionError, OSError):
            assert time.monotonic() < deadline, "pool-b never came back"
            time.sleep(0.2)
    assert vms_after == vms_before


@pytest.mark.parametrize("path,body", [("/sim/pools/pool-z/offline", {"seconds": 1}),
                                       ("/sim/pools/pool-a/offline", {"seconds": 0}),
                                       ("/sim/pools/pool-a/offline", {"seconds": "5"}),
                                       ("/sim/pools/pool-a/offline", {})])
def test_offline_with_nonsense_is_refused(sim, path, body):
    status, reply = sim.control_call("POST", path, body)
    assert status in (400, 404) and reply["error"]


# -- filters and counting ----------------------------------------------------------
def test_pool_filter_fires_only_in_that_pool(sim):
    # Given a fault on VM.get_all in pool-b only
    a, b = sim.session(0).xenapi, sim.session(1).xenapi
    sim.add_fault({"method": "VM.get_all", "error": INJECTED, "pool": "pool-b"})
    # When both pools are asked
    vms_a = a.VM.get_all()
    with pytest.raises(XenAPI.Failure) as failed:
        b.VM.get_all()
    # Then pool-a answers and pool-b fails
    assert vms_a and failed.value.details == INJECTED


@pytest.mark.parametrize("key", ["name_label", "ref", "uuid"])
def test_arg_filter_fires_only_for_that_vm(sim, key):
    # Given a fault on VM.get_record for db-01, named by its name, ref or uuid
    x = sim.session(0).xenapi
    target, other = by_name(x, "VM", "db-01"), by_name(x, "VM", "mail-01")
    arg = {"name_label": "db-01", "ref": target, "uuid": x.VM.get_uuid(target)}[key]
    sim.add_fault({"method": "VM.get_record", "error": INJECTED, "arg": arg})
    # When both VMs' records are read
    other_rec = x.VM.get_record(other)
    with pytest.raises(XenAPI.Failure) as failed:
        x.VM.get_record(target)
    # Then only db-01's read fails
    assert other_rec["name_label"] == "mail-01"
    assert failed.value.details == INJECTED


def test_times_counts_down_and_listing_shows_fired(sim):
    # Given a fault that fires 3 times
    x = sim.session(0).xenapi
    sim.add_fault({"method": "VM.get_all", "error": INJECTED, "times": 3})
    # When the method is called until it works
    failures, fired_after_each = 0, []
    for _ in range(5):
        try:
            x.VM.get_all()
            break
        except XenAPI.Failure:
            failures += 1
            fired_after_each.append([f["fired"] for f in active_faults(sim)])
    # Then it failed exactly 3 times, GET /sim/faults counted them, and the fault is gone
    assert failures == 3
    assert fired_after_each == [[1], [2], []]
    assert active_faults(sim) == []


def test_listing_shows_specs_and_delete_clears(sim):
    # Given two faults, one without "times"
    x = sim.session(0).xenapi
    ids = sim.add_fault([{"method": "VM.get_all", "error": INJECTED},
                         {"handler": "/export", "delay_s": 1, "pool": "pool-b", "times": 2}])["ids"]
    # When the unlimited one fires twice
    for _ in range(2):
        with pytest.raises(XenAPI.Failure):
            x.VM.get_all()
    listed = {f["id"]: f for f in active_faults(sim)}
    # Then both are listed with their spec and fired counts ...
    assert sorted(listed) == sorted(ids) and len(ids) == 2
    method, handler = listed[ids[0]], listed[ids[1]]
    assert method["method"] == "VM.get_all" and method["error"] == INJECTED and method["fired"] == 2
    assert handler["handler"] == "/export" and handler["pool"] == "pool-b" and handler["fired"] == 0
    # ... and DELETE clears them all, so calls work again
    status, _ = sim.control_call("DELETE", "/sim/faults")
    assert status == 200 and active_faults(sim) == []
    assert x.VM.get_all()


# -- nonsense specs --------------------------------------------------------------
GOOD = {"method": "VDI.copy", "error": SM_FAULT}
BAD_SPECS = {
    "not an object": "VDI.copy",
    "null": None,
    "unknown key": {**GOOD, "colour": "red"},
    "no trigger": {"error": SM_FAULT},
    "two triggers": {**GOOD, "handler": "/export"},
    "no effect": {"method": "VDI.copy"},
    "unknown method": {"method": "VDI.teleport", "error": SM_FAULT},
    "method not a string": {"method": 7, "error": SM_FAULT},
    "unknown handler": {"handler": "/exports", "error": SM_FAULT},
    "unknown pool": {**GOOD, "pool": "pool-z"},
    "error not a list": {"method": "VDI.copy", "error": "SR_BACKEND_FAILURE_44"},
    "error empty": {"method": "VDI.copy", "error": []},
    "error not strings": {"method": "VDI.copy", "error": ["SR_BACKEND_FAILURE_44", 44]},
    "unknown error code": {"method": "VDI.copy", "error": ["NO_SUCH_XAPI_ERROR"]},
    "negative delay": {"method": "VM.snapshot", "delay_s": -1},
    "delay not a number": {"method": "VM.snapshot", "delay_s": "2"},
    "times 0": {**GOOD, "times": 0},
    "times not an int": {**GOOD, "times": 1.5},
    "drop on a method": {"method": "VDI.copy", "drop_after_bytes": 10},
    "negative drop": {"handler": "/export", "drop_after_bytes": -1},
    "arg not a string": {**GOOD, "arg": 3},
    "expire with extras": {"expire_sessions": True, "times": 1},
    "expire false": {"expire_sessions": False},
    "expire effect with an error": {"method": "VM.get_all", "expire_sessions": True, "error": SM_FAULT},
    "expire effect false": {"handler": "/export", "expire_sessions": False},
}


@pytest.mark.parametrize("spec", BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_nonsense_spec_is_refused_with_reason(sim, spec):
    # Given a logged-in session (an accepted expire_sessions would kill it)
    s = sim.session(0)
    # When a nonsense spec is posted
    status, body = sim.control_call("POST", "/sim/faults", spec)
    # Then it is refused with a reason, and nothing changed
    assert status == 400
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]
    assert active_faults(sim) == []
    assert raw_call(sim.pool(0)["master"], "VM.get_all", s.handle)["Status"] == "Success"


def test_body_that_is_not_json_is_refused(sim):
    # When the body is not JSON at all
    status, ctype, body = post_raw(sim, b'{"method": "VDI.copy",')
    # Then HTTP 400 with a JSON reason
    assert status == 400 and ctype == "application/json"
    assert "JSON" in body["error"]


def test_list_of_specs_is_all_or_nothing(sim):
    # Given a session, and a list with good specs and one bad one
    s = sim.session(0)
    specs = [GOOD, {"expire_sessions": True}, {"method": "VM.snapshot", "delay_s": -5}]
    # When the list is posted
    status, body = sim.control_call("POST", "/sim/faults", specs)
    # Then it is refused and none of it happened
    assert status == 400 and "delay_s" in body["error"]
    assert active_faults(sim) == []
    assert raw_call(sim.pool(0)["master"], "VM.get_all", s.handle)["Status"] == "Success"
    # And the same list without the bad spec is accepted whole
    status, body = sim.control_call("POST", "/sim/faults", specs[:1] + [GOOD])
    assert status == 200 and len(body["ids"]) == 2 and len(active_faults(sim)) == 2
