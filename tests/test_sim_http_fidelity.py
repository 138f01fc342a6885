"""The simulator's HTTP handlers where plain clients notice (issue 12): curl -T uploads,
the life of handler tasks, /export_metadata?all=true, /pool/xmldbdump and HEAD.

Driven through the real curl binary, XenAPI.Session and raw HTTP; the VMs that get
exported or imported are the tests' own clones, so the shared inventory never changes.
"""
from __future__ import annotations

import http.client
import io
import tarfile
import urllib.parse
import xml.etree.ElementTree as ET
import xmlrpc.client

import pytest

from helpers import xapi_http as H
from helpers.sim_proc import wait_task
from helpers.xva_parse import read_xva

MiB = 1 << 20
HANDLERS = ("/export", "/export_metadata", "/import", "/import_metadata")


@pytest.fixture(scope="module")
def halted_source(x):
    return next(ref for ref, rec in H.user_vms(x).items() if rec["power_state"] == "Halted")


@pytest.fixture(scope="module")
def disk_vm(x, halted_source):
    """Our own halted VM with a 16 MiB system disk: its XVA is well over 1 MiB."""
    return H.own_vm(x, "fidelity disk vm", halted_source)


@pytest.fixture(scope="module")
def diskless_vm(x, halted_source):
    """Our own halted VM without disks: its XVA is a few KiB."""
    return H.own_vm(x, "fidelity diskless vm", halted_source, keep=lambda vbd, rec: False)


@pytest.fixture(scope="module")
def xva_files(x, master, disk_vm, diskless_vm, tmp_path_factory):
    """{"big"|"small": (path of an XVA exported from the simulator, source VM)}."""
    folder = tmp_path_factory.mktemp("xva")
    out = {}
    for size, vm in (("big", disk_vm), ("small", diskless_vm)):
        resp, body = H.get_all(master, "/export", {"session_id": H.handle(x), "ref": vm})
        assert resp.status == 200
        path = folder / f"{size}.xva"
        path.write_bytes(body)
        out[size] = (path, vm)
    assert out["big"][0].stat().st_size > MiB > out["small"][0].stat().st_size
    return out


def read_refs(result: str) -> list[str]:
    return xmlrpc.client.loads(f"<methodResponse><params><param>{result}</param></params></methodResponse>")[0][0]


def url(master: str, path: str, params: dict) -> str:
    return f"{master}{path}?{urllib.parse.urlencode(params)}"


def disk_hashes(sim, x, vm) -> list[str]:
    return [sim.vdi_info(vdi["uuid"])["sha256"] for _, vdi in H.vm_disks(x, vm)]


# -- 1. curl -T /import ---------------------------------------------------------
@pytest.mark.parametrize("expect", ("expect", "no-expect"))
@pytest.mark.parametrize("size", ("big", "small"))
@pytest.mark.parametrize("auth", ("query", "basic"))
def test_curl_upload_imports_an_xva(sim, x, master, xva_files, auth, size, expect):
    """Given an XVA exported from the simulator, over 1 MiB or a few KiB
    When `curl -T file '<master>/import?...'` uploads it, with the session in the query or
    with -u user:password, and a task_id; as curl does by default for such sizes (it sends
    Expect: 100-continue and waits for an answer before the body) or with -H 'Expect:'
    Then curl sends the whole body and exits 0; the reply is 200 with the task id and no
    Content-Length, nothing answered 100 Continue; the task succeeds and its VM exists with
    the source's disk bytes.
    xen-api: import.ml ``handler`` answers ``Http.http_200_ok ~keep_alive:false ()`` + task-id
    before reading the body (http.ml ``http_200_ok`` has no Content-Length); http_svr.ml has
    no Expect handling, so xapi never sends 100 Continue."""
    path, source = xva_files[size]
    task = x.task.create(f"curl import {auth} {size}", "")
    params, args = {"task_id": task}, [] if expect == "expect" else ["-H", "Expect:"]
    if auth == "query":
        params["session_id"] = H.handle(x)
    else:
        args += ["-u", f"{sim.pool(0)['username']}:{sim.pool(0)['password']}"]

    res = H.curl("-T", str(path), *args, url(master, "/import", params))

    assert res.returncode == 0, res.trace
    assert res.status == 200 and res.headers.get("task-id") == task, res.trace
    assert "content-length" not in res.headers
    assert ("> Expect: 100-continue" in res.trace) == (expect == "expect"), "the case must be what it says"
    assert "< HTTP/1.1 100" not in res.trace
    rec = wait_task(x, task)
    assert rec["status"] == "success", rec["error_info"]
    (new,) = read_refs(rec["result"])
    assert x.VM.get_name_label(new) == x.VM.get_name_label(source)
    assert disk_hashes(sim, x, new) == disk_hashes(sim, x, source)
    x.task.destroy(task)


