"""``[repository]`` and mode "repo" in the config (no processes).

Given a config with a repository table, when it is parsed, then the repository's path, sealing
and key source are what the file says; the key is never inline; a mode "repo" anywhere
(default_mode, a pool's mode, a schedule's) without a [repository] is a problem naming where;
and a job's pools take their own mode unless the job names one.
"""
from __future__ import annotations

import copy

import pytest

from tinabs_tasks.config import model as config
from tinabs_tasks.config.sources import SecretRef
from tinabs_tasks.runs.jobstart import describe_modes, job_modes

GOOD = {"broker_url": "redis://127.0.0.1:6379/0", "destination": "/srv/backups",
        "pools": {"pool-a": {"master": "https://a.example", "username": "root", "password_env": "POOL_A",
                             "shared_sr": "nfs"},
                  "pool-b": {"master": "https://b.example", "username": "root", "password_env": "POOL_B",
                             "shared_sr": "nfs", "mode": "repo"}},
        "repository": {"path": "/srv/tinabs-repo", "key_file": "/etc/tinabs/repo.key"}}


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch):
    for name in ("TINABS_BROKER_URL", "TINABS_RESULT_BACKEND", "TINABS_SECRETS_DIR", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)


def _parse(change=None):
    raw = copy.deepcopy(GOOD)
    if change:
        change(raw)
    return config.parse(raw, "tinabs.toml")


def _problems(change) -> list[str]:
    with pytest.raises(config.ConfigError) as err:
        _parse(change)
    return err.value.problems


def test_the_repository_table_is_read_as_written_with_its_defaults():
    repo = _parse().repository
    assert (repo.path, repo.compression, repo.level, repo.encryption) == ("/srv/tinabs-repo", "zstd", 3, "aes-256-gcm")
    assert repo.key == SecretRef("file", "/etc/tinabs/repo.key", "/run/secrets", "the default")
    assert (repo.gc_grace_h, repo.store_threads) == (24.0, 3)
    assert _parse(lambda raw: raw.pop("repository") and raw["pools"]["pool-b"].pop("mode")).repository is None


def test_a_pool_takes_its_own_mode_unless_the_job_names_one():
    cfg = _parse()
    assert job_modes(cfg, None, ["pool-a", "pool-b"]) == {"pool-a": "export", "pool-b": "repo"}
    assert job_modes(cfg, "sr-copy", ["pool-a", "pool-b"]) == {"pool-a": "sr-copy", "pool-b": "sr-copy"}
    assert describe_modes({"pool-a": "export", "pool-b": "repo"}) == "pool-a: export, pool-b: repo"
    assert describe_modes({"pool-a": "repo", "pool-b": "repo"}) == "repo"


@pytest.mark.parametrize("change, expected", [
    (lambda raw: raw["repository"].update(key="00" * 32), "the repository key is never inline"),
    (lambda raw: raw["repository"].update(key_env="REPO_KEY"), "give only one of key_env, key_file"),
    (lambda raw: raw["repository"].pop("key_file"), "an encrypted repository needs its key"),
    (lambda raw: raw["repository"].update(encryption="none"), 'a key is given but encryption = "none"'),
    (lambda raw: raw["repository"].update(encryption="rot13"), "encryption must be one of"),
    (lambda raw: raw["repository"].update(compression="lz4"), "compression must be one of"),
    (lambda raw: raw["repository"].update(level=23), "level must be a zstd level from 1 to 22"),
    (lambda raw: raw["repository"].update(path="relative/repo"), "path must be an absolute path"),
    (lambda raw: raw["repository"].update(gc_grace_h=0.1), "gc_grace_h must be at least 1"),
    (lambda raw: raw["repository"].update(key_secret="../escape") or raw["repository"].pop("key_file"),
     "key_secret is a file name in the secrets"),
    (lambda raw: raw["pools"]["pool-a"].update(mode="tape"), "mode must be one of export, sr-copy, repo"),
])
def test_each_mistake_in_the_repository_table_is_one_clear_problem(change, expected):
    problems = _problems(change)
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize("change, where", [
    (lambda raw: raw.update(default_mode="repo"), "default_mode"),
    (lambda raw: None, "pools.pool-b.mode"),
    (lambda raw: raw.update(schedule={"daily": {"mode": "repo"}}), "schedule.daily.mode"),
])
def test_mode_repo_without_a_repository_names_where_it_is_asked_for(change, where):
    def without(raw):
        raw.pop("repository")
        change(raw)
    problems = _problems(without)
    assert any('mode "repo" needs a [repository] table' in p and where in p for p in problems), problems
