"""xapi's HTTP handlers as the simulator serves them (FACTS.md §1.4, §5, §7): /export,
/export_metadata, /import, /import_metadata - auth, tasks, redirects, compression,
bandwidth, progress, import failures and the simulator's memory use.

Driven only through XenAPI.Session and plain HTTP; VMs that get exported are the
tests' own (clones with just a 16 MiB system disk), so the inventory never changes.
"""
from __future__ import annotations

import gzip
import io
import re
import tarfile
import time
import urllib.parse
import xmlrpc.client

import pytest
import zstandard

from helpers import xapi_http as H
from helpers.sim_proc import wait_task
from helpers.xva_parse import member_offsets, read_xva

MiB = 1 << 20


@pytest.fixture(scope="module")
def small_vm(x):
    source = next(ref for ref, rec in H.user_vms(x).items() if rec["power_state"] == "Halted")
    return H.own_vm(x, "http small", source)


@pytest.fixture(scope="module")
def small_xva(x, master, small_vm) -> bytes:
    resp, body = H.get_all(master, "/export", {"session_id": H.handle(x), "ref": small_vm})
    assert resp.status == 200
    return body


def _pending_tasks(x) -> set[str]:
    return {ref for ref, rec in x.task.get_all_records().items() if rec["status"] == "pending"}


def _signature(xva) -> dict:
    """What two exports of one VM share: per VDI uuid, the chunk layout and the disk hash."""
    return {uuid: (d.numbers, d.lengths, d.sha256) for uuid, d in xva.disk_by_vdi_uuid().items()}


# -- /export: credentials, tasks, response --------------------------------------
AUTH = ("query", "cookie", "basic")


@pytest.mark.parametrize("by", ("ref", "uuid"))
@pytest.mark.parametrize("auth", AUTH)
def test_export_answers_http10_stream_with_task_id(sim, x, master, small_vm, auth, by):
    """Given a halted VM and valid credentials (session_id query, session_id cookie or Basic auth)
    When GET /export?ref=|uuid= is read to the end
    Then the reply is HTTP/1.0 200, application/octet-stream, no Content-Length, a task-id header
    naming the handler's own task, which is destroyed by the time the connection closes
    (xapi_http.ml ``with_context`` -> ``exec_with_new_task``), and the body is the VM's XVA."""
    params = {"ref": small_vm} if by == "ref" else {"uuid": x.VM.get_uuid(small_vm)}
    headers = {}
    if auth == "query":
        params["session_id"] = H.handle(x)
    elif auth == "cookie":
        headers["Cookie"] = f"session_id={H.handle(x)}"
    else:
        headers.update(H.basic_auth(sim.pool(0)["username"], sim.pool(0)["password"]))

    resp = H.get(master, "/export", params, headers)
    try:
        xva = read_xva(resp)
        assert resp.read() == b""   # to the close: the handler is over
    finally:
        resp.close()
        resp.connection_.close()

    assert resp.status == 200 and resp.version == 10
    assert resp.getheader("Content-Length") is None
    assert resp.getheader("Content-Type") == "application/octet-stream"
    assert resp.getheader("Connection", "").lower() == "close"
    assert resp.getheader("Content-Disposition") == 'attachment; filename="export.xva"'
    task = resp.getheader("task-id")
    assert task and task.startswith("OpaqueRef:")
    assert H.task_gone(x, task)
    assert [o["snapshot"]["uuid"] for o in xva.objects("VM")] == [x.VM.get_uuid(small_vm)]
    assert len(xva.disks) == 1


def test_export_completes_the_task_given_as_task_id(x, master, small_vm):
    """Given a task made with task.create
    When /export is called with task_id=<it>
    Then the reply names that task and the handler completes it with success and progress 1."""
    task = x.task.create("backup export", "test")
    assert x.task.get_status(task) == "pending"

    resp, body = H.get_all(master, "/export", {"session_id": H.handle(x), "ref": small_vm, "task_id": task})

    assert resp.status == 200 and resp.getheader("task-id") == task
    rec = wait_task(x, task)
    assert rec["status"] == "success" and rec["progress"] == 1.0 and rec["error_info"] == []
    assert read_xva(io.BytesIO(body)).disks
    x.task.destroy(task)


