"""`tinabs bases`, `tinabs bases forget` and the janitor's part for bases, end to end: the simulator
over HTTP, a private Redis, a real worker serving pool-a and pool-b (none serves pool-c) and the
real CLI.

Bases are made as the backup's cleanup makes them: a ``VDI.snapshot`` of a VM's system disk
through XenAPI, promoted with ``xapi.bases.promote``.  Every test starts with no base on the
pools, and makes its own VMs (clones) when it deletes or renames one.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from helpers import xapi_http as H
from helpers.deployment import Deployment
from helpers.pool_checks import bases as bases_on
from helpers.waiting import wait_for
from tinabs_tasks.runs import keys
from tinabs_tasks.runs.human import human_bytes
from tinabs_tasks.runs.store import JobStore
from tinabs_tasks.xapi import bases

SIM_ARGS = ("--pools", "3", "--vms-per-pool", "3", "--disk-mib", "2")
SERVED = ["tinabs", "tinabs.pool.pool-a", "tinabs.pool.pool-b"]  # no worker for pool-c
BOTH = ("--pool", "pool-a", "--pool", "pool-b")
STAMP = "20261207T000000Z"
OLD = "2020-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def dep(redis_server, tmp_path_factory):
    d = Deployment(tmp_path_factory.mktemp("bases"), redis_server, SIM_ARGS)
    try:
        d.start_worker("w1", queues=SERVED)
        yield d
    finally:
        d.stop()


class Pool:
    """A XenAPI session on one simulated pool, for making and checking bases as production does."""

    def __init__(self, dep, pool: str):
        self.dep, self.name = dep, pool
        self.session = dep.sim.session(pool)
        self.x = self.session.xenapi

    def close(self) -> None:
        self.x.session.logout()

    def vms(self) -> list[dict]:
        """The pool's own VMs (not the tests' clones), always in the same order."""
        return sorted((r for r in H.user_vms(self.x).values() if not r["name_label"].startswith("test-")),
                      key=lambda r: r["uuid"])

    def clone(self, name: str) -> dict:
        """A VM of the test's own (the pool's inventory stays as it is), halted."""
        ref = H.own_vm(self.x, name, self.x.VM.get_by_uuid(self.vms()[0]["uuid"]))
        return self.x.VM.get_record(ref)

    def base(self, vm: dict, stamp: str = STAMP, run: str = "abc000000001") -> str:
        """A base of ``vm`` for backup ``<stamp>-<run>``, as the cleanup stage promotes one; its uuid."""
        ref = self.x.VM.get_by_uuid(vm["uuid"])
        system = self.x.VBD.get_VDI(H.system_vbd(self.x, ref))
        snap = self.x.VDI.snapshot(system, {})
        ctx = {"vm": {"uuid": vm["uuid"], "name": vm["name_label"]}, "stamp": stamp, "run": run}
        bases.promote(self.x, snap, ctx, f"{stamp}-{run}", "repo", chain=0, repository="r1")
        return self.x.VDI.get_uuid(snap)

    def set_since(self, base_uuid: str, since: str) -> None:
        ref = self.x.VDI.get_by_uuid(base_uuid)
        other = self.x.VDI.get_other_config(ref)
        self.x.VDI.set_other_config(ref, {**other, "tinabs:created": since})

    def destroy_vm(self, vm: dict) -> None:
        """The VM is deleted from the pool (its disks stay, as `xe vm-destroy` leaves them)."""
        ref = self.x.VM.get_by_uuid(vm["uuid"])
        if self.x.VM.get_power_state(ref) != "Halted":
            self.x.VM.hard_shutdown(ref)
        self.x.VM.destroy(ref)


@pytest.fixture
def pools(dep):
    """pool-a and pool-b with no base on them (whatever an earlier test left)."""
    opened = {p: Pool(dep, p) for p in ("pool-a", "pool-b")}
    for p in opened.values():
        for b in bases.on_pool(p.x):
            bases.destroy(p.x, b)
    assert bases_on(dep.sim.state()) == []
    yield opened
    for p in opened.values():
        p.close()


def on_pools(dep) -> dict[str, dict]:
    """uuid -> the base, as the simulator holds it (pool, vm, backup)."""
    return {b["uuid"]: b for b in bases_on(dep.sim.state())}


def cli_json(dep, *args, code: int = 0, timeout: float = 120) -> dict:
    proc = dep.cli(*args, "--json", timeout=timeout)
    assert proc.returncode == code, f"exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


def pool_task(dep, name: str, pool: str, *args):
    """A task sent straight to the pool's queue, as another producer could send it; its answer."""
    from celery import Celery
    app = Celery("test", broker=dep.redis_url, backend=dep.redis_url)
    try:
        return app.send_task(name, args=(pool, *args), queue=f"tinabs.pool.{pool}").get(timeout=60)
    finally:
        app.close()


