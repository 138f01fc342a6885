"""Hostile backups in the destination: `tinabs verify` and `tinabs restore` stay inside it.

Given a real backup made by `tinabs backup` (real workers, Redis, the simulator), when
copies of it are planted in the destination with hostile tar members (absolute, `..`,
links, devices, tar extension headers, names that are not UTF-8 or hold a NUL), a hostile
ova.xml (a DOCTYPE with an external entity, a size that claims a gigabyte), or hostile
placement (a manifest naming a file elsewhere, a VM or pool directory that is a symlink
out of the destination, a data file or manifest that is a symlink or a FIFO, a symlink
planted where a manifest's temporary file goes), then:

* `tinabs verify` fails each with the reason (or refuses it, exit 2, when the path leads
  out of the destination), and never hangs;
* `tinabs restore` refuses each with one line (exit 2) before anything reaches the pool,
  and a restore task sent straight to a worker refuses it too;
* nothing outside the destination is written, and nothing there is opened (the targets
  are FIFOs: opening one to read it would hang the command, and the test's timeout
  would fail it);
* nothing is left on the pool.

A backup whose ova.xml and manifest carry hostile VM names (path tricks, XML entities,
control characters, 20,000 characters, unicode) is data, not a path: it verifies, it
restores, and the names go only to the pool.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
import subprocess
import sys
import tarfile
import time
import uuid as uuidlib
import xmlrpc.client
from pathlib import Path

import pytest

from helpers.pool_checks import backupable_vms, litter
from helpers.xapi_http import counts
from helpers.xva_parse import member_offsets, parse_ova_xml
from tinabs_tasks.sim import wire

DEPLOYMENT_SIM_ARGS = ("--pools", "1", "--vms-per-pool", "3", "--disk-mib", "4")
POOL = "pool-a"
CLI_TIMEOUT = 30
TOKEN = "tinabs-hostile-" + uuidlib.uuid4().hex[:8]  # in every name a hostile member aims at


# -- the real backup everything is made from ------------------------------------------------------
@pytest.fixture(scope="module")
def origin(deployment) -> dict:
    """A real export backup of one of the pool's VMs: {"data": bytes, "manifest": dict}."""
    vm = min(backupable_vms(deployment.sim.state(), POOL), key=lambda v: (len(v["VBDs"]), v["uuid"]))
    code, job = deployment.backup("--vm", vm["uuid"], "--pool", POOL, "--mode", "export")
    assert code == 0, job
    (run,) = job["runs"]
    return {"data": Path(run["path"]).read_bytes(), "manifest": json.loads(Path(run["manifest"]).read_text())}


@pytest.fixture
def outside(tmp_path) -> Path:
    """A directory beside the deployment with a sentinel file and a FIFO, both to stay untouched."""
    root = tmp_path / f"outside-{TOKEN}"
    root.mkdir()
    (root / "sentinel.txt").write_text("sentinel\n")
    os.mkfifo(root / "fifo")
    return root


def tinabs(dep, *args: str) -> subprocess.CompletedProcess:
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", *args], env=dep.env, capture_output=True,
                          text=True, timeout=CLI_TIMEOUT)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    proc.seconds = time.monotonic() - began
    return proc


# -- building hostile copies ---------------------------------------------------------------------
def tar_members(data: bytes) -> list[bytes]:
    """Each member as raw bytes (header, data, padding), without the end-of-archive blocks."""
    return [data[off - 512:off + size + (-size % 512)] for _, off, size in member_offsets(data)]


def archive(parts: list[bytes]) -> bytes:
    return b"".join(parts) + bytes(1024)


def member(info: tarfile.TarInfo, body: bytes = b"", fmt=tarfile.USTAR_FORMAT) -> bytes:
    info.size = len(body) if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    return info.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape") + body + bytes(-len(body) % 512)


def raw_name_member(name: bytes, body: bytes) -> bytes:
    """A regular member whose name field holds exactly ``name`` (a NUL inside, bytes not UTF-8)."""
    block = bytearray(member(tarfile.TarInfo("placeholder"), body)[:512])
    block[0:100] = name.ljust(100, b"\0")
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block) + body + bytes(-len(body) % 512)


def info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    out = tarfile.TarInfo(name)
    out.type, out.linkname = kind, linkname
    return out


def with_ova(data: bytes, ova: bytes, claimed_size: int | None = None) -> bytes:
    """``data`` with its ova.xml replaced (and its header claiming ``claimed_size`` if given)."""
    head = bytearray(member(tarfile.TarInfo("ova.xml"), ova))
    if claimed_size is not None:
        head[124:136] = b"%011o\0" % claimed_size
        head[148:156] = b" " * 8
        head[148:156] = b"%06o\0 " % sum(head[:512])
    return archive([bytes(head)] + tar_members(data)[1:])


