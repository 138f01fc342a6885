"""`tinabs verify`: real backups exported from the simulator, then corrupted one way at a time.

Each backup is a real ``/export`` (or ``/export_metadata``) of a VM the test
made itself, with a manifest written the way tinabs writes it (size, sha256,
mode, skeleton from ``skeleton_fields.summary``).  Each corruption must be
caught with its own precise sentence, and nothing else must be reported.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import xxhash

from helpers import toml_write
from helpers import xapi_http as H
from helpers.xva_parse import member_offsets
from tinabs_tasks.cli import verify as verify_cmd
from tinabs_tasks.cli.common import UserError, fail
from tinabs_tasks.backup.skeleton_fields import summary
from tinabs_tasks.storage.verify import verify_all, verify_backup
from tinabs_tasks.storage.xva_headers import header_problems

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]


# -- helpers ----------------------------------------------------------------------
def download(sim, x, path: str, params: dict, dest: Path, pool: int = 0) -> None:
    resp = H.get(sim.pool(pool)["master"], path, {"session_id": H.handle(x), **params}, timeout=300)
    try:
        assert resp.status == 200, (resp.status, resp.read())
        with open(dest, "wb") as fh:
            while piece := resp.read(MiB):
                fh.write(piece)
    finally:
        resp.close()
        resp.connection_.close()


def write_manifest(data: Path, skeleton: dict, mode: str) -> Path:
    sha = hashlib.sha256()
    with open(data, "rb") as fh:
        while piece := fh.read(4 * MiB):
            sha.update(piece)
    manifest = data.parent / (data.name.removesuffix(".metadata.xva").removesuffix(".xva") + ".json")
    manifest.write_text(json.dumps({"format": 1, "file": data.name, "size": data.stat().st_size,
                                    "sha256": sha.hexdigest(), "mode": mode, "skeleton": skeleton,
                                    "run": data.stem}, indent=2))
    return manifest


def refresh(manifest: Path) -> None:
    """Make the manifest's size and sha256 match the (rewritten) data file again."""
    m = json.loads(manifest.read_text())
    write_manifest(manifest.parent / m["file"], m["skeleton"], m["mode"])


def make_backup(sim, x, vm: str, folder: Path, stamp: str, mode: str = "export") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    skeleton = summary(x, x.VM.get_record(vm))
    if mode == "export":
        data = folder / f"{stamp}.xva"
        download(sim, x, "/export", {"ref": vm}, data)
    else:
        data = folder / f"{stamp}.metadata.xva"
        download(sim, x, "/export_metadata", {"ref": vm, "export_snapshots": "false"}, data)
    return write_manifest(data, skeleton, mode)


def data_of(manifest: Path) -> Path:
    return manifest.parent / json.loads(manifest.read_text())["file"]


def members(data: Path) -> list[list]:
    """[name, header block, data + padding] of every member."""
    raw = data.read_bytes()
    return [[name, raw[off - 512:off], raw[off:off + size + (-size % 512)]]
            for name, off, size in member_offsets(raw)]


def header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def member(name: str, body: bytes) -> list:
    return [name, header(name, len(body)), body + bytes(-len(body) % 512)]


def rewrite(data: Path, parts: list[list]) -> None:
    data.write_bytes(b"".join(h + b for _, h, b in parts) + bytes(1024))


def chunk_names(parts) -> list[str]:
    return [p[0] for p in parts if p[0] != "ova.xml" and not p[0].endswith((".xxhash", ".checksum"))]


def sha_problem(problems: list[str]) -> list[str]:
    return [p for p in problems if p.startswith("sha256 differs from the manifest")]


# -- fixtures ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def x(sim):
    return H.api(sim.session(0))


@pytest.fixture(scope="module")
def vm(x):
    source = next(ref for ref, rec in H.user_vms(x).items() if rec["power_state"] == "Halted")
    return H.own_vm(x, "verify small", source)


@pytest.fixture(scope="module")
def pristine(sim, x, vm, tmp_path_factory):
    """One export and one metadata export, copied fresh for each test."""
    folder = tmp_path_factory.mktemp("pristine")
    return {"export": make_backup(sim, x, vm, folder, "20250101T000000Z-aaaa"),
            "sr-copy": make_backup(sim, x, vm, folder, "20250101T000000Z-bbbb", "sr-copy")}


@pytest.fixture
def dest(tmp_path):
    return tmp_path / "backups"


