"""Plain HTTP clients for xapi's /export, /export_metadata, /import and /import_metadata.

Only http.client, raw sockets and the real curl: the tests see the wire exactly as
a backup tool or an administrator would.  ``put`` reads the reply head *before*
sending the body, because xapi answers an import (200 + task-id, or an error)
before it reads a byte of the body; a server that waited for the body would make
it time out.
"""
from __future__ import annotations

import base64
import http.client
import socket
import subprocess
import urllib.parse
from dataclasses import dataclass

import XenAPI

NULL = "OpaqueRef:NULL"


def host_port(base_url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(base_url)
    return parts.hostname, parts.port or 80


def target(path: str, params: dict | None) -> str:
    return path + ("?" + urllib.parse.urlencode(params) if params else "")


def basic_auth(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def get(base_url: str, path: str, params: dict | None = None, headers: dict | None = None,
        timeout: float = 60) -> http.client.HTTPResponse:
    """An open response; read it, then close it (closing it closes the connection)."""
    conn = http.client.HTTPConnection(*host_port(base_url), timeout=timeout)
    conn.request("GET", target(path, params), headers=headers or {})
    resp = conn.getresponse()
    resp.connection_ = conn
    return resp


def get_all(base_url: str, path: str, params: dict | None = None, headers: dict | None = None,
            timeout: float = 60) -> tuple[http.client.HTTPResponse, bytes]:
    resp = get(base_url, path, params, headers, timeout)
    try:
        return resp, resp.read()
    finally:
        resp.close()
        resp.connection_.close()


def get_until_close(base_url: str, path: str, params: dict | None = None,
                    timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """GET and read until the server closes: (status, lower-case headers, everything after the head).

    A handler's task ends after its last byte is written but before the connection
    closes, so a test that checks the task reads to the close, not to Content-Length."""
    sock = socket.create_connection(host_port(base_url), timeout=timeout)
    try:
        sock.sendall(f"GET {target(path, params)} HTTP/1.1\r\nHost: {base_url.split('//')[1]}\r\n\r\n".encode())
        reply, rest = _read_head(sock)
        chunks = [rest]
        while piece := sock.recv(65536):
            chunks.append(piece)
        return reply.status, reply.headers, b"".join(chunks)
    finally:
        sock.close()


@dataclass
class Reply:
    status: int
    reason: str
    version: str
    headers: dict[str, str]       # lower-case names
    body: bytes
    body_sent: bool               # False when the server cut us off while we were sending


def put(base_url: str, path: str, params: dict | None, body: bytes | None, headers: dict | None = None,
        content_length: bool = True, timeout: float = 60) -> Reply:
    """PUT ``body`` (sent only after a 200 head arrived), then wait for the server to close."""
    head = [f"PUT {target(path, params)} HTTP/1.1", f"Host: {base_url.split('//')[1]}"]
    if body is not None and content_length:
        head.append(f"Content-Length: {len(body)}")
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock = socket.create_connection(host_port(base_url), timeout=10)
    try:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        try:
            reply, rest = _read_head(sock)   # must come before the body
        except socket.timeout:
            raise AssertionError(f"no reply head to PUT {path} before the body was sent") from None
        sock.settimeout(timeout)
        length = int(reply.headers.get("content-length", "0") or 0)
        while len(rest) < length:
            piece = sock.recv(65536)
            if not piece:
                break
            rest += piece
        reply.body = rest[:length]
        if reply.status == 200 and body:
            try:
                view = memoryview(body)
                for start in range(0, len(body), 1 << 20):
                    sock.sendall(view[start:start + (1 << 20)])
            except OSError:
                reply.body_sent = False
        try:
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):   # the server closes once the import is over
                pass
        except OSError:
            pass
        return reply
    finally:
        sock.close()


def _read_head(sock) -> tuple[Reply, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            raise AssertionError(f"connection closed before a reply head: {data!r}")
        data += piece
    raw, rest = data.split(b"\r\n\r\n", 1)
    lines = raw.decode("latin-1").split("\r\n")
    version, status, reason = (lines[0].split(" ", 2) + [""])[:3]
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return Reply(int(status), reason, version, headers, b"", True), rest


# -- VMs of our own, so tests never change the shared inventory's VMs ----------
def system_vbd(x, vm: str) -> str:
    return next(b for b in x.VM.get_VBDs(vm) if x.VBD.get_userdevice(b) == "0")


def own_vm(x, name: str, source: str, keep=lambda vbd, rec: rec["userdevice"] == "0") -> str:
    """A halted, non-template VM cloned from ``source`` (through a snapshot if it runs).

    Only the disk VBDs that ``keep(vbd_ref, vbd_record)`` accepts stay; CD drives stay.
    """
    if x.VM.get_power_state(source) == "Halted" and not x.VM.get_is_a_template(source):
        vm = x.VM.clone(source, name)
    else:
        snap = source if x.VM.get_is_a_snapshot(source) else x.VM.snapshot(source, name + " (source)")
        vm = x.VM.clone(snap, name)
    if x.VM.get_is_a_template(vm):
        x.VM.set_is_a_template(vm, False)
    for vbd in x.VM.get_VBDs(vm):
        rec = x.VBD.get_record(vbd)
        if rec["type"] != "CD" and not keep(vbd, rec):
            x.VBD.destroy(vbd)
    return vm


def user_vms(x) -> dict[str, dict]:
    return {ref: rec for ref, rec in x.VM.get_all_records().items()
            if not rec["is_control_domain"] and not rec["is_a_template"] and not rec["is_a_snapshot"]}


def vm_disks(x, vm: str) -> list[tuple[dict, dict]]:
    """(VBD record, VDI record) of the VM's disks (not CDs), by userdevice."""
    out = []
    for vbd in x.VM.get_VBDs(vm):
        rec = x.VBD.get_record(vbd)
        if rec["type"] != "CD" and rec["VDI"] != NULL:
            out.append((rec, x.VDI.get_record(rec["VDI"])))
    return sorted(out, key=lambda p: int(p[0]["userdevice"]))


def sr_by_name(x, name: str) -> str:
    return x.SR.get_by_name_label(name)[0]


def task_error(x, task: str) -> list[str]:
    return x.task.get_error_info(task)


def add_disk(sim, x, vm: str, size: int, userdevice: str, sr: str, writes=()) -> str:
    """A new VDI of ``size`` bytes on ``sr`` attached to ``vm``; ``writes`` = [(offset, bytes)]."""
    vdi = x.VDI.create({"name_label": f"test disk {userdevice}", "name_description": "", "SR": sr,
                        "virtual_size": str(size), "type": "user", "sharable": False, "read_only": False,
                        "other_config": {}, "xenstore_data": {}, "sm_config": {}, "tags": []})
    x.VBD.create({"VM": vm, "VDI": vdi, "userdevice": userdevice, "bootable": False, "mode": "RW",
                  "type": "Disk", "empty": False, "other_config": {}, "qos_algorithm_type": "",
                  "qos_algorithm_params": {}})
    uuid = x.VDI.get_uuid(vdi)
    for offset, data in writes:
        guest_write(sim, uuid, offset, data)
    return vdi


def guest_write(sim, vdi_uuid: str, offset: int, data: bytes) -> None:
    status, body = sim.control_call("POST", f"/sim/vdi/{vdi_uuid}/write", {"offset": offset, "hex": data.hex()})
    assert status == 200, body


def counts(sim, pool_name: str, classes=("VM", "VDI", "VBD", "VIF", "network")) -> dict[str, int]:
    state = sim.state()["pools"][pool_name]
    return {cls: len(state[cls]) for cls in classes}


def api(session):
    """``session.xenapi`` that remembers its session ref (a fresh dispatcher per access otherwise)."""
    x = session.xenapi
    x.__dict__["_test_handle"] = session.handle
    return x


def handle(x) -> str:
    return x.__dict__["_test_handle"]


# -- curl, the way an administrator would call the handlers -------------------
CURL = "/usr/bin/curl"


@dataclass
class CurlResult:
    returncode: int
    status: int | None            # the last reply's status
    headers: dict[str, str]       # the last reply's headers, lower-case names
    trace: str                    # curl -v's stderr: what was sent (">") and received ("<")


def curl(*args: str, timeout: float = 120) -> CurlResult:
    """Run the real curl with ``args`` (plus -sS -v, -D to read the reply head, and the body
    to /dev/null unless ``args`` give -o)."""
    sink = [] if "-o" in args else ["-o", "/dev/null"]
    proc = subprocess.run([CURL, "-sS", "-v", "-D", "/dev/stdout", *sink, *args],
                          capture_output=True, timeout=timeout)
    status, headers = None, {}
    for line in proc.stdout.decode("latin-1").splitlines():
        if line.startswith("HTTP/"):
            status, headers = int(line.split()[1]), {}
        elif ":" in line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    return CurlResult(proc.returncode, status, headers, proc.stderr.decode("latin-1"))


def task_gone(x, task: str) -> bool:
    """True when ``task`` answers HANDLE_INVALID (destroyed), False while it exists."""
    try:
        x.task.get_record(task)
    except XenAPI.Failure as exc:
        assert exc.details[:2] == ["HANDLE_INVALID", "task"], exc.details
        return True
    return False


def member_local_vm(x, name: str):
    """(own VM whose system disk is on a pool member's Local storage, that disk's record, the member):
    for the redirects xapi answers when the host asked cannot see the SR."""
    pool_master = x.pool.get_master(x.pool.get_all()[0])
    member_of = {}
    for sr in x.SR.get_by_name_label("Local storage"):
        (pbd,) = x.SR.get_PBDs(sr)
        member_of[sr] = x.PBD.get_host(pbd)
    source = next(vm for vm in user_vms(x) for b, d in vm_disks(x, vm)
                  if b["userdevice"] == "0" and member_of.get(d["SR"], pool_master) != pool_master)
    vm = own_vm(x, name, source)
    (_, vdi), = vm_disks(x, vm)
    return vm, vdi, member_of[vdi["SR"]]
