"""A VM is in one run at a time: a job that starts while last night's still has the VM skips it.

Real workers, a real Redis and the simulator.  The first job's export is
slowed down so it is still going when the second job (as the next schedule
would) asks for the same VM.
"""
from __future__ import annotations

import json
import subprocess
import sys

from helpers.backup_checks import assert_clean, assert_one_backup

DEPLOYMENT_SIM_ARGS = ("--pools", "1", "--vms-per-pool", "4", "--disk-mib", "8")
POOL = "pool-a"
VM = "db-01"


def test_a_vm_still_being_backed_up_is_skipped_by_the_next_job_and_free_after(deployment):
    dep = deployment
    dep.sim.clear_faults()
    dep.sim.add_fault({"handler": "/export", "delay_s": 4, "pool": POOL, "times": 1})
    before = set(dep.files())
    # Given a job whose backup of the VM is still exporting
    first = subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "backup", "--vm", VM, "--pool", POOL,
                              "--mode", "export", "--wait", "--json"], env=dep.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    dep.sim.wait_fired()  # the first job started its export
    # When a second job asks for the same VM meanwhile
    code, second = dep.backup("--vm", VM, "--pool", POOL, "--mode", "export")
    # Then it starts nothing for that VM, says why, and exits 0 (nothing failed)
    assert code == 0 and second["runs"] == [], second
    (note,) = second["notes"]
    assert f"`{VM}` skipped: still being backed up by job" in note, note
    # And the first job finishes with its one backup
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    (run,) = json.loads(out)["runs"]
    assert run["job"] in note
    assert_one_backup(dep, run)
    # And once it is done, the next job backs the VM up again
    code, third = dep.backup("--vm", VM, "--pool", POOL, "--mode", "export")
    assert code == 0 and [r["state"] for r in third["runs"]] == ["succeeded"], third
    new = set(dep.files()) - before
    assert len(new) == 4, sorted(new)
    assert_clean(dep, new)