@pytest.fixture
def backup(pristine, dest):
    """``backup(mode)`` -> a manifest path under ``dest`` (a private copy)."""
    def copy(mode: str = "export", stamp: str = "20250101T000000Z-aaaa") -> Path:
        src = pristine[mode]
        folder = dest / "pool-a" / "verify_small--uuid"
        folder.mkdir(parents=True, exist_ok=True)
        data = data_of(src)
        new_data = folder / data.name.replace("20250101T000000Z-aaaa", stamp).replace("20250101T000000Z-bbbb", stamp)
        new_data.write_bytes(data.read_bytes())
        m = json.loads(src.read_text())
        m["file"] = new_data.name
        manifest = folder / (new_data.name.removesuffix(".metadata.xva").removesuffix(".xva") + ".json")
        manifest.write_text(json.dumps(m))
        return manifest
    return copy


# -- an untouched backup ---------------------------------------------------------
def test_untouched_export_verifies_ok_and_the_result_is_recorded(backup):
    manifest = backup()
    report = verify_backup(str(manifest), record=True)
    assert report.ok and report.problems == [], report.problems
    assert report.bytes == data_of(manifest).stat().st_size
    assert report.disks == 1 and report.chunks == len(chunk_names(members(data_of(manifest)))) >= 2
    verified = json.loads(manifest.read_text())["verified"]
    assert verified["state"] == "ok" and verified["problems"] == [] and verified["at"].endswith("Z")


def test_untouched_metadata_backup_verifies_ok(backup):
    manifest = backup("sr-copy")
    report = verify_backup(str(manifest))
    assert report.ok, report.problems
    assert report.disks == 0 and report.chunks == 0


def test_legacy_sha1_checksum_members_verify(backup):
    manifest = backup()
    data = data_of(manifest)
    parts, out, previous = members(data), [], None
    for name, h, body in parts:
        if name.endswith(".xxhash"):
            digest = hashlib.sha1(previous).hexdigest().encode()
            out.append(member(name.removesuffix(".xxhash") + ".checksum", digest))
        else:
            out.append([name, h, body])
            previous = body[: tarfile.TarInfo.frombuf(h, "utf-8", "strict").size]
    rewrite(data, out)
    refresh(manifest)
    assert verify_backup(str(manifest)).problems == []
    # and a wrong legacy checksum is named
    out[2] = member(out[2][0], b"0" * 40)
    rewrite(data, out)
    refresh(manifest)
    (problem,) = verify_backup(str(manifest)).problems
    assert problem.startswith(f"chunk {out[1][0]}: checksum (SHA-1) mismatch (file says {'0' * 40}, data hashes to")


# -- corruptions ------------------------------------------------------------------
def test_a_flipped_byte_inside_a_chunk_names_the_chunk_and_both_hashes(backup):
    manifest = backup()
    data = data_of(manifest)
    raw = bytearray(data.read_bytes())
    name, off, size = next(m for m in member_offsets(bytes(raw)) if m[0] != "ova.xml" and m[2] > 1000)
    stored = next(bytes(raw[o:o + s]) for n, o, s in member_offsets(bytes(raw)) if n == name + ".xxhash")
    raw[off + 777] ^= 0xFF
    data.write_bytes(raw)
    now = b"%016X" % xxhash.xxh64_intdigest(bytes(raw[off:off + size]))
    report = verify_backup(str(manifest), record=True)
    assert not report.ok
    assert report.problems[0] == (f"chunk {name}: xxhash mismatch (file says {stored.decode()}, "
                                  f"data hashes to {now.decode()})")
    assert len(report.problems) == 2 and len(sha_problem(report.problems)) == 1
    verified = json.loads(manifest.read_text())["verified"]
    assert verified["state"] == "failed" and verified["problems"] == report.problems


