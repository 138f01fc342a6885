"""Pool passwords from a secrets directory (Docker secrets, systemd credentials).

Given a pool whose config says ``password_secret = "pool-a"``, when tinabs needs
the password, then it reads ``<secrets dir>/pool-a``, the directory chosen by
$TINABS_SECRETS_DIR, else the file's ``secrets_dir``, else systemd's
$CREDENTIALS_DIRECTORY, else /run/secrets.  A secret others can read, a
directory anyone can write to, a missing secret, a name that is a path and a
link out of the directory are each refused in one line that says how to fix
it, and never show the password.  (A real job on a secret: test_backup_security.)
"""
from __future__ import annotations

import copy
import errno
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import toml_write
from tinabs_tasks.config import model as config
from tinabs_tasks.config import secrets as secret_files

DEPLOYMENT_SIM_ARGS = ("--pools", "2", "--vms-per-pool", "2", "--disk-mib", "4")
DEPLOYMENT_WORKERS = 0


@pytest.fixture
def secrets(tmp_path) -> Path:
    folder = tmp_path / "secrets"
    folder.mkdir(mode=0o700)
    return folder


@pytest.fixture
def password(deployment) -> str:
    return deployment.sim.pool("pool-a")["password"]


def _put(folder: Path, name: str, value: str, mode: int = 0o600) -> Path:
    path = folder / name
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


@pytest.fixture
def secret_config(deployment, tmp_path, secrets):
    """``secret_config(secrets_dir=..., name=...)``: the deployment's config, pool-a's password as a secret."""
    base = toml_write.read(deployment.config)

    def make(secrets_dir=str(secrets), name="pool-a", **pool_keys) -> Path:
        data = copy.deepcopy(base)
        pool = data["pools"]["pool-a"]
        pool.pop("password_file")
        pool.update(password_secret=name, **pool_keys)
        if secrets_dir is not None:
            data["secrets_dir"] = secrets_dir
        return toml_write.write(tmp_path / "secret.toml", data)

    return make


def _set_acl(path: Path, *entries: tuple[int, int, int]) -> None:
    """Write a POSIX ACL (as setfacl would) around the owner/group/other entries of mode 0400."""
    undefined = 0xFFFFFFFF
    base = [(0x01, 4, undefined), (0x04, 0, undefined), (0x20, 0, undefined)]  # user::r group::- other::-
    mask = [(0x10, 4, undefined)]  # mask::r
    body = sorted(base + list(entries) + mask)
    try:
        os.setxattr(path, "system.posix_acl_access",
                    struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in body))
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip(f"no POSIX ACLs on {path.parent}")
        raise


def _check(dep, path: Path, **env: str) -> subprocess.CompletedProcess:
    """check-config in a clean environment: only the secrets-directory variables given here."""
    base = {k: v for k, v in dep.env.items() if k not in ("TINABS_SECRETS_DIR", "CREDENTIALS_DIRECTORY")}
    return subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "--config", str(path), "check-config"],
                          env={**base, **env}, capture_output=True, text=True, timeout=120)


def _pool_a_line(proc: subprocess.CompletedProcess, secret: str) -> str:
    """check-config found a problem with pool-a only: its one line (pool-b still logged in)."""
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and secret not in out, out
    assert proc.returncode == 1, out
    lines = [line for line in proc.stdout.splitlines() if line.startswith("  pool `pool-a`:")]
    assert len(lines) == 1, out
    assert "  pool `pool-b`: logged in to" in proc.stdout
    assert proc.stdout.strip().endswith("1 problem(s) found"), out
    return lines[0]


