"""`tinabs check-config`, config loading errors, and the Celery settings tinabs relies on.

Given the config the simulator writes for its pools, when one thing in it is
wrong, then tinabs says what and where in one line, exits non-zero and shows
no traceback; a good config passes; a config naming a pool member instead of
the master still works, for check-config and for a real backup; and the
Celery settings keep a long export from being redelivered while it runs.
"""
from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import toml_write
from helpers.workers import WorkerProc

DEPLOYMENT_SIM_ARGS = ("--pools", "2", "--vms-per-pool", "3", "--disk-mib", "4")
DEPLOYMENT_WORKERS = 0  # only the member-URL test needs a worker, with its own config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def make_config(deployment, tmp_path):
    """Write a variant of the deployment's (good) config: ``make_config(change)`` -> path."""
    base = toml_write.read(deployment.config)

    def make(change=None, name: str = "variant.toml") -> Path:
        data = copy.deepcopy(base)
        if change:
            change(data)
        return toml_write.write(tmp_path / name, data)

    return make


def _check(dep, path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "--config", str(path), "check-config", *extra],
                          env=env or dep.env, capture_output=True, text=True, timeout=120)


def _one_clear_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """The line carrying every fragment; asserts no traceback anywhere."""
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    matches = [line for line in out.splitlines() if all(f in line for f in fragments)]
    assert len(matches) == 1, f"no single line with {fragments}:\n{out}"
    return matches[0]