def test_a_truncated_file_is_reported_as_truncated(backup):
    manifest = backup()
    data = data_of(manifest)
    size = data.stat().st_size
    with open(data, "r+b") as fh:
        fh.truncate(size // 2)
    report = verify_backup(str(manifest))
    assert report.problems[0].startswith(f"file is truncated: no end-of-archive blocks after {size // 2} bytes")
    assert f"size differs from the manifest (file has {size // 2} bytes, manifest says {size})" in report.problems
    assert len(sha_problem(report.problems)) == 1 and len(report.problems) == 3, report.problems


def test_a_missing_last_chunk_shows_as_a_short_disk(backup):
    manifest = backup()
    data = data_of(manifest)
    parts = members(data)
    last = chunk_names(parts)[-1]
    rewrite(data, [p for p in parts if p[0] not in (last, last + ".xxhash")])
    refresh(manifest)
    (problem,) = verify_backup(str(manifest)).problems
    eid = last.split("/")[0]
    assert problem.startswith(f"missing chunk: {eid} chunk numbers jump"), problem
    assert "instead of virtual_size 16777216" in problem


def test_a_manifest_sha256_mismatch(backup):
    manifest = backup()
    m = json.loads(manifest.read_text())
    real, m["sha256"] = m["sha256"], "0" * 64
    manifest.write_text(json.dumps(m))
    assert verify_backup(str(manifest)).problems == [
        f"sha256 differs from the manifest (manifest says {'0' * 64}, file hashes to {real})"]


def test_ova_xml_not_first(backup):
    manifest = backup()
    data = data_of(manifest)
    parts = members(data)
    rewrite(data, parts[1:3] + parts[:1] + parts[3:])
    refresh(manifest)
    assert verify_backup(str(manifest)).problems == [f"ova.xml is not the first member (found {parts[1][0]!r})"]


@pytest.mark.parametrize("name, message", [("/etc/passwd", "member name '/etc/passwd' is absolute"),
                                           ("../x", "member name '../x' escapes"),
                                           ("Ref:1/../../x", "member name 'Ref:1/../../x' escapes")])
def test_unsafe_member_names_are_rejected(backup, name, message):
    manifest = backup()
    data = data_of(manifest)
    rewrite(data, members(data) + [member(name, b"root:x:0:0\n")])
    refresh(manifest)
    assert verify_backup(str(manifest)).problems == [message]


def test_a_skeleton_that_disagrees_with_ova_xml(backup):
    manifest = backup()
    m = json.loads(manifest.read_text())
    sk = m["skeleton"]
    vcpus = sk["VCPUs_max"]
    sk["VCPUs_max"] = vcpus + 2
    sk["ha"]["order"] = sk["ha"]["order"] + 5
    sk["disks"][0]["virtual_size"] += MiB
    expected = [f"ova.xml VM VCPUs_max {vcpus} but manifest says {vcpus + 2}",
                f"ova.xml VM order {sk['ha']['order'] - 5} but manifest says {sk['ha']['order']}",
                f"ova.xml disk at userdevice 0 virtual_size {16 * MiB} but manifest says {17 * MiB}"]
    assert sk["vifs"], "the test VM should have a VIF"
    real_mac, real_mtu = sk["vifs"][0]["MAC"], sk["vifs"][0]["MTU"]
    sk["vifs"][0].update(MAC="02:00:00:00:00:99", MTU=real_mtu + 1)
    device = sk["vifs"][0]["device"]
    expected[2:2] = [f"ova.xml VIF {device} MAC {real_mac} but manifest says 02:00:00:00:00:99",
                     f"ova.xml VIF {device} MTU {real_mtu} but manifest says {real_mtu + 1}"]
    manifest.write_text(json.dumps(m))
    assert verify_backup(str(manifest)).problems == expected


def test_a_metadata_backup_checks_the_skeleton_too(backup):
    manifest = backup("sr-copy")
    m = json.loads(manifest.read_text())
    m["skeleton"]["memory_static_max"] += 1
    manifest.write_text(json.dumps(m))
    (problem,) = verify_backup(str(manifest)).problems
    assert problem.startswith("ova.xml VM memory_static_max ") and problem.endswith(
        f"but manifest says {m['skeleton']['memory_static_max']}")


def test_verify_all_covers_every_backup_and_records_each(backup, dest):
    good, meta, bad = backup(), backup("sr-copy", "20250102T000000Z-cccc"), backup(stamp="20250103T000000Z-dddd")
    with open(data_of(bad), "r+b") as fh:
        fh.truncate(4096)
    results = dict(verify_all(str(dest), record=True))
    assert set(results) == {str(good), str(meta), str(bad)}
    assert results[str(good)].ok and results[str(meta)].ok and not results[str(bad)].ok
    assert json.loads(bad.read_text())["verified"]["state"] == "failed"
    assert json.loads(good.read_text())["verified"]["state"] == "ok"


# -- the command ------------------------------------------------------------------
@pytest.fixture
def config(tmp_path, dest):
    dest.mkdir(exist_ok=True)
    return toml_write.write(tmp_path / "tinabs.toml", {
        "broker_url": "redis://127.0.0.1:1/0", "destination": str(dest),
        "pools": {"pool-a": {"master": "http://127.0.0.1:1", "username": "root", "password_env": "NOPE",
                             "shared_sr": "nfs-shared"}}})


def cli(config: Path, *argv: str) -> int:
    """What `tinabs --config C verify ...` does (cli.main turns UserError into exit 2)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    verify_cmd.add_arguments(parser)
    args = parser.parse_args(["--config", str(config), *argv])
    try:
        return verify_cmd.run(args)
    except UserError as exc:
        return fail(str(exc))


def test_cli_exit_codes_and_output(backup, config, tmp_path, capsys):
    good, bad = backup(), backup(stamp="20250103T000000Z-dddd")
    data = data_of(bad)
    with open(data, "r+b") as fh:
        fh.truncate(data.stat().st_size - 700)
    assert cli(config, str(data_of(good))) == 0
    assert capsys.readouterr().out.startswith(f"OK      {data_of(good)}")
    assert cli(config, str(good), "--no-record") == 0
    assert cli(config, str(bad)) == 1
    out = capsys.readouterr().out
    assert f"FAILED  {data}" in out and "  - file is truncated: no end-of-archive blocks after" in out
    assert cli(config, "--all", "--json") == 1
    listed = json.loads(capsys.readouterr().out)
    assert sorted(r["ok"] for r in listed) == [False, True]
    # user mistakes: exit 2, one line, no traceback
    assert cli(config, str(tmp_path / "nope.xva")) == 2
    assert "no such file" in capsys.readouterr().err
    outside = tmp_path / "elsewhere.xva"
    outside.write_bytes(data_of(good).read_bytes())
    assert cli(config, str(outside)) == 2
    assert "is outside the destination" in capsys.readouterr().err
    assert cli(config) == 2 and "--all" in capsys.readouterr().err
    assert cli(config, str(good), "--all") == 2


# -- bounded memory ---------------------------------------------------------------
def test_verifying_a_512_mib_disk_backup_stays_small(fresh_sim, tmp_path):
    sim = fresh_sim("--pools", "1", "--vms-per-pool", "2", "--disk-mib", "512")
    x = H.api(sim.session(0))
    source = next(iter(H.user_vms(x)))
    vm = H.own_vm(x, "verify big", source)
    # fill the disk, so the export is really large, not a sparse few chunks
    for (vbd, vdi) in H.vm_disks(x, vm):
        if vbd["userdevice"] == "0":
            for mib in range(0, 512, 1):
                H.guest_write(sim, vdi["uuid"], mib * MiB + 4096, b"x%d" % mib)
    manifest = make_backup(sim, x, vm, tmp_path / "big", "20250101T000000Z-big")
    size = data_of(manifest).stat().st_size
    # VmHWM, the process's own peak: ru_maxrss would carry the peak of the pytest worker it was
    # forked from (Linux keeps it across execve), and that worker may have grown in earlier tests
    code = ("import json, sys; from tinabs_tasks.storage.verify import verify_backup; "
            "r = verify_backup(sys.argv[1]); "
            "hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')); "
            "print(json.dumps({'ok': r.ok, 'problems': r.problems, 'chunks': r.chunks, 'rss_kb': hwm}))")
    proc = subprocess.run([sys.executable, "-c", code, str(manifest)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"], result["problems"]
    assert result["chunks"] >= 512 and size > 512 * MiB
    assert result["rss_kb"] < 150 * 1024, f"peak RSS {result['rss_kb']} KiB verifying {size} bytes"


# -- hostile archives: member types and names xapi never writes ---------------------
def raw_member(info: tarfile.TarInfo, body: bytes = b"", fmt=tarfile.USTAR_FORMAT) -> list:
    """A member from a TarInfo as ``fmt`` writes it (GNU and pax add an extension header first)."""
    info.size = len(body) if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    head = info.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape")
    return [info.name, head, body + bytes(-len(body) % 512)]


def raw_name_member(name: bytes, body: bytes) -> list:
    """A regular member whose 100-byte name field holds exactly ``name`` (NULs, bytes that are not UTF-8)."""
    block = bytearray(header("placeholder", len(body)))
    block[0:100] = name.ljust(100, b"\0")
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return [name, bytes(block), body + bytes(-len(body) % 512)]


def info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    out = tarfile.TarInfo(name)
    out.type, out.linkname = kind, linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        out.devmajor, out.devminor = 1, 5  # /dev/zero's numbers
    return out


LONG_UP = "../" * 60 + "x"
HOSTILE_MEMBERS = {
    "symlink": (lambda: raw_member(info("Ref:9/00000000", tarfile.SYMTYPE, "/etc/shadow")),
                ["member 'Ref:9/00000000' is a symlink to '/etc/shadow', not a regular file (tar type b'2')"]),
    "hardlink": (lambda: raw_member(info("x", tarfile.LNKTYPE, "../../etc/passwd")),
                 ["member 'x' is a hard link to '../../etc/passwd', not a regular file (tar type b'1')"]),
    "char-device": (lambda: raw_member(info("dev-zero", tarfile.CHRTYPE)),
                    ["member 'dev-zero' is a character device, not a regular file (tar type b'3')"]),
    "block-device": (lambda: raw_member(info("sda", tarfile.BLKTYPE)),
                     ["member 'sda' is a block device, not a regular file (tar type b'4')"]),
    "fifo": (lambda: raw_member(info("pipe", tarfile.FIFOTYPE)),
             ["member 'pipe' is a FIFO, not a regular file (tar type b'6')"]),
    "directory": (lambda: raw_member(info("Ref:1", tarfile.DIRTYPE)),
                  ["member 'Ref:1' is a directory, not a regular file (tar type b'5')"]),
    "absolute-through-ustar-prefix": (
        lambda: raw_member(info("/" + "d" * 120 + "/passwd"), b"root::0:0\n"),
        ["member name '/" + "d" * 120 + "/passwd' is absolute"]),
    "gnu-long-name": (
        lambda: raw_member(info(LONG_UP), b"x", tarfile.GNU_FORMAT),
        ["member '././@LongLink' is a GNU long-name header, not a regular file (tar type b'L')",
         f"member name {LONG_UP[:100]!r} escapes"]),
    "pax-path": (
        lambda: raw_member(_pax("harmless", "../../etc/passwd"), b"x", tarfile.PAX_FORMAT),
        ["member '././@PaxHeader' is a pax header, not a regular file (tar type b'x')",
         "unexpected member 'harmless'"]),
    "unicode-digits": (lambda: raw_member(info("Ref:1/\uff10\uff10\uff10\uff10\uff10\uff10\uff10\uff11"), b"x"),
                       ["unexpected member 'Ref:1/\uff10\uff10\uff10\uff10\uff10\uff10\uff10\uff11'"]),
    "trailing-newline": (lambda: raw_member(info("Ref:1/00000099\n"), b"x"),
                         ["unexpected member 'Ref:1/00000099\\n'"]),
    "not-utf8": (lambda: raw_name_member(b"Ref:1/\xff\xfe", b"x"), ["unexpected member 'Ref:1/\\udcff\\udcfe'"]),
    "nul-inside-name": (lambda: raw_name_member(b"ova.xml\0/../../x", b"<value/>"), ["ova.xml appears twice"]),
    "backslashes": (lambda: raw_member(info("..\\..\\x"), b"x"), ["member name '..\\\\..\\\\x' escapes"]),
}


def _pax(name: str, path: str) -> tarfile.TarInfo:
    """A member whose pax header says its path is ``path`` (tar would extract it there)."""
    out = info(name)
    out.pax_headers = {"path": path}
    return out


@pytest.mark.parametrize("case", sorted(HOSTILE_MEMBERS))
def test_hostile_member_types_and_names_are_rejected(backup, case):
    # Given a real export with one hostile member appended (size and sha256 match the manifest)
    make, expected = HOSTILE_MEMBERS[case]
    manifest = backup()
    data = data_of(manifest)
    rewrite(data, members(data) + [make()])
    refresh(manifest)
    # When verifying it, then exactly that member is named, with what is wrong with it
    report = verify_backup(str(manifest))
    assert report.problems == expected
    # And the walk over headers alone that a restore makes before it sends anything says the same
    assert header_problems(str(data)) == expected


def test_the_header_walk_passes_a_real_export_and_catches_ova_xml_out_of_place(backup):
    manifest = backup()
    data = data_of(manifest)
    assert header_problems(str(data)) == []
    parts = members(data)
    rewrite(data, parts[1:] + parts[:1])  # ova.xml last; chunk data unchanged
    assert header_problems(str(data)) == [f"ova.xml is not the first member (found {parts[1][0]!r})"]
    with open(data, "r+b") as fh:
        fh.truncate(data.stat().st_size - 1536)
    assert header_problems(str(data))[-1].startswith("file is truncated: no end-of-archive blocks after ")


# -- hostile files in the destination: links, FIFOs, names that point elsewhere -------
def test_a_symlinked_data_file_is_not_followed(backup, tmp_path):
    # Given a manifest whose data file is a symlink to a copy kept outside the destination
    manifest = backup()
    data = data_of(manifest)
    outside = tmp_path / "outside.xva"
    outside.write_bytes(data.read_bytes())
    data.unlink()
    data.symlink_to(outside)
    before = outside.read_bytes()
    # When verifying it (recording the verdict)
    report = verify_backup(str(manifest), record=True)
    # Then it fails without a byte of the outside file read, and the outside file is untouched
    assert report.problems == [f"data file {data.name} is a symlink: not followed, not read "
                               "(tinabs writes only regular files)"]
    assert report.bytes == 0 and outside.read_bytes() == before
    assert json.loads(manifest.read_text())["verified"]["state"] == "failed"


def test_a_fifo_as_data_file_fails_at_once_instead_of_hanging(backup):
    manifest = backup()
    data = data_of(manifest)
    data.unlink()
    os.mkfifo(data)  # opened for reading, a FIFO without a writer blocks forever
    code = ("import json, sys; from tinabs_tasks.storage.verify import verify_backup; "
            "print(json.dumps(verify_backup(sys.argv[1]).problems))")
    proc = subprocess.run([sys.executable, "-c", code, str(manifest)], capture_output=True, text=True,
                          timeout=20, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [f"data file {data.name} is a FIFO: not followed, not read "
                                       "(tinabs writes only regular files)"]


def test_a_symlinked_manifest_is_neither_read_nor_replaced(backup, config, tmp_path, capsys):
    # Given a manifest that is a symlink to one outside the destination
    manifest = backup()
    outside = tmp_path / "outside.json"
    outside.write_text(manifest.read_text())
    manifest.unlink()
    manifest.symlink_to(outside)
    before = outside.read_bytes()
    # When verifying it directly (recording), then it is refused unread and stays a link
    report = verify_backup(str(manifest), record=True)
    assert report.problems == [f"manifest {manifest} is a symlink: not followed, not read"]
    assert manifest.is_symlink() and outside.read_bytes() == before
    # And the command, given the backup's data file, refuses it with one line (exit 2)
    assert cli(config, str(data_of(manifest))) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinabs: ") and f"its manifest {manifest.name} is a symlink" in err
    assert len(err.strip().splitlines()) == 1


def test_recording_a_verdict_never_writes_through_a_planted_partial_symlink(backup, tmp_path):
    # Given a symlink where the manifest's temporary file goes, pointing at a file outside
    manifest = backup()
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me\n")
    planted = manifest.parent / (manifest.name + ".partial")
    planted.symlink_to(sentinel)
    # When the verdict is recorded
    report = verify_backup(str(manifest), record=True)
    # Then the outside file is untouched, the verdict is in the manifest, and the link is gone
    assert report.ok and sentinel.read_text() == "keep me\n"
    assert json.loads(manifest.read_text())["verified"]["state"] == "ok"
    assert not planted.is_symlink() and not planted.exists()


@pytest.mark.parametrize("name", ["../../outside.xva", "/etc/passwd", "sub/x.xva", "x.xva\0.json", ".."])
def test_a_manifest_naming_a_file_elsewhere_is_refused(backup, name):
    manifest = backup()
    m = json.loads(manifest.read_text())
    m["file"] = name
    manifest.write_text(json.dumps(m))
    report = verify_backup(str(manifest))
    assert report.problems == [f"manifest names no plain data file (file: {name!r})"] and report.bytes == 0


def test_a_verdict_that_cannot_be_recorded_is_said_and_stands(backup, config, capsys):
    # Given a destination where the manifest cannot be replaced (its temporary name is taken by a
    # directory: fails for root too, unlike permission bits)
    manifest = backup()
    (manifest.parent / (manifest.name + ".partial")).mkdir()
    before = manifest.read_text()
    # When verifying it, then the verdict (ok) stands, exit 0, and one line says it was not recorded
    assert cli(config, str(manifest)) == 0
    out, err = capsys.readouterr()
    assert out.startswith("OK      ")
    assert err.startswith(f"tinabs: could not record the result in {manifest}: ") and "--no-record" in err
    assert len(err.strip().splitlines()) == 1
    assert manifest.read_text() == before