def test_export_of_a_snapshot_works_and_of_a_running_vm_fails(x, master):
    """Given a running VM and a snapshot of it (without its data disks)
    When each is exported with a task_id
    Then the snapshot exports; the running VM's export fails with VM_BAD_POWER_STATE on the task."""
    vm, rec = next((r, v) for r, v in H.user_vms(x).items() if v["power_state"] == "Running")
    data = [x.VDI.get_by_uuid(d["uuid"]) for b, d in H.vm_disks(x, vm) if b["userdevice"] != "0"]
    snap = x.VM.snapshot(vm, "http snapshot", data)
    running_task, snap_task = x.task.create("running", ""), x.task.create("snapshot", "")

    bad, bad_body = H.get_all(master, "/export", {"session_id": H.handle(x), "ref": vm, "task_id": running_task})
    good, good_body = H.get_all(master, "/export", {"session_id": H.handle(x), "ref": snap, "task_id": snap_task})

    assert bad.status != 200
    failed = wait_task(x, running_task)
    assert failed["status"] == "failure"
    assert failed["error_info"] == ["VM_BAD_POWER_STATE", vm, "halted, suspended", "running"]
    assert good.status == 200 and wait_task(x, snap_task)["status"] == "success"
    assert read_xva(io.BytesIO(good_body)).objects("VM")[0]["snapshot"]["uuid"] == x.VM.get_uuid(snap)


def _bad_credentials(sim, x):
    logged_out = sim.session(0)
    handle = logged_out.handle
    logged_out.xenapi.session.logout()
    return {
        "bogus-session": ({"session_id": "OpaqueRef:00000000-0000-0000-0000-000000000000"}, {}),
        "logged-out-session": ({"session_id": handle}, {}),
        "no-credentials": ({}, {}),
        "wrong-password": ({}, H.basic_auth(sim.pool(0)["username"], "not the password")),
        "bogus-cookie": ({}, {"Cookie": "session_id=OpaqueRef:nope"}),
    }


@pytest.mark.parametrize("case", ("bogus-session", "logged-out-session", "no-credentials", "wrong-password",
                                  "bogus-cookie"))
@pytest.mark.parametrize("path", ("/export", "/export_metadata"))
def test_export_without_valid_session_is_401_and_fails_the_task(sim, x, master, small_vm, case, path):
    """Given missing or bad credentials and a task made with task.create
    When /export or /export_metadata is requested
    Then the reply is HTTP 401 and the task fails with SESSION_AUTHENTICATION_FAILED."""
    params, headers = _bad_credentials(sim, x)[case]
    task = x.task.create("unauthorised", "")

    resp, _ = H.get_all(master, path, {**params, "ref": small_vm, "task_id": task}, headers)

    assert resp.status == 401
    rec = wait_task(x, task)
    assert rec["status"] == "failure" and rec["error_info"] == ["SESSION_AUTHENTICATION_FAILED"]


