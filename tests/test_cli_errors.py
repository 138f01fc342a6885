"""Bad input gets a clear, actionable error from the real `tinabs` command, never a traceback.

Given a mistake a user can make - a config that is not TOML, has a wrong type or an unknown
key, or is missing; a tag, VM or pool that matches nothing; a destination the workers cannot
write to, or that is full; a broker that is down or never answers; a backup or a job that does
not exist - when the command runs (as a subprocess, against real workers, Redis and the
simulator), then it exits with the status the README documents (2 usage/config, 3 nothing
matched, 1 a failed backup), says on one or two lines of stderr what is wrong and what to do,
prints no traceback, ends within seconds, and leaves nothing on the pool.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import toml_write
from helpers.deployment import Deployment
from helpers.pool_checks import backupable_vms, litter
from helpers.redis_proc import private_redis
from helpers.workers import WorkerProc
from helpers.xapi_http import counts

DEPLOYMENT_SIM_ARGS = ("--pools", "1", "--vms-per-pool", "3", "--disk-mib", "4")
POOL = "pool-a"
FAST_S = 20  # every error here must come within this, whatever the broker does


def tinabs(env: dict, *args: str, timeout: float = FAST_S) -> subprocess.CompletedProcess:
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    proc.seconds = time.monotonic() - began
    return proc


def clear_error(proc: subprocess.CompletedProcess, status: int, *fragments: str) -> str:
    """Exit ``status``, no traceback anywhere, stderr one or two lines starting `tinabs: ` that
    hold every fragment; returns stderr."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == status, f"exit {proc.returncode}, want {status}:\n{out}"
    assert "Traceback" not in out, out
    lines = proc.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2 and lines[0].startswith("tinabs: "), proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, f"{fragment!r} not in:\n{proc.stderr}"
    return proc.stderr


@pytest.fixture(scope="module")
def backup(deployment) -> dict:
    """One real backup (its job run): something that exists, for commands that need one."""
    vm = min(backupable_vms(deployment.sim.state(), POOL), key=lambda v: v["uuid"])
    code, job = deployment.backup("--vm", vm["uuid"], "--pool", POOL)
    assert code == 0, job
    return job["runs"][0]


# -- config ----------------------------------------------------------------------------------------
COMMANDS = {
    "backup": ("backup", "--all", "--wait"),
    "status": ("status",),
    "list": ("list",),
    "verify": ("verify", "--all"),
    "restore": ("restore", "/srv/x.xva", "--pool", POOL),
    "check-config": ("check-config", "--offline"),
}


def _good_config(tmp_path: Path) -> dict:
    (tmp_path / "dest").mkdir(exist_ok=True)
    return {"broker_url": "redis://127.0.0.1:1/0", "destination": str(tmp_path / "dest"),
            "pools": {POOL: {"master": "http://127.0.0.1:1", "username": "root", "password_env": "NOPE",
                             "shared_sr": "nfs-shared"}}}