# -- 2. handler tasks -----------------------------------------------------------
def _run_handler(sim, x, master, handler: str, vm: str, *, ok: bool, task: str | None):
    """Run ``handler`` once to its end; (status, reply headers)."""
    params = {"session_id": H.handle(x)}
    if task:
        params["task_id"] = task
    if handler in ("/export", "/export_metadata"):
        params["ref"] = vm if ok else "OpaqueRef:no-such-vm"
        status, headers, _ = H.get_until_close(master, handler, params)   # closed: the handler is over
        return status, headers
    if ok:
        source = "/export" if handler == "/import" else "/export_metadata"
        resp, body = H.get_all(master, source, {"session_id": H.handle(x), "ref": vm})
        assert resp.status == 200
    else:
        body = b"this is not an XVA" * 200
    reply = H.put(master, handler, params, body)     # returns once the server closed: handler over
    return reply.status, reply.headers


@pytest.mark.parametrize("ok", (True, False), ids=("succeeds", "fails"))
@pytest.mark.parametrize("handler", HANDLERS)
def test_a_task_the_handler_made_is_gone_when_it_ends(sim, x, master, diskless_vm, handler, ok):
    """Given no task_id
    When /export, /export_metadata, /import or /import_metadata runs to its end, succeeding or
    failing (a bad VM ref; a body that is not an XVA)
    Then the reply named a task (task-id header), and that task is destroyed: task.get_record
    of it gives HANDLE_INVALID, and no task is left behind.
    xen-api: xapi_http.ml ``with_context`` runs the handler under
    ``Server_helpers.exec_with_new_task``, which destroys its context (``Context.destroy`` ->
    ``TaskHelper.destroy``) when the handler returns, success or exception."""
    before = set(x.task.get_all())

    status, headers = _run_handler(sim, x, master, handler, diskless_vm, ok=ok, task=None)

    assert (status == 200) == (ok or handler.startswith("/import")), status
    task = headers.get("task-id")
    assert task and task.startswith("OpaqueRef:")
    assert H.task_gone(x, task)
    assert set(x.task.get_all()) - before == set()


@pytest.mark.parametrize("ok", (True, False), ids=("succeeds", "fails"))
@pytest.mark.parametrize("handler", HANDLERS)
def test_a_task_the_caller_gave_stays_with_the_outcome(sim, x, master, diskless_vm, handler, ok):
    """Given a task made with task.create, passed as task_id
    When the handler runs to its end, succeeding or failing
    Then the task still exists, names the outcome (success, or failure with the error), and
    is the caller's to destroy.
    xen-api: xapi_http.ml ``with_context`` uses ``exec_with_forwarded_task`` for a task_id;
    context.ml ``destroy`` skips forwarded tasks."""
    task = x.task.create(f"given {handler}", "")

    status, headers = _run_handler(sim, x, master, handler, diskless_vm, ok=ok, task=task)

    assert headers.get("task-id") == task
    rec = x.task.get_record(task)
    if ok:
        assert rec["status"] == "success", rec["error_info"]
    else:
        assert rec["status"] == "failure"
        expected = "HANDLE_INVALID" if handler.startswith("/export") else "IMPORT_ERROR"
        assert rec["error_info"][0].startswith(expected), rec["error_info"]
    x.task.destroy(task)
    assert H.task_gone(x, task)


