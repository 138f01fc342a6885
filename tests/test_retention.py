"""Retention policy (pure): restic-like keep_last / daily / weekly / monthly per VM, with
fabricated timestamps; bad backups never count; the newest good backup is never deleted."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from helpers.pool_checks import bases

from tinabs_tasks.storage import catalog
from tinabs_tasks.config import model as config
from tinabs_tasks.storage import retention
from tinabs_tasks.storage.retention import Policy

UTC = dt.timezone.utc


def bk(when: str, verified=None, status=catalog.COMPLETE, vm="u1", pool="p", mode="export") -> catalog.Backup:
    t = dt.datetime.strptime(when, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    stamp = t.strftime("%Y%m%dT%H%M%SZ")
    return catalog.Backup(vm_uuid=vm, vm_name="vm-" + vm, pool=pool, mode=mode, created=t, size=1, sha256="x",
                          verified=verified, path=f"/d/{pool}/{vm}/{stamp}-r.xva",
                          manifest_path=f"/d/{pool}/{vm}/{stamp}-r.json", run="r" + stamp, job="j", status=status)


def kept(decisions) -> list[str]:
    return sorted(d.backup.created.strftime("%Y-%m-%d %H:%M") for d in decisions if d.keep)


def deleted(decisions) -> list[str]:
    return sorted(d.backup.created.strftime("%Y-%m-%d %H:%M") for d in decisions if not d.keep)


def hourly(days: list[str], hours=(1, 12, 23)) -> list[catalog.Backup]:
    return [bk(f"{d} {h:02d}:00") for d in days for h in hours]


def test_no_policy_keeps_everything():
    items = hourly(["2026-01-01", "2026-01-02"])
    decisions = retention.plan_vm(items, Policy())
    assert all(d.keep for d in decisions) and len(decisions) == 6


def test_keep_last():
    items = hourly(["2026-01-01", "2026-01-02"])
    decisions = retention.plan_vm(items, Policy(keep_last=2))
    assert kept(decisions) == ["2026-01-02 12:00", "2026-01-02 23:00"]
    assert len(deleted(decisions)) == 4


def test_keep_daily_keeps_newest_of_each_day_with_backups():
    # a gap (01-03 has no backup) does not use up a slot, as in restic
    items = hourly(["2026-01-01", "2026-01-02", "2026-01-04", "2026-01-05"])
    decisions = retention.plan_vm(items, Policy(keep_daily=3))
    assert kept(decisions) == ["2026-01-02 23:00", "2026-01-04 23:00", "2026-01-05 23:00"]


def test_keep_weekly_uses_iso_weeks():
    # 2025-12-29 (Mon) .. 2026-01-04 (Sun) is ISO week 2026-W01; 2026-01-05 starts W02
    items = [bk("2025-12-28 10:00"), bk("2025-12-29 10:00"), bk("2026-01-03 10:00"), bk("2026-01-04 10:00"),
             bk("2026-01-05 10:00"), bk("2026-01-07 10:00")]
    decisions = retention.plan_vm(items, Policy(keep_weekly=2))
    assert kept(decisions) == ["2026-01-04 10:00", "2026-01-07 10:00"]
    decisions = retention.plan_vm(items, Policy(keep_weekly=5))
    assert kept(decisions) == ["2025-12-28 10:00", "2026-01-04 10:00", "2026-01-07 10:00"]
    reasons = {d.backup.created.day: d.reasons for d in decisions if d.keep}
    assert "weekly 2026-W01" in reasons[4] and "weekly 2025-W52" in reasons[28]


def test_keep_monthly():
    items = [bk("2025-11-30 10:00"), bk("2025-12-01 10:00"), bk("2025-12-31 22:00"), bk("2026-01-15 10:00"),
             bk("2026-02-01 00:00"), bk("2026-02-20 00:00")]
    decisions = retention.plan_vm(items, Policy(keep_monthly=3))
    assert kept(decisions) == ["2025-12-31 22:00", "2026-01-15 10:00", "2026-02-20 00:00"]


def test_rules_combine_as_a_union():
    items = hourly(["2026-01-01", "2026-01-02", "2026-01-03"]) + [bk("2025-12-15 08:00")]
    decisions = retention.plan_vm(items, Policy(keep_last=2, keep_daily=2, keep_monthly=2))
    assert kept(decisions) == ["2025-12-15 08:00", "2026-01-02 23:00", "2026-01-03 12:00", "2026-01-03 23:00"]
    newest = next(d for d in decisions if d.backup.created.strftime("%d %H") == "03 23")
    assert {"last 2", "daily 2026-01-03", "monthly 2026-01", "newest good backup"} <= set(newest.reasons)


def test_order_of_input_does_not_matter():
    items = hourly(["2026-01-01", "2026-01-02"])
    assert kept(retention.plan_vm(items[::-1], Policy(keep_daily=1))) == ["2026-01-02 23:00"]


@pytest.mark.parametrize("policy", [Policy(keep_weekly=1), Policy(keep_monthly=1), Policy(keep_last=1)])
def test_the_newest_good_backup_is_never_deleted(policy):
    items = [bk("2026-01-01 10:00"), bk("2026-01-02 10:00", verified="ok")]
    decisions = retention.plan_vm(items, policy)
    assert "2026-01-02 10:00" in kept(decisions)


def test_newest_good_kept_even_when_rules_only_match_older_buckets():
    # keep_daily = 1 keeps the newest of the newest day; the newest good one stays whatever the rule says
    items = [bk("2026-01-01 10:00"), bk("2026-01-02 10:00", verified="failed"), bk("2026-01-02 09:00")]
    decisions = retention.plan_vm(items, Policy(keep_daily=1))
    assert kept(decisions) == ["2026-01-02 09:00", "2026-01-02 10:00"]
    assert deleted(decisions) == ["2026-01-01 10:00"]


def test_failed_verification_does_not_count_towards_keeps():
    items = [bk("2026-01-03 10:00", verified="failed"), bk("2026-01-02 10:00", verified="failed"),
             bk("2026-01-01 10:00", verified="ok"), bk("2025-12-31 10:00")]
    decisions = retention.plan_vm(items, Policy(keep_last=1))
    # the two failed ones are newer than the newest kept good backup: kept (nothing better exists)
    assert kept(decisions) == ["2026-01-01 10:00", "2026-01-02 10:00", "2026-01-03 10:00"]
    by_day = {d.backup.created.day: d for d in decisions}
    assert by_day[1].reasons == ["last 1", "newest good backup"]
    assert "verification failed" in by_day[2].reasons[0] and by_day[2].keep
    assert by_day[3].reasons == ["newest complete backup"]  # the rule, whatever its verification
    assert deleted(decisions) == ["2025-12-31 10:00"]


def test_failed_backup_older_than_the_newest_kept_good_one_is_deleted_even_in_a_bucket():
    # 01-02 failed is the newest of its day, but a failed backup never fills a daily slot
    items = [bk("2026-01-03 10:00"), bk("2026-01-02 10:00", verified="failed"), bk("2026-01-02 08:00"),
             bk("2026-01-01 10:00")]
    decisions = retention.plan_vm(items, Policy(keep_daily=2))
    assert kept(decisions) == ["2026-01-02 08:00", "2026-01-03 10:00"]
    assert deleted(decisions) == ["2026-01-01 10:00", "2026-01-02 10:00"]


def test_incomplete_backups_never_satisfy_a_keep():
    items = [bk("2026-01-03 10:00", status=catalog.MISSING), bk("2026-01-02 10:00"), bk("2026-01-01 10:00"),
             bk("2026-01-03 11:00", status=catalog.PARTIAL), bk("2026-01-03 12:00", status=catalog.NO_MANIFEST)]
    items[-1].manifest_path = items[-2].manifest_path = None
    decisions = retention.plan_vm(items, Policy(keep_last=1))
    # partial / orphan data files are not the policy's: left out; missing-data is newer than the kept one
    assert kept(decisions) == ["2026-01-02 10:00", "2026-01-03 10:00"]
    assert deleted(decisions) == ["2026-01-01 10:00"]
    items.append(bk("2025-12-31 10:00", status=catalog.MISSING))
    assert "2025-12-31 10:00" in deleted(retention.plan_vm(items, Policy(keep_last=1)))


def test_no_good_backup_at_all_deletes_nothing():
    items = [bk("2026-01-03 10:00", verified="failed"), bk("2026-01-02 10:00", status=catalog.MISSING)]
    assert deleted(retention.plan_vm(items, Policy(keep_last=1))) == []


def test_corrupt_manifests_are_left_alone():
    item = bk("2025-01-01 10:00", status=catalog.CORRUPT)
    decisions = retention.plan_vm([item, bk("2026-01-01 10:00")], Policy(keep_last=1))
    assert [d.backup for d in decisions] == [decisions[0].backup] and decisions[0].keep


def test_plan_groups_per_vm_and_pool():
    items = hourly(["2026-01-01"]) + [bk("2026-01-01 05:00", vm="u2"), bk("2026-01-01 06:00", vm="u2"),
                                      bk("2026-01-01 05:00", pool="q")]
    decisions = retention.plan(items, Policy(keep_last=1))
    keep = sorted((d.backup.pool, d.backup.vm_uuid, d.backup.created.hour) for d in decisions if d.keep)
    assert keep == [("p", "u1", 23), ("p", "u2", 6), ("q", "u1", 5)]


def test_render_shows_action_and_reasons():
    text = retention.render(retention.plan_vm(hourly(["2026-01-01"]), Policy(keep_last=1)))
    assert text.count("DELETE") == 2 and "last 1" in text


def test_retention_config_section(tmp_path):
    base = {"broker_url": "redis://h", "destination": "/b", "pools": {
        "a": {"master": "http://a", "username": "root", "password_env": "X", "shared_sr": "s"}}}
    assert config.parse(base).retention == Policy() and not Policy().active
    cfg = config.parse({**base, "retention": {"keep_last": 3, "keep_weekly": 2}, "janitor": {"max_age_h": 6}})
    assert cfg.retention == Policy(keep_last=3, keep_weekly=2) and cfg.janitor.max_age_h == 6.0
    for bad in ({"keep_last": -1}, {"keep_last": 1.5}, {"keep_last": True}, {"keep_yearly": 1}):
        with pytest.raises(config.ConfigError, match="retention"):
            config.parse({**base, "retention": bad})
    with pytest.raises(config.ConfigError, match="janitor"):
        config.parse({**base, "janitor": {"max_age": 1}})


def test_retention_runs_by_itself_after_each_good_backup(redis_server, tmp_path):
    """Given keep_last = 1 (after_backup defaults to true), when a VM is backed up twice in sr-copy
    mode, then only the newest backup and its kept disk remain, with no `tinabs prune` run."""
    import time

    from helpers import toml_write
    from helpers.deployment import Deployment
    from tinabs_tasks.storage import catalog

    dep = Deployment(tmp_path, redis_server, ("--pools", "1", "--vms-per-pool", "3", "--disk-mib", "8"))
    try:
        cfg = toml_write.read(dep.config)
        cfg["retention"] = {"keep_last": 1}
        toml_write.write(dep.config, cfg)
        dep.start_worker("w1")
        manifests = []
        for _ in range(2):
            code, job = dep.backup("--vm", "db-01", "--pool", "pool-a", "--mode", "sr-copy")
            assert code == 0, job
            manifests.append(job["runs"][0]["manifest"])
            time.sleep(1.1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            left = [b.manifest_path for b in catalog.scan(str(dep.dest))]
            if left == [manifests[1]]:
                break
            time.sleep(0.2)
        assert left == [manifests[1]]
        kept = [r for r in dep.sim.state()["pools"]["pool-a"]["VDI"].values()
                if r["other_config"].get("tinabs:keep") == "true" and r["other_config"].get("tinabs:role") != "base"]
        assert len(kept) == 1 and kept[0]["other_config"]["tinabs:run"] in manifests[1]
        # and the VM's base is the kept backup's (the pruned backup's base went with the night after it)
        (base,) = bases(dep.sim.state())
        assert base["backup"] == Path(manifests[1]).name.removesuffix(".json")
    finally:
        dep.stop()
