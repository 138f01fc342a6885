"""tinabs' own figures for Prometheus, end to end.

Given two simulated pools, Redis, two real workers and `tinabs metrics` serving on a free
loopback port, when a job backs up every VM and one VM of pool-a fails for good (a fault on
the simulator), then a scrape over HTTP, parsed with prometheus_client's parser, shows per pool
the backups that succeeded and failed and the bytes exported (the sizes of the files on disk),
and per VM the end of its last success (as `tinabs status` reports it) and its size, or that
its last run failed.  Repo-mode backups count the same way (their XVA size as bytes exported),
plus what they added to the repository (bytes stored, per pool and per VM).  When the failed run's compensation is delivered twice more, nothing is
counted twice.  A broker that cannot be reached or a bad --listen is one clear line (exit 2).
"""
from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers.redis_proc import RedisProc, find_redis_server, free_port

DEPLOYMENT_SIM_ARGS = ("--pools", "2", "--vms-per-pool", "3", "--disk-mib", "4")
DEPLOYMENT_REPOSITORY = True  # for the repo-mode test; the others back up in export mode
FAILING_VM = "db-01"  # a unique name in pool-a
SNAPSHOT_GONE = ["HANDLE_INVALID", "VDI", "OpaqueRef:x"]


class Exporter:
    """`tinabs metrics --listen 127.0.0.1:0` as a process; its first stdout line gives the URL."""

    def __init__(self, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "metrics", "--listen", "127.0.0.1:0"],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            line = self.proc.stdout.readline() if sel.select(timeout=30) else ""
        if "serving http://" not in line:
            self.stop()
            raise AssertionError(f"tinabs metrics did not start: {line!r} {self.proc.stderr.read()}")
        self.url = line.split("serving ", 1)[1].strip()
        assert self.url.endswith("/metrics"), line
        self.base = self.url.removesuffix("/metrics")

    def get(self, path: str = "/metrics") -> tuple[int, str, str]:
        """(status, content type, body) of GET ``path``."""
        try:
            with urllib.request.urlopen(self.base + path, timeout=30) as resp:
                return resp.status, resp.headers["Content-Type"], resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.headers["Content-Type"], err.read().decode()

    def scrape(self) -> dict[tuple, float]:
        """{(sample name, (label, value) pairs sorted): value} of one scrape."""
        status, ctype, body = self.get()
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4"), (status, ctype, body)
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(body) for s in family.samples}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def exporter(deployment):
    exp = Exporter(deployment.env)
    yield exp
    exp.stop()


def _value(scrape: dict, name: str, **labels) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


def _vm_samples(scrape: dict, name: str) -> dict[str, float]:
    """vm uuid -> value of a per-VM family."""
    return {dict(labels)["vm_uuid"]: value for (sample, labels), value in scrape.items() if sample == name}


def _system_vdi_uuid(dep, pool: str, vm_name: str) -> str:
    state = dep.sim.state()["pools"][pool]
    vm = next(v for v in state["VM"].values() if v["name_label"] == vm_name and not v["is_a_snapshot"])
    vbd = next(state["VBD"][b] for b in vm["VBDs"] if state["VBD"][b]["userdevice"] == "0")
    return state["VDI"][vbd["VDI"]]["uuid"]


SEND_COMPENSATE = """
import json, sys
from tinabs_tasks.tasks.backup import CFG, compensate
ctx = json.loads(sys.argv[1])
sent = [compensate.apply_async((ctx, "sent again by a test"), queue=CFG.pool(ctx["pool"]).queue) for _ in range(2)]
print(json.dumps([r.get(timeout=60) for r in sent]))  # raises if any copy failed
"""


