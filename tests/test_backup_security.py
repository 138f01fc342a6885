"""The pool password stays secret, and hostile VM names cannot steer where files are written.

Given a pool whose password sits in a 0600 file, when a job runs in which one
VM succeeds and one fails (an injected fault, so retries and compensation run
too), then the password is in no Redis key or value, no worker log, no file
under the destination and no `tinabs status` output.  Given VMs renamed to
path tricks, a 300-character name and unicode, when each is backed up, then
every file lands inside the destination, in a folder whose name is safe.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import redis

from helpers import toml_write

DEPLOYMENT_SIM_ARGS = ("--pools", "1", "--vms-per-pool", "5", "--disk-mib", "4")
HOSTILE_NAMES = ("../../etc/x", "/", "n" * 150 + "/.." * 50, "Ünïcødé 名前")
MAX_COMPONENT = 255  # bytes in a file name on every common Linux file system


def _password(dep) -> str:
    password = Path(toml_write.read(dep.config)["pools"]["pool-a"]["password_file"]).read_text().strip()
    assert len(password) >= 8
    return password


def _vms(dep) -> dict[str, dict]:
    """uuid -> record of the pool's real VMs."""
    return {r["uuid"]: r for r in dep.sim.state()["pools"]["pool-a"]["VM"].values()
            if not (r["is_a_template"] or r["is_a_snapshot"] or r["is_control_domain"])}


def _system_vdi_uuid(dep, vm: dict) -> str:
    pool = dep.sim.state()["pools"]["pool-a"]
    vbd = next(pool["VBD"][b] for b in vm["VBDs"] if pool["VBD"][b]["userdevice"] == "0")
    return pool["VDI"][vbd["VDI"]]["uuid"]


def _redis_dump(url: str) -> list[bytes]:
    """Every key and value of the DB, with base64 message bodies (kombu's envelopes) decoded too."""
    r = redis.Redis.from_url(url)  # bytes: values need not be UTF-8
    out: list[bytes] = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        if kind == "string":
            values = [r.get(key)]
        elif kind == "hash":
            values = [b for kv in r.hgetall(key).items() for b in kv]
        elif kind == "list":
            values = r.lrange(key, 0, -1)
        elif kind == "set":
            values = list(r.smembers(key))
        elif kind == "zset":
            values = [m for m, _ in r.zrange(key, 0, -1, withscores=True)]
        else:
            values = [json.dumps(r.execute_command("XRANGE", key, "-", "+"), default=repr).encode()] \
                if kind == "stream" else []
        out.append(key)
        for value in values:
            if value is None:
                continue
            out.append(value)
            out.extend(_decoded_bodies(value))
    return out


def _decoded_bodies(value: bytes) -> list[bytes]:
    try:
        doc = json.loads(value)
    except ValueError:
        return []
    found = []
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            body = item.get("body")
            if isinstance(body, str):
                try:
                    found.append(base64.b64decode(body, validate=True))
                except ValueError:
                    pass
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def test_password_appears_nowhere_after_a_job(deployment):
    dep = deployment
    password = _password(dep)
    vms = list(_vms(dep).values())
    failing = next(v for v in vms if [w["name_label"] for w in vms].count(v["name_label"]) == 1)
    # Given a transient fault that keeps failing one VM's disk snapshot (retried, then compensated)
    dep.sim.add_fault({"method": "VDI.snapshot", "arg": _system_vdi_uuid(dep, failing), "pool": "pool-a",
                       "error": ["SR_BACKEND_FAILURE_46", "", "the VDI is not available"]})
    try:
        # When every VM of the pool is backed up
        status, job = dep.backup("--all", "--timeout", "120")
    finally:
        dep.sim.clear_faults()
    # Then that VM failed and the others succeeded
    assert status == 1, job
    states = {r["vm_uuid"]: r["state"] for r in job["runs"]}
    assert states.pop(failing["uuid"]) == "failed"
    assert states and set(states.values()) == {"succeeded"}, states
    secret = password.encode()
    # And the password is in no Redis key or value (tinabs' state, Celery's queues and results)
    dump = _redis_dump(dep.redis_url)
    assert len(dump) > 20, "the scan found almost nothing: wrong DB?"
    assert any(failing["uuid"].encode() in item for item in dump), "the job's own state is not in the scan"
    assert any(item.startswith(b"celery-task-meta-") for item in dump), "Celery's results are not in the scan"
    assert not [item[:200] for item in dump if secret in item]
    # And in no worker log
    for worker in dep.workers:
        log = worker.log_path.read_bytes()
        assert b"tinabs." in log  # the log is the right one and has task lines
        assert secret not in log, worker.log_path
    # And in no file under the destination (backups and manifests)
    files = dep.files()
    assert any(f.suffix == ".json" for f in files) and any(f.suffix == ".xva" for f in files)
    for path in files:
        assert secret not in path.read_bytes(), path
    # And in no `tinabs status` output, JSON or human, for the job or the job list
    for args in (("status", job["id"], "--json"), ("status", job["id"]), ("status", "--json"), ("status",)):
        proc = dep.cli(*args)
        assert proc.stdout and password not in proc.stdout + proc.stderr, args


