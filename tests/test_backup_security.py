"""Secrets stay secret, and hostile VM names cannot steer where files are written.

Given the documented deployment's security shape (Redis with a password,
pool-a's password as a secret in a secrets directory, pool-b with a wrong
password from the environment, real workers, one at debug level, a Celery
event recorder and Flower with basic auth), when a job runs in which some VMs
succeed, one fails for good, one keeps failing transiently (so retries and
compensation run) and pool-b refuses the login, then none of the secrets
(pool passwords, the Redis password, Flower's password; as text or inside
base64) is in any Redis key or value seen during or after the job, any Celery
event, Flower's API or log, any worker log, any CLI output, or any file in the
destination; and Flower answers nothing without its password.  (The simulator
is not searched: it is the pool, the side that knows the password.)

Given VMs renamed to path tricks, a 300-character name and unicode, when each
is backed up, then every file lands inside the destination, in a folder whose
name is safe.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis

from helpers import toml_write
from helpers.deployment import Deployment
from helpers.monitors import EventRecorder, FlowerProc
from helpers.redis_proc import RedisProc, find_redis_server
from helpers.workers import WorkerProc

DEPLOYMENT_SIM_ARGS = ("--pools", "1", "--vms-per-pool", "5", "--disk-mib", "4")
HOSTILE_NAMES = ("../../etc/x", "/", "n" * 150 + "/.." * 50, "Ünïcødé 名前")
MAX_COMPONENT = 255  # bytes in a file name on every common Linux file system

SEED = "48611"  # pool-a's password is sim-pool-a-48611: distinctive, and in no VM name
REDIS_PASSWORD = "tinabs-Redis-pw-Q7v2x"
WRONG_POOL_B_PASSWORD = "wrong-Pool-B-pw-K3y9q"
FLOWER_USER, FLOWER_PASSWORD = "ops", "flower-Pw-51abZ"
SECURE_SIM_ARGS = ("--pools", "2", "--vms-per-pool", "4", "--disk-mib", "4", "--seed", SEED,
                   "--latency", "0.2")  # slow operations: tasks sit in Redis' unacked hash long enough to see


def _vms(dep, pool: str = "pool-a") -> dict[str, dict]:
    """uuid -> record of the pool's real VMs."""
    return {r["uuid"]: r for r in dep.sim.state()["pools"][pool]["VM"].values()
            if not (r["is_a_template"] or r["is_a_snapshot"] or r["is_control_domain"])}


def _system_vdi(dep, vm: dict, pool: str = "pool-a") -> tuple[str, dict]:
    """(ref, record) of the VM's system disk."""
    state = dep.sim.state()["pools"][pool]
    vbd = next(state["VBD"][b] for b in vm["VBDs"] if state["VBD"][b]["userdevice"] == "0")
    return vbd["VDI"], state["VDI"][vbd["VDI"]]


def _redis_dump(url: str) -> list[bytes]:
    """Every key and value of the DB, with base64 message bodies (kombu's envelopes) decoded too."""
    r = redis.Redis.from_url(url)  # bytes: values need not be UTF-8
    out: list[bytes] = []
    try:
        for key in r.scan_iter(count=1000):
            out.append(key)
            for value in _values(r, key):
                if value is not None:
                    out.append(value)
                    out.extend(_decoded_bodies(value))
    finally:
        r.close()
    return out


def _values(r: redis.Redis, key: bytes) -> list:
    kind = r.type(key).decode()
    if kind == "string":
        return [r.get(key)]
    if kind == "hash":
        return [b for kv in r.hgetall(key).items() for b in kv]
    if kind == "list":
        return r.lrange(key, 0, -1)
    if kind == "set":
        return list(r.smembers(key))
    if kind == "zset":
        return [m for m, _ in r.zrange(key, 0, -1, withscores=True)]
    if kind == "stream":
        return [json.dumps(r.execute_command("XRANGE", key, "-", "+"), default=repr).encode()]
    return []  # "none": the key expired between SCAN and TYPE


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


