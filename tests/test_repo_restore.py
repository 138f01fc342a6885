"""End to end: restoring and verifying repository backups, on real workers, a real Redis and the simulator.

Given a repo-mode backup of a VM (encrypted repository) and a guest write to the source disk
after it, when it is restored (on a worker by its id, or --local by its manifest), then the
restored VM is the one `tinabs restore` makes of a file backup: skeleton and HA fields, the
system disk as it was at snapshot time, data disks empty, MACs by policy, markers finalised;
the XVA is rebuilt as it is sent (no file written, memory bounded by a chunk or so, a 302 to
the member that sees the SR followed).  A wrong key, another repository, a manifest that is not
the index's, a deleted block or a stream that is not the manifest's fail the restore with the
reason named and nothing left on the pool.  `tinabs verify` rebuilds and walks the stream,
fails on a flipped byte or a deleted block naming it, and records its verdict in the manifest
(not when this host cannot open the repository); the restore test passes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.pool_checks import litter
from helpers.xapi_http import counts, guest_write
from test_restore import (  # noqa: F401  (source: the fixture)
    POOL, assert_health_check_passed, backup_then_write, check_restored, disks, macs, restore, source, tinabs,
    vm_by_uuid)

from tinabs_tasks.repo import keys
from tinabs_tasks.repo.index import load_index

DISK_MIB = 64
DEPLOYMENT_SIM_ARGS = ("--pools", "1", "--vms-per-pool", "3", "--disk-mib", str(DISK_MIB))
DEPLOYMENT_REPOSITORY = True
ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


@pytest.fixture(scope="module")
def backed_up(deployment, source):  # noqa: F811  (the fixture imported above)
    """One repo backup of ``source``: (job run, its manifest, the pool before, system disk sha256 at snapshot).
    Every MiB of the system disk is written first, so the XVA is as big as the disk (memory is measured)."""
    before = deployment.sim.state()["pools"][POOL]
    system = disks(before, source)["0"][1]
    for mib in range(DISK_MIB):
        guest_write(deployment.sim, system["uuid"], mib * MiB + 512, b"mib %d" % mib)
    run, at_snapshot = backup_then_write(deployment, source, "repo")
    manifest = json.loads(Path(run["manifest"]).read_text())
    assert manifest["mode"] == "repo" and manifest["file"] is None
    return run, manifest, before, at_snapshot


def files_under(*dirs: Path) -> set[str]:
    return {str(p) for d in dirs for p in d.rglob("*")}


def block_path(dep, block_id: str) -> Path:
    return Path(dep.open_repo().blocks.path(block_id))


def last_block(dep, manifest: dict) -> str:
    """The backup's last block in stream order: most of the XVA has gone to the pool when it is read."""
    return list(load_index(dep.open_repo(), manifest["backup_id"]).block_ids())[-1]


def test_restore_by_id_on_a_worker_rebuilds_the_vm_without_a_temp_file(deployment, source, backed_up):
    dep = deployment
    run, manifest, before, at_snapshot = backed_up
    ha = {k: source[k] for k in ("order", "start_delay", "shutdown_delay")}
    assert any(int(v) for v in ha.values()), f"the source VM has no HA fields to re-apply: {ha}"
    files = files_under(dep.dest, dep.repo_path)
    result = restore(dep, manifest["backup_id"], "--pool", POOL)
    assert result["mode"] == "repo" and result["backup"] == run["manifest"]
    vm = check_restored(dep, result, source, before, at_snapshot)  # skeleton with HA fields, disks, no litter
    assert {k: vm[k] for k in ha} == ha
    assert result["macs"] == "new"  # the original still exists
    state = dep.sim.state()["pools"][POOL]
    assert set(macs(state, vm).values()).isdisjoint(macs(before, source).values())
    assert vm["other_config"].get("tinabs:restore-run") == result["run"]
    assert vm["other_config"].get("tinabs:restored-from") == f"{POOL}/{source['uuid']}/{manifest['run']}"
    # streamed from the repository to the pool: not a file more in the destination or the repository
    assert files_under(dep.dest, dep.repo_path) == files