def _load_error(proc: subprocess.CompletedProcess, secret: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr and secret not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("tinabs: config error:"), line
    return line


# -- a good secret ---------------------------------------------------------------------------------

def test_secret_in_the_configured_directory_logs_in(deployment, secret_config, secrets, password):
    # Given pool-a's password as the secret `pool-a` in a private secrets directory
    _put(secrets, "pool-a", password)
    path = secret_config()
    # When checking the config against the pools
    proc = _check(deployment, path)
    # Then pool-a logs in, and check-config says where its password came from (but not the password)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "  pool `pool-a`: logged in to" in proc.stdout
    assert f"    password: secret `pool-a` in {secrets} (from secrets_dir in {path})" in proc.stdout.splitlines()
    assert password not in out


def test_environment_directory_overrides_the_file(deployment, secret_config, tmp_path, password):
    # Given a config whose secrets_dir does not exist, and TINABS_SECRETS_DIR naming one that holds the secret
    other = tmp_path / "run-secrets"
    other.mkdir(mode=0o700)
    _put(other, "prod-a", password)
    path = secret_config(secrets_dir=str(tmp_path / "absent"), name="prod-a")
    # When checking it with that variable set
    proc = _check(deployment, path, TINABS_SECRETS_DIR=str(other))
    # Then the variable's directory is used
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"    password: secret `prod-a` in {other} (from TINABS_SECRETS_DIR)" in proc.stdout.splitlines()


def test_systemd_credentials_directory_when_the_file_names_none(deployment, secret_config, tmp_path, password):
    # Given no secrets_dir in the file and a service started with LoadCredential= (CREDENTIALS_DIRECTORY)
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    _put(creds, "pool-a", password, mode=0o400)
    creds.chmod(0o500)  # as systemd makes it
    path = secret_config(secrets_dir=None)
    proc = _check(deployment, path, CREDENTIALS_DIRECTORY=str(creds))
    # Then the credential is read from there
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"    password: secret `pool-a` in {creds} (from CREDENTIALS_DIRECTORY)" in proc.stdout.splitlines()


def test_systemd_credential_readable_through_an_acl(deployment, secret_config, tmp_path, password):
    # Given a credential as systemd writes it for a service user: mode 0400, plus an ACL entry letting
    # that user (here: this one) read it, which `stat` shows as mode 0440 (the ACL mask in the group bits)
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    secret = _put(creds, "pool-a", password, mode=0o400)
    _set_acl(secret, (0x02, 4, os.geteuid()))  # user:<us>:r
    assert secret.stat().st_mode & 0o777 == 0o440
    # When checking the config, then the credential is used: no group can read it
    proc = _check(deployment, secret_config(secrets_dir=None), CREDENTIALS_DIRECTORY=str(creds))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("entry, who", [((0x02, 4, 54321), "user 54321"), ((0x08, 4, 54321), "group 54321")],
                         ids=["another-user", "a-group"])
def test_acl_letting_others_read_is_refused(deployment, secret_config, secrets, password, entry, who):
    # Given a 0400 secret whose ACL lets another user or a group read it
    secret = _put(secrets, "pool-a", password, mode=0o400)
    _set_acl(secret, entry)
    # When checking the config, then it is refused, naming who can read it and how to fix it
    line = _pool_a_line(_check(deployment, secret_config()), password)
    assert f"readable by others ({who} in its ACL)" in line and f"setfacl -b {secret}" in line, line


def test_directory_precedence(tmp_path, monkeypatch):
    # Given every way of naming a secrets directory, when each is taken away in turn, then the next one wins
    raw = {"secrets_dir": "/etc/tinabs/secrets"}
    monkeypatch.setenv("TINABS_SECRETS_DIR", "/srv/secrets")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/tinabs-worker.service")
    assert config.secrets_dir(raw, "t.toml") == ("/srv/secrets", "TINABS_SECRETS_DIR")
    monkeypatch.setenv("TINABS_SECRETS_DIR", "")  # empty is unset
    assert config.secrets_dir(raw, "t.toml") == ("/etc/tinabs/secrets", "secrets_dir in t.toml")
    assert config.secrets_dir({}, "t.toml") == ("/run/credentials/tinabs-worker.service", "CREDENTIALS_DIRECTORY")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert config.secrets_dir({}, "t.toml") == ("/run/secrets", "the default")


def test_kubernetes_style_link_inside_the_directory_is_followed(tmp_path):
    # Given a secret that is a link to a file in a subfolder of the same directory (as Kubernetes mounts them)
    folder = tmp_path / "k8s"
    (folder / "..2026_11_26").mkdir(parents=True, mode=0o700)
    folder.chmod(0o700)
    _put(folder / "..2026_11_26", "pool-a", "s3cret-k8s", mode=0o400)
    (folder / "..data").symlink_to("..2026_11_26")
    (folder / "pool-a").symlink_to("..data/pool-a")
    # When it is read, then it is the secret
    assert secret_files.read_secret(str(folder), "pool-a", "test") == "s3cret-k8s"


# -- refused ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604], ids=["world", "group", "other-only"])
def test_secret_readable_by_others_refused(deployment, secret_config, secrets, password, mode):
    # Given the secret file readable by its group or by everyone
    secret = _put(secrets, "pool-a", password, mode=mode)
    # When checking the config
    line = _pool_a_line(_check(deployment, secret_config()), password)
    # Then pool-a is refused with the mode and the chmod that fixes it
    assert "readable by others" in line and f"{mode:04o}" in line and f"chmod 600 {secret}" in line, line


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o703], ids=["open", "sticky", "other-write"])
def test_world_writable_directory_refused(deployment, secret_config, secrets, password, mode):
    # Given a good secret in a directory that everyone can write to (someone could swap the secret)
    _put(secrets, "pool-a", password)
    secrets.chmod(mode)
    try:
        line = _pool_a_line(_check(deployment, secret_config()), password)
    finally:
        secrets.chmod(0o700)
    # Then pool-a is refused, with the chmod that fixes it
    assert f"secrets directory {secrets}" in line and "writable by everyone" in line, line
    assert f"{mode:04o}" in line and f"chmod o-w {secrets}" in line, line