def _load_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """A config that cannot be loaded: exit 2, exactly one line on stderr, nothing on stdout."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    line = _one_clear_line(proc, *fragments)
    assert line.startswith("tinabs: config error:")


def _pool_a(data: dict) -> dict:
    return data["pools"]["pool-a"]


# -- a good config -------------------------------------------------------------------------------------

def test_good_config_passes(deployment, make_config):
    # Given the config the simulator wrote (its passwords in 0600 files)
    path = make_config()
    # When checking it against the pools and the broker
    proc = _check(deployment, path)
    # Then every check passes
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _one_clear_line(proc, "broker: reachable")
    for pool in ("pool-a", "pool-b"):
        _one_clear_line(proc, f"pool `{pool}`: logged in to")
    assert proc.stdout.count(": found (") == 4
    assert proc.stdout.strip().endswith("all checks passed")


def test_check_config_says_whether_the_web_console_has_its_password(deployment, make_config):
    path = make_config()
    without = {k: v for k, v in deployment.env.items() if k != "TINABS_WEB_PASSWORD"}
    line = _one_clear_line(_check(deployment, path, "--offline", env=without), "web console:")
    assert "no password" in line and "will not start until env TINABS_WEB_PASSWORD is set" in line, line
    secret = "a-web-console-secret"
    proc = _check(deployment, path, "--offline", env={**without, "TINABS_WEB_PASSWORD": secret})
    line = _one_clear_line(proc, "web console:")
    assert "listens on 127.0.0.1:8080, user admin, password from env TINABS_WEB_PASSWORD" in line, line
    assert secret not in proc.stdout + proc.stderr


# -- errors found while loading the file -------------------------------------------------------------

def test_unknown_top_level_key(deployment, make_config):
    path = make_config(lambda d: d.update(brokr_url="redis://x"))
    _load_error(_check(deployment, path), str(path), "unknown key(s) brokr_url", "allowed:")


def test_unknown_key_in_a_pool(deployment, make_config):
    path = make_config(lambda d: _pool_a(d).update(pasword_file="/x"))
    _load_error(_check(deployment, path), str(path), "[pools.pool-a]", "unknown key(s) pasword_file")


def test_missing_password_source(deployment, make_config):
    path = make_config(lambda d: _pool_a(d).pop("password_file"))
    _load_error(_check(deployment, path), "[pools.pool-a]", "password_env or password_file", "none")


def test_inline_password_refused(deployment, make_config):
    def inline(d):
        _pool_a(d).pop("password_file")
        _pool_a(d)["password"] = deployment.sim.pool("pool-a")["password"]

    proc = _check(deployment, make_config(inline))
    _load_error(proc, "[pools.pool-a]", "inline passwords are refused")
    # And the refusal does not echo the password it refuses
    assert deployment.sim.pool("pool-a")["password"] not in proc.stderr


@pytest.mark.parametrize("content, detail", [
    (b'destination = "/tmp"\n[pools.a\nmaster = 1\n', "line 2"),
    (b"pools:\n  a:\n    master: http://x\n", "line 1"),  # YAML, not TOML
    (b"\xff\xfe\x00\x01binary", "not UTF-8"),
], ids=["syntax", "yaml", "binary"])
def test_not_toml(deployment, tmp_path, content, detail):
    path = tmp_path / "broken.toml"
    path.write_bytes(content)
    _load_error(_check(deployment, path), str(path), "not valid TOML", detail)


@pytest.mark.parametrize("change, fragments", [
    (lambda d: d.update(retry=5), ("`retry` must be a table",)),
    (lambda d: d["limits"].update(lease_s="long"), ("[limits] lease_s", "non-negative number")),
    (lambda d: _pool_a(d).update(verify_tls="no"), ("[pools.pool-a]", "`verify_tls` must be true or false")),
    (lambda d: (_pool_a(d).pop("password_file"), _pool_a(d).update(password_env=5)),
     ("[pools.pool-a]", "`password_env` must be a non-empty string")),
    (lambda d: _pool_a(d).update(max_concurrent_exports=0), ("max_concurrent_exports must be an integer >= 1",)),
    (lambda d: _pool_a(d).update(master="127.0.0.1:443"), ("master must be an http:// or https:// URL",)),
], ids=["section-not-table", "limit-not-number", "bool-as-string", "env-not-string", "zero-limit", "bare-master"])
def test_wrong_value_types(deployment, make_config, change, fragments):
    # A value of the wrong type is refused while loading, never later in a worker
    _load_error(_check(deployment, make_config(change)), *fragments)


def test_missing_file(deployment, tmp_path):
    path = tmp_path / "absent.toml"
    _load_error(_check(deployment, path), str(path), "not found")


def test_load_errors_are_the_same_for_backup(deployment, make_config):
    # Given a config with an unknown key, when any command (not only check-config) loads it
    path = make_config(lambda d: d.update(colour="blue"))
    proc = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "--config", str(path), "backup", "--all"],
                          env=deployment.env, capture_output=True, text=True, timeout=60)
    # Then it fails the same clear way
    _load_error(proc, "unknown key(s) colour")


def test_worker_with_a_bad_config_says_why(deployment, make_config, tmp_path):
    # Given a config with an unknown key, when a Celery worker is started on it
    path = make_config(lambda d: d.update(colour="blue"))
    env = {**deployment.env, "TINABS_CONFIG": str(path)}
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "tinabs_tasks", "worker", "-c", "1"],
                          env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    # Then it exits at once with the same one-line reason, not Celery's traceback
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("tinabs: config error:")
    _one_clear_line(proc, str(path), "unknown key(s) colour")


# -- errors found by checking against the pools and the broker ---------------------------------------

def test_world_readable_password_file_refused(deployment, make_config, tmp_path):
    # Given pool-a's password in a file of mode 0644
    secret = tmp_path / "pool-a.password"
    secret.write_text(Path(_pool_a(toml_write.read(deployment.config))["password_file"]).read_text())
    secret.chmod(0o644)
    path = make_config(lambda d: _pool_a(d).update(password_file=str(secret)))
    # When checking the config
    proc = _check(deployment, path)
    # Then the file is refused, with the chmod that fixes it; pool-b is still checked
    assert proc.returncode == 1
    line = _one_clear_line(proc, "pool-a", str(secret), "readable by others", "0644", f"chmod 600 {secret}")
    assert line.count("pool `pool-a`") == 1, line
    _one_clear_line(proc, "pool `pool-b`: logged in to")
    assert deployment.sim.pool("pool-a")["password"] not in proc.stdout + proc.stderr


def test_password_env_not_set(deployment, make_config):
    # Given pool-a's password in an environment variable the process does not have
    def from_env(d):
        _pool_a(d).pop("password_file")
        _pool_a(d)["password_env"] = "TINABS_TEST_UNSET_PASSWORD"

    env = {k: v for k, v in deployment.env.items() if k != "TINABS_TEST_UNSET_PASSWORD"}
    proc = _check(deployment, make_config(from_env), env=env)
    # Then check-config names the variable
    assert proc.returncode == 1
    _one_clear_line(proc, "pool `pool-a`", "environment variable TINABS_TEST_UNSET_PASSWORD is not set")


def test_password_file_that_is_a_directory(deployment, make_config, tmp_path):
    # Given pool-a's password_file naming a (private) directory
    folder = tmp_path / "secrets.d"
    folder.mkdir(mode=0o700)
    path = make_config(lambda d: _pool_a(d).update(password_file=str(folder)))
    # When checking the config
    proc = _check(deployment, path)
    # Then it says the file cannot be read, not that the pool is unreachable
    assert proc.returncode == 1
    line = _one_clear_line(proc, "pool `pool-a`", "cannot read password file", str(folder))
    assert "reach" not in line, line


def test_unreachable_pool(deployment, make_config):
    # Given pool-a's master on a port nobody listens on
    port = _free_port()
    path = make_config(lambda d: _pool_a(d).update(master=f"http://127.0.0.1:{port}"))
    # When checking the config
    proc = _check(deployment, path)
    # Then pool-a is reported unreachable in one line; pool-b still passes
    assert proc.returncode == 1
    line = _one_clear_line(proc, "pool `pool-a`", "cannot reach the pool")
    assert line.count("pool `pool-a`") == 1, line
    _one_clear_line(proc, "pool `pool-b`: logged in to")
    assert proc.stdout.strip().endswith("1 problem(s) found")


def test_sr_that_does_not_exist_lists_the_srs(deployment, make_config):
    # Given a shared_sr name pool-a does not have
    path = make_config(lambda d: _pool_a(d).update(shared_sr="fast-nvme"))
    # When checking the config
    proc = _check(deployment, path)
    # Then the SR is reported missing, with the SRs the pool does have
    assert proc.returncode == 1
    line = _one_clear_line(proc, "shared_sr", "fast-nvme", "no such SR")
    state = deployment.sim.state()["pools"]["pool-a"]
    for sr in state["SR"].values():
        assert sr["name_label"] in line
    assert proc.stdout.strip().endswith("1 problem(s) found")


def test_broker_unreachable(deployment, make_config):
    # Given a broker URL with nothing listening
    port = _free_port()
    env = {**deployment.env, "TINABS_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
    path = make_config()
    # When checking the config
    proc = _check(deployment, path, env=env)
    # Then the broker is reported unreachable, with where and what to check
    assert proc.returncode == 1
    _one_clear_line(proc, "broker", "cannot reach the broker", f"127.0.0.1:{port}", "TINABS_BROKER_URL")
    # And a backup refuses to start the same way (exit 2, one line)
    backup = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "--config", str(path), "backup", "--all"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert backup.returncode == 2
    assert len(backup.stderr.strip().splitlines()) == 1
    _one_clear_line(backup, "cannot reach the broker")


# -- a pool member instead of the master --------------------------------------------------------------

def _member_config(dep, make_config) -> tuple[Path, str]:
    member = dep.sim.pool("pool-a")["members"][0]
    assert member != dep.sim.pool("pool-a")["master"]
    return make_config(lambda d: _pool_a(d).update(master=member), name="member.toml"), member


def test_member_url_passes_check_config(deployment, make_config):
    # Given pool-a's config naming a pool member, which answers HOST_IS_SLAVE
    path, member = _member_config(deployment, make_config)
    # When checking it
    proc = _check(deployment, path)
    # Then tinabs follows the redirect and logs in to the master
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = _one_clear_line(proc, "pool `pool-a`: logged in to")
    assert line.endswith(deployment.sim.pool("pool-a")["master"]), line


def test_member_url_backs_up_a_vm(deployment, make_config):
    dep = deployment
    # Given a worker whose config names a member of pool-a instead of its master
    path, _ = _member_config(dep, make_config)
    env = {**dep.env, "TINABS_CONFIG": str(path)}
    dep.workers.append(WorkerProc("member", env, dep.root, concurrency=2).start())
    vm = next(r for r in dep.sim.state()["pools"]["pool-a"]["VM"].values()
              if not (r["is_a_template"] or r["is_a_snapshot"] or r["is_control_domain"]))
    # When backing up one VM
    proc = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "backup", "--vm", vm["uuid"], "--pool", "pool-a",
                           "--wait", "--json", "--timeout", "90"], env=env, capture_output=True, text=True, timeout=120)
    # Then it succeeds, and the backup file is there
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = json.loads(proc.stdout)
    (run,) = job["runs"]
    assert run["state"] == "succeeded" and run["vm_uuid"] == vm["uuid"]
    assert Path(run["path"]).is_file() and Path(run["manifest"]).is_file()


# -- Celery settings invariants ----------------------------------------------------------------------

_DUMP_SETTINGS = """
import json
from tinabs_tasks.app import app
import tinabs_tasks.tasks.backup  # registers every tinabs task
cfg = app.tinabs_config
conf = app.conf
limits = {name: task.time_limit or conf.task_time_limit
          for name, task in app.tasks.items() if name.startswith("tinabs.")}