def test_restore_by_manifest_locally_keeps_macs(deployment, source, backed_up):
    dep = deployment
    run, manifest, before, at_snapshot = backed_up
    files = files_under(dep.dest, dep.repo_path)
    result = restore(dep, run["manifest"], "--pool", POOL, "--keep-macs", "--name", "repo restored", "--local")
    vm = check_restored(dep, result, source, before, at_snapshot)
    assert vm["name_label"] == "repo restored"
    assert macs(dep.sim.state()["pools"][POOL], vm) == macs(before, source)
    assert files_under(dep.dest, dep.repo_path) == files


#: run_restore in a process of its own, as a worker runs it: its peak memory (VmHWM, its own:
#: ru_maxrss would carry the pytest worker's) before and after, and every file it opens for writing
#: meanwhile (Python's audit hook sees every open, os.open and tempfile's included)
_MEASURED_RESTORE = """
import json, os, sys
from tinabs_tasks.config import model as config
from tinabs_tasks.restore import into_pool
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT
def hwm():
    return next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM:'))
cfg = config.load(sys.argv[1])
backup = into_pool.load_backup(cfg.destination, sys.argv[2], cfg.repository)
xapi = into_pool._xapi_for(cfg, sys.argv[3])
written = []
sys.addaudithook(lambda event, args: written.append(str(args[0])) if event == "open" and isinstance(args[2], int)
                 and args[2] & WRITE else None)
base = hwm()
result = into_pool.restore(xapi, backup)
print(json.dumps({"base_kb": base, "peak_kb": hwm(), "written": written, "result": result}, default=str))
"""