def hostile_header(data: bytes, vm_name: str) -> bytes:
    """ova.xml with hostile names on the VM and its disks: data, never a path."""
    header = _plain_values(parse_ova_xml(tar_members(data)[0][512:512 + member_offsets(data)[0][2]]))
    for obj in header["objects"]:
        rec = obj["snapshot"]
        if obj["class"] == "VM":
            rec["name_label"] = vm_name
            rec["name_description"] = "/ <script>&amp; &#47;etc&#47;passwd ]]> 名前 " + "d" * 20000
        elif obj["class"] == "VDI":
            rec["name_label"] = f"../../{TOKEN}-vdi"
    return wire.fragment(header).encode("utf-8")


def _plain_values(value):
    """xmlrpc DateTime objects as aware datetimes, which the simulator's encoder writes back."""
    if isinstance(value, xmlrpc.client.DateTime):
        return dt.datetime.strptime(value.value.rstrip("Z"), "%Y%m%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc)
    if isinstance(value, dict):
        return {k: _plain_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_values(v) for v in value]
    return value


def plant(dep, data: bytes, manifest: dict, folder: str | None = None, data_name: str | None = None) -> dict:
    """A backup dir with ``data`` and a manifest that matches it (size, sha256): the paths."""
    folder_path = dep.dest / POOL / (folder or f"planted--{uuidlib.uuid4()}")
    folder_path.mkdir(parents=True, exist_ok=True)
    base = f"20260101T000000Z-{uuidlib.uuid4().hex[:12]}"
    path = folder_path / (data_name or base + ".xva")
    path.write_bytes(data)
    m = {**manifest, "file": path.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
         "run": base[17:]}
    m.pop("verified", None)
    (folder_path / (base + ".json")).write_text(json.dumps(m))
    return {"data": path, "manifest": folder_path / (base + ".json"), "dir": folder_path}


# -- what must not change ------------------------------------------------------------------------
def world(dep, outside: Path) -> dict[str, tuple]:
    """Every entry under the test session's temp tree except the destination and the logs that
    grow by design: its type, size, mtime and (for files) sha256."""
    base = Path(os.path.commonpath([dep.root, outside]))
    out = {}
    for dirpath, dirnames, filenames in os.walk(base):
        if Path(dirpath) == dep.dest:
            dirnames.clear()
            continue
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path == dep.dest or name.endswith(".log"):
                continue
            st = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
            out[str(path)] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, digest)
    return out


def landing_spots(dep, planted: dict, names: list[str]) -> list[Path]:
    """Where each member name would land if anything extracted it (in the backup's folder, the
    destination or the workers' working directory), and each name as an absolute path."""
    spots = []
    for name in names:
        if name.startswith("/"):
            spots.append(Path(name))
        for base in (planted["dir"], dep.dest, Path.cwd()):
            spots.append(Path(os.path.normpath(base / name.replace("\\", "/"))))
    return spots


def pool_untouched(dep, before: dict) -> None:
    assert counts(dep.sim, POOL) == before
    assert litter(dep.sim.state()) == {}


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinabs: "), proc.stderr
    return lines[0]