def one_line_error(proc, code: int, *says: str) -> None:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for text in says:
        assert text in proc.stderr, proc.stderr


# -- tinabs bases ------------------------------------------------------------------------------------
def test_bases_lists_every_base_with_its_vm_size_and_totals(dep, pools):
    a, b = pools["pool-a"], pools["pool-b"]
    # Given a base of a living VM on pool-a and one on pool-b, and the base of a VM since deleted
    living_a, living_b = a.vms()[0], b.vms()[0]
    gone = a.clone("test-gone-list")
    made = {a.base(living_a): ("pool-a", living_a), b.base(living_b, stamp="20261208T000000Z"): ("pool-b", living_b),
            a.base(gone): ("pool-a", gone)}
    a.destroy_vm(gone)
    sizes = {rec["uuid"]: int(rec["physical_utilisation"]) for p in ("pool-a", "pool-b")
             for rec in dep.sim.state()["pools"][p]["VDI"].values() if rec["uuid"] in made}
    assert all(sizes[u] > 0 for u in made), sizes

    # When `tinabs bases --json` runs for both pools
    out = cli_json(dep, "bases", *BOTH)
    # Then it lists exactly those bases, each with its VM (a deleted one's name is null), backup, mode, age, size
    rows = {r["uuid"]: r for r in out["bases"]}
    assert set(rows) == set(made) and out["errors"] == []
    for uuid, (pool, vm) in made.items():
        r = rows[uuid]
        deleted = vm is gone
        assert (r["pool"], r["vm_uuid"], r["vm_exists"]) == (pool, vm["uuid"], not deleted), r
        assert r["vm_name"] == (None if deleted else vm["name_label"]), r
        assert r["mode"] == "repo" and r["chain"] == 0 and r["repository"] == "r1", r
        assert r["backup_id"] == ("20261208T000000Z" if pool == "pool-b" else STAMP) + "-abc000000001"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["since"]), r
        assert r["physical_utilisation"] == sizes[uuid] and "ref" not in r, r
    assert out["summary"] == {"bases": 3, "pools": 2, "pools_asked": 2, "bytes": sum(sizes.values())}

    # And the table says the same, a deleted VM as "(deleted)", sizes human-readable, totals last
    proc = dep.cli("bases", *BOTH, check=True)
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["POOL", "VM", "VM"] and len(lines) == 5, proc.stdout
    by_uuid = {u: next(line for line in lines if u in line) for u in made}
    assert "(deleted)" in by_uuid[next(u for u, (_, vm) in made.items() if vm is gone)]
    assert living_a["name_label"] in by_uuid[next(u for u, (_, vm) in made.items() if vm is living_a)]
    for uuid in made:
        assert human_bytes(sizes[uuid]) in by_uuid[uuid]
    assert lines[-1] == f"3 base(s) on 2 pool(s), {human_bytes(sum(sizes.values()))} on the pools' SRs in all"

    # And --pool limits it to that pool
    only_b = cli_json(dep, "bases", "--pool", "pool-b")
    assert [r["uuid"] for r in only_b["bases"]] == [u for u, (p, _) in made.items() if p == "pool-b"]


def test_no_bases_is_said_plainly(dep, pools):
    proc = dep.cli("bases", *BOTH, check=True)
    assert proc.stdout.strip() == "0 base(s) on 0 pool(s), 0 B on the pools' SRs in all"


