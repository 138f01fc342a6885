"""`tinabs verify` on real backups made by real workers: both modes verify, and an sr-copy
backup whose kept disk was removed from the backup SR is reported as broken."""
from __future__ import annotations

import json

DEPLOYMENT_SIM_ARGS = ("--pools", "1", "--vms-per-pool", "3", "--disk-mib", "8")


def _one_backup(dep, mode: str) -> dict:
    status, job = dep.backup("--vm", "db-01", "--pool", "pool-a", "--mode", mode)
    assert status == 0, job
    (run,) = job["runs"]
    return run


def test_fresh_backups_of_both_modes_verify_and_record_it(deployment):
    # Given one backup in each mode
    runs = [_one_backup(deployment, "export"), _one_backup(deployment, "sr-copy")]
    # When each is verified (pool checks on)
    for run in runs:
        proc = deployment.cli("verify", run["path"], "--json")
        # Then it is OK and the verdict is written into the manifest
        assert proc.returncode == 0, proc.stdout + proc.stderr
        (report,) = json.loads(proc.stdout)
        assert report["ok"] and report["problems"] == []
        manifest = json.loads(open(run["manifest"]).read())
        assert manifest["verified"]["state"] == "ok"


def test_sr_copy_backup_whose_kept_disk_is_gone_fails_verification(deployment):
    # Given an sr-copy backup whose copied disk is then destroyed on the backup SR
    run = _one_backup(deployment, "sr-copy")
    manifest = json.loads(open(run["manifest"]).read())
    (copied,) = manifest["copied_vdis"]
    x = deployment.sim.session("pool-a").xenapi
    x.VDI.destroy(x.VDI.get_by_uuid(copied["uuid"]))
    # When it is verified, then it fails and says which disk is gone
    proc = deployment.cli("verify", run["manifest"])
    assert proc.returncode == 1
    assert f"copied disk {copied['uuid']} is gone from pool pool-a" in proc.stdout
    # And --offline (no pool contact) still passes the file checks
    assert deployment.cli("verify", run["manifest"], "--offline", "--no-record").returncode == 0


def test_the_verify_task_checks_recent_backups_on_a_worker(deployment):
    """Given a fresh backup, when tinabs.verify (what beat runs each morning) is sent to the workers,
    then it verifies the backups of the last hours and records each verdict."""
    import subprocess
    import sys

    run = _one_backup(deployment, "export")
    script = ("import json; from tinabs_tasks.tasks.upkeep import verify_task; "
              "print(json.dumps(verify_task.delay(since_h=1).get(timeout=120)))")
    proc = subprocess.run([sys.executable, "-c", script], env=deployment.env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["results"][run["manifest"]]["ok"]
    # (an earlier test broke an sr-copy backup on purpose: it must be the failures, with reasons)
    failed = {path: r for path, r in result["results"].items() if not r["ok"]}
    assert result["failed"] == len(failed) and all(r["problems"] for r in failed.values())
    assert json.loads(open(run["manifest"]).read())["verified"]["state"] == "ok"