# -- hostile archives -------------------------------------------------------------------------------
def _cases(outside: Path) -> dict:
    """name -> (archive transform, the member names it aims at, verify's first problem)."""
    sentinel, fresh = str(outside / "sentinel.txt"), str(outside / f"{TOKEN}-absolute")
    up = f"../../../../{TOKEN}-escaped"
    return {
        "absolute-member": (lambda d: archive(tar_members(d) + [member(info(fresh), b"written\n")]),
                            [fresh], f"member name {fresh!r} is absolute"),
        "absolute-over-a-file": (lambda d: archive(tar_members(d) + [member(info(sentinel), b"overwritten\n")]),
                                 [], f"member name {sentinel!r} is absolute"),
        "dotdot-member": (lambda d: archive(tar_members(d) + [member(info("Ref:1/" + up), b"x")]),
                          ["Ref:1/" + up], f"member name {'Ref:1/' + up!r} escapes"),
        "symlink-member": (lambda d: archive(tar_members(d) + [member(info("Ref:1/00000001", tarfile.SYMTYPE,
                                                                           "/etc/shadow"))]),
                           [], "member 'Ref:1/00000001' is a symlink to '/etc/shadow', not a regular file "
                               "(tar type b'2')"),
        "hardlink-member": (lambda d: archive(tar_members(d) + [member(info(f"{TOKEN}-link", tarfile.LNKTYPE,
                                                                            "../../../etc/passwd"))]),
                            [f"{TOKEN}-link"], f"member '{TOKEN}-link' is a hard link to '../../../etc/passwd', "
                                               "not a regular file (tar type b'1')"),
        "device-member": (lambda d: archive(tar_members(d) + [member(info(f"{TOKEN}-dev", tarfile.CHRTYPE))]),
                          [f"{TOKEN}-dev"], f"member '{TOKEN}-dev' is a character device, not a regular file "
                                            "(tar type b'3')"),
        "very-long-name": (lambda d: archive(tar_members(d) + [member(info(up + "/" + "n" * 300), b"x",
                                                                      tarfile.GNU_FORMAT)]),
                           [up + "/" + "n" * 300],
                           "member '././@LongLink' is a GNU long-name header, not a regular file (tar type b'L')"),
        "pax-path": (lambda d: archive(tar_members(d) + [member(_pax(up), b"x", tarfile.PAX_FORMAT)]),
                     [up], "member '././@PaxHeader' is a pax header, not a regular file (tar type b'x')"),
        "unicode-name": (lambda d: archive(tar_members(d) + [member(info(f"Ref:1/Ünïcødé 名前 {TOKEN}"), b"x")]),
                         [f"Ref:1/Ünïcødé 名前 {TOKEN}"], f"unexpected member 'Ref:1/Ünïcødé 名前 {TOKEN}'"),
        "nul-in-name": (lambda d: archive(tar_members(d) + [raw_name_member(b"ova.xml\0/" + up.encode(), b"x")]),
                        [], "ova.xml appears twice"),
        "not-utf8-name": (lambda d: archive(tar_members(d) + [raw_name_member(b"Ref:1/\xff\xfe", b"x")]),
                          [], "unexpected member 'Ref:1/\\udcff\\udcfe'"),
        "ova-xml-doctype": (lambda d: with_ova(d, (f'<!DOCTYPE value [<!ENTITY x SYSTEM "file://{sentinel}">]>'
                                                   "<value>&x;</value>").encode()),
                            [], "ova.xml is not parseable: it does not start with <value>"),
        "ova-xml-claims-a-gigabyte": (lambda d: with_ova(d, b"<value/>", claimed_size=1 << 30)[:4096],
                                      [], "ova.xml is 1073741824 bytes, too large to be an XVA header"),
    }


def _pax(path: str) -> tarfile.TarInfo:
    out = info("harmless")
    out.pax_headers = {"path": path}  # what tar would extract it as
    return out