def test_a_restore_streams_in_bounded_memory_and_writes_no_file(deployment, source, backed_up):
    dep = deployment
    run, manifest, before, at_snapshot = backed_up
    assert manifest["size"] > DISK_MIB * MiB
    proc = subprocess.run([sys.executable, "-c", _MEASURED_RESTORE, str(dep.config), run["manifest"], POOL],
                          env=dep.env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    check_restored(dep, out["result"], source, before, at_snapshot)
    assert out["written"] == [], "a restore must send the rebuilt XVA as it is made, never write it"
    grew = (out["peak_kb"] - out["base_kb"]) * 1024
    assert grew < 16 * MiB, f"peak memory grew by {grew / MiB:.1f} MiB restoring a {manifest['size'] / MiB:.0f} MiB XVA"


def test_a_wrong_key_in_the_workers_config_fails_before_the_pool(deployment, backed_up):
    """The command's host checks only the catalog (it may not hold the key); the worker opens the
    repository with its own config's key, and refuses before anything reaches the pool."""
    dep = deployment
    _, manifest, _, _ = backed_up
    good = dep.repo_key_file.read_bytes()
    before = counts(dep.sim, POOL)
    with open(dep.repo_key_file, "r+b") as fh:  # same file, same mode: another key in it
        fh.write(keys.encode_key(keys.generate_key(), "hex").encode() + b"\n")
    try:
        on_worker = tinabs(dep, "restore", manifest["backup_id"], "--pool", POOL)
        local = tinabs(dep, "restore", manifest["backup_id"], "--pool", POOL, "--local")
    finally:
        dep.repo_key_file.write_bytes(good)
    assert on_worker.returncode == 1, on_worker.stdout + on_worker.stderr
    reason = on_worker.stderr.strip().splitlines()[-1]
    assert reason.startswith("tinabs: restore failed: ") and "not the key of repository" in reason, reason
    assert local.returncode == 2 and len(local.stderr.strip().splitlines()) == 1, local.stderr
    assert local.stderr.startswith("tinabs: ") and "not the key of repository" in local.stderr
    assert counts(dep.sim, POOL) == before
    assert litter(dep.sim.state()) == {}


@pytest.mark.parametrize("local", [False, True])
def test_a_block_missing_mid_restore_fails_naming_it_and_leaves_nothing(deployment, backed_up, local):
    dep = deployment
    _, manifest, _, _ = backed_up
    block = last_block(dep, manifest)
    path = block_path(dep, block)
    aside = path.with_name("aside-" + block)
    before = counts(dep.sim, POOL)
    path.rename(aside)
    try:
        proc = tinabs(dep, "restore", manifest["backup_id"], "--pool", POOL, *(["--local"] if local else []))
    finally:
        aside.rename(path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    reason = proc.stderr.strip().splitlines()[-1]
    assert reason.startswith("tinabs: restore failed: ") and f"block {block}" in reason and "missing" in reason, \
        reason
    assert counts(dep.sim, POOL) == before
    assert litter(dep.sim.state()) == {}


def test_a_stream_that_is_not_the_manifests_is_cut_before_its_end(deployment, backed_up):
    """What is sent is hashed as it goes: when it is not the sha256 the index and manifest say, the
    end of the archive is held back, so the pool never imports it whole; the restore fails and
    leaves nothing.  A manifest that disagrees with its index sends nothing at all."""
    from tinabs_tasks.config import model as config
    from tinabs_tasks.restore import into_pool as restore_mod
    from tinabs_tasks.restore.repo_backup import RebuiltXva
    dep = deployment
    run, _, _, _ = backed_up
    cfg = config.load(str(dep.config))
    backup = restore_mod.load_backup(cfg.destination, run["manifest"], cfg.repository)
    backup["manifest"]["sha256"] = "1" * 64  # past load_backup's check: the manifest is not the index's
    with pytest.raises(restore_mod.RestoreFailed, match="its index says sha256 .*, its manifest 1{64}"):
        next(RebuiltXva(backup).pieces())
    # both say another stream (as if the blocks had been swapped for others that hash right):
    # only the rebuild's own hash of what it sends can see it
    backup["manifest"]["sha256"] = backup["index"].figures["stream_sha256"] = "0" * 64
    given = 0
    with pytest.raises(restore_mod.RestoreFailed, match="is not the one backed up"):
        for piece in RebuiltXva(backup).pieces():
            given += len(piece)
    assert 0 < given < backup["manifest"]["size"]  # the end of the archive was held back
    before = counts(dep.sim, POOL)
    with pytest.raises(restore_mod.RestoreFailed, match="is not the one backed up.*sha256 0{64}"):
        restore_mod.restore(restore_mod._xapi_for(cfg, POOL), backup)
    assert counts(dep.sim, POOL) == before
    assert litter(dep.sim.state()) == {}


def test_load_backup_refuses_a_backup_that_does_not_fit_before_the_pool(deployment, backed_up, tmp_path):
    """Checked where the restore runs, before the pool: the config's repository must be the one the
    manifest names, the manifest's size and sha256 the index's, and the index's ova.xml and disk
    member names those of an XVA."""
    from tinabs_tasks.config import model as config
    from tinabs_tasks.config.sources import SecretRef
    from tinabs_tasks.repo.index import delete_index, save_index
    from tinabs_tasks.repo.layout import init_repository
    from tinabs_tasks.restore import into_pool as restore_mod
    from tinabs_tasks.storage.verify import verify_backup
    dep = deployment
    run, manifest, _, _ = backed_up
    cfg = config.load(str(dep.config))
    manifest_path = Path(run["manifest"])

    def refused(path: str, repository=cfg.repository) -> str:
        with pytest.raises(restore_mod.BadBackup) as caught:
            restore_mod.load_backup(cfg.destination, path, repository)
        return str(caught.value)

    other_key = tmp_path / "other.key"
    init_repository(str(tmp_path / "other"), key=keys.generate_key_file(str(other_key)))
    other = cfg.repository.model_copy(update={"path": str(tmp_path / "other"), "key": SecretRef("file", str(other_key))})
    assert f"is in repository {manifest['repository']['id']}" in refused(run["manifest"], other)
    recorded = json.loads(manifest_path.read_text()).get("verified")
    report = verify_backup(run["manifest"], record=True, repository=other)
    assert not report.ok and "not verified (no verdict recorded)" in report.problems[0]
    assert json.loads(manifest_path.read_text()).get("verified") == recorded
    original = manifest_path.read_text()
    manifest_path.write_text(json.dumps({**json.loads(original), "sha256": "0" * 64}))
    try:
        assert "the manifest says" in refused(run["manifest"])
    finally:
        manifest_path.write_text(original)
    repo = dep.open_repo()
    for n, (forge, says) in enumerate([(lambda i: setattr(i.disks[0], "export_id", "../etc"), "not Ref:N"),
                                       (lambda i: setattr(i, "ova_xml", b"<value>no</value>"), "ova.xml")]):
        index = load_index(repo, manifest["backup_id"])
        index.backup_id = manifest["backup_id"].split("-")[0] + f"-forged{n}"
        forge(index)
        save_index(repo, index)
        forged = manifest_path.with_name(index.backup_id + ".json")
        forged.write_text(json.dumps({**json.loads(original), "backup_id": index.backup_id}))
        try:
            assert says in refused(index.backup_id)
        finally:
            forged.unlink()
            delete_index(repo, index.backup_id)


def verify(dep, *args) -> tuple[int, list]:
    proc = tinabs(dep, "verify", *args, "--json")
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON from tinabs verify (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def test_verify_rebuilds_the_stream_and_names_a_damaged_or_missing_block(deployment, backed_up):
    dep = deployment
    run, manifest, _, _ = backed_up
    manifest_path = Path(run["manifest"])
    code, (report,) = verify(dep, manifest["backup_id"])
    assert code == 0 and report["ok"], report
    assert report["bytes"] == manifest["size"] and report["disks"] >= 1 and report["chunks"] >= 2
    assert json.loads(manifest_path.read_text())["verified"]["state"] == "ok"
    # every backup, repository ones included
    code, reports = verify(dep, "--all")
    assert str(manifest_path) in {r["manifest"] for r in reports}
    block = last_block(dep, manifest)
    path = block_path(dep, block)
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x01
    path.write_bytes(bytes(flipped))
    try:
        code, (report,) = verify(dep, str(manifest_path))
    finally:
        path.write_bytes(good)
    assert code == 1 and not report["ok"]
    assert any(f"block {block} is damaged" in p for p in report["problems"]), report["problems"]
    recorded = json.loads(manifest_path.read_text())["verified"]
    assert recorded["state"] == "failed" and recorded["problems"] == report["problems"]
    aside = path.with_name("aside-" + block)
    path.rename(aside)
    try:
        code, (report,) = verify(dep, manifest["backup_id"])
    finally:
        aside.rename(path)
    assert code == 1 and any(f"block {block}" in p and "missing" in p for p in report["problems"]), report
    assert json.loads(manifest_path.read_text())["verified"]["state"] == "failed"
    code, (report,) = verify(dep, manifest["backup_id"])
    assert code == 0 and report["ok"], report
    assert json.loads(manifest_path.read_text())["verified"]["state"] == "ok"


def test_verify_without_the_key_says_so_and_records_nothing(deployment, backed_up):
    dep = deployment
    run, manifest, _, _ = backed_up
    manifest_path = Path(run["manifest"])
    recorded = json.loads(manifest_path.read_text()).get("verified")
    good = dep.repo_key_file.read_bytes()
    with open(dep.repo_key_file, "r+b") as fh:
        fh.write(keys.encode_key(keys.generate_key(), "hex").encode() + b"\n")
    try:
        code, (report,) = verify(dep, manifest["backup_id"])
    finally:
        dep.repo_key_file.write_bytes(good)
    assert code == 1 and any("cannot be opened here" in p and "not the key" in p for p in report["problems"]), report
    assert json.loads(manifest_path.read_text()).get("verified") == recorded


def test_restore_test_of_a_repo_backup_passes_and_cleans_up(deployment, backed_up):
    dep = deployment
    _, manifest, _, _ = backed_up
    before = counts(dep.sim, POOL)
    proc = tinabs(dep, "verify", manifest["backup_id"], "--restore-test", "--pool", POOL, "--sr", "nfs-shared",
                  "--json")
    assert_health_check_passed(dep, proc, before)


def test_a_restore_onto_a_members_local_sr_follows_the_redirect(deployment, source, backed_up):
    """/import on the master answers 302 to the member that sees the SR: the rebuilt XVA goes there."""
    dep = deployment
    run, manifest, before, at_snapshot = backed_up
    state = dep.sim.state()["pools"][POOL]
    master_host = next(iter(state["pool"].values()))["master"]
    local = next(sr for ref, sr in state["SR"].items() if sr["name_label"] == "Local storage"
                 and all(state["PBD"][p]["host"] != master_host for p in sr["PBDs"]))
    result = restore(dep, manifest["backup_id"], "--pool", POOL, "--sr", local["uuid"])
    vm = check_restored(dep, result, source, before, at_snapshot)
    system = disks(dep.sim.state()["pools"][POOL], vm)["0"][1]
    assert system["SR"] == next(ref for ref, sr in state["SR"].items() if sr["uuid"] == local["uuid"])


class _Counted:
    """An upload body that counts how often it is read from its start."""

    def __init__(self, data: bytes):
        self.data, self.size, self.starts = data, len(data), 0

    def pieces(self):
        self.starts += 1
        for at in range(0, self.size, 1000):
            yield self.data[at:at + 1000]


def test_a_redirect_after_the_body_sends_the_body_again_from_its_start(monkeypatch):
    """The simulator, like xapi, redirects before it reads the body; a host whose early answer comes
    late (after the body) and is a 302 gets the body again, whole, from a fresh ``pieces()``."""
    import socket
    import threading

    from tinabs_tasks.xapi import upload

    monkeypatch.setattr(upload, "EARLY_ANSWER_S", 0.2)
    got: dict[str, bytes] = {}
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    second = f"http://127.0.0.1:{listeners[1].getsockname()[1]}/import?x=1"

    def serve(index: int, answer_early: bool) -> None:
        conn, _ = listeners[index].accept()
        with conn, conn.makefile("rb") as reader:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += reader.read(1)
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            if answer_early:
                conn.sendall(b"HTTP/1.1 200 OK\r\ntask-id: OpaqueRef:t\r\nContent-Length: 0\r\n\r\n")
            got[index] = reader.read(length)
            if not answer_early:
                conn.sendall(f"HTTP/1.1 302 Found\r\nLocation: {second}\r\nContent-Length: 0\r\n\r\n".encode())

    # daemons: a server that is never called (the redirect not followed) must not keep pytest from ending
    threads = [threading.Thread(target=serve, args=(0, False), daemon=True),
               threading.Thread(target=serve, args=(1, True), daemon=True)]
    for t in threads:
        t.start()
    body = _Counted(os.urandom(25_000))
    try:
        out = upload.put_file(f"http://127.0.0.1:{listeners[0].getsockname()[1]}", "/import", {"x": "1"}, body,
                              timeout=10)
    finally:
        for sock in listeners:
            sock.close()
        for t in threads:
            t.join(10)
    assert out["status"] == 200 and out["task_id"] == "OpaqueRef:t" and out["url"] == second
    assert body.starts == 2 and got == {0: body.data, 1: body.data}