def test_a_pool_no_worker_serves_is_reported_within_the_timeout(dep, pools):
    a = pools["pool-a"]
    mine = a.base(a.vms()[0])
    # When `tinabs bases` asks every pool, pool-c's queue having no worker
    began = time.monotonic()
    proc = dep.cli("bases", "--timeout", "3")
    took = time.monotonic() - began
    # Then it says which pool and why, still lists the others' bases, and exits 1, soon after the timeout
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert took < 20, took
    assert "ERROR  pool pool-c: no worker answered within 3s (is a worker serving queue tinabs.pool.pool-c " \
           "running?)" in proc.stdout, proc.stdout
    assert mine in proc.stdout and "pool-a" in proc.stdout
    assert proc.stdout.splitlines()[-1].endswith("(1 of 3 pool(s) could not be asked: not counted)"), proc.stdout
    out = cli_json(dep, "bases", "--timeout", "3", code=1)
    assert [e["pool"] for e in out["errors"]] == ["pool-c"] and [r["uuid"] for r in out["bases"]] == [mine]


def test_an_unreachable_pool_is_reported_by_name(dep, pools):
    a = pools["pool-a"]
    mine = a.base(a.vms()[0])
    status, body = dep.sim.control_call("POST", "/sim/pools/pool-b/offline", {"seconds": 6})
    assert status == 200, body
    try:
        out = cli_json(dep, "bases", *BOTH, "--timeout", "30", code=1)
        (err,) = out["errors"]
        assert err["pool"] == "pool-b" and "cannot reach the pool" in err["error"], err
        assert [r["uuid"] for r in out["bases"]] == [mine]
    finally:  # the pool comes back by itself: the next tests need it
        wait_for(lambda: dep.cli("bases", "--pool", "pool-b", "--timeout", "10").returncode == 0, 30,
                 "pool-b back online")


def test_bad_options_are_user_mistakes(dep):
    for args, says in ((("bases", "--pool", "nope"), "unknown pool"),
                       (("bases", "--timeout", "0"), "--timeout must be"),
                       (("bases", "forget", "  ", "--pool", "pool-a"), "VM must be")):
        one_line_error(dep.cli(*args), 2, says)
    # the broker away: one line, exit 2, before anything is sent
    env = {**dep.env, "TINABS_BROKER_URL": "redis://127.0.0.1:1/0"}
    for args in (("bases",), ("bases", "forget", "x")):
        proc = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", *args], env=env, capture_output=True,
                              text=True, timeout=60)
        one_line_error(proc, 2, "cannot reach the broker at redis://127.0.0.1:1/0")


# -- tinabs bases forget -----------------------------------------------------------------------------
def test_forget_by_name_dry_run_then_for_real(dep, pools):
    a, b = pools["pool-a"], pools["pool-b"]
    vm = a.clone("test-forget-name")
    first, second = a.base(vm), a.base(vm, stamp="20261208T000000Z")
    other, neighbour = b.base(b.vms()[0]), a.base(a.vms()[0])  # other VMs' bases, on both pools
    # When `tinabs bases forget NAME --dry-run` runs: it says what it would remove and removes nothing
    dry = dep.cli("bases", "forget", "test-forget-name", *BOTH, "--dry-run", check=True)
    assert dry.stdout.count("would remove") == 2 and first in dry.stdout and second in dry.stdout, dry.stdout
    assert "dry run: nothing removed" in dry.stdout
    assert set(on_pools(dep)) == {first, second, other, neighbour}
    # When it runs for real: the VM's bases are gone, and it says the next backup is a full one
    proc = dep.cli("bases", "forget", "test-forget-name", *BOTH, check=True)
    assert proc.stdout.count("removed  VM test-forget-name") == 2, proc.stdout
    assert proc.stdout.splitlines()[-1] == f"VM test-forget-name ({vm['uuid']}) on pool pool-a: its next backup " \
                                           "will be a full one"
    assert set(on_pools(dep)) == {other, neighbour}
    # And forgetting it again finds nothing to forget, and says so
    again = dep.cli("bases", "forget", "test-forget-name", "--pool", "pool-a", check=True)
    assert "has no base: nothing to forget" in again.stdout, again.stdout