CASES = sorted(_cases(Path("/x")))


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_archive_fails_verify_and_restore_refuses_it(deployment, origin, outside, case):
    dep = deployment
    transform, aims, first_problem = _cases(outside)[case]
    # Given a copy of a real backup with one hostile part, its manifest matching it
    planted = plant(dep, transform(origin["data"]), origin["manifest"])
    spots = landing_spots(dep, planted, aims)
    assert not any(os.path.lexists(s) for s in spots)
    before_world, before_pool = world(dep, outside), counts(dep.sim, POOL)
    # When it is verified, then it fails with the hostile part named first
    proc = tinabs(dep, "verify", str(planted["data"]), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (report,) = json.loads(proc.stdout)
    assert not report["ok"] and report["problems"][0].startswith(first_problem), report["problems"]
    assert json.loads(planted["manifest"].read_text())["verified"]["state"] == "failed"
    # When it is restored, then it is refused in one line that names the problem, before the pool
    proc = tinabs(dep, "restore", str(planted["data"]), "--pool", POOL)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_line(proc)
    assert "refused, not a well-formed XVA" in line or "ova.xml is not parseable" in line, line
    assert "tinabs verify" in line or "not parseable" in line
    # And nothing landed or changed outside the destination, and the pool is as it was
    assert not any(os.path.lexists(s) for s in spots), [s for s in spots if os.path.lexists(s)]
    assert world(dep, outside) == before_world
    pool_untouched(dep, before_pool)


def test_a_worker_refuses_a_hostile_archive_sent_to_it_directly(deployment, origin, outside):
    """Defence in depth: a restore task that reaches a worker without the command's check (another
    client, or a file swapped after the check) is refused by the worker's own check."""
    dep = deployment
    transform, _, _ = _cases(outside)["symlink-member"]
    planted = plant(dep, transform(origin["data"]), origin["manifest"])
    before_world, before_pool = world(dep, outside), counts(dep.sim, POOL)
    code = ("import sys; from tinabs_tasks.runs.requests import restore\n"
            "r = restore(sys.argv[1], sys.argv[2], {}, 'rhostile1')\n"
            "try:\n    r.get(timeout=60)\nexcept Exception as exc:\n    print('FAILED', exc)\n")
    proc = subprocess.run([sys.executable, "-c", code, POOL, str(planted["data"])], env=dep.env,
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("FAILED ") and "refused, not a well-formed XVA" in proc.stdout, proc.stdout
    assert "is a symlink to" in proc.stdout
    assert world(dep, outside) == before_world
    pool_untouched(dep, before_pool)


def test_hostile_vm_names_inside_a_backup_are_only_data(deployment, origin, outside):
    dep = deployment
    # Given a backup whose ova.xml and manifest name the VM with path tricks, entities and controls
    name = f"../../{TOKEN}/x/\x00\x1b[2J/" + "Ünïcødé 名前 " * 3  # XML cannot carry NUL: manifest only
    data = origin["data"]
    hostile = with_ova(data, hostile_header(data, name.replace("\x00", "").replace("\x1b", "")))
    manifest = {**origin["manifest"], "vm": {**origin["manifest"]["vm"], "name": name}}
    planted = plant(dep, hostile, manifest)
    before_world = world(dep, outside)
    # When it is verified, then it is a good backup (names are not checked as paths)
    proc = tinabs(dep, "verify", str(planted["data"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # When it is restored (on a worker), then the VM comes back under the hostile name, as data
    proc = tinabs(dep, "restore", str(planted["data"]), "--pool", POOL, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    state = dep.sim.state()["pools"][POOL]
    vm = next(v for v in state["VM"].values() if v["uuid"] == result["uuid"])
    assert vm["name_label"].startswith(f"../../{TOKEN}/x/\ufffd\ufffd[2J/Ünïcødé 名前 ")
    assert vm["name_label"] == result["name"] and "(restored " in vm["name_label"]
    assert vm["name_description"].startswith("/ <script>&amp; &#47;etc&#47;passwd ]]> 名前 ")
    # And the human output never sends the control characters to the terminal
    proc = tinabs(dep, "restore", str(planted["data"]), "--pool", POOL, "--local", "--new-macs")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "\x1b" not in proc.stdout and "\x00" not in proc.stdout and "\\x1b[2J" in proc.stdout
    proc = tinabs(dep, "list")
    assert proc.returncode == 0 and "\\x1b[2J" in proc.stdout and "\x1b" not in proc.stdout, proc.stdout
    # And nothing was written outside the destination; the restored VMs are the only new objects
    assert not os.path.lexists(dep.dest.parent / TOKEN) and not os.path.lexists(Path.cwd().parent / TOKEN)
    assert world(dep, outside) == before_world
    assert litter(dep.sim.state()) == {}


# -- hostile placement in the destination -----------------------------------------------------------
def test_a_manifest_naming_a_file_outside_is_refused_unread(deployment, origin, outside):
    dep = deployment
    before_pool = counts(dep.sim, POOL)
    for target in (f"../../../{outside.name}/fifo", str(outside / "fifo")):
        planted = plant(dep, origin["data"], origin["manifest"])
        m = json.loads(planted["manifest"].read_text())
        m["file"] = target
        planted["manifest"].write_text(json.dumps(m))
        before_world = world(dep, outside)
        proc = tinabs(dep, "verify", str(planted["manifest"]), "--json")  # opening the FIFO would hang
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert json.loads(proc.stdout)[0]["problems"] == [f"manifest names no plain data file (file: {target!r})"]
        proc = tinabs(dep, "restore", str(planted["manifest"]), "--pool", POOL)
        assert proc.returncode == 2 and "backup is corrupt-manifest; it cannot be restored" in one_line(proc)
        assert world(dep, outside) == before_world
    pool_untouched(dep, before_pool)


@pytest.mark.parametrize("level", ["vm-dir", "pool-dir"])
def test_a_backup_directory_that_links_out_of_the_destination_is_refused(deployment, origin, outside, level):
    dep = deployment
    # Given a complete, valid backup outside, linked into the destination as a VM or pool directory
    vm_folder = f"linked--{uuidlib.uuid4()}"
    real = outside / "pool" / vm_folder
    real.mkdir(parents=True)
    base = "20260101T000000Z-linkedrun001"
    (real / (base + ".xva")).write_bytes(origin["data"])
    (real / (base + ".json")).write_text(json.dumps({**origin["manifest"], "file": base + ".xva", "run": base[17:]}))
    if level == "vm-dir":
        (dep.dest / POOL).mkdir(exist_ok=True)
        link = dep.dest / POOL / vm_folder
        link.symlink_to(real)
    else:
        link = dep.dest / f"linked-pool-{uuidlib.uuid4().hex[:6]}"
        link.symlink_to(outside / "pool")
        link = link / vm_folder
    before_world, before_pool = world(dep, outside), counts(dep.sim, POOL)
    # When it is named by its path through the link, then verify and restore refuse it
    for args in (("verify", str(link / (base + ".xva"))), ("restore", str(link / (base + ".json")), "--pool", POOL)):
        proc = tinabs(dep, *args)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "is outside the destination" in one_line(proc)
    # And `verify --all` does not go through the link
    proc = tinabs(dep, "verify", "--all", "--json")
    assert all(str(outside) not in r["manifest"] and vm_folder not in r["manifest"] for r in json.loads(proc.stdout))
    assert "verified" not in json.loads((real / (base + ".json")).read_text())
    assert world(dep, outside) == before_world
    pool_untouched(dep, before_pool)


@pytest.mark.parametrize("kind", ["symlink-to-a-fifo-outside", "fifo"])
def test_a_data_file_that_is_a_link_or_a_fifo_is_never_opened(deployment, origin, outside, kind):
    dep = deployment
    planted = plant(dep, origin["data"], origin["manifest"])
    planted["data"].unlink()
    if kind == "fifo":
        os.mkfifo(planted["data"])
        what = "a FIFO"
    else:
        planted["data"].symlink_to(outside / "fifo")
        what = "a symlink"
    before_world, before_pool = world(dep, outside), counts(dep.sim, POOL)
    proc = tinabs(dep, "verify", str(planted["manifest"]), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)[0]["problems"] == [
        f"data file {planted['data'].name} is {what}: not followed, not read (tinabs writes only regular files)"]
    proc = tinabs(dep, "restore", str(planted["manifest"]), "--pool", POOL)
    assert proc.returncode == 2 and "backup is missing-data; it cannot be restored" in one_line(proc)
    assert world(dep, outside) == before_world
    pool_untouched(dep, before_pool)


def test_a_manifest_that_is_a_symlink_out_of_the_destination_is_refused(deployment, origin, outside):
    dep = deployment
    planted = plant(dep, origin["data"], origin["manifest"])
    real = outside / "manifest.json"
    real.write_text(planted["manifest"].read_text())
    planted["manifest"].unlink()
    planted["manifest"].symlink_to(real)
    before_world, before_pool = world(dep, outside), counts(dep.sim, POOL)
    for args in (("verify", str(planted["data"])), ("restore", str(planted["data"]), "--pool", POOL)):
        proc = tinabs(dep, *args)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"its manifest {planted['manifest'].name} is a symlink" in one_line(proc)
    assert planted["manifest"].is_symlink()
    assert world(dep, outside) == before_world
    pool_untouched(dep, before_pool)


def test_recording_a_verdict_does_not_write_through_a_planted_symlink(deployment, origin, outside):
    dep = deployment
    planted = plant(dep, origin["data"], origin["manifest"])
    trap = planted["manifest"].parent / (planted["manifest"].name + ".partial")
    trap.symlink_to(outside / "sentinel.txt")
    before_world = world(dep, outside)
    proc = tinabs(dep, "verify", str(planted["data"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (outside / "sentinel.txt").read_text() == "sentinel\n"
    assert json.loads(planted["manifest"].read_text())["verified"]["state"] == "ok"
    assert not os.path.lexists(trap)
    assert world(dep, outside) == before_world


def test_verify_all_over_every_hostile_backup_ends_and_touches_nothing_outside(deployment, origin, outside):
    """Everything above planted at once (FIFOs too), then one `verify --all`: it ends, fails, and
    changes nothing outside the destination."""
    dep = deployment
    for transform, _, _ in _cases(outside).values():
        plant(dep, transform(origin["data"]), origin["manifest"])
    fifo = plant(dep, origin["data"], origin["manifest"])
    fifo["data"].unlink()
    os.mkfifo(fifo["data"])
    link = plant(dep, origin["data"], origin["manifest"])
    link["data"].unlink()
    link["data"].symlink_to(outside / "fifo")
    before_world = world(dep, outside)
    proc = tinabs(dep, "verify", "--all", "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    results = {r["manifest"]: r for r in json.loads(proc.stdout)}
    assert not results[str(fifo["manifest"])]["ok"] and not results[str(link["manifest"])]["ok"]
    assert sum(not r["ok"] for r in results.values()) >= len(CASES) + 2
    assert proc.seconds < CLI_TIMEOUT
    assert world(dep, outside) == before_world