def test_a_redirected_handler_leaves_only_the_callers_task(sim, x, master, halted_source):
    """Given a VM whose disk is on a pool member's local SR
    When /export of it, and an /import onto that SR, are asked of the master without and
    with a task_id, and then the export redirect is followed without a task_id
    Then each is redirected (302) and leaves no task of its own; a given task stays pending
    (it is for the host redirected to); the followed export's own task is gone at its end.
    xen-api: export.ml/import.ml ``handler`` check the SRs under ``exec_with_new_task`` (a task
    not in the database) and redirect before ``Xapi_http.with_context``; the member's handler
    then runs ``with_context`` as any other."""
    vm, vdi, member = H.member_local_vm(x, "fidelity redirect")
    sr = vdi["SR"]
    before = set(x.task.get_all())
    given = x.task.create("redirected", "")
    base = {"session_id": H.handle(x)}

    plain, _ = H.get_all(master, "/export", {**base, "ref": vm})
    with_task, _ = H.get_all(master, "/export", {**base, "ref": vm, "task_id": given})
    imp_plain = H.put(master, "/import", {**base, "sr_id": sr}, b"x" * 1024)
    imp_task = H.put(master, "/import", {**base, "sr_id": sr, "task_id": given}, b"x" * 1024)

    assert [plain.status, with_task.status, imp_plain.status, imp_task.status] == [302] * 4
    assert set(x.task.get_all()) - before == {given}
    assert x.task.get_status(given) == "pending"
    location = urllib.parse.urlsplit(plain.getheader("Location"))
    assert location.hostname == x.host.get_address(member)
    followed, body = H.get_all(f"http://{location.netloc}", f"{location.path}?{location.query}")
    assert followed.status == 200 and read_xva(io.BytesIO(body)).disks
    assert H.task_gone(x, followed.getheader("task-id"))
    assert set(x.task.get_all()) - before == {given}
    x.task.destroy(given)


def test_curl_upload_without_task_id_leaves_no_task(sim, x, master, xva_files):
    """Given an XVA and no task_id
    When curl -u user:password -T uploads it to /import
    Then the import happens (one more VM of that name) and the task named in the reply is
    destroyed when the handler ends, so no task is left; nor is the session made for the
    Basic credentials.
    xen-api: import.ml ``handler`` -> xapi_http.ml ``with_context`` (basic auth logs in on the
    client's behalf and, ``must_logout``, logs out at the end) -> ``exec_with_new_task``."""
    path, source = xva_files["small"]
    name = x.VM.get_name_label(source)
    before_tasks, before_vms = set(x.task.get_all()), len(x.VM.get_by_name_label(name))
    sessions = set(sim.state()["pools"][sim.pool(0)["name"]]["session"])

    res = H.curl("-u", f"{sim.pool(0)['username']}:{sim.pool(0)['password']}", "-T", str(path),
                 f"{master}/import")

    assert res.returncode == 0 and res.status == 200, res.trace
    assert H.task_gone(x, res.headers["task-id"])
    assert set(x.task.get_all()) - before_tasks == set()
    assert len(x.VM.get_by_name_label(name)) == before_vms + 1
    assert set(sim.state()["pools"][sim.pool(0)["name"]]["session"]) == sessions


# -- 3. /export_metadata?all=true -----------------------------------------------
def _is_default_template(rec) -> bool:
    return rec["is_default_template"] or (rec["is_a_template"]
                                          and rec["other_config"].get("default_template") == "true")


def _curl_metadata(sim, x, master, tmp_path, **params):
    """(curl result, {VM uuid: exported record}, the parsed XVA) of one /export_metadata."""
    out = tmp_path / "metadata.xva"
    res = H.curl("-o", str(out), url(master, "/export_metadata", {"session_id": H.handle(x), **params}))
    assert res.returncode == 0, res.trace
    if res.status != 200:
        return res, {}, None
    with tarfile.open(out) as tar:
        assert tar.getnames() == ["ova.xml"]
    xva = read_xva(io.BytesIO(out.read_bytes()))
    return res, {o["snapshot"]["uuid"]: o["snapshot"] for o in xva.objects("VM")}, xva


