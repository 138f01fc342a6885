"""The config model on its own (no processes): every problem of a file reported by one load.

Given a config file with several independent mistakes, when it is parsed, then one ConfigError
lists all of them, one line each, each naming its file, its table and its key in today's words;
an unknown key gets a "did you mean"; a file with one mistake is still one line.  And
``--config FILE`` is accepted after the subcommand as well as before it.
"""
from __future__ import annotations

import copy
import pickle

import pytest

from tinabs_tasks import cli
from tinabs_tasks.config import model as config
from tinabs_tasks.config.reports import SecretRef

GOOD = {"broker_url": "redis://127.0.0.1:6379/0", "destination": "/srv/backups",
        "pools": {"pool-a": {"master": "https://a.example", "username": "root", "password_env": "POOL_A",
                             "shared_sr": "nfs"}}}


def _problems(change) -> list[str]:
    raw = copy.deepcopy(GOOD)
    change(raw)
    with pytest.raises(config.ConfigError) as err:
        config.parse(raw, "tinabs.toml")
    assert str(err.value) == "\n".join(err.value.problems)
    return err.value.problems


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch):
    for name in ("TINABS_BROKER_URL", "TINABS_RESULT_BACKEND", "TINABS_SECRETS_DIR", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)


def test_the_good_file_parses():
    cfg = config.parse(copy.deepcopy(GOOD), "tinabs.toml")
    pool = cfg.pool("pool-a")
    assert (pool.queue, pool.password_env, pool.password_secret) == ("tinabs.pool.pool-a", "POOL_A", None)
    assert pool.secret == SecretRef("env", "POOL_A", "/run/secrets", "the default")
    assert cfg.result_backend == cfg.broker_url and cfg.schedule is None


def test_three_mistakes_in_three_places_are_one_error_listing_all_three():
    def three(raw):
        raw["brokr_url"] = "redis://elsewhere"              # a typo'd top-level key
        raw["limits"] = {"lease_s": "long"}                 # a bad [limits] value
        raw["pools"]["pool-a"]["pasword_file"] = "/x"        # an unknown pool key

    problems = _problems(three)
    assert len(problems) == 3, problems
    top, = [p for p in problems if "brokr_url" in p]
    assert top.startswith("tinabs.toml: unknown key(s) brokr_url — did you mean broker_url?; allowed: "), top
    assert "tinabs.toml: [limits] lease_s must be a non-negative number" in problems
    pool, = [p for p in problems if "pasword_file" in p]
    assert pool.startswith("tinabs.toml: [pools.pool-a] unknown key(s) pasword_file — did you mean password_file?; "
                           "allowed: "), pool
    assert all("\n" not in p for p in problems)


def test_problems_of_single_keys_and_between_keys_of_one_table_come_together():
    def pool_mistakes(raw):
        raw["pools"]["pool-a"].update(master="a.example", password_file="/p", verify_tls="no",
                                      max_concurrent_exports=0)

    problems = _problems(pool_mistakes)
    where = "tinabs.toml: [pools.pool-a] "
    assert problems == [where + "master must be an http:// or https:// URL, got 'a.example'",
                        where + "`verify_tls` must be true or false, got 'no'",
                        where + "max_concurrent_exports must be an integer >= 1",
                        where + "give exactly one of password_secret, password_env or password_file "
                                "(found password_env, password_file)"], problems


def test_every_section_reports_its_own_problems_in_one_load():
    def everywhere(raw):
        raw["destination"] = "backups"
        raw["retention"] = {"keep_last": 2.5}
        raw["reports"] = {"when": "sometimes", "email": {"host": "smtp", "from": "t@example", "to": ["o@example"],
                                                         "password": "hunter2"}}
        raw["web"] = {"listen": "8080"}
        raw["schedule"] = {"timezone": "UTC", "backups": [{"every": "1h", "all": True},
                                                          {"name": "w", "cron": "0 3 * *", "all": True}]}

    problems = _problems(everywhere)
    assert problems == [
        "tinabs.toml: destination must be an absolute path, got 'backups'",
        "tinabs.toml: [retention] keep_last must be a non-negative integer, got 2.5",
        "tinabs.toml: [reports] when must be one of 'always', 'failure', 'never', got 'sometimes'",
        "tinabs.toml: [reports.email] inline passwords are refused; use password_secret, password_env or "
        "password_file",
        "tinabs.toml: [web] listen must look like \"127.0.0.1:8080\" (HOST:PORT), got '8080'",
        "tinabs.toml: [[schedule.backups]] #1 name is required and uses letters, digits, '-' and '_' only, got None",
        "tinabs.toml: [[schedule.backups]] \"w\" cron must have 5 fields (minute hour day-of-month month "
        "day-of-week), got '0 3 * *'",
    ], problems
    assert not any("hunter2" in p for p in problems)


