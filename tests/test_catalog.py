"""The catalog (`tinabs list`): every complete backup in the destination, from the manifests alone.

Given fabricated destinations, `catalog.scan` lists complete backups only (partial
files, data without a manifest, manifests without data, corrupt manifests and
size mismatches are shown only with --all, marked), filters by pool and VM,
never follows a symlink out of the destination and sorts newest first per VM.
Given a real deployment, a backup made by `tinabs backup` is listed by
`tinabs list` with its manifest's sha256 and path, even after Redis is flushed.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.pool_checks import backupable_vms
from tinabs_tasks.storage import catalog
from tinabs_tasks.storage.destination import vm_dir, write_json_atomic

DEPLOYMENT_SIM_ARGS = ("--pools", "1", "--vms-per-pool", "3", "--disk-mib", "8")
UUID_A = "0f6a1c2e-1111-4a5b-8c9d-000000000001"
UUID_B = "0f6a1c2e-2222-4a5b-8c9d-000000000002"


def make_backup(dest, pool="pool-a", name="web-01", uuid=UUID_A, stamp="20260301T120000Z", run="aaaaaaaaaaaa",
                mode="export", data=b"backup bytes", manifest=True, size=None, extra=None) -> dict:
    folder = vm_dir(str(dest), pool, name, uuid)
    os.makedirs(folder, exist_ok=True)
    base = os.path.join(folder, f"{stamp}-{run}")
    path = base + (".xva" if mode == "export" else ".metadata.xva")
    if data is not None:
        Path(path).write_bytes(data)
    payload = {
        "format": 1, "vm": {"uuid": uuid, "name": name}, "pool": pool, "job": "job" + run[:9], "run": run,
        "mode": mode, "file": os.path.basename(path), "size": len(data or b"") if size is None else size,
        "sha256": hashlib.sha256(data or b"").hexdigest(), "created": stamp, "completed": stamp,
        "timings": {"transfer": 0.1}, "skeleton": {}, **(extra or {}),
    }
    if manifest:
        write_json_atomic(base + ".json", payload)
    return {"path": path, "manifest": base + ".json", "folder": folder, "payload": payload}


def statuses(items):
    return sorted((b.vm_name, b.status) for b in items)


# --- scan ----------------------------------------------------------------------------------------------------

def test_a_complete_backup_is_listed_with_its_manifest_fields(tmp_path):
    made = make_backup(tmp_path, extra={"verified": "ok"})
    (item,) = catalog.scan(str(tmp_path))
    assert item.status == "complete" and item.complete
    assert (item.vm_uuid, item.vm_name, item.pool, item.mode) == (UUID_A, "web-01", "pool-a", "export")
    assert item.created == dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
    assert item.size == len(b"backup bytes") and item.sha256 == made["payload"]["sha256"]
    assert item.path == made["path"] and item.manifest_path == made["manifest"]
    assert (item.run, item.job, item.verified) == ("aaaaaaaaaaaa", "jobaaaaaaaaa", "ok")
    assert item.to_dict()["created"] == "2026-03-01T12:00:00Z"


def test_verified_is_read_from_the_manifest_and_absent_means_none(tmp_path):
    make_backup(tmp_path, name="a", uuid=UUID_A)
    make_backup(tmp_path, name="b", uuid=UUID_B, extra={"verified": "failed"})
    make_backup(tmp_path, name="c", uuid="c-uuid", extra={"verified": "maybe"})
    got = {b.vm_name: b.verified for b in catalog.scan(str(tmp_path))}
    assert got == {"a": None, "b": "failed", "c": None}


def test_sr_copy_backups_are_listed(tmp_path):
    made = make_backup(tmp_path, mode="sr-copy", extra={"backup_sr": "backup-sr", "copied_vdis": []})
    (item,) = catalog.scan(str(tmp_path))
    assert item.mode == "sr-copy" and item.path == made["path"] and item.path.endswith(".metadata.xva")


def test_incomplete_files_are_never_complete_but_show_with_their_status(tmp_path):
    make_backup(tmp_path, name="good", uuid="u-good")
    # a transfer in progress (or interrupted): data .partial, no manifest
    partial = make_backup(tmp_path, name="partial", uuid="u-partial", data=None, manifest=False)
    Path(partial["path"] + ".partial").write_bytes(b"half")
    # a manifest being written: data complete, manifest still .partial
    half = make_backup(tmp_path, name="half-manifest", uuid="u-half", manifest=False)
    Path(half["manifest"] + ".partial").write_text("{")
    make_backup(tmp_path, name="manifest-only", uuid="u-monly", data=None, size=12)
    make_backup(tmp_path, name="data-only", uuid="u-donly", manifest=False)
    corrupt = make_backup(tmp_path, name="corrupt", uuid="u-corrupt")
    Path(corrupt["manifest"]).write_text('{"vm": {"uuid": "u-corrupt", "na')
    wrong = make_backup(tmp_path, name="wrong-shape", uuid="u-shape")
    Path(wrong["manifest"]).write_text('["not", "a", "manifest"]')
    make_backup(tmp_path, name="size-mismatch", uuid="u-size", size=999)
    escape = make_backup(tmp_path, name="escape", uuid="u-escape", extra={"file": "../../../etc/passwd"})
    assert os.path.exists(escape["path"])

    assert statuses(catalog.scan(str(tmp_path))) == [("good", "complete")]
    everything = catalog.scan(str(tmp_path), include_incomplete=True)
    assert statuses(everything) == sorted([
        ("good", "complete"), ("partial", "partial"), ("half-manifest", "partial"),
        ("half-manifest", "no-manifest"), ("manifest-only", "missing-data"), ("data-only", "no-manifest"),
        ("corrupt", "corrupt-manifest"), ("corrupt", "no-manifest"), ("wrong-shape", "corrupt-manifest"),
        ("wrong-shape", "no-manifest"), ("size-mismatch", "missing-data"), ("escape", "corrupt-manifest"),
        ("escape", "no-manifest"),
    ])
    by_status = {(b.vm_name, b.status): b for b in everything}
    assert by_status[("partial", "partial")].path == partial["path"] + ".partial"
    assert by_status[("partial", "partial")].created == dt.datetime(2026, 3, 1, 12, tzinfo=dt.timezone.utc)
    assert by_status[("corrupt", "corrupt-manifest")].manifest_path == corrupt["manifest"]
    assert by_status[("data-only", "no-manifest")].run == "aaaaaaaaaaaa"


def test_filters_by_pool_vm_name_and_vm_uuid(tmp_path):
    make_backup(tmp_path, pool="pool-a", name="web-01", uuid=UUID_A)
    make_backup(tmp_path, pool="pool-a", name="db-01", uuid=UUID_B)
    make_backup(tmp_path, pool="pool-b", name="web-01", uuid="b-web")
    make_backup(tmp_path, pool="pool-b", name="web 02 (prod)", uuid="b-web2")
    dest = str(tmp_path)
    key = lambda items: sorted((b.pool, b.vm_name) for b in items)  # noqa: E731
    assert key(catalog.scan(dest, pool="pool-a")) == [("pool-a", "db-01"), ("pool-a", "web-01")]
    assert key(catalog.scan(dest, vm="web-01")) == [("pool-a", "web-01"), ("pool-b", "web-01")]
    assert key(catalog.scan(dest, pool="pool-b", vm="web-01")) == [("pool-b", "web-01")]
    assert key(catalog.scan(dest, vm=UUID_B)) == [("pool-a", "db-01")]
    assert key(catalog.scan(dest, vm=UUID_B.upper())) == [("pool-a", "db-01")]
    assert key(catalog.scan(dest, vm="web 02 (prod)")) == [("pool-b", "web 02 (prod)")]
    assert catalog.scan(dest, vm="web") == [] and catalog.scan(dest, pool="pool-c") == []
    # the filters apply to incomplete entries too
    make_backup(tmp_path, pool="pool-b", name="db-01", uuid="b-db", manifest=False)
    assert statuses(catalog.scan(dest, vm="db-01", include_incomplete=True)) == [
        ("db-01", "complete"), ("db-01", "no-manifest")]


def test_vm_filter_uses_the_manifest_not_only_the_directory_name(tmp_path):
    # two names that make the same safe directory name, different VMs (uuids)
    make_backup(tmp_path, name="web 01", uuid=UUID_A)
    make_backup(tmp_path, name="web/01", uuid=UUID_B)
    assert [b.vm_uuid for b in catalog.scan(str(tmp_path), vm="web/01")] == [UUID_B]


def test_symlinks_out_of_the_destination_are_not_followed(tmp_path):
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    make_backup(dest, name="inside", uuid=UUID_A)
    # a whole pool, a VM directory, a manifest and a data file, all outside, linked in
    make_backup(outside, pool="evil-pool", name="evil", uuid="u-evil")
    other = make_backup(outside, pool="pool-a", name="evil-vm", uuid="u-evil-vm")
    os.symlink(outside / "evil-pool", dest / "evil-pool")
    os.symlink(other["folder"], dest / "pool-a" / os.path.basename(other["folder"]))
    linked = make_backup(dest, name="linked-data", uuid=UUID_B, data=None, size=len(b"backup bytes"))
    os.symlink(other["path"], linked["path"])
    target = make_backup(outside, pool="p", name="m", uuid="u-m")
    folder = vm_dir(str(dest), "pool-a", "linked-manifest", "u-lm")
    os.makedirs(folder)
    os.symlink(target["manifest"], os.path.join(folder, os.path.basename(target["manifest"])))
    assert [b.vm_name for b in catalog.scan(str(dest))] == ["inside"]
    everything = catalog.scan(str(dest), include_incomplete=True)
    assert all(str(outside) not in (b.path or "") + (b.manifest_path or "") for b in everything)
    assert statuses(everything) == [("inside", "complete"), ("linked-data", "missing-data")]


def test_newest_first_per_vm(tmp_path):
    for stamp, run in [("20260101T000000Z", "r1"), ("20260301T000000Z", "r3"), ("20260201T000000Z", "r2")]:
        make_backup(tmp_path, name="web-01", uuid=UUID_A, stamp=stamp, run=run)
    for stamp, run in [("20250101T000000Z", "s1"), ("20270101T000000Z", "s2")]:
        make_backup(tmp_path, name="db-01", uuid=UUID_B, stamp=stamp, run=run)
    items = catalog.scan(str(tmp_path))
    assert [(b.vm_name, b.run) for b in items] == [
        ("db-01", "s2"), ("db-01", "s1"), ("web-01", "r3"), ("web-01", "r2"), ("web-01", "r1")]


def test_an_empty_or_missing_destination_lists_nothing(tmp_path):
    assert catalog.scan(str(tmp_path)) == []
    assert catalog.scan(str(tmp_path / "nope")) == []
    (tmp_path / "stray-file").write_text("x")
    (tmp_path / "pool-a").mkdir()
    (tmp_path / "pool-a" / "not-a-vm-dir-file.json").write_text("{}")
    assert catalog.scan(str(tmp_path), include_incomplete=True) == []


# --- the CLI, without a broker --------------------------------------------------------------------------------

def write_config(path: Path, dest: Path) -> Path:
    path.write_text(
        'broker_url = "redis://127.0.0.1:1/0"\n'  # nothing listens there: `list` must not need the broker
        f"destination = {json.dumps(str(dest))}\n\n"
        '[pools."pool-a"]\nmaster = "http://127.0.0.1:1"\nusername = "root"\n'
        f"password_file = {json.dumps(str(path.parent / 'secret'))}\n"
        'shared_sr = "nfs-shared"\nbackup_sr = "backup-sr"\n')
    return path


def tinabs(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TINABS_BROKER_URL", "TINABS_RESULT_BACKEND")}
    env["TINABS_CONFIG"] = str(config)
    return subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def cli_dest(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    return dest, write_config(tmp_path / "tinabs.toml", dest)


def test_cli_lists_json_and_all_with_an_unreachable_broker(cli_dest):
    dest, config = cli_dest
    made = make_backup(dest, name="web-01", uuid=UUID_A)
    make_backup(dest, name="db-01", uuid=UUID_B, manifest=False)
    proc = tinabs(config, "list", "--json")
    assert proc.returncode == 0, proc.stderr
    (item,) = json.loads(proc.stdout)
    assert item["vm_name"] == "web-01" and item["status"] == "complete"
    assert item["path"] == made["path"] and item["sha256"] == made["payload"]["sha256"]
    assert item["created"] == "2026-03-01T12:00:00Z" and item["verified"] is None
    proc = tinabs(config, "list", "--json", "--all")
    assert proc.returncode == 0, proc.stderr
    assert sorted((i["vm_name"], i["status"]) for i in json.loads(proc.stdout)) == [
        ("db-01", "no-manifest"), ("web-01", "complete")]
    proc = tinabs(config, "list", "--vm", UUID_B, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout) == []


def test_cli_table(cli_dest):
    dest, config = cli_dest
    made = make_backup(dest, name="web-01", uuid=UUID_A, extra={"verified": "ok"})
    make_backup(dest, name="db-01", uuid=UUID_B, manifest=False)
    proc = tinabs(config, "list")
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.splitlines()
    assert header.split() == ["VM", "POOL", "MODE", "KIND", "UTC", "TIME", "SIZE", "SHA256", "VERIFIED", "PATH"]
    assert row.split() == ["web-01", "pool-a", "export", "-", "2026-03-01", "12:00:00Z", "12", "B",
                           made["payload"]["sha256"][:12], "ok", made["path"]]
    proc = tinabs(config, "list", "--all")
    lines = proc.stdout.splitlines()
    assert "STATUS" in lines[0] and len(lines) == 3
    assert any("no-manifest" in line and "db-01" in line for line in lines[1:])


def test_cli_empty_and_missing_destination(cli_dest, tmp_path):
    dest, config = cli_dest
    proc = tinabs(config, "list")
    assert proc.returncode == 0 and proc.stdout.strip() == f"no backups in {dest}"
    missing = write_config(tmp_path / "missing.toml", tmp_path / "no-such-dir")
    proc = tinabs(missing, "list")
    assert proc.returncode == 2 and proc.stderr.startswith("tinabs: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "no-such-dir" in proc.stderr


# --- a real backup, listed after Redis is wiped (keep last: it flushes the module's Redis DB) -----------------

def test_a_real_backup_is_listed_even_after_redis_is_flushed(deployment):
    dep = deployment
    state = dep.sim.state()
    vm = sorted(backupable_vms(state, "pool-a"), key=lambda r: r["name_label"])[0]
    code, job = dep.backup("--vm", vm["name_label"], "--pool", "pool-a")
    assert code == 0, job
    (run,) = job["runs"]
    manifest = json.loads(Path(run["manifest"]).read_text())

    def listed():
        proc = dep.cli("list", "--json", check=True)
        return [i for i in json.loads(proc.stdout) if i["vm_uuid"] == vm["uuid"]]

    before = listed()
    assert [(i["path"], i["sha256"], i["size"], i["status"]) for i in before] == [
        (run["path"], manifest["sha256"], manifest["size"], "complete")]
    assert before[0]["manifest_path"] == run["manifest"] and before[0]["pool"] == "pool-a"
    dep.redis.flushdb()
    assert listed() == before
    proc = dep.cli("list", "--vm", vm["uuid"], check=True)
    assert run["path"] in proc.stdout and manifest["sha256"][:12] in proc.stdout