def test_export_metadata_all_takes_every_vm_but_default_templates(sim, x, master, diskless_vm, tmp_path):
    """Given the pool's VMs (running and halted VMs, snapshots, default templates, control
    domains) and a custom template of our own
    When curl GETs /export_metadata?all=true (then with include_dom0=false, then with
    export_snapshots=false)
    Then the reply is 200 with a Content-Length and a tar of just ova.xml holding every VM
    but the default templates: snapshots, the custom template and the control domains
    included (not with include_dom0=false), with each VM's VBDs; with export_snapshots=false
    the snapshot fields are cleared.
    xen-api: export.ml ``metadata_handler`` (``all``, ``include_dom0`` default true,
    ``is_default_template``), ``update_table``/``make_vm ~with_snapshot_metadata``."""
    template = x.VM.clone(diskless_vm, "fidelity custom template")
    x.VM.set_is_a_template(template, True)
    records = x.VM.get_all_records()
    expected = {rec["uuid"] for rec in records.values() if not _is_default_template(rec)}
    dom0s = {rec["uuid"] for rec in records.values() if rec["is_control_domain"]}
    snaps = {rec["uuid"] for rec in records.values() if rec["is_a_snapshot"]}
    defaults = {rec["uuid"] for rec in records.values() if _is_default_template(rec)}
    assert dom0s and snaps and defaults, "the inventory must have all three kinds"

    res, vms, xva = _curl_metadata(sim, x, master, tmp_path, all="true")
    _, no_dom0, _ = _curl_metadata(sim, x, master, tmp_path, all="true", include_dom0="false")
    _, no_snap_meta, _ = _curl_metadata(sim, x, master, tmp_path, all="true", export_snapshots="false")

    assert res.status == 200 and int(res.headers["content-length"]) > 0
    assert set(vms) == expected
    assert x.VM.get_uuid(template) in vms and not defaults & set(vms)
    assert all(vms[u]["is_a_snapshot"] for u in snaps)
    vbd_uuids = {o["snapshot"]["uuid"] for o in xva.objects("VBD")}
    assert vbd_uuids == {x.VBD.get_uuid(b) for rec in records.values() if rec["uuid"] in expected
                         for b in rec["VBDs"]}
    assert set(no_dom0) == expected - dom0s
    assert set(no_snap_meta) == expected
    assert not any(v["is_a_snapshot"] for v in no_snap_meta.values())


def test_export_metadata_refuses_a_flag_that_is_not_a_bool(sim, x, master, diskless_vm, tmp_path):
    """Given a VM, and a flag that is neither true nor false (export_snapshots=yes, all=1)
    When /export_metadata is asked for
    Then HTTP 500 (the same VM with export_snapshots=false exports).
    xen-api: export.ml ``bool_from_request`` -> OCaml ``bool_of_string`` raises on such values."""
    good, vms, _ = _curl_metadata(sim, x, master, tmp_path, ref=diskless_vm, export_snapshots="false")
    bad, _, _ = _curl_metadata(sim, x, master, tmp_path, ref=diskless_vm, export_snapshots="yes")
    bad_all, _, _ = _curl_metadata(sim, x, master, tmp_path, ref=diskless_vm, all="1")

    assert good.status == 200 and list(vms) == [x.VM.get_uuid(diskless_vm)]
    assert bad.status == 500 and bad_all.status == 500


# -- 3. /pool/xmldbdump -----------------------------------------------------------
def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'") + "'"


def _sexpr(items) -> str:
    """sExpr.ml ``string_of`` of a set (strings) or a map ((key, value) pairs)."""
    return "(" + " ".join(_quote(i) if isinstance(i, str) else "(%s %s)" % (_quote(i[0]), _quote(i[1]))
                          for i in items) + ")"


def _protect(text: str) -> str:
    return (text.replace("%", "%%").replace(" ", "%.").replace("\t", "%t").replace("\n", "%n")
            .replace("\r", "%r"))