def _every_db(server: RedisProc) -> list[bytes]:
    """_redis_dump of every DB that has keys (tinabs and Celery use one, but a leak could be anywhere)."""
    info = redis.Redis.from_url(server.url).info("keyspace")
    return [item for db in sorted(info) for item in _redis_dump(server.url_for(int(db[2:])))]


class RedisSampler(threading.Thread):
    """Dumps the DB every 0.1 s while the job runs: queued and unacked messages exist only meanwhile."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.seen, self.rounds, self.errors = url, set(), 0, []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.seen.update(_redis_dump(self.url))
                self.rounds += 1
            except redis.RedisError as exc:
                self.errors.append(repr(exc))
            self._stop_event.wait(0.1)

    def stop(self) -> "RedisSampler":
        self._stop_event.set()
        self.join(timeout=30)
        return self


def _needles(secret: str) -> list[bytes]:
    """The secret as text, and as it would look inside any base64 (basic auth, a kombu body)."""
    raw = secret.encode()
    assert len(raw) >= 12, "a short secret's base64 pieces would match by chance"
    out = [raw]
    for shift in range(3):
        enc = base64.b64encode(b"\0" * shift + raw)
        out.append(enc[(shift * 4 + 2) // 3:(shift + len(raw)) // 3 * 4])  # only characters of the secret
    return out


def _leaks(haystack: list[bytes], secrets: dict[str, str]) -> list[str]:
    return [f"{what} in {item[:300]!r}" for what, secret in secrets.items() for needle in _needles(secret)
            for item in haystack if needle in item]


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    root = tmp_path_factory.mktemp("secure")
    server = RedisProc(root / "redis", binary=find_redis_server(), password=REDIS_PASSWORD)
    server.start()
    started: list = []
    try:
        dep = Deployment(root, server, SECURE_SIM_ARGS, db=0)
        started.append(dep)
        dep.redis_url = server.url_for(0)  # the Deployment's own URL has no password
        secrets = _move_passwords(dep, root / "run-secrets")
        dep.env.update(TINABS_BROKER_URL=dep.redis_url, TINABS_SECRETS_DIR=str(secrets),
                       TINABS_TEST_POOL_B_PASSWORD=WRONG_POOL_B_PASSWORD)
        dep.recorder = EventRecorder(dep.redis_url, root / "events.jsonl").start()
        started.append(dep.recorder)
        dep.flower = FlowerProc(dep.env, root, FLOWER_USER, FLOWER_PASSWORD).start()
        started.append(dep.flower)
        for name, level in (("w1", "debug"), ("w2", "info")):
            dep.workers.append(WorkerProc(name, dep.env, root, concurrency=2, loglevel=level).start())
        yield dep
    finally:
        for thing in reversed(started):
            thing.stop()
        server.stop()


def _move_passwords(dep, secrets: Path) -> Path:
    """pool-a: password_secret in a 0700 directory; pool-b: password_env (set to a wrong password)."""
    data = toml_write.read(dep.config)
    pool_a, pool_b = data["pools"]["pool-a"], data["pools"]["pool-b"]
    secrets.mkdir(mode=0o700)
    fd = os.open(secrets / "pool-a", os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(Path(pool_a.pop("password_file")).read_text())
    pool_a["password_secret"] = "pool-a"
    pool_b.pop("password_file")
    pool_b["password_env"] = "TINABS_TEST_POOL_B_PASSWORD"
    toml_write.write(dep.config, data)
    return secrets


def _fail_two_vms(dep) -> tuple[dict, dict]:
    """One VM whose snapshot keeps failing transiently (retried, given up, compensated), one whose
    snapshot fails for good with an error that carries a call argument (the disk's ref)."""
    vms = list(_vms(dep).values())
    unique = sorted((v for v in vms if [w["name_label"] for w in vms].count(v["name_label"]) == 1),
                    key=lambda v: v["uuid"])
    flaky, broken = unique[:2]
    flaky_vdi = _system_vdi(dep, flaky)[1]["uuid"]
    broken_ref, broken_vdi = _system_vdi(dep, broken)
    dep.sim.add_fault([
        {"method": "VDI.snapshot", "arg": flaky_vdi, "pool": "pool-a",
         "error": ["SR_BACKEND_FAILURE_46", "", "the VDI is not available"]},
        {"method": "VDI.snapshot", "arg": broken_vdi["uuid"], "pool": "pool-a",
         "error": ["HANDLE_INVALID", "VDI", broken_ref]},
    ])
    return flaky, broken


def _run_job(dep) -> tuple[subprocess.CompletedProcess, dict, RedisSampler]:
    sampler = RedisSampler(dep.redis_url)
    sampler.start()
    try:
        proc = dep.cli("backup", "--all", "--wait", "--json", "--timeout", "150")
    finally:
        sampler.stop()
        dep.sim.clear_faults()
    try:
        return proc, json.loads(proc.stdout), sampler
    except ValueError:
        raise AssertionError(f"no JSON from tinabs backup (exit {proc.returncode}):\n{proc.stdout}\n"
                             f"{proc.stderr}") from None


def test_secrets_appear_nowhere_after_a_job(secure):
    dep = secure
    secrets = {"pool-a password": dep.sim.pool("pool-a")["password"], "wrong pool-b password": WRONG_POOL_B_PASSWORD,
               "Redis password": REDIS_PASSWORD, "Flower password": FLOWER_PASSWORD}
    assert secrets["pool-a password"] == f"sim-pool-a-{SEED}"
    # Given one VM failing transiently for ever, one failing for good, and pool-b's login refused
    flaky, broken = _fail_two_vms(dep)
    # When every VM of both pools is backed up
    backup, job, sampler = _run_job(dep)
    # Then pool-a's other VMs succeeded (with the password from the secrets directory), the two failed,
    # and pool-b failed at login, as the job's note says
    assert backup.returncode == 1, backup.stdout + backup.stderr
    states = {r["vm_uuid"]: r["state"] for r in job["runs"]}
    assert states.pop(flaky["uuid"]) == "failed" and states.pop(broken["uuid"]) == "failed", job["runs"]
    assert states and set(states.values()) == {"succeeded"}, states
    assert {r["pool"] for r in job["runs"]} == {"pool-a"}
    assert any("pool-b" in n and "SESSION_AUTHENTICATION_FAILED" in n for n in job["notes"]), job["notes"]
    errors = {r["vm_uuid"]: r.get("error", "") for r in job["runs"]}
    assert "SR_BACKEND_FAILURE_46" in errors[flaky["uuid"]] and "HANDLE_INVALID" in errors[broken["uuid"]], errors

    haystacks = {
        "Redis during the job": _redis_during(sampler, flaky),
        "Redis after the job": _redis_after(dep, flaky),
        "Celery events": _events(dep, flaky),
        "Flower": _flower(dep, flaky),
        "worker logs": _worker_logs(dep),
        "CLI output": _cli_outputs(dep, backup, job),
        "destination": _destination(dep),
        "Redis server log": _redis_log(dep),
    }
    # And no secret is in any of them
    leaks = {name: _leaks(haystack, secrets) for name, haystack in haystacks.items()}
    assert not any(leaks.values()), {name: found[:5] for name, found in leaks.items() if found}


# -- the haystacks, each shown to hold what it should (a search of nothing finds nothing) -------------

def _redis_during(sampler: RedisSampler, flaky: dict) -> list[bytes]:
    seen = sorted(sampler.seen)
    assert sampler.rounds >= 10 and not sampler.errors, (sampler.rounds, sampler.errors[:3])
    assert b"unacked" in seen, "no unacked message seen: the sampler missed the running tasks"
    assert any(b"tinabs.snapshot" in item and flaky["uuid"].encode() in item for item in seen), \
        "no task message (with its context) seen in a queue or the unacked hash"
    return seen


def _redis_after(dep, flaky: dict) -> list[bytes]:
    dump = _every_db(dep.redis_server)
    assert any(flaky["uuid"].encode() in item for item in dump), "the job's own state is not in the scan"
    assert any(item.startswith(b"celery-task-meta-") for item in dump), "Celery's results are not in the scan"
    assert any(b"StageFailed" in item or b"HANDLE_INVALID" in item for item in dump), "no stored failure"
    return dump


def _events(dep, flaky: dict) -> list[bytes]:
    events = dep.recorder.events()
    kinds = {e["type"] for e in events}
    assert {"task-sent", "task-received", "task-succeeded", "task-failed", "task-retried"} <= kinds, kinds
    assert any(e["type"] == "task-received" and flaky["uuid"] in str(e.get("args")) for e in events)
    assert any(e["type"] == "task-failed" and "HANDLE_INVALID" in str(e.get("exception")) for e in events)
    return [json.dumps(e).encode() for e in events]


def _flower(dep, flaky: dict) -> list[bytes]:
    flower = dep.flower
    # Flower answers nothing without its password, or with a wrong one
    for path in ("/", "/api/tasks", "/api/workers", "/tasks"):
        assert flower.get(path, auth=False)[0] == 401, path
    assert flower.get("/api/tasks", password="not-" + FLOWER_PASSWORD)[0] == 401
    bodies = []
    for path in ("/api/tasks", "/api/workers?refresh=1",
                 *(f"/api/workers?refresh=1&workername={w.name}@{os.uname().nodename}" for w in dep.workers)):
        status, body = flower.get(path)
        assert status == 200, (path, status, body[:300])
        bodies.append(body)
    tasks = json.loads(bodies[0])
    assert any(t["name"] == "tinabs.snapshot" and flaky["uuid"] in str(t.get("args")) for t in tasks.values())
    assert any(t["state"] == "FAILURE" and t.get("traceback") for t in tasks.values()), "no failed task seen"
    failed = next(tid for tid, t in tasks.items() if t["state"] == "FAILURE")
    status, info = flower.get(f"/api/task/info/{failed}")
    assert status == 200
    workers = json.loads(bodies[1])
    assert {f"{w.name}@{os.uname().nodename}" for w in dep.workers} <= set(workers), list(workers)
    assert all("broker_url" in w.get("conf", {}) for w in workers.values()), "no worker conf in Flower"
    log = flower.log_path.read_bytes()
    assert b"Broker:" in log
    return [*bodies, info, log]


def _worker_logs(dep) -> list[bytes]:
    logs = [w.log_path.read_bytes() for w in dep.workers]
    for worker, log in zip(dep.workers, logs):
        assert b"tinabs." in log and b"transport:" in log, worker.log_path  # its banner and task lines
    assert b"DEBUG" in logs[0]
    return logs


def _cli_outputs(dep, backup: subprocess.CompletedProcess, job: dict) -> list[bytes]:
    runs = [("status", job["id"], "--json"), ("status", job["id"]), ("status", "--json"), ("status",),
            ("list", "--json"), ("list",), ("check-config",)]
    procs = {args: dep.cli(*args) for args in runs}
    for args, proc in procs.items():
        assert proc.stdout, (args, proc.stderr)
    check = procs[("check-config",)].stdout
    assert "secret `pool-a`" in check and "SESSION_AUTHENTICATION_FAILED" in check, check
    assert job["id"] in procs[("status", job["id"])].stdout
    return [(p.stdout + p.stderr).encode() for p in (backup, *procs.values())]


def _redis_log(dep) -> list[bytes]:
    log = dep.redis_server.log_path.read_bytes()
    assert b"Ready to accept connections" in log
    return [log]


def _destination(dep) -> list[bytes]:
    files = dep.files()
    assert any(f.suffix == ".json" for f in files) and any(f.suffix == ".xva" for f in files), files
    return [f.read_bytes() for f in files]


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