def _write_bad_config(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "tinabs.toml"
    if kind == "not-toml":
        path.write_text('destination = "/srv"\n[pools.a\nmaster = 1\n')
    elif kind == "wrong-type":
        toml_write.write(path, {**_good_config(tmp_path), "limits": {"lease_s": "long"}})
    elif kind == "unknown-key":
        toml_write.write(path, {**_good_config(tmp_path), "colour": "blue"})
    return path  # "missing": never written


CONFIG_ERRORS = {
    "not-toml": ("not valid TOML", "at line 2"),
    "wrong-type": ("[limits] lease_s must be a non-negative number",),
    "unknown-key": ("unknown key(s) colour", "allowed: "),
    "missing": ("not found", "set TINABS_CONFIG or pass --config"),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("kind", sorted(CONFIG_ERRORS))
def test_a_bad_config_is_one_line_exit_2_for_every_command(tmp_path, kind, command):
    path = _write_bad_config(tmp_path, kind)
    env = {**os.environ, "TINABS_CONFIG": str(path)}
    env.pop("TINABS_BROKER_URL", None)
    proc = tinabs(env, *COMMANDS[command])
    assert clear_error(proc, 2, str(path), *CONFIG_ERRORS[kind]).startswith("tinabs: config error: ")
    assert proc.stdout == ""


# -- what to back up ---------------------------------------------------------------------------------
def test_a_tag_no_vm_carries_exits_3_and_says_what_to_check(deployment):
    proc = tinabs(deployment.env, "backup", "--tag", "NoSuchTag", "--wait", timeout=60)
    clear_error(proc, 3, "no VM matched tag NoSuchTag in pool-a; nothing was backed up",
                "check the spelling (tags and names are case-sensitive)")
    proc = tinabs(deployment.env, "backup", "--tag", "NoSuchTag", "--wait", "--json", timeout=60)
    clear_error(proc, 3, "no VM matched tag NoSuchTag")
    assert json.loads(proc.stdout)["notes"] == ["pool `pool-a`: no VM matches tag NoSuchTag"]


def test_an_unknown_vm_exits_3(deployment):
    proc = tinabs(deployment.env, "backup", "--vm", "no-such-vm", "--wait", timeout=60)
    clear_error(proc, 3, "no VM matched VM no-such-vm in pool-a", "--pool")


def test_an_unknown_pool_exits_2_and_sends_nothing(deployment):
    before = json.loads(tinabs(deployment.env, "status", "--json").stdout)
    proc = tinabs(deployment.env, "backup", "--vm", "web-01", "--pool", "no-such-pool", "--wait")
    clear_error(proc, 2, "unknown pool `no-such-pool`; configured pools: pool-a")
    assert json.loads(tinabs(deployment.env, "status", "--json").stdout) == before  # no job was made


def test_a_pool_that_refuses_the_selection_is_a_failure_not_nothing_matched(deployment):
    """Not exit 3: the VMs may well be there; the pool would not list them."""
    deployment.sim.add_fault({"method": "VM.get_all_records", "pool": POOL,
                              "error": ["RBAC_PERMISSION_DENIED", "VM.get_all_records", "read-only"]})
    try:
        proc = tinabs(deployment.env, "backup", "--all", "--wait", "--json", timeout=60)
    finally:
        deployment.sim.clear_faults()
    clear_error(proc, 1, "could not select VMs on 1 pool(s); nothing was backed up", "tinabs check-config")
    (note,) = json.loads(proc.stdout)["notes"]
    assert note.startswith("pool `pool-a`: could not select VMs: ") and "RBAC_PERMISSION_DENIED" in note


# -- things that do not exist ------------------------------------------------------------------------
def test_a_job_that_does_not_exist(deployment):
    proc = tinabs(deployment.env, "status", "0123456789ab")
    clear_error(proc, 2, "no job '0123456789ab'", "`tinabs status` lists recent ones")


@pytest.mark.parametrize("command", ["verify", "restore"])
def test_a_backup_that_does_not_exist(deployment, backup, command):
    extra = ("--pool", POOL) if command == "restore" else ()
    dest = deployment.dest
    for name in ("20260101T000000Z-0123456789ab", str(dest / POOL / "x--y" / "20260101T000000Z-abc.xva")):
        proc = tinabs(deployment.env, command, name, *extra)
        clear_error(proc, 2, f"{name}: no such file", f"its .xva or .json under {dest}", "`tinabs list`")
    # a path inside the destination that is no backup, and a data file without its manifest
    proc = tinabs(deployment.env, command, str(dest / POOL), *extra)
    clear_error(proc, 2, "not a backup (give its .xva, .metadata.xva or .json)")
    orphan = Path(backup["path"]).with_name("20260101T000000Z-orphan000000.xva")
    orphan.write_bytes(b"not a backup")
    try:
        proc = tinabs(deployment.env, command, str(orphan), *extra)
    finally:
        orphan.unlink()
    clear_error(proc, 2, "no manifest 20260101T000000Z-orphan000000.json beside it (not a finished backup)")


@pytest.mark.parametrize("name,says", [("  ", "--name needs a non-empty value"),
                                       ("two\nlines", "--name must not contain control characters"),
                                       ("tab\there", "--name must not contain control characters")])
def test_a_restored_name_is_one_line_of_text(deployment, backup, name, says):
    proc = tinabs(deployment.env, "restore", backup["path"], "--pool", POOL, "--name", name)
    clear_error(proc, 2, says)


# -- the broker --------------------------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


def _broker_commands(backup: dict) -> dict[str, tuple[str, ...]]:
    return {
        "backup": ("backup", "--all", "--wait"),
        "status": ("status",),
        "status-job": ("status", "0123456789ab"),
        "restore": ("restore", backup["path"], "--pool", POOL),
        "restore-test": ("verify", backup["manifest"], "--restore-test", "--pool", POOL, "--sr", "nfs-shared"),
        "prune": ("prune", "--dry-run"),
        "janitor": ("janitor", "--dry-run"),
    }


def test_an_unreachable_broker_is_one_line_fast_for_every_command_that_needs_it(deployment, backup):
    port = _closed_port()
    env = {**deployment.env, "TINABS_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
    before = counts(deployment.sim, POOL)
    for name, args in _broker_commands(backup).items():
        proc = tinabs(env, *args)
        clear_error(proc, 2, f"cannot reach the broker at redis://127.0.0.1:{port}/0", "Connection refused",
                    "is Redis running, and is broker_url (or TINABS_BROKER_URL) right?")
        assert proc.stdout == "", (name, proc.stdout)
        assert proc.seconds < FAST_S
    assert counts(deployment.sim, POOL) == before


def test_list_and_verify_need_no_broker(deployment, backup):
    """They read the destination only (README): with the broker down they work, and as fast."""
    env = {**deployment.env, "TINABS_BROKER_URL": f"redis://127.0.0.1:{_closed_port()}/0"}
    proc = tinabs(env, "list", "--json")
    assert proc.returncode == 0, proc.stderr
    assert backup["path"] in [b["path"] for b in json.loads(proc.stdout)]
    proc = tinabs(env, "verify", backup["path"], "--offline")
    assert proc.returncode == 0 and proc.stdout.startswith(f"OK      {backup['path']}"), proc.stdout + proc.stderr


def test_a_broker_that_never_answers_fails_within_seconds(deployment, backup):
    """A port that accepts connections and never replies (a firewall, a wrong service): the
    command gives up after its short probe instead of waiting out long socket timeouts."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel completes the handshakes; nobody ever reads or answers
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        env = {**deployment.env, "TINABS_BROKER_URL": url}
        commands = _broker_commands(backup)
        for name in ("backup", "status", "restore"):
            proc = tinabs(env, *commands[name])
            clear_error(proc, 2, f"cannot reach the broker at {url}", "Timeout")
            assert proc.seconds < FAST_S


# -- the destination, as the workers see it ------------------------------------------------------
@pytest.fixture(scope="module")
def dest_deployment(tmp_path_factory):
    """A second simulator and Redis (not the module deployment's) whose worker is started per test
    with a bad destination."""
    root = tmp_path_factory.mktemp("destdep")
    with private_redis(root / "redis") as server:
        dep = Deployment(root, server, DEPLOYMENT_SIM_ARGS)
        try:
            yield dep
        finally:
            dep.stop()


def _bad_destination(dep, tmp_path: Path, kind: str) -> tuple[dict, Path, tuple[str, ...]]:
    """(a config whose destination is bad in this way, the regular file involved, what the run's
    reason must say)."""
    config = toml_write.read(dep.config)
    blocker = tmp_path / "a-regular-file"
    blocker.write_text("not a directory\n")
    if kind == "through-a-file":
        config["destination"] = str(blocker / "backups")
        says = (f"destination {blocker / 'backups'} is not writable ({blocker} is a file, not a directory)",)
    elif kind == "is-a-file":
        config["destination"] = str(blocker)
        says = (f"destination {blocker} is not writable (it is a file, not a directory)",)
    elif kind == "missing":
        config["destination"] = str(tmp_path / "not-mounted")
        says = (f"destination {tmp_path / 'not-mounted'} is not writable (it does not exist)",)
    else:  # full: a real statvfs, and a reserve no disk has
        config["limits"]["reserve_free_bytes"] = 10 ** 18
        says = (" free (keeping ", "reserve_free_bytes")
    if kind != "full":
        says += ("nothing was exported", "make it a directory the worker user can write to")
    return config, blocker, says


@pytest.mark.parametrize("kind, mode", [("through-a-file", "export"), ("is-a-file", "export"),
                                        ("missing", "export"), ("through-a-file", "sr-copy"),
                                        ("full", "export")])
def test_a_destination_the_worker_cannot_use_fails_before_any_export(dest_deployment, tmp_path, kind, mode):
    dep = dest_deployment
    # Given a worker whose destination cannot take a backup (real failures, also as root)
    config, blocker, says = _bad_destination(dep, tmp_path, kind)
    path = toml_write.write(tmp_path / "tinabs.toml", config)
    env = {**dep.env, "TINABS_CONFIG": str(path)}
    worker = WorkerProc(f"dest-{kind}-{mode}", env, tmp_path).start()
    handler = "/export" if mode == "export" else "/export_metadata"
    dep.sim.add_fault({"handler": handler, "delay_s": 0})  # counts requests, changes nothing
    before = counts(dep.sim, POOL)
    try:
        # When a VM is backed up
        proc = tinabs(env, "backup", "--vm", "db-01", "--pool", POOL, "--mode", mode, "--wait", "--json",
                      timeout=120)
        (fault,) = dep.sim.control_call("GET", "/sim/faults")[1]["faults"]
    finally:
        dep.sim.clear_faults()
        worker.stop()
    # Then the run failed, and its reason says what is wrong with the destination and what to do
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    (run,) = json.loads(proc.stdout)["runs"]
    assert run["state"] == "failed" and run["failed_stage"] == ("export" if mode == "export" else "metadata")
    for fragment in says:
        assert fragment in run["error"], run["error"]
    assert "retries" not in run["error"]  # no point retrying a destination that cannot take the file
    # And the pool was never asked for the export; nothing is left on it; the file is as it was
    assert fault["fired"] == 0, fault
    assert counts(dep.sim, POOL) == before and litter(dep.sim.state()) == {}
    assert blocker.read_text() == "not a directory\n"
    assert not re.search(r"\.tinabs-write-test-", "".join(os.listdir(tmp_path)))


# -- the last resort -------------------------------------------------------------------------------
def test_an_error_nobody_foresaw_is_one_line_too(capsys):
    import kombu.exceptions
    import redis

    from tinabs_tasks import cli
    assert cli.unexpected(KeyError("skeleton")) == 1
    err = capsys.readouterr().err
    assert err == ("tinabs: unexpected error: KeyError: 'skeleton' — please report it; "
                   "TINABS_DEBUG=1 shows the traceback\n")
    # the broker lost in the middle of a command (following a job, say) is a known case
    for exc in (redis.ConnectionError("Connection closed by server."),
                kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379")):
        assert cli.unexpected(exc) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"tinabs: lost the broker: {exc} — is Redis running") and err.count("\n") == 1
        assert "`tinabs status` follows them" in err


@pytest.mark.parametrize("args", [("list",), ("list", "--json"), ("status",), ("status", "{job}"),
                                  ("status", "{job}", "--json")], ids=lambda a: " ".join(a))
def test_a_reader_that_goes_away_ends_the_command_quietly(deployment, backup, args):
    """`tinabs list | head`: the reader has gone before the command writes.  It ends as any Unix
    filter does when its pipe is closed (status 141, 128 + SIGPIPE), saying nothing: no
    "unexpected error", no "Exception ignored" at exit."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone: every write to the pipe fails (EPIPE)
    try:
        proc = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", *(a.format(job=backup["job"]) for a in args)],
                              env=deployment.env, stdout=write, stderr=subprocess.PIPE, text=True, timeout=FAST_S)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (141, ""), proc.stderr