def test_xmlrpc_round_trips_do_not_stall_on_delayed_acks(x):
    """Given a logged-in session
    When cheap calls are made one after another on its kept-alive connection
    Then each takes well under the 40 ms a delayed ACK costs (head and body must not stall)."""
    durations = []
    for _ in range(15):
        began = time.monotonic()
        x.pool.get_all()
        durations.append(time.monotonic() - began)

    assert sorted(durations)[len(durations) // 2] < 0.015, durations


# -- redirects ----------------------------------------------------------------
def test_export_and_import_redirect_to_the_host_that_sees_the_local_sr(sim, x, master):
    """Given a VM whose system disk is on the Local storage SR of a pool member
    When /export is requested from the master (without and with a task_id)
    Then the master answers 302 with Location = the member's address, same port, path and query,
    Connection: close, leaves no stray pending task, and following the redirect exports the VM
    (completing the given task).  An /import onto that SR is redirected the same way."""
    vm, vdi, member = H.member_local_vm(x, "http redirect")
    port = urllib.parse.urlsplit(master).port
    pending = _pending_tasks(x)

    plain, _ = H.get_all(master, "/export", {"session_id": H.handle(x), "ref": vm})
    task = x.task.create("redirected export", "")
    query = urllib.parse.urlencode({"session_id": H.handle(x), "ref": vm, "task_id": task})
    redirected, _ = H.get_all(master, "/export?" + query)

    for resp in (plain, redirected):
        assert resp.status == 302
        assert resp.getheader("Connection", "").lower() == "close"
        assert resp.getheader("Cache-Control") == "no-cache, no-store"
        location = urllib.parse.urlsplit(resp.getheader("Location"))
        assert (location.hostname, location.port) == (x.host.get_address(member), port)
    assert redirected.getheader("Location").endswith(":%d/export?%s" % (port, query))
    assert _pending_tasks(x) - pending == {task}, "the redirect must not leave a task behind"
    assert x.task.get_status(task) == "pending"
    base = "http://%s" % urllib.parse.urlsplit(redirected.getheader("Location")).netloc
    followed, body = H.get_all(base, "/export?" + query)
    assert followed.status == 200
    assert wait_task(x, task)["status"] == "success"
    assert read_xva(io.BytesIO(body)).disk_by_vdi_uuid()[vdi["uuid"]].sha256 == sim.vdi_info(vdi["uuid"])["sha256"]

    reply = H.put(master, "/import", {"session_id": H.handle(x), "sr_id": vdi["SR"]}, body)
    assert reply.status == 302
    assert urllib.parse.urlsplit(reply.headers["location"]).hostname == x.host.get_address(member)


# -- compression --------------------------------------------------------------
@pytest.mark.parametrize("value,magic", (("gzip", b"\x1f\x8b"), ("true", b"\x1f\x8b"),
                                         ("zstd", b"\x28\xb5\x2f\xfd"), ("false", b"ova.xml")))
def test_export_compression_wraps_the_same_tar(x, master, small_vm, small_xva, value, magic):
    """Given a halted VM
    When it is exported with use_compression=gzip|true|zstd (or false)
    Then the body is a gzip|zstd stream (or a plain tar) holding the same XVA."""
    resp, body = H.get_all(master, "/export", {"session_id": H.handle(x), "ref": small_vm, "use_compression": value})

    assert resp.status == 200 and body.startswith(magic)
    if magic == b"\x1f\x8b":
        tar = gzip.decompress(body)
    elif value == "zstd":
        tar = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True).read()
    else:
        tar = body
    assert len(body) < len(tar) or value == "false"
    assert _signature(read_xva(io.BytesIO(tar))) == _signature(read_xva(io.BytesIO(small_xva)))


# -- bandwidth and progress ---------------------------------------------------
def test_bandwidth_cap_limits_the_export_and_progress_advances(fresh_sim):
    """Given a simulator whose hosts stream at most 8 MB/s and a VM with ~20 MB of disk data
    When its export (with a task_id) is read in small pieces
    Then the transfer takes at least about bytes / 8 MB/s, and task.get_progress rises through
    values strictly between 0 and 1 while the bytes flow (the simulator writes a task's progress
    at most every 0.5 s, sim/tasks.py PROGRESS_EVERY_S), ending at 1 with success."""
    sim = fresh_sim("--pools", "1", "--vms-per-pool", "2", "--hosts-per-pool", "1", "--disk-mib", "80",
                    "--host-bandwidth-mbps", "8")
    x = H.api(sim.session(0))
    vm = H.own_vm(x, "bandwidth", next(iter(H.user_vms(x))))
    task = x.task.create("slow export", "")
    samples = []

    began = time.monotonic()
    resp = H.get(sim.pool(0)["master"], "/export", {"session_id": H.handle(x), "ref": vm, "task_id": task})
    received = 0
    while piece := resp.read(256 * 1024):
        received += len(piece)
        samples.append(x.task.get_progress(task))
    elapsed = time.monotonic() - began
    resp.close()
    resp.connection_.close()

    assert received > 15_000_000
    assert elapsed >= 0.8 * received / 8e6, (received, elapsed)
    assert elapsed < 3 * received / 8e6 + 1
    inner = [p for p in samples if 0.0 < p < 1.0]
    assert len(set(inner)) >= 3, samples
    assert samples == sorted(samples)
    rec = wait_task(x, task)
    assert rec["status"] == "success" and rec["progress"] == 1.0


