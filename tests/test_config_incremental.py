"""The config of incremental backups: ``[retention] full_every`` and a schedule entry's ``full``.

Given a config, when it sets how often a full backup is taken, then the values are read as
written (defaults: never forced, no entry full) and each mistake is one clear problem naming
the key; `tinabs schedule show`'s description of a full entry says so.
"""
from __future__ import annotations

import copy

import pytest

from test_config_repository import _no_overrides  # noqa: F401  (autouse: no TINABS_* from the environment)

from tinabs_tasks.config import model as config
from tinabs_tasks.config.schedule_entries import describe_backup

GOOD = {"broker_url": "redis://127.0.0.1:6379/0", "destination": "/srv/backups",
        "pools": {"pool-a": {"master": "https://a.example", "username": "root", "password_env": "POOL_A",
                             "shared_sr": "nfs", "backup_sr": "backup"}},
        "schedule": {"timezone": "UTC", "daily": {"mode": "sr-copy"},
                     "backups": [{"name": "sunday", "cron": "0 3 * * 0", "all": True, "full": True}]}}


def _parse(change=None):
    raw = copy.deepcopy(GOOD)
    if change:
        change(raw)
    return config.parse(raw, "tinabs.toml")


def test_full_every_and_full_entries_are_read_as_written():
    cfg = _parse()
    assert cfg.retention.full_every == 0
    daily, sunday = cfg.schedule.backup("backup:daily"), cfg.schedule.backup("backup:sunday")
    assert (daily.full, sunday.full) == (False, True)
    assert describe_backup(sunday) == "back up every VM on every pool (export, full)"
    assert describe_backup(daily).endswith("on every pool (sr-copy)")
    cfg = _parse(lambda raw: raw.update(retention={"full_every": 7}))
    assert cfg.retention.full_every == 7 and not cfg.retention.active  # no keep rule: nothing pruned


@pytest.mark.parametrize("change, expected", [
    (lambda raw: raw.update(retention={"full_every": -1}), "full_every must be a non-negative integer"),
    (lambda raw: raw.update(retention={"full_every": 2.5}), "full_every must be a non-negative integer"),
    (lambda raw: raw["schedule"]["backups"][0].update(full="yes"), "full must be true or false"),
    (lambda raw: raw["schedule"]["daily"].update(full=1), "full must be true or false"),
])
def test_each_mistake_is_one_clear_problem(change, expected):
    with pytest.raises(config.ConfigError) as err:
        _parse(change)
    problems = err.value.problems
    assert len(problems) == 1 and expected in problems[0], problems