def test_hostile_vm_names_stay_inside_the_destination(deployment):
    dep = deployment
    before_tree = {p for p in dep.root.rglob("*") if p.is_file()}
    etc_x_existed = Path("/etc/x").exists()
    # Given a VM renamed to each hostile name
    targets = sorted(_vms(dep).values(), key=lambda r: r["uuid"])[: len(HOSTILE_NAMES)]
    assert len(targets) == len(HOSTILE_NAMES)
    session = dep.sim.session("pool-a")
    try:
        for vm, name in zip(targets, HOSTILE_NAMES):
            session.xenapi.VM.set_name_label(session.xenapi.VM.get_by_uuid(vm["uuid"]), name)
    finally:
        session.xenapi.session.logout()
    renamed = {r["uuid"]: r["name_label"] for r in _vms(dep).values()}
    assert sorted(renamed[vm["uuid"]] for vm in targets) == sorted(HOSTILE_NAMES)
    # When each is backed up by its name (all at once)
    procs = [subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "backup", "--vm", name, "--pool", "pool-a",
                               "--wait", "--json", "--timeout", "90"], env=dep.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in HOSTILE_NAMES]
    jobs = []
    for name, proc in zip(HOSTILE_NAMES, procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name!r}: {out}\n{err}"
        jobs.append(json.loads(out))
    # Then each picked exactly its VM and succeeded
    dest = dep.dest.resolve()
    for name, job in zip(HOSTILE_NAMES, jobs):
        (run,) = job["runs"]
        assert renamed[run["vm_uuid"]] == name and run["vm_name"] == name and run["state"] == "succeeded"
        # And its files are inside the destination, in <dest>/<pool>/<safe folder>/
        for key in ("path", "manifest"):
            path = Path(run[key])
            assert path.is_file(), run
            resolved = path.resolve()
            assert resolved.is_relative_to(dest), resolved
            assert resolved.parent.parent.parent == dest, resolved
        folder = Path(run["path"]).parent.name
        assert folder.endswith(f"--{run['vm_uuid']}")
        assert "/" not in folder and ".." not in folder and not folder.startswith(".")
        assert folder.isascii() and folder.isprintable() and " " not in folder, folder
        assert len(folder.encode()) <= MAX_COMPONENT and len(Path(run["path"]).name.encode()) <= MAX_COMPONENT
        # And the manifest still names the VM as the pool does
        assert json.loads(Path(run["manifest"]).read_text())["vm"]["name"] == name
    # And nothing was written anywhere but the destination (and the workers' logs)
    new = {p for p in dep.root.rglob("*") if p.is_file()} - before_tree
    assert all(p.resolve().is_relative_to(dest) for p in new), sorted(map(str, new))
    assert Path("/etc/x").exists() == etc_x_existed
    assert all(os.path.realpath(p).startswith(str(dest) + os.sep) for p in dep.files())