def test_export_bytes_are_counted_in_sim_stats(sim, x, master, small_vm):
    """Given the simulator's counters (GET /sim/stats), when a VM's XVA is exported, then the pool's
    exported_bytes grows by exactly the bytes sent: what incremental-backup benchmarks compare."""
    name = sim.pool(0)["name"]
    before = sim.control_call("GET", "/sim/stats")[1]["pools"][name]["exported_bytes"]
    resp, body = H.get_all(master, "/export", {"session_id": H.handle(x), "ref": small_vm})
    assert resp.status == 200 and len(body) > 1 << 20
    after = sim.control_call("GET", "/sim/stats")[1]["pools"][name]["exported_bytes"]
    assert after - before == len(body)
    resp, meta = H.get_all(master, "/export_metadata", {"session_id": H.handle(x), "ref": small_vm})
    assert resp.status == 200 and 0 < len(meta) < 1 << 20
    assert sim.control_call("GET", "/sim/stats")[1]["pools"][name]["exported_bytes"] - after == len(meta)


# -- /export_metadata ---------------------------------------------------------
def test_export_metadata_is_a_small_tar_with_content_length(x, master):
    """Given a (running) VM that has snapshots
    When /export_metadata is requested, with the defaults, export_snapshots=false, or
    excluded_device_types=vif
    Then each reply has a Content-Length and is a tar of just ova.xml; by default the snapshots are
    in it, with false they are not, and excluding vif drops every VIF."""
    vm, rec = next((r, v) for r, v in H.user_vms(x).items() if v["snapshots"])
    uuids = {x.VM.get_uuid(s) for s in rec["snapshots"]}

    replies = {}
    for name, extra in (("default", {}), ("no-snapshots", {"export_snapshots": "false"}),
                        ("no-vifs", {"excluded_device_types": "vif"})):
        resp, body = H.get_all(master, "/export_metadata", {"session_id": H.handle(x), "ref": vm, **extra})
        assert resp.status == 200 and resp.getheader("Content-Length") == str(len(body)), name
        assert resp.getheader("task-id")
        replies[name] = read_xva(io.BytesIO(body))

    for xva in replies.values():
        assert xva.names == ["ova.xml"] and not xva.disks
    default_vms = {o["snapshot"]["uuid"]: o["snapshot"] for o in replies["default"].objects("VM")}
    assert set(default_vms) == {rec["uuid"]} | uuids
    assert default_vms[rec["uuid"]]["power_state"] == rec["power_state"], "metadata keeps the power state"
    assert all(default_vms[u]["is_a_snapshot"] for u in uuids)
    assert [o["snapshot"]["uuid"] for o in replies["no-snapshots"].objects("VM")] == [rec["uuid"]]
    assert replies["default"].objects("VIF") and not replies["no-vifs"].objects("VIF")
    assert replies["no-vifs"].objects("VBD")
    assert all(o["snapshot"]["VIFs"] == [] for o in replies["no-vifs"].objects("VM"))


# -- /import: protocol and failures --------------------------------------------
def _put_import(sim, x, body, headers=None, content_length=True, **params):
    task = x.task.create("test import", "")
    reply = H.put(sim.pool(0)["master"], "/import", {"session_id": H.handle(x), "task_id": task, **params},
                  body, headers=headers, content_length=content_length)
    return reply, wait_task(x, task)


def _flip(tar: bytes, member_suffix: str) -> bytes:
    name, offset, size = next(m for m in member_offsets(tar) if m[0].endswith(member_suffix) and m[2] > 200)
    data = bytearray(tar)
    data[offset + 100] ^= 0xFF
    return bytes(data)