def test_forget_by_uuid_and_a_deleted_vm_by_uuid(dep, pools):
    a, b = pools["pool-a"], pools["pool-b"]
    living = b.vms()[1]
    gone = a.clone("test-forget-gone")
    kept, living_base, gone_base = a.base(a.vms()[0]), b.base(living), a.base(gone)
    a.destroy_vm(gone)
    # By uuid (upper case, as someone may paste it), across both pools: the VM's base only
    out = cli_json(dep, "bases", "forget", living["uuid"].upper(), *BOTH)
    assert [r["uuid"] for r in out["removed"]] == [living_base] and out["errors"] == []
    assert out["vm"] == {"uuid": living["uuid"], "name": living["name_label"], "exists": True}
    assert out["pool"] == "pool-b" and "its next backup will be a full one" in out["outcome"]
    # A VM that no longer exists: by its uuid, named "(deleted)"
    proc = dep.cli("bases", "forget", gone["uuid"], *BOTH, check=True)
    assert f"removed  VM (deleted) ({gone['uuid']}) on pool pool-a: base {gone_base}" in proc.stdout, proc.stdout
    assert set(on_pools(dep)) == {kept}


def test_forget_a_name_of_several_vms_or_of_none_is_an_error(dep, pools):
    a, b = pools["pool-a"], pools["pool-b"]
    twins = [a.clone("test-twin"), a.clone("test-twin")]
    made = {a.base(twins[0]), a.base(twins[1])}
    # Two VMs of pool-a have the name: both named with their uuids, nothing removed
    proc = dep.cli("bases", "forget", "test-twin", "--pool", "pool-a")
    one_line_error(proc, 2, "`test-twin` names 2 VMs", *(f"test-twin {t['uuid']} on pool pool-a" for t in twins))
    assert "--pool" not in proc.stderr
    # (and the task itself, asked by that name, destroys nothing either)
    said = pool_task(dep, "tinabs.bases_forget", "pool-a", "test-twin", False)
    assert said["removed"] == [] and sorted(v["uuid"] for v in said["vms"]) == sorted(t["uuid"] for t in twins)
    # The same name on two pools: the uuids and pools, and the hint to give --pool
    across = b.clone("test-across")
    made |= {a.base(a.clone("test-across")), b.base(across)}
    proc = dep.cli("bases", "forget", "test-across", *BOTH)
    one_line_error(proc, 2, "`test-across` names 2 VMs", f"test-across {across['uuid']} on pool pool-b",
                   "give the VM's uuid or --pool")
    assert set(on_pools(dep)) == made
    # A name or uuid no pool knows: a clear error, exit 2
    one_line_error(dep.cli("bases", "forget", "no-such-vm", *BOTH), 2, "no VM `no-such-vm` on pool(s) pool-a, pool-b",
                   "`tinabs bases` lists")
    one_line_error(dep.cli("bases", "forget", "00000000-0000-0000-0000-000000000000", *BOTH), 2, "no VM")
    assert set(on_pools(dep)) == made


def test_forget_by_name_when_a_pool_cannot_be_asked_removes_nothing(dep, pools):
    a = pools["pool-a"]
    vm = a.clone("test-forget-unasked")
    mine = a.base(vm)
    # pool-c has no worker: it may have a VM of that name too
    proc = dep.cli("bases", "forget", "test-forget-unasked", "--timeout", "3")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "ERROR  pool pool-c: no worker answered within 3s" in proc.stdout
    assert "nothing removed" in proc.stdout and "--pool pool-a" in proc.stdout, proc.stdout
    assert set(on_pools(dep)) == {mine}
    # by uuid there is no doubt which VM it is
    out = cli_json(dep, "bases", "forget", vm["uuid"], "--timeout", "3")
    assert [r["uuid"] for r in out["removed"]] == [mine] and on_pools(dep) == {}


def test_forget_leaves_a_vm_being_backed_up_alone(dep, pools):
    a = pools["pool-a"]
    vm = a.clone("test-forget-busy")
    mine = a.base(vm)
    run = "b5b5b5b5b5b5"
    # Given a run of the VM that is active and holds the VM's lock (as plan takes it)
    JobStore(dep.redis).create_run(run, {"job": "j", "pool": "pool-a", "vm_uuid": vm["uuid"], "vm_name": "v"})
    lock = keys.lease(f"vm:pool-a:{vm['uuid']}")
    dep.redis.set(lock, run, ex=600)
    try:
        proc = dep.cli("bases", "forget", vm["uuid"], "--pool", "pool-a")
        assert proc.returncode == 1 and f"a backup of this VM is running now (run {run})" in proc.stdout, proc.stdout
        assert set(on_pools(dep)) == {mine}
        dry = dep.cli("bases", "forget", vm["uuid"], "--pool", "pool-a", "--dry-run", check=True)
        assert f"a backup of it is running now (run {run})" in dry.stdout, dry.stdout
    finally:
        dep.redis.delete(lock)
    # Once the lock is gone, it is forgotten
    dep.cli("bases", "forget", vm["uuid"], "--pool", "pool-a", check=True)
    assert on_pools(dep) == {}