@pytest.mark.parametrize("auth", ("query", "basic"))
def test_xmldbdump_serves_the_database_as_xml(sim, x, master, diskless_vm, tmp_path, auth):
    """Given a VM of ours with a spaced name, odd tags and other_config
    When curl GETs /pool/xmldbdump (session in the query, or -u user:password)
    Then the reply is 200 with no Content-Length, and the body parses as a <database> with
    a manifest (schema 5.x, generation_count) and one <table name=...> per class in name
    order, each <row> having ref, __ctime, __mtime and one attribute per column: namespaced
    fields as name__label, memory__static_max, VCPUs__max; values as the database strings
    (ints in decimal, bools true/false, sets and maps as S-expressions, spaces as %.);
    Set(Ref) relations are not columns; the task and session tables are empty; no task is
    left.  Without credentials: 401.
    xen-api: pool_db_backup.ml ``pull_database_backup_handler`` (``with_context``,
    ``http_200_ok ~keep_alive:false``, ``Db_xml.To.fd``); db_xml.ml ``To.table``;
    escaping.ml ``escape_id``; string_marshall_helper.ml/sExpr.ml; xml_spaces.ml ``protect``."""
    vm = H.own_vm(x, "fidelity dump 50%", diskless_vm)
    x.VM.set_tags(vm, ["two words", "it's"])
    x.VM.add_to_other_config(vm, "note", 'say "hi"')
    rec = x.VM.get_record(vm)
    before = set(x.task.get_all())
    args = ["-u", f"{sim.pool(0)['username']}:{sim.pool(0)['password']}"] if auth == "basic" else []
    params = {"session_id": H.handle(x)} if auth == "query" else {}
    out = tmp_path / "db.xml"

    res = H.curl("-o", str(out), *args, url(master, "/pool/xmldbdump", params))
    denied = H.curl(f"{master}/pool/xmldbdump")

    assert res.returncode == 0 and res.status == 200, res.trace
    assert "content-length" not in res.headers
    assert denied.status == 401
    assert set(x.task.get_all()) - before == set()
    root = ET.parse(out).getroot()
    assert root.tag == "database"
    pairs = {p.get("key"): p.get("value") for p in root.find("manifest")}
    assert pairs["schema_major_vsn"] == "5" and int(pairs["generation_count"]) > 0
    tables = {t.get("name"): t for t in root.findall("table")}
    assert [t.get("name") for t in root.findall("table")] == sorted(tables)
    assert not list(tables["task"]) and not list(tables["session"])
    rows = {r.get("ref"): r.attrib for r in tables["VM"]}
    assert set(rows) == set(x.VM.get_all())
    row = rows[vm]
    assert list(row)[:3] == ["ref", "__ctime", "__mtime"]
    assert row["uuid"] == rec["uuid"]
    assert row["name__label"] == _protect(rec["name_label"]) == "fidelity%.dump%.50%%"
    assert row["power_state"] == "Halted" and row["is_a_template"] == "false"
    assert row["memory__static_max"] == rec["memory_static_max"] and row["VCPUs__max"] == rec["VCPUs_max"]
    assert row["HVM__boot_policy"] == _protect(rec["HVM_boot_policy"])
    assert row["tags"] == _protect(_sexpr(rec["tags"]))
    assert row["other_config"] == _protect(_sexpr(list(rec["other_config"].items())))
    assert not {"VBDs", "VIFs", "snapshots", "name_label", "memory_static_max"} & set(row)
    vbd_rows = {r.get("ref"): r.attrib for r in tables["VBD"]}
    assert {vbd_rows[b]["VM"] for b in rec["VBDs"]} <= {vm}


# -- 3. HEAD ----------------------------------------------------------------------
def test_head_of_export_is_501_and_runs_nothing(sim, x, master, diskless_vm):
    """Given a halted VM
    When HEAD /export?ref=<vm> is sent (curl -I, and http.client), and HEAD of another path
    Then the answer is xapi's 501 "Method not implemented" (HTML, Connection: close) with no
    task-id; no task is made, the VM has no current operation, and a GET still exports it.
    xen-api: http.ml ``method_t_of_string`` knows no HEAD (``Unknown "HEAD"``), so
    http_svr.ml ``handle_one`` finds no handler map and raises ``Method_not_implemented``
    -> ``response_method_not_implemented``."""
    before = set(x.task.get_all())
    target = url(master, "/export", {"session_id": H.handle(x), "ref": diskless_vm})

    res = H.curl("-I", target)
    conn = http.client.HTTPConnection(*H.host_port(master), timeout=30)
    conn.request("HEAD", urllib.parse.urlsplit(target).path + "?" + urllib.parse.urlsplit(target).query)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    other = H.curl("-I", f"{master}/pool/xmldbdump")

    assert res.returncode == 0, res.trace
    assert res.status == 501 and resp.status == 501 and other.status == 501
    assert resp.reason == "Method not implemented"
    assert res.headers["content-type"] == "text/html" and res.headers["connection"] == "close"
    assert "task-id" not in res.headers
    assert set(x.task.get_all()) == before
    assert x.VM.get_current_operations(diskless_vm) == {}
    got, body = H.get_all(master, "/export", {"session_id": H.handle(x), "ref": diskless_vm})
    assert got.status == 200 and read_xva(io.BytesIO(body)).objects("VM")
