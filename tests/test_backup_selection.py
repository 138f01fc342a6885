"""Which VMs `tinabs backup` picks: by tag, name, uuid, pool or all.

Given two simulated pools whose inventory has a duplicate VM name per pool,
and decoys (a template, a snapshot, a control domain and two VMs of tinabs'
own) carrying the tag under test, when a selector is run on real workers,
then exactly the VMs a user means are backed up, each by uuid, and selectors
that match nothing or name an unknown pool fail with a clear message.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers.pool_checks import RUN

DEPLOYMENT_SIM_ARGS = ("--pools", "2", "--vms-per-pool", "5", "--disk-mib", "4")
TAG = "prod"
DECOY_ONLY_TAG = "decoys-only"


def _is_backupable(rec: dict) -> bool:
    """What a user means by 'a VM': not a template, snapshot, dom0 or one of tinabs' own VMs."""
    return not (rec["is_a_template"] or rec["is_a_snapshot"] or rec["is_control_domain"]
                or rec["name_label"].startswith("[tinabs]") or RUN in rec["other_config"])


def _expected(state: dict, pools=None, pick=lambda rec: True) -> set[tuple[str, str]]:
    return {(pool, rec["uuid"]) for pool, classes in state["pools"].items() if pools is None or pool in pools
            for rec in classes["VM"].values() if _is_backupable(rec) and pick(rec)}


def _picked(job: dict) -> set[tuple[str, str]]:
    return {(r["pool"], r["vm_uuid"]) for r in job["runs"]}


def _vm_ref(x, pred) -> str:
    return next(ref for ref, rec in x.VM.get_all_records().items() if pred(rec))


@pytest.fixture(scope="module")
def decoys(deployment):
    """Tag a template, a snapshot, a control domain and two tinabs-owned VMs in every pool.

    Each of them carries TAG and DECOY_ONLY_TAG, so a selector that forgets a
    skip rule picks it up.
    """
    for pool in deployment.sim.pools:
        session = deployment.sim.session(pool["name"])
        x = session.xenapi
        try:
            halted = _vm_ref(x, lambda r: not (r["is_a_template"] or r["is_a_snapshot"] or r["is_control_domain"])
                             and r["power_state"] == "Halted")
            own_named = x.VM.clone(halted, f"[tinabs] {x.VM.get_name_label(halted)} backup-vm 0123456789ab")
            own_marked = x.VM.clone(halted, "restore-check")
            x.VM.add_to_other_config(own_marked, RUN, "0123456789ab")
            refs = [_vm_ref(x, lambda r: r["is_a_template"]), _vm_ref(x, lambda r: r["is_a_snapshot"]),
                    _vm_ref(x, lambda r: r["is_control_domain"]), own_named, own_marked]
            for ref in refs:
                for tag in (TAG, DECOY_ONLY_TAG):
                    if tag not in x.VM.get_tags(ref):
                        x.VM.add_tags(ref, tag)
        finally:
            session.xenapi.session.logout()
    return deployment


def _assert_all_succeeded(status: int, job: dict) -> None:
    assert status == 0, job
    assert job["runs"] and all(r["state"] == "succeeded" for r in job["runs"]), job["runs"]


def test_tag_picks_every_carrier_in_every_pool_and_no_decoy(decoys):
    dep = decoys
    # Given the tag on real VMs of both pools and on every kind of decoy
    state = dep.sim.state()
    expected = _expected(state, pick=lambda rec: TAG in rec["tags"])
    assert {pool for pool, _ in expected} == {"pool-a", "pool-b"}
    tagged_decoys = [rec for classes in state["pools"].values() for rec in classes["VM"].values()
                     if TAG in rec["tags"] and not _is_backupable(rec)]
    assert len(tagged_decoys) >= 5 * len(state["pools"])
    # When backing up by tag
    status, job = dep.backup("--tag", TAG)
    # Then exactly the tagged VMs of every pool are backed up, none of the decoys
    _assert_all_succeeded(status, job)
    assert _picked(job) == expected
    assert len(job["runs"]) == len(expected)


def test_a_tag_only_decoys_carry_matches_nothing(decoys):
    dep = decoys
    # Given a tag carried only by templates, snapshots, control domains and tinabs' own VMs
    # When backing up by that tag
    status, job = dep.backup("--tag", DECOY_ONLY_TAG)
    # Then nothing is backed up: exit 3, and the user is told why
    assert status == 3, job
    assert job["runs"] == [] and job["done"]
    proc = dep.cli("backup", "--tag", DECOY_ONLY_TAG, "--wait")
    assert proc.returncode == 3
    assert "no VM matched" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert any(f"no VM matches tag {DECOY_ONLY_TAG}" in note for note in job["notes"]), job["notes"]