# -- the janitor ---------------------------------------------------------------------------------------
def _janitor(dep, *args) -> dict:
    (res,) = cli_json(dep, "janitor", "--pool", "pool-a", *args)["results"]
    assert res["errors"] == [], res
    return res


def test_janitor_removes_a_deleted_vms_base_only_after_the_maximum_age(dep, pools):
    a = pools["pool-a"]
    living = a.vms()[0]
    gone = a.clone("test-janitor-gone")
    only, orphan = a.base(living), a.base(gone)
    a.destroy_vm(gone)
    # With a maximum age the base has not reached: listed as left, with why; kept
    for dry in (("--dry-run",), ()):
        res = _janitor(dep, "--max-age-h", "1000", *dry)
        assert [o for o in res["objects"] if o["uuid"] in (only, orphan)] == []
        (left,) = [s for s in res["skipped"] if s["uuid"] == orphan]
        assert "its VM no longer exists on the pool" in left["why"] and "younger" in left["why"], left
        assert only not in {s["uuid"] for s in res["skipped"]}
        assert set(on_pools(dep)) == {only, orphan}
    # With no maximum age: the deleted VM's base goes, said to be a base and why; the living VM's only base stays
    text = dep.cli("janitor", "--pool", "pool-a", "--max-age-h", "0", "--dry-run", check=True).stdout
    assert f"would remove  pool-a  base VDI {orphan}" in text and f"of VM {gone['uuid']}: its VM no longer exists " \
           "on the pool" in text, text
    res = _janitor(dep, "--max-age-h", "0")
    (removed,) = [o for o in res["objects"] if o["uuid"] in (only, orphan)]
    assert (removed["uuid"], removed["role"], removed["vm"]) == (orphan, "base", gone["uuid"]), removed
    assert removed["reason"] == "its VM no longer exists on the pool" and removed["base"] == f"{STAMP}-abc000000001"
    assert set(on_pools(dep)) == {only}
    # And again: a living VM's only base is never the janitor's
    res = _janitor(dep, "--max-age-h", "0")
    assert only not in {o["uuid"] for o in res["objects"]} | {s["uuid"] for s in res["skipped"]}
    assert set(on_pools(dep)) == {only}


def test_janitor_keeps_only_the_newest_of_a_vms_bases(dep, pools):
    a = pools["pool-a"]
    vm = a.vms()[1]
    older, newer = a.base(vm, stamp="20261207T000000Z"), a.base(vm, stamp="20261208T000000Z")
    res = _janitor(dep, "--max-age-h", "1000")
    assert set(on_pools(dep)) == {older, newer}
    assert "a newer base" in next(s["why"] for s in res["skipped"] if s["uuid"] == older)
    res = _janitor(dep, "--max-age-h", "0")
    (removed,) = [o for o in res["objects"] if o.get("role") == "base"]
    assert removed["uuid"] == older and "20261208T000000Z-abc000000001" in removed["reason"], removed
    assert set(on_pools(dep)) == {newer}


def test_janitor_weighs_bases_by_their_since_with_the_configured_age(dep, pools):
    """The newest base is the one made last (``tinabs:created``), and [janitor] max_age_h (24 h by
    default) applies to it: a deleted VM's base made just now stays."""
    a = pools["pool-a"]
    vm = a.vms()[2]
    last_made, made_earlier = a.base(vm, stamp="20261201T000000Z"), a.base(vm, stamp="20261202T000000Z")
    a.set_since(made_earlier, OLD)
    a.set_since(last_made, "2020-01-02T00:00:00Z")
    gone_old, gone_new = a.clone("test-janitor-old"), a.clone("test-janitor-new")
    old_orphan, new_orphan = a.base(gone_old), a.base(gone_new)
    a.set_since(old_orphan, OLD)
    a.destroy_vm(gone_old)
    a.destroy_vm(gone_new)
    res = _janitor(dep)
    assert {o["uuid"] for o in res["objects"] if o.get("role") == "base"} == {made_earlier, old_orphan}
    assert set(on_pools(dep)) == {last_made, new_orphan}