def _compensate_twice(dep, run: dict) -> list[dict]:
    """A redelivered compensation, twice, through the broker to the real workers."""
    ctx = {"job": run["job"], "run": run["id"], "pool": run["pool"], "mode": run["mode"],
           "vm": {"uuid": run["vm_uuid"], "name": run["vm_name"]}, "stamp": run["stamp"],
           "refs": {}, "timings": {}, "failures": {}}
    proc = subprocess.run([sys.executable, "-c", SEND_COMPENSATE, json.dumps(ctx)], env=dep.env,
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, f"compensation failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


def test_a_scrape_shows_what_the_job_did(deployment, exporter):
    dep = deployment
    dep.sim.clear_faults()
    # Given the figures before (only differences count: an earlier test of this module may have made some)
    before = exporter.scrape()
    # And a VM of pool-a whose snapshot fails for good
    dep.sim.add_fault({"method": "VDI.snapshot", "error": SNAPSHOT_GONE, "pool": "pool-a",
                       "arg": _system_vdi_uuid(dep, "pool-a", FAILING_VM)})
    # When every VM of both pools is backed up
    status, job = dep.backup("--all", timeout=150)
    dep.sim.clear_faults()
    # Then that VM failed and every other succeeded
    assert status == 1, job
    failed = [r for r in job["runs"] if r["state"] == "failed"]
    good = [r for r in job["runs"] if r["state"] == "succeeded"]
    assert [(r["pool"], r["vm_name"]) for r in failed] == [("pool-a", FAILING_VM)], job["runs"]
    assert len(good) == 5 and {r["pool"] for r in good} == {"pool-a", "pool-b"}
    after = exporter.scrape()
    # And the scrape counts per pool the backups by result, and the bytes of the files written
    for pool in ("pool-a", "pool-b"):
        ok = [r for r in good if r["pool"] == pool]
        for result, want in (("succeeded", len(ok)), ("failed", 1 if pool == "pool-a" else 0)):
            delta = (_value(after, "tinabs_backups_total", pool=pool, result=result)
                     - _value(before, "tinabs_backups_total", pool=pool, result=result))
            assert delta == want, (pool, result, delta)
        on_disk = sum(Path(r["path"]).stat().st_size for r in ok)
        assert on_disk == sum(int(r["size"]) for r in ok) > 0
        assert (_value(after, "tinabs_bytes_exported_total", pool=pool)
                - _value(before, "tinabs_bytes_exported_total", pool=pool)) == on_disk
    # And per VM the end of its last success as `tinabs status` reports it, its size, and its last result
    last_success = _vm_samples(after, "tinabs_last_success_timestamp_seconds")
    last_bytes = _vm_samples(after, "tinabs_last_backup_bytes")
    last_ok = _vm_samples(after, "tinabs_last_run_succeeded")
    for r in good:
        labels = dict(pool=r["pool"], vm=r["vm_name"], vm_uuid=r["vm_uuid"])
        assert _value(after, "tinabs_last_success_timestamp_seconds", **labels) == float(r["finished"]), r
        assert last_bytes[r["vm_uuid"]] == int(r["size"]) and last_ok[r["vm_uuid"]] == 1
        assert _value(after, "tinabs_last_backup_duration_seconds", **labels) > 0
    (bad,) = failed
    assert last_ok[bad["vm_uuid"]] == 0
    assert last_success.get(bad["vm_uuid"]) == _vm_samples(before, "tinabs_last_success_timestamp_seconds").get(
        bad["vm_uuid"]), "a failed run must not move the VM's last success"

    # When the failed run's compensation is delivered twice more (a redelivery, a duplicate)
    again = _compensate_twice(dep, bad)
    assert all(r["run"] == bad["id"] for r in again)
    # Then nothing is counted twice: the scrape is the same
    assert exporter.scrape() == after


def test_repo_backups_count_their_size_and_what_they_added_to_the_repository(deployment, exporter):
    dep = deployment
    dep.sim.clear_faults()
    before = exporter.scrape()
    # When every VM of pool-b is backed up into the repository
    status, job = dep.backup("--all", "--pool", "pool-b", "--mode", "repo", timeout=150)
    assert status == 0, job
    runs = job["runs"]
    manifests = [json.loads(Path(r["manifest"]).read_text()) for r in runs]
    after = exporter.scrape()
    # Then they count as backups, their XVA sizes as bytes exported, and what they added to the
    # repository (the manifests' stored_bytes) as bytes stored
    def delta(name, **labels):
        return _value(after, name, **labels) - _value(before, name, **labels)
    assert delta("tinabs_backups_total", pool="pool-b", result="succeeded") == len(runs) == 3
    assert delta("tinabs_bytes_exported_total", pool="pool-b") == sum(m["size"] for m in manifests)
    stored = sum(m["stored_bytes"] for m in manifests)
    assert stored > 0 and delta("tinabs_repository_bytes_stored_total", pool="pool-b") == stored
    assert delta("tinabs_repository_bytes_stored_total", pool="pool-a") == 0
    # And per VM its last backup's size and what it stored
    for r, m in zip(runs, manifests):
        labels = dict(pool="pool-b", vm=r["vm_name"], vm_uuid=r["vm_uuid"])
        assert _value(after, "tinabs_last_backup_bytes", **labels) == m["size"]
        assert _value(after, "tinabs_last_backup_stored_bytes", **labels) == m["stored_bytes"]
        assert _value(after, "tinabs_last_success_timestamp_seconds", **labels) == float(r["finished"])
    # When one of them is next backed up as a file, its last backup stored nothing in the repository
    status, job = dep.backup("--vm", runs[0]["vm_uuid"], "--pool", "pool-b", "--mode", "export", timeout=150)
    assert status == 0, job
    latest = exporter.scrape()
    assert runs[0]["vm_uuid"] not in _vm_samples(latest, "tinabs_last_backup_stored_bytes")
    assert _value(latest, "tinabs_repository_bytes_stored_total", pool="pool-b") == \
        _value(after, "tinabs_repository_bytes_stored_total", pool="pool-b")


def test_the_exporter_answers_only_metrics(exporter):
    assert exporter.get("/")[0] == 200 and "/metrics" in exporter.get("/")[2]
    assert exporter.get("/nothing")[0] == 404


def test_a_scrape_while_redis_is_down_answers_503(deployment, tmp_path):
    # Given an exporter on its own Redis, which answers
    server = RedisProc(tmp_path / "redis", binary=find_redis_server())
    server.start()
    exp = None
    try:
        exp = Exporter({**deployment.env, "TINABS_BROKER_URL": server.url_for(0)})
        assert exp.get()[0] == 200
        # When that Redis goes away
        server.stop()
        # Then a scrape says so with 503 (Prometheus marks the target down), and the next one too
        for _ in range(2):
            status, _, body = exp.get()
            assert status == 503 and "cannot read Redis" in body, (status, body)
    finally:
        server.stop()
        if exp:
            exp.stop()
    assert "cannot read Redis" in exp.proc.stderr.read()


def test_unreachable_broker_and_bad_listen_are_one_clear_line(deployment):
    env = {**deployment.env, "TINABS_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    for argv, says in ((["--listen", "127.0.0.1:0"], "cannot reach the broker"),
                       (["--listen", "9817"], "give HOST:PORT")):
        proc = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "metrics", *argv], env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and says in proc.stderr, (argv, proc.returncode, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("text, want", [("127.0.0.1:9817", ("127.0.0.1", 9817)), ("[::1]:9817", ("::1", 9817)),
                                        ("0.0.0.0:0", ("0.0.0.0", 0)), ("localhost:80", ("localhost", 80))])
def test_listen_addresses(text, want):
    from tinabs_tasks.cli.metrics import parse_listen
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", ["9817", ":9817", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000", "[::1]"])
def test_bad_listen_addresses(text):
    from tinabs_tasks.cli.common import UserError
    from tinabs_tasks.cli.metrics import parse_listen
    with pytest.raises(UserError, match="give HOST:PORT"):
        parse_listen(text)