def test_duplicate_name_backs_up_each_vm_by_uuid(decoys):
    dep = decoys
    # Given two VMs with the same name in each pool
    state = dep.sim.state()
    name = "web-01"
    expected = _expected(state, pick=lambda rec: rec["name_label"] == name)
    for pool in ("pool-a", "pool-b"):
        assert len([u for p, u in expected if p == pool]) == 2
    # When backing up by that name
    status, job = dep.backup("--vm", name)
    # Then both VMs of each pool are backed up, separately, each into its own folder
    _assert_all_succeeded(status, job)
    assert _picked(job) == expected
    assert len({Path(r["path"]).parent for r in job["runs"]}) == 4
    # And the job's notes say so, per pool, with both uuids
    for pool in ("pool-a", "pool-b"):
        note = next((n for n in job["notes"] if n.startswith(f"pool `{pool}`") and name in n), None)
        assert note is not None, job["notes"]
        for _, uuid in [e for e in expected if e[0] == pool]:
            assert uuid in note


def test_uuid_picks_exactly_that_vm(decoys):
    dep = decoys
    # Given the uuid of the second of two same-named VMs in pool-b
    state = dep.sim.state()
    twins = sorted((rec for rec in state["pools"]["pool-b"]["VM"].values()
                    if _is_backupable(rec) and rec["name_label"] == "web-01"), key=lambda r: r["uuid"])
    target = twins[1]["uuid"]
    # When backing up by uuid
    status, job = dep.backup("--vm", target)
    # Then only that VM is backed up (not its namesake, not anything in pool-a)
    _assert_all_succeeded(status, job)
    assert _picked(job) == {("pool-b", target)}
    assert not any("named" in note for note in job["notes"]), job["notes"]


def test_pool_restricts_the_selection(decoys):
    dep = decoys
    # Given the tag in both pools
    expected = _expected(dep.sim.state(), pools={"pool-b"}, pick=lambda rec: TAG in rec["tags"])
    assert expected
    # When backing up by tag on pool-b only
    status, job = dep.backup("--tag", TAG, "--pool", "pool-b")
    # Then only pool-b's tagged VMs are backed up
    _assert_all_succeeded(status, job)
    assert job["pools"] == ["pool-b"]
    assert _picked(job) == expected


def test_all_picks_every_vm_of_every_pool_and_no_decoy(decoys):
    dep = decoys
    expected = _expected(dep.sim.state())
    # When backing up everything
    status, job = dep.backup("--all")
    # Then every real VM of both pools is backed up, none of the decoys
    _assert_all_succeeded(status, job)
    assert _picked(job) == expected
    names = {r["vm_name"] for r in job["runs"]}
    assert "restore-check" not in names and not any(n.startswith("[tinabs]") for n in names)


@pytest.mark.parametrize("selector", [("--tag", "no-such-tag"), ("--vm", "no-such-vm")])
def test_selector_matching_nothing_exits_3(deployment, selector):
    # When a tag or VM matches nothing on any pool
    status, job = deployment.backup(*selector)
    # Then the exit status is 3, no run exists, and each pool's note says what matched nothing
    assert status == 3, job
    assert job["runs"] == []
    for pool in ("pool-a", "pool-b"):
        assert any(n.startswith(f"pool `{pool}`: no VM matches") and selector[1] in n for n in job["notes"])


def test_a_pool_named_twice_is_planned_once(deployment):
    dep = deployment
    vm = next(r for r in dep.sim.state()["pools"]["pool-a"]["VM"].values()
              if _is_backupable(r) and r["name_label"] == "db-01")
    # When the same pool is given twice
    status, job = dep.backup("--vm", vm["uuid"], "--pool", "pool-a", "--pool", "pool-a", "--timeout", "40")
    # Then it is planned once: one plan, one run, no doubled notes
    _assert_all_succeeded(status, job)
    assert job["pools"] == ["pool-a"]
    assert _picked(job) == {("pool-a", vm["uuid"])}
    assert len(job["notes"]) == len(set(job["notes"])), job["notes"]


@pytest.mark.parametrize("selector", [("--tag", ""), ("--vm", "  ")], ids=["empty-tag", "blank-vm"])
def test_an_empty_selector_is_refused_not_widened_to_all(deployment, selector):
    dep = deployment
    jobs_before = dep.redis.zcard("tinabs:jobs")
    # When --tag or --vm is given an empty value (say, an unset shell variable)
    proc = dep.cli("backup", *selector, "--json")
    # Then nothing is queued (it must not mean --all): exit 2 with one clear line
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert dep.redis.zcard("tinabs:jobs") == jobs_before
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"{selector[0]} needs a non-empty value" in proc.stderr


def test_unknown_pool_is_a_clear_error(deployment):
    # When a pool that is not configured is named
    proc = deployment.cli("backup", "--all", "--pool", "pool-zz")
    # Then the exit status is 2 with one clear line naming it and the configured pools
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "unknown pool `pool-zz`" in lines[0] and "pool-a, pool-b" in lines[0]