def test_group_writable_directory_is_accepted(deployment, secret_config, secrets, password):
    # Given a directory its group may write to (a deploy group), holding a private secret
    _put(secrets, "pool-a", password)
    secrets.chmod(0o770)
    proc = _check(deployment, secret_config())
    # Then it is used: only a directory everyone can write to is refused
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_missing_secret(deployment, secret_config, secrets, password):
    # Given an empty secrets directory, when checking, then the missing secret is named with where to put it
    path = secret_config()
    line = _pool_a_line(_check(deployment, path), password)
    assert f"no secret `pool-a` in secrets directory {secrets} (from secrets_dir in {path})" in line, line
    assert f"create {secrets / 'pool-a'} (mode 0600)" in line, line


def test_missing_directory(deployment, secret_config, tmp_path, password):
    absent = tmp_path / "nowhere"
    line = _pool_a_line(_check(deployment, secret_config(secrets_dir=str(absent))), password)
    assert f"cannot use secrets directory {absent}" in line and "No such file or directory" in line, line
    assert "TINABS_SECRETS_DIR" in line, line


def test_directory_that_is_a_file(deployment, secret_config, tmp_path, password):
    afile = _put(tmp_path, "not-a-dir", "x")
    line = _pool_a_line(_check(deployment, secret_config(secrets_dir=str(afile))), password)
    assert f"secrets directory {afile}" in line and "is not a directory" in line, line


def test_empty_secret(deployment, secret_config, secrets, password):
    secret = _put(secrets, "pool-a", "")
    line = _pool_a_line(_check(deployment, secret_config()), password)
    assert f"password file {secret} is empty" in line, line


def test_link_out_of_the_directory_refused(deployment, secret_config, secrets, tmp_path, password):
    # Given the secret as a link to a (private) file outside the secrets directory
    outside = _put(tmp_path, "elsewhere", password)
    (secrets / "pool-a").symlink_to(outside)
    # When checking, then it is refused: a secret's name always means a file in the directory
    line = _pool_a_line(_check(deployment, secret_config()), password)
    assert f"links to {outside}, outside the directory" in line, line


@pytest.mark.parametrize("name", ["../pool-a", "/etc/shadow", "sub/pool-a", "..", "."])
def test_secret_name_that_is_a_path_refused(deployment, secret_config, password, name):
    # Given password_secret naming a path, when any command loads the config, then it is refused at once
    line = _load_error(_check(deployment, secret_config(name=name)), password)
    assert "[pools.pool-a]" in line and "password_secret is a file name in the secrets directory" in line, line
    assert repr(name) in line, line


def test_two_password_sources_refused(deployment, secret_config, password):
    proc = _check(deployment, secret_config(password_env="POOL_A_PASSWORD"))
    line = _load_error(proc, password)
    assert "exactly one of password_secret, password_env or password_file" in line, line
    assert "found password_secret, password_env" in line, line


@pytest.mark.parametrize("value, env, fragment", [
    ("secrets", {}, "secrets_dir in {path}: the secrets directory must be an absolute path, got 'secrets'"),
    (5, {}, "{path}: `secrets_dir` must be a non-empty string"),
    ("/run/secrets", {"TINABS_SECRETS_DIR": "relative/dir"},
     "TINABS_SECRETS_DIR: the secrets directory must be an absolute path, got 'relative/dir'"),
], ids=["relative-in-file", "not-a-string", "relative-in-env"])
def test_secrets_dir_must_be_absolute(deployment, secret_config, password, value, env, fragment):
    path = secret_config(secrets_dir=value)
    line = _load_error(_check(deployment, path, **env), password)
    assert fragment.format(path=path) in line, line


def test_secret_is_read_at_each_login(tmp_path):
    # Given a secret that is rotated after the config was loaded, when the password is resolved,
    # then the new value is used (secrets are never cached in the config)
    folder = tmp_path / "s"
    folder.mkdir(mode=0o700)
    _put(folder, "pool-a", "old-secret")
    cfg = config.parse({"broker_url": "redis://x", "destination": "/srv", "secrets_dir": str(folder),
                        "pools": {"pool-a": {"master": "https://x", "username": "root", "shared_sr": "s",
                                             "password_secret": "pool-a"}}}, "t.toml")
    pool = cfg.pool("pool-a")
    assert pool.resolve_password() == "old-secret"
    _put(folder, "pool-a", "new-secret")
    assert pool.resolve_password() == "new-secret"
