"""The simulator's XML-RPC surface, as the real ``XenAPI`` client and a raw HTTP client see it.

Given the shared simulator (2 pools x 2 hosts x 8 VMs), when a client logs
in, calls messages right and wrong, then it gets exactly what xapi would send
(FACTS.md §1-§4, §6): the envelope, the wire encoding, the dispatcher errors,
and every class's records and implicit accessors from the datamodel.
"""
from __future__ import annotations

import http.client
import ipaddress
import json
import pathlib
import re
import urllib.parse
import xmlrpc.client

import pytest
import XenAPI

DATAMODEL = json.loads((pathlib.Path(__file__).parents[1] / "tinabs_tasks/sim/xapi_datamodel.json").read_text())
CLASSES = ("pool", "host", "SR", "PBD", "VDI", "VBD", "VIF", "network", "VM", "task")
NULL = "OpaqueRef:NULL"
REF = re.compile(r"^OpaqueRef:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# -- helpers ------------------------------------------------------------------
def raw_post(url: str, body: bytes) -> tuple[int, str]:
    """POST an XML-RPC body to ``url`` with http.client; (HTTP status, response text)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("POST", "/", body=body, headers={"Content-Type": "text/xml"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8")
    finally:
        conn.close()


def raw_call(url: str, method: str, *params) -> tuple[int, str]:
    return raw_post(url, xmlrpc.client.dumps(params, method, allow_none=False).encode())


def parsed(text: str) -> dict:
    (result,), _ = xmlrpc.client.loads(text)
    return result


def proxy(url: str) -> xmlrpc.client.ServerProxy:
    """A bare XML-RPC client: no session handling, results are the raw {Status, ...} struct."""
    return xmlrpc.client.ServerProxy(url)


def failure(call, *args) -> list[str]:
    """The ErrorDescription of a XenAPI call that must fail with a XAPI Failure."""
    with pytest.raises(XenAPI.Failure) as info:
        call(*args)
    return info.value.details


def known_error(code: str) -> bool:
    return code in DATAMODEL["errors"]


@pytest.fixture(scope="module")
def xs(sim):
    """A logged-in XenAPI session on pool 0's master."""
    session = sim.session(0)
    yield session
    try:
        session.xenapi.session.logout()
    except Exception:  # the session may have been expired by a test
        pass


@pytest.fixture(scope="module")
def x(xs):
    return xs.xenapi


@pytest.fixture(scope="module")
def vms(x) -> dict:
    """Pool 0's ordinary VMs (no templates, snapshots or control domains), read once."""
    return {ref: rec for ref, rec in x.VM.get_all_records().items()
            if not rec["is_a_template"] and not rec["is_control_domain"]}


def a_vm(vms, power_state: str) -> str:
    return next(ref for ref, rec in vms.items() if rec["power_state"] == power_state)


# -- login, HOST_IS_SLAVE, sessions -------------------------------------------
def test_login_with_password_returns_a_session_ref(sim):
    """Given pool credentials, when logging in with the XenAPI client, then the handle is an OpaqueRef."""
    p = sim.pool(0)
    s = XenAPI.Session(p["master"])
    assert s.xenapi.login_with_password(p["username"], p["password"], "2.21", "tests") is None  # _login stores it
    assert REF.match(s.handle)
    assert re.fullmatch(r"\d+\.\d+", s.API_version)  # pool.get_master -> host.get_API_version_*
    s.xenapi.session.logout()


def test_wrong_password_gives_session_authentication_failed_with_uname_and_message(sim):
    """Given a wrong password, when logging in, then SESSION_AUTHENTICATION_FAILED [uname, msg]."""
    p = sim.pool(0)
    details = failure(XenAPI.Session(p["master"]).xenapi.login_with_password, p["username"], "wrong")
    assert details[0] == "SESSION_AUTHENTICATION_FAILED"
    assert len(details) == 3 and details[1] == p["username"] and details[2]


def test_login_on_a_member_gives_host_is_slave_with_the_masters_bare_address(sim, x, xs):
    """Given a pool member's URL, when logging in there, then HOST_IS_SLAVE [master host.address];
    a client that keeps its scheme and port and swaps in that address reaches the master."""
    p = sim.pool(0)
    member = p["members"][0]
    details = failure(XenAPI.Session(member).xenapi.login_with_password, p["username"], p["password"])
    assert details[0] == "HOST_IS_SLAVE" and len(details) == 2
    address = details[1]
    ipaddress.ip_address(address)  # a bare IP, no scheme or port
    master = x.pool.get_master(x.pool.get_all()[0])
    assert address == x.host.get_address(master)
    assert x.session.get_this_host(xs.handle) == master
    parts = urllib.parse.urlsplit(member)
    redirected = f"{parts.scheme}://{address}:{parts.port}"
    assert redirected == p["master"]
    s = XenAPI.Session(redirected)
    s.xenapi.login_with_password(p["username"], p["password"])
    assert s.xenapi.pool.get_all()
    s.xenapi.session.logout()


def test_any_call_on_a_member_with_a_valid_session_gives_host_is_slave(sim, xs):
    """Given a valid master session, when calling VM.get_all on a member, then HOST_IS_SLAVE [master address]."""
    p = sim.pool(0)
    result = proxy(p["members"][0]).VM.get_all(xs.handle)
    assert result == {"Status": "Failure",
                      "ErrorDescription": ["HOST_IS_SLAVE", urllib.parse.urlsplit(p["master"]).hostname]}


def test_login_with_two_arguments_uses_the_defaults(sim):
    """Given only uname and pwd (version/originator have defaults), when logging in raw, then Success."""
    p = sim.pool(0)
    result = proxy(p["master"]).session.login_with_password(p["username"], p["password"])
    assert result["Status"] == "Success" and REF.match(result["Value"])
    assert proxy(p["master"]).session.logout(result["Value"]) == {"Status": "Success", "Value": ""}


def test_a_logged_out_session_is_invalid(sim):
    """Given a session that logged out, when its ref is used raw, then SESSION_INVALID [ref]."""
    s = sim.session(0)
    handle = s.handle
    s.xenapi.session.logout()
    assert proxy(sim.pool(0)["master"]).VM.get_all(handle) == {
        "Status": "Failure", "ErrorDescription": ["SESSION_INVALID", handle]}


def test_expired_sessions_are_invalid_and_the_client_logs_in_again(sim):
    """Given expire_sessions on demand, when the XenAPI client calls again, then it re-logs in
    transparently (new handle) and the call succeeds, while the old ref is SESSION_INVALID."""
    pool = sim.pool(1)
    s = sim.session(1)
    x = s.xenapi
    before = x.VM.get_all()
    old = s.handle
    assert sim.add_fault({"expire_sessions": True, "pool": pool["name"]})["expired_sessions"] >= 1
    assert proxy(pool["master"]).VM.get_all(old)["ErrorDescription"] == ["SESSION_INVALID", old]
    assert sorted(x.VM.get_all()) == sorted(before)
    assert s.handle != old and REF.match(s.handle)
    x.session.logout()


def test_session_get_this_host_is_the_master(sim, x, xs):
    """Given a session, when asking session.get_this_host(self), then it is the pool master."""
    assert x.session.get_this_host(xs.handle) == x.pool.get_master(x.pool.get_all()[0])
    assert x.host.get_record(x.session.get_this_host(xs.handle))["address"] == "127.0.0.1"


# -- the raw envelope ------------------------------------------------------------
def test_raw_envelope_and_value_encoding_of_a_halted_vm(sim, xs, vms):
    """Given a halted VM with >= 2 GiB of memory, when VM.get_record is POSTed raw, then the reply is
    the Status/Value struct with bare-string ints and strings, <boolean>s, OpaqueRefs and OpaqueRef:NULL."""
    vm = next(ref for ref, rec in vms.items()
              if rec["power_state"] == "Halted" and int(rec["memory_static_max"]) >= 2**31)
    status, text = raw_call(sim.pool(0)["master"], "VM.get_record", xs.handle, vm)
    assert status == 200
    assert text.startswith('<?xml version="1.0"?><methodResponse><params><param><value><struct>'
                           "<member><name>Status</name><value>Success</value></member>"
                           "<member><name>Value</name><value><struct>")
    assert text.endswith("</struct></value></param></params></methodResponse>")
    for tag in ("<int>", "<i4>", "<i8>", "<string>", "<nil"):
        assert tag not in text
    rec = vms[vm]
    assert f"<member><name>memory_static_max</name><value>{rec['memory_static_max']}</value></member>" in text
    assert "<member><name>VCPUs_max</name><value>%s</value></member>" % rec["VCPUs_max"] in text
    assert "<member><name>power_state</name><value>Halted</value></member>" in text
    assert f"<member><name>uuid</name><value>{rec['uuid']}</value></member>" in text
    assert "<member><name>is_a_template</name><value><boolean>0</boolean></value></member>" in text
    assert "<member><name>resident_on</name><value>OpaqueRef:NULL</value></member>" in text
    refs = re.findall(r"<value>(OpaqueRef:[^<]*)</value>", text)
    assert refs and all(r == NULL or REF.match(r) for r in refs)
    assert parsed(text)["Value"]["memory_static_max"] == rec["memory_static_max"]  # a str in Python


def test_raw_datetime_of_a_snapshot(sim, x, xs):
    """Given an inventory snapshot, when its snapshot_time is read raw, then it is
    <dateTime.iso8601>YYYYMMDDTHH:MM:SSZ</dateTime.iso8601>, and the client gets a DateTime."""
    snap = next(ref for ref, rec in x.VM.get_all_records().items() if rec["is_a_snapshot"])
    status, text = raw_call(sim.pool(0)["master"], "VM.get_snapshot_time", xs.handle, snap)
    assert status == 200
    assert re.search(r"<member><name>Value</name><value><dateTime\.iso8601>\d{8}T\d\d:\d\d:\d\dZ"
                     r"</dateTime\.iso8601></value></member>", text), text
    assert isinstance(x.VM.get_snapshot_time(snap), xmlrpc.client.DateTime)


def test_raw_strings_are_bare_and_escaped_and_floats_are_doubles(sim, x, xs, vms):
    """Given a description with markup and a new task, when read raw, then the string is a bare escaped
    <value> and the task's progress a <double>."""
    vm = next(iter(vms))
    old = x.VM.get_name_description(vm)
    x.VM.set_name_description(vm, "a <b> & 'c'")
    _, text = raw_call(sim.pool(0)["master"], "VM.get_name_description", xs.handle, vm)
    x.VM.set_name_description(vm, old)
    assert "<member><name>Value</name><value>a &lt;b&gt; &amp; 'c'</value></member>" in text
    task = x.task.create("raw double", "")
    _, text = raw_call(sim.pool(0)["master"], "task.get_progress", xs.handle, task)
    x.task.destroy(task)
    assert "<member><name>Value</name><value><double>0</double></value></member>" in text


def test_raw_failure_envelope(sim, xs):
    """Given a dangling ref, when POSTed raw, then Status=Failure with an ErrorDescription array of strings."""
    status, text = raw_call(sim.pool(0)["master"], "VM.get_record", xs.handle, "OpaqueRef:dangling")
    assert status == 200
    assert ("<member><name>Status</name><value>Failure</value></member><member><name>ErrorDescription</name>"
            "<value><array><data><value>HANDLE_INVALID</value><value>VM</value>"
            "<value>OpaqueRef:dangling</value></data></array></value></member>") in text


def test_garbage_body_gives_a_failure_envelope(sim):
    """Given a body that is not XML, when POSTed, then HTTP 200 with a Failure envelope, not a traceback."""
    for body in (b"<not xml", b"", b"\xff\xfe garbage", b"<methodCall><methodName>"):
        status, text = raw_post(sim.pool(0)["master"], body)
        assert status == 200
        result = parsed(text)
        assert result["Status"] == "Failure" and known_error(result["ErrorDescription"][0])
        assert "Traceback" not in text


# -- dispatcher errors -----------------------------------------------------------
def test_unknown_method_and_unknown_class(x):
    """Given a method or a class xapi does not have, when called, then MESSAGE_METHOD_UNKNOWN [method]."""
    assert failure(x.VM.frobnicate, "a") == ["MESSAGE_METHOD_UNKNOWN", "VM.frobnicate"]
    assert failure(x.Frobnicator.get_all) == ["MESSAGE_METHOD_UNKNOWN", "Frobnicator.get_all"]
    assert failure(x.VM.set_uuid, "OpaqueRef:x", "y") == ["MESSAGE_METHOD_UNKNOWN", "VM.set_uuid"]


def test_alternative_wire_name_with_underscore(sim, xs, vms):
    """Given the wire name VM_get_record, when called, then it works like VM.get_record."""
    vm = next(iter(vms))
    result = proxy(sim.pool(0)["master"]).VM_get_record(xs.handle, vm)
    assert result["Status"] == "Success" and result["Value"]["uuid"] == vms[vm]["uuid"]


def test_parameter_count_mismatch_counts_exclude_session_and_defaults(x, vms):
    """Given too few or too many params, then MESSAGE_PARAMETER_COUNT_MISMATCH [method, expected, received]."""
    vm = next(iter(vms))
    assert failure(x.VM.get_record) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.get_record", "1", "0"]
    assert failure(x.VM.get_record, vm, vm) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.get_record", "1", "2"]
    # VM.snapshot(vm, new_name, ignore_vdis=[]): 2 required, at most 3
    assert failure(x.VM.snapshot, vm) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.snapshot", "2", "1"]
    assert failure(x.VM.snapshot, vm, "n", [], "extra") == [
        "MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.snapshot", "2", "4"]
    # VDI.copy(vdi, sr=NULL, base_vdi=NULL, into_vdi=NULL)
    assert failure(x.VDI.copy, "a", "b", "c", "d", "e") == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VDI.copy", "1", "5"]


def test_login_parameter_count(sim):
    """Given login_with_password with 1 or 5 params, then the mismatch counts 2 required params."""
    p = proxy(sim.pool(0)["master"])
    assert p.session.login_with_password("root")["ErrorDescription"] == [
        "MESSAGE_PARAMETER_COUNT_MISMATCH", "session.login_with_password", "2", "1"]
    assert p.session.login_with_password("root", "pw", "1.1", "", "extra")["ErrorDescription"] == [
        "MESSAGE_PARAMETER_COUNT_MISMATCH", "session.login_with_password", "2", "5"]


def test_handle_invalid_and_uuid_invalid(x):
    """Given a dangling ref or unknown uuid, then HANDLE_INVALID [class, ref] / UUID_INVALID [class, uuid]."""
    for cls in CLASSES:
        api = getattr(x, cls)
        assert failure(api.get_record, "OpaqueRef:nope") == ["HANDLE_INVALID", cls, "OpaqueRef:nope"]
        assert failure(api.get_uuid, "OpaqueRef:nope") == ["HANDLE_INVALID", cls, "OpaqueRef:nope"]
        assert failure(api.get_by_uuid, "00000000-0000-0000-0000-000000000000") == [
            "UUID_INVALID", cls, "00000000-0000-0000-0000-000000000000"]
    assert failure(x.VM.set_name_label, "OpaqueRef:nope", "n") == ["HANDLE_INVALID", "VM", "OpaqueRef:nope"]


def test_wrong_param_types_give_a_xapi_failure_not_a_fault(x, vms):
    """Given wrongly typed params, when called, then a XAPI Failure with a known code (never a Fault)."""
    vm = next(iter(vms))
    cases = [(x.VM.set_name_label, vm, 42), (x.VM.add_tags, vm, {"a": "b"}), (x.VM.create, "not a struct"),
             (x.VM.create, ["a"]), (x.VM.set_tags, vm, "not-a-list"), (x.VM.set_other_config, vm, ["x"]),
             (x.VM.get_by_uuid, 7), (x.VM.get_record, 7), (x.VM.set_order, vm, "ten"),
             (x.VDI.create, 3), (x.VM.add_to_other_config, vm, {"k": 1}, "v")]
    for call, *args in cases:
        details = failure(call, *args)
        assert known_error(details[0]), (call, args, details)
    assert x.VM.get_name_label(vm) == vms[vm]["name_label"]


def test_async_on_a_non_async_message_is_a_fault(x, vms):
    """Given a message without an Async form, when called Async., then ['Fault', 'No async mode ...']."""
    vm = next(iter(vms))
    assert failure(x.Async.VM.get_record, vm) == [
        "Fault", "No async mode for this operation (rpc: VM.get_record)"]
    assert failure(x.Async.VM.set_ha_restart_priority, vm, "") == [
        "Fault", "No async mode for this operation (rpc: VM.set_ha_restart_priority)"]


# -- classes, records, implicit accessors -----------------------------------------
@pytest.mark.parametrize("cls", CLASSES)
def test_get_all_records_match_get_record_and_the_datamodel(x, cls):
    """Given a class, when listing it, then get_all == keys of get_all_records, each record's field names
    are the datamodel's, get_record/get_by_uuid agree and get_by_name_label exists iff the datamodel has it."""
    api = getattr(x, cls)
    if cls == "task":
        own = x.task.create("records test", "")
    records = api.get_all_records()
    assert records and sorted(api.get_all()) == sorted(records)
    fields = set(DATAMODEL[cls]["fields"])
    for ref, rec in records.items():
        assert REF.match(ref)
        assert set(rec) == fields, set(rec) ^ fields
        assert api.get_by_uuid(rec["uuid"]) == ref
    ref, rec = next(iter(records.items()))
    if cls == "task":
        ref, rec = own, records[own]
    assert api.get_record(ref) == rec
    assert api.get_by_uuid(rec["uuid"]) == ref
    if "get_by_name_label" in DATAMODEL[cls]["messages"]:
        found = api.get_by_name_label(rec["name_label"])
        assert isinstance(found, list) and ref in found
        assert api.get_by_name_label("no object is called this") == []
    else:
        assert failure(api.get_by_name_label, "x")[0] == "MESSAGE_METHOD_UNKNOWN"
    if cls == "task":
        x.task.destroy(own)


def test_duplicate_vm_name_gives_two_refs(x, vms):
    """Given the inventory's duplicated VM name, when get_by_name_label, then both refs."""
    names = [rec["name_label"] for rec in vms.values()]
    dup = next(n for n in names if names.count(n) == 2)
    found = x.VM.get_by_name_label(dup)
    assert len(found) == 2 and set(found) == {r for r, rec in vms.items() if rec["name_label"] == dup}


@pytest.mark.parametrize("cls", ("VM", "VDI", "VBD", "VIF", "SR", "PBD", "network", "host", "pool"))
def test_implicit_getters_return_the_record_fields(x, cls):
    """Given one object, when calling get_<field> for every datamodel field, then each equals the record's."""
    api = getattr(x, cls)
    ref = api.get_all()[0]
    rec = api.get_record(ref)
    for field in DATAMODEL[cls]["fields"]:
        assert getattr(api, f"get_{field}")(ref) == rec[field], field


def test_implicit_setter_of_a_rw_field(x, vms):
    """Given an RW field (name_description), when set_, then get_ returns the new value."""
    vm = next(iter(vms))
    old = x.VM.get_name_description(vm)
    assert x.VM.set_name_description(vm, "described by test") == ""
    assert x.VM.get_name_description(vm) == "described by test"
    x.VM.set_name_description(vm, old)


def test_map_accessors_and_duplicate_key(x, vms):
    """Given VM.other_config, when add_to_/remove_from_, then the map changes; a duplicate key gives
    MAP_DUPLICATE_KEY [type, param_name, uuid, key]."""
    vm = next(iter(vms))
    x.VM.add_to_other_config(vm, "tinabs-test", "1")
    assert x.VM.get_other_config(vm)["tinabs-test"] == "1"
    assert failure(x.VM.add_to_other_config, vm, "tinabs-test", "2") == [
        "MAP_DUPLICATE_KEY", "VM", "other_config", vms[vm]["uuid"], "tinabs-test"]
    assert x.VM.get_other_config(vm)["tinabs-test"] == "1"
    x.VM.remove_from_other_config(vm, "tinabs-test")
    assert "tinabs-test" not in x.VM.get_other_config(vm)
    x.VM.remove_from_other_config(vm, "tinabs-test")  # removing a missing key is not an error


def test_set_accessors_for_tags(x, vms):
    """Given VM.tags, when add_tags/remove_tags, then the set changes without duplicates."""
    vm = next(iter(vms))
    before = x.VM.get_tags(vm)
    x.VM.add_tags(vm, "tinabs-tag")
    x.VM.add_tags(vm, "tinabs-tag")
    assert x.VM.get_tags(vm).count("tinabs-tag") == 1
    x.VM.remove_tags(vm, "tinabs-tag")
    assert x.VM.get_tags(vm) == before
    x.VM.set_tags(vm, ["a", "b"])
    assert x.VM.get_tags(vm) == ["a", "b"]
    x.VM.set_tags(vm, before)


def test_custom_setters_order_start_delay_shutdown_delay(x, vms):
    """Given the RO/constructor ints order/start_delay/shutdown_delay, when their custom setters are
    called (ints or 64-bit strings), then the getters return them; a negative value is INVALID_VALUE."""
    vm = next(iter(vms))
    old = {f: x.VM.get_record(vm)[f] for f in ("order", "start_delay", "shutdown_delay")}
    x.VM.set_order(vm, 7)
    x.VM.set_start_delay(vm, "30")
    x.VM.set_shutdown_delay(vm, str(2**40))
    rec = x.VM.get_record(vm)
    assert (rec["order"], rec["start_delay"], rec["shutdown_delay"]) == ("7", "30", str(2**40))
    assert failure(x.VM.set_order, vm, -1) == ["INVALID_VALUE", "order must be non-negative", "-1"]
    assert failure(x.VM.set_start_delay, vm, "-5") == ["INVALID_VALUE", "start_delay must be non-negative", "-5"]
    for field, value in old.items():
        getattr(x.VM, f"set_{field}")(vm, value)
    assert {f: x.VM.get_record(vm)[f] for f in old} == old


def test_set_ha_restart_priority(x, vms):
    """Given a VM, when set_ha_restart_priority with 'restart', 'best-effort' or '', then it is stored;
    any other value gives INVALID_VALUE ['ha_restart_priority', value] and changes nothing."""
    vm = a_vm(vms, "Halted")
    old = x.VM.get_ha_restart_priority(vm)
    for value in ("restart", "best-effort", ""):
        assert x.VM.set_ha_restart_priority(vm, value) == ""
        assert x.VM.get_ha_restart_priority(vm) == value
    assert failure(x.VM.set_ha_restart_priority, vm, "always") == ["INVALID_VALUE", "ha_restart_priority", "always"]
    assert x.VM.get_ha_restart_priority(vm) == ""
    x.VM.set_ha_restart_priority(vm, old)


def test_set_ha_restart_priority_on_a_running_vm_toggles_ha_always_run(x, vms):
    """Given a running VM, when its priority becomes 'restart' then '', then ha_always_run follows
    (xapi_vm.ml set_ha_restart_priority); set_ha_always_run(true|false) sets priority 'restart'|''."""
    vm = a_vm(vms, "Running")
    old = x.VM.get_ha_restart_priority(vm)
    x.VM.set_ha_restart_priority(vm, "best-effort")
    x.VM.set_ha_restart_priority(vm, "restart")
    assert x.VM.get_ha_always_run(vm) is True
    x.VM.set_ha_restart_priority(vm, "")
    assert x.VM.get_ha_always_run(vm) is False
    # the deprecated VM.set_ha_always_run degrades to a priority change
    x.VM.set_ha_always_run(vm, True)
    assert (x.VM.get_ha_restart_priority(vm), x.VM.get_ha_always_run(vm)) == ("restart", True)
    x.VM.set_ha_always_run(vm, False)
    assert (x.VM.get_ha_restart_priority(vm), x.VM.get_ha_always_run(vm)) == ("", False)
    x.VM.set_ha_restart_priority(vm, old)