print(json.dumps({
    "task_acks_late": conf.task_acks_late,
    "task_reject_on_worker_lost": conf.task_reject_on_worker_lost,
    "worker_prefetch_multiplier": conf.worker_prefetch_multiplier,
    "broker_vt": (conf.broker_transport_options or {}).get("visibility_timeout"),
    "backend_vt": (conf.result_backend_transport_options or {}).get("visibility_timeout"),
    "vt": conf.get("visibility_timeout"),
    "result_expires": conf.result_expires.total_seconds() if hasattr(conf.result_expires, "total_seconds")
                      else conf.result_expires,
    "time_limits": limits,
    "backoff_max_s": cfg.retry.backoff_max_s,
}))
"""


def _long_backoff(d):
    d["retry"] = {**d.get("retry", {}), "backoff_max_s": 20000.0, "backoff_base_s": 60.0}
    d["limits"] = {**d.get("limits", {}), "export_time_limit_s": 600, "stage_time_limit_s": 300}


def _long_exports(d):
    d["limits"] = {**d.get("limits", {}), "export_time_limit_s": 48 * 3600}


@pytest.mark.parametrize("change", [None, _long_backoff, _long_exports], ids=["deployment", "long-backoff",
                                                                              "long-exports"])
def test_celery_settings_invariants(deployment, make_config, change):
    # Given a valid config, when the Celery app is imported with it (fresh process, as a worker does)
    path = make_config(change)
    env = {**deployment.env, "TINABS_CONFIG": str(path)}
    proc = subprocess.run([sys.executable, "-c", _DUMP_SETTINGS], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    # Then tasks are acked late, re-queued if their worker dies, and reserved one at a time
    assert s["task_acks_late"] is True and s["task_reject_on_worker_lost"] is True
    assert s["worker_prefetch_multiplier"] == 1
    # And the visibility timeout is the same wherever Celery reads it
    assert s["broker_vt"] == s["backend_vt"] == s["vt"] and s["vt"]
    # And it outlasts the longest task plus the longest retry countdown (backoff with 1.5x jitter)
    assert len(s["time_limits"]) >= 9, s["time_limits"]
    assert all(limit for limit in s["time_limits"].values()), s["time_limits"]
    longest_countdown = s["backoff_max_s"] * 1.5
    for name, limit in s["time_limits"].items():
        assert s["vt"] > limit + longest_countdown, (name, limit, s["vt"])
    # And results expire
    assert s["result_expires"] and s["result_expires"] > 0
