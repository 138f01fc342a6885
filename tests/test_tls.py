"""TLS to pools against a self-signed HTTPS simulator.

Verification is on by default (a pool whose CA is unknown is refused with a
line naming ca_bundle); ca_bundle or a pinned tls_fingerprint make it work;
``insecure = true`` works and is warned about; a real backup runs over HTTPS.
"""
from __future__ import annotations

import copy
import hashlib
import json
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import toml_write
from helpers.deployment import Deployment
from helpers.workers import WorkerProc

MEMBERS = ["127.0.1.2"]  # --hosts-per-pool 2: pool-a's member


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(root: Path) -> dict:
    """A throw-away CA and a server certificate it signed, for 127.0.0.1 and the members."""
    root.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=tinabs test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=root)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=root)
    sans = ",".join(f"IP:{ip}" for ip in ["127.0.0.1", *MEMBERS])
    (root / "ext.cnf").write_text(f"subjectAltName={sans}\nbasicConstraints=critical,CA:FALSE\n"
                                  "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
                                  "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=root)
    der = ssl.PEM_cert_to_DER_cert((root / "server.pem").read_text())
    digest = hashlib.sha256(der).hexdigest().upper()
    return {"ca": str(root / "ca.pem"), "cert": str(root / "server.pem"), "key": str(root / "server.key"),
            "fingerprint": "sha256:" + ":".join(digest[i:i + 2] for i in range(0, 64, 2))}


@pytest.fixture(scope="module")
def tls_dep(redis_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("tls")
    certs = make_certs(root / "certs")
    dep = Deployment(root, redis_server, ("--pools", "1", "--vms-per-pool", "2", "--hosts-per-pool", "2",
                                          "--disk-mib", "8", "--tls-cert", certs["cert"], "--tls-key", certs["key"]))
    dep.certs = certs
    try:
        yield dep
    finally:
        dep.stop()


@pytest.fixture
def variant(tls_dep, tmp_path):
    base = toml_write.read(tls_dep.config)

    def make(**pool_keys) -> Path:
        data = copy.deepcopy(base)
        data["pools"]["pool-a"].update(pool_keys)
        return toml_write.write(tmp_path / "variant.toml", data)

    return make


def _check(dep, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "--config", str(path), "check-config"],
                          env=dep.env, capture_output=True, text=True, timeout=120)


def _pool_line(proc) -> str:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    lines = [line for line in proc.stdout.splitlines() if line.startswith("  pool `pool-a`:")]
    assert len(lines) == 1, out
    return lines[0]


def test_sim_serves_https(tls_dep):
    pool = tls_dep.sim.pool("pool-a")
    assert pool["master"].startswith("https://127.0.0.1:")
    assert pool["members"] and all(m.startswith("https://") for m in pool["members"])
    assert tls_dep.sim.info["control"].startswith("http://127.0.0.1:")


def test_default_config_refuses_self_signed_pool(tls_dep):
    proc = _check(tls_dep, tls_dep.config)
    assert proc.returncode != 0
    line = _pool_line(proc)
    assert "TLS" in line and "ca_bundle" in line, line


def test_ca_bundle_is_accepted(tls_dep, variant):
    proc = _check(tls_dep, variant(ca_bundle=tls_dep.certs["ca"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "logged in to https://" in _pool_line(proc)
    assert "WARNING" not in proc.stderr


def test_ca_bundle_follows_host_is_slave_over_https(tls_dep, variant):
    member = tls_dep.sim.pool("pool-a")["members"][0]
    proc = _check(tls_dep, variant(ca_bundle=tls_dep.certs["ca"], master=member))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _pool_line(proc).endswith(tls_dep.sim.pool("pool-a")["master"])


def test_right_fingerprint_is_accepted(tls_dep, variant):
    proc = _check(tls_dep, variant(tls_fingerprint=tls_dep.certs["fingerprint"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "logged in to https://" in _pool_line(proc)


def test_lowercase_fingerprint_is_accepted(tls_dep, variant):
    proc = _check(tls_dep, variant(tls_fingerprint=tls_dep.certs["fingerprint"].lower()))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_wrong_fingerprint_is_refused(tls_dep, variant):
    wrong = "sha256:" + ":".join(["AB"] * 32)
    proc = _check(tls_dep, variant(tls_fingerprint=wrong))
    assert proc.returncode != 0
    line = _pool_line(proc)
    assert "tls_fingerprint" in line and tls_dep.certs["fingerprint"] in line, line


@pytest.mark.parametrize("keys", [{"insecure": True}, {"verify_tls": False}], ids=["insecure", "verify_tls-alias"])
def test_insecure_is_accepted_and_warned_about(tls_dep, variant, keys):
    proc = _check(tls_dep, variant(**keys))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "TLS verification is OFF" in line]
    assert len(warnings) == 1 and "pool `pool-a`" in warnings[0], proc.stderr


@pytest.mark.parametrize("keys, fragment", [
    ({"insecure": True, "ca_bundle": "/x.pem"}, "at most one of ca_bundle, tls_fingerprint or insecure"),
    ({"tls_fingerprint": "sha256:" + ":".join(["AB"] * 32), "ca_bundle": "/x.pem"}, "at most one of"),
    ({"insecure": True, "verify_tls": False}, "set only `insecure = true`"),
    ({"tls_fingerprint": "AB:CD"}, "tls_fingerprint must look like"),
    ({"insecure": "yes"}, "`insecure` must be true or false"),
], ids=["insecure+ca", "pin+ca", "both-spellings", "bad-pin", "insecure-type"])
def test_conflicting_tls_keys_are_refused(tls_dep, variant, keys, fragment):
    proc = _check(tls_dep, variant(**keys))
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "[pools.pool-a]" in out and fragment in out, out


def _backup_one(dep, env) -> dict:
    vm = next(r for r in dep.sim.state()["pools"]["pool-a"]["VM"].values()
              if not (r["is_a_template"] or r["is_a_snapshot"] or r["is_control_domain"]))
    proc = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "backup", "--vm", vm["uuid"], "--pool", "pool-a",
                           "--mode", "export", "--wait", "--json", "--timeout", "90"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = json.loads(proc.stdout)["runs"]
    assert run["state"] == "succeeded" and run["vm_uuid"] == vm["uuid"]
    assert Path(run["path"]).is_file() and Path(run["manifest"]).is_file()
    return run


def test_backup_over_https_with_ca_bundle(tls_dep, variant, tmp_path):
    # a member URL: login follows HOST_IS_SLAVE, /export may be redirected, all over https
    member = tls_dep.sim.pool("pool-a")["members"][0]
    path = variant(ca_bundle=tls_dep.certs["ca"], master=member)
    env = {**tls_dep.env, "TINABS_CONFIG": str(path)}
    worker = WorkerProc("tls-ca", env, tmp_path, concurrency=2).start()
    try:
        _backup_one(tls_dep, env)
    finally:
        worker.stop()
    assert "TLS verification is OFF" not in worker.log_path.read_text(errors="replace")


def test_worker_with_insecure_pool_warns_at_start(tls_dep, variant, tmp_path):
    path = variant(insecure=True)
    env = {**tls_dep.env, "TINABS_CONFIG": str(path)}
    worker = WorkerProc("tls-insecure", env, tmp_path, concurrency=1).start()
    try:
        _backup_one(tls_dep, env)
    finally:
        worker.stop()
    assert "TLS verification is OFF (insecure = true)" in worker.log_path.read_text(errors="replace")