def _retar(tar: bytes, edit) -> bytes:
    """The same members, in order, with ``edit(name, data)`` applied to each."""
    out = b""
    for name, offset, size in member_offsets(tar):
        data = edit(name, tar[offset:offset + size])
        info = tarfile.TarInfo(name)
        info.size = len(data)
        out += info.tobuf(format=tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512)
    return out + bytes(1024)


def _newer_exporter(tar: bytes) -> bytes:
    def edit(name, data):
        if name != "ova.xml":
            return data
        edited = re.sub(rb"(<name>xapi_major</name><value>)\d+", rb"\g<1>999", data)
        assert edited != data
        return edited
    return _retar(tar, edit)


def _first_member_not_ova(small_xva: bytes) -> bytes:
    info = tarfile.TarInfo("hello.txt")
    info.size = 6
    return info.tobuf(format=tarfile.USTAR_FORMAT) + b"hello\n".ljust(512, b"\0") + small_xva


FAILURES = {
    "truncated-in-a-chunk": (lambda t: t[: len(t) // 2], ["IMPORT_ERROR_PREMATURE_EOF"]),
    "truncated-before-tar-end": (lambda t: t[:-1024], ["IMPORT_ERROR_PREMATURE_EOF"]),
    "flipped-byte": (lambda t: _flip(t, "/00000000"), ["IMPORT_ERROR_SOME_CHECKSUMS_FAILED"]),
    "first-member-not-ova-xml": (_first_member_not_ova, ["IMPORT_ERROR_UNEXPECTED_FILE", "ova.xml", "hello.txt"]),
    "newer-exporter": (_newer_exporter, ["IMPORT_INCOMPATIBLE_VERSION"]),
    "garbage": (lambda t: bytes(range(256)) * 40, None),
    "short-garbage": (lambda t: b"this is not an xva", None),
    "corrupt-gzip": (lambda t: gzip.compress(t)[:4000] + bytes(4000), None),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_failed_import_fails_the_task_and_leaves_nothing_behind(sim, x, small_xva, case):
    """Given a damaged XVA (truncated, a flipped chunk byte, a wrong first member, garbage)
    When it is PUT to /import
    Then the reply is still 200 + task-id, the task fails with the matching IMPORT_ERROR* and no
    VM, VDI, VBD, VIF or network is left behind."""
    make, expected = FAILURES[case]
    before = H.counts(sim, "pool-a")

    reply, task = _put_import(sim, x, make(small_xva))

    assert reply.status == 200
    assert task["status"] == "failure"
    if expected is None:
        assert task["error_info"][0].startswith("IMPORT_ERROR"), task["error_info"]
    else:
        assert task["error_info"] == expected
    assert H.counts(sim, "pool-a") == before


def test_import_with_force_accepts_a_bad_checksum(sim, x, small_vm, small_xva):
    """Given an XVA with one flipped byte in a chunk
    When it is imported with force=true
    Then the import succeeds and the disk holds the flipped byte."""
    damaged = _flip(small_xva, "/00000000")
    (_, vdi), = H.vm_disks(x, small_vm)
    expected = bytearray(sim.vdi_bytes(vdi["uuid"]))
    expected[100] ^= 0xFF

    reply, task = _put_import(sim, x, damaged, force="true")

    assert task["status"] == "success", task["error_info"]
    (new_vdi,) = [d for _, d in H.vm_disks(x, read_refs(task["result"])[0])]
    assert sim.vdi_bytes(new_vdi["uuid"]) == bytes(expected)


def read_refs(result: str) -> list[str]:
    return xmlrpc.client.loads(f"<methodResponse><params><param>{result}</param></params></methodResponse>")[0][0]


def test_chunked_import_is_refused_with_403(sim, x):
    """Given a client that sends its body with Transfer-Encoding: chunked
    When it PUTs /import
    Then the reply is HTTP 403 and the task fails with IMPORT_ERROR_CANNOT_HANDLE_CHUNKED."""
    before = H.counts(sim, "pool-a")

    reply, task = _put_import(sim, x, None, headers={"Transfer-Encoding": "chunked"}, content_length=False)

    assert reply.status == 403
    assert task["status"] == "failure" and task["error_info"] == ["IMPORT_ERROR_CANNOT_HANDLE_CHUNKED"]
    assert H.counts(sim, "pool-a") == before


def test_import_onto_an_iso_sr_is_refused_with_400(sim, x, small_xva):
    """Given the ISO library SR
    When an XVA is PUT to /import with its sr_id
    Then HTTP 400, the task fails with SR_OPERATION_NOT_SUPPORTED [sr], nothing is created."""
    iso = H.sr_by_name(x, "ISO library")
    before = H.counts(sim, "pool-a")

    reply, task = _put_import(sim, x, small_xva, sr_id=iso)

    assert reply.status == 400
    assert task["status"] == "failure" and task["error_info"] == ["SR_OPERATION_NOT_SUPPORTED", iso]
    assert H.counts(sim, "pool-a") == before


def test_retar_helper_keeps_an_importable_xva(sim, x, small_xva):
    """Given an XVA re-packed member by member without changes (the helper the damage cases use)
    When it is imported
    Then it imports: the failures above come from the damage, not from the re-packing."""
    reply, task = _put_import(sim, x, _retar(small_xva, lambda name, data: data))

    assert task["status"] == "success", task["error_info"]


def test_import_without_session_is_401(sim, x, small_xva):
    """Given no credentials
    When /import is PUT
    Then HTTP 401, the task fails with SESSION_AUTHENTICATION_FAILED, nothing is created."""
    task = x.task.create("unauthorised import", "")
    before = H.counts(sim, "pool-a")

    reply = H.put(sim.pool(0)["master"], "/import", {"task_id": task}, small_xva)

    assert reply.status == 401
    rec = wait_task(x, task)
    assert rec["status"] == "failure" and rec["error_info"] == ["SESSION_AUTHENTICATION_FAILED"]
    assert H.counts(sim, "pool-a") == before


@pytest.mark.parametrize("encoding", ("identity-no-length", "gzip", "zstd"))
def test_import_accepts_raw_gzip_and_zstd_bodies(sim, x, small_vm, small_xva, encoding):
    """Given an XVA sent without Content-Length, or gzip- or zstd-compressed
    When it is PUT to /import
    Then the import succeeds with the same disk bytes and the task records object_creation=complete."""
    body = {"identity-no-length": small_xva, "gzip": gzip.compress(small_xva, 1),
            "zstd": zstandard.ZstdCompressor().compress(small_xva)}[encoding]
    (_, vdi), = H.vm_disks(x, small_vm)

    reply, task = _put_import(sim, x, body, content_length=encoding != "identity-no-length")

    assert reply.status == 200 and reply.headers["task-id"]
    assert task["status"] == "success", task["error_info"]
    (new,) = read_refs(task["result"])
    (_, new_vdi), = H.vm_disks(x, new)
    assert sim.vdi_info(new_vdi["uuid"])["sha256"] == sim.vdi_info(vdi["uuid"])["sha256"]
    assert task["other_config"].get("object_creation") == "complete"


# -- memory -------------------------------------------------------------------
def _vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))


def test_simulator_memory_does_not_grow_with_disk_size(fresh_sim):
    """Given a simulator whose VMs have 2 GiB system disks
    When a snapshot of a VM is exported in full to a reader that discards it
    Then the simulator's peak RSS stays far below the disk size (under 300 MB)."""
    sim = fresh_sim("--pools", "1", "--vms-per-pool", "3", "--hosts-per-pool", "1", "--disk-mib", "2048")
    x = H.api(sim.session(0))
    vm = next(iter(H.user_vms(x)))
    snap = x.VM.snapshot(vm, "big snapshot")
    task = x.task.create("big export", "")

    resp = H.get(sim.pool(0)["master"], "/export", {"session_id": H.handle(x), "ref": snap, "task_id": task},
                 timeout=120)
    received = 0
    while piece := resp.read(4 * MiB):
        received += len(piece)
    resp.close()
    resp.connection_.close()

    assert wait_task(x, task)["status"] == "success"
    assert received > 400 * MiB, "the 2 GiB system disk is a quarter full"
    assert _vm_hwm_kib(sim.pid) < 300 * 1024