@pytest.mark.parametrize("change, line", [
    (lambda d: d["pools"]["pool-a"].update(usrname="root"),
     "[pools.pool-a] unknown key(s) usrname — did you mean username?; allowed: "),
    (lambda d: d.update(retention={"keep_lats": 3}), "[retention] unknown key(s) keep_lats — did you mean keep_last?"),
    (lambda d: d.update(reports={"wen": "always", "colour": "red"}),
     "[reports] unknown key(s) colour, wen — did you mean when (for wen)?; allowed: backoff_s, email, "),
    (lambda d: d.update(web={"flower": "http://f"}), "[web] unknown key(s) flower — did you mean flower_url?"),
    (lambda d: d.update(colour="blue"), "tinabs.toml: unknown key(s) colour; allowed: broker_url, "),
], ids=["pool", "retention", "two-keys", "web", "no-close-match"])
def test_unknown_keys_are_one_problem_per_table_with_a_suggestion(change, line):
    problem, = _problems(change)
    assert line in problem, problem


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d["pools"]["pool-a"].pop("password_env"), "[pools.pool-a] give exactly one of password_secret"),
    (lambda d: d.update(limits={"lease_s": True}), "[limits] lease_s must be a non-negative number"),
    (lambda d: d.update(retry=5), "`retry` must be a table ([retry])"),
    (lambda d: d.pop("pools"), "no pools configured; add a [pools.NAME] table"),
    (lambda d: d.pop("destination"), "missing required key `destination`"),
    (lambda d: d["pools"]["pool-a"].update(insecure="yes"), "[pools.pool-a] `insecure` must be true or false"),
    (lambda d: d.update(schedule={"timezone": "UTC", "verify": [{"name": "v", "every": "1h", "since_h": -1}]}),
     '[[schedule.verify]] "v" since_h must be a number of hours >= 0'),
], ids=["no-source", "bool-as-number", "not-a-table", "no-pools", "missing-key", "bool-type", "array-entry"])
def test_one_mistake_is_one_line(change, fragment):
    problem, = _problems(change)
    assert problem.startswith("tinabs.toml: ") and fragment in problem, problem


def test_the_broker_from_the_environment_is_not_looked_for_in_the_file(monkeypatch):
    monkeypatch.setenv("TINABS_BROKER_URL", "redis://override:6379/1")
    raw = copy.deepcopy(GOOD)
    raw["broker_url"] = 5  # not even looked at
    assert config.parse(raw, "tinabs.toml").broker_url == "redis://override:6379/1"


def test_pool_configs_are_frozen_equal_values_and_errors_keep_their_problems():
    a, b = (config.parse(copy.deepcopy(GOOD), "tinabs.toml").pool("pool-a") for _ in range(2))
    assert a == b and hash(a) == hash(b) and a is not b
    with pytest.raises(Exception):
        a.master = "https://elsewhere"
    error = pickle.loads(pickle.dumps(config.ConfigError(["t: one", "t: two"])))
    assert error.problems == ["t: one", "t: two"] and str(error) == "t: one\nt: two"


@pytest.mark.parametrize("argv", [["--config", "/etc/t.toml", "status"], ["status", "--config", "/etc/t.toml"],
                                  ["schedule", "show", "--config", "/etc/t.toml"],
                                  ["check-config", "--offline", "--config", "/etc/t.toml"]],
                         ids=["before", "after", "nested-subcommand", "among-options"])
def test_config_option_before_or_after_the_subcommand(argv):
    assert cli.build_parser().parse_args(argv).config == "/etc/t.toml"


def test_no_config_option_leaves_it_unset_and_the_last_one_wins():
    parser = cli.build_parser()
    assert parser.parse_args(["status"]).config is None
    assert parser.parse_args(["--config", "/a.toml", "status", "--config", "/b.toml"]).config == "/b.toml"


def test_the_config_given_after_the_subcommand_is_the_one_loaded(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TINABS_CONFIG", str(tmp_path / "not-this-one.toml"))  # restored afterwards
    path = tmp_path / "tinabs.toml"
    path.write_text('broker_url = "redis://127.0.0.1:1/0"\ndestination = "/srv"\ncolour = "blue"\n'
                    '[pools.a]\nmaster = "https://a"\nusername = "root"\npassword_env = "A"\nshared_sr = "s"\n')
    assert cli.main(["check-config", "--offline", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tinabs: config error: {path}: unknown key(s) colour; allowed: ") and err.count("\n") == 1
