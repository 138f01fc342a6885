"""Repository backups where users look: `tinabs list`, `tinabs status`, the job report, the web console.

Given an encrypted repository, real workers, Redis and the simulator, when VMs are backed up in
repo mode (twice for one VM, so that the second finds every block stored already) and once in
export mode, then:

- `tinabs list` shows each repo backup with mode repo and its backup id where a file backup
  shows its path; `--json` gives its backup_id, repository and stored_bytes (the manifest's);
- `tinabs status JOB` names the repo backup by its id and what it added to the repository;
  `--json` and the job's stored report carry backup_id and stored_bytes, and the report's text
  says the size and the bytes stored;
- the console's catalog lists repo backups with their id and stored bytes and offers Verify and
  Restore for them (the manifest is what it passes on); its restore form names the backup id;
  its new-backup form offers mode repo (only with a [repository]), and a repo backup started
  there runs and its job page names the backup id; a wrong key is refused there before anything
  is sent, as `tinabs backup` refuses it.
"""
from __future__ import annotations

import json
import re
import urllib.parse

import pytest

from helpers.repo_checks import assert_one_repo_backup, assert_repo_consistent, config_variant, repo_manifests
from helpers.waiting import wait_for
from helpers.web_client import WebClient
from helpers.web_proc import PASSWORD, WebProc

from tinabs_tasks.reports.summary import text as report_text
from tinabs_tasks.repo import keys
from tinabs_tasks.runs.human import human_bytes

DEPLOYMENT_SIM_ARGS = ("--pools", "1", "--vms-per-pool", "3", "--disk-mib", "8")
DEPLOYMENT_REPOSITORY = True
VM = "db-01"


@pytest.fixture(scope="module")
def backups(deployment):
    """Every VM in repo mode, then VM in repo mode again and in export mode: (jobs, runs by job)."""
    dep = deployment
    jobs = {}
    for name, args in (("all", ("--all", "--mode", "repo")), ("again", ("--vm", VM, "--mode", "repo")),
                       ("export", ("--vm", VM, "--mode", "export"))):
        code, job = dep.backup(*args)
        assert code == 0, json.dumps(job["runs"], indent=1)[:3000]
        jobs[name] = job
    return jobs


def _report(dep, job_id: str) -> dict:
    """The job's report as the worker stored it when the job ended (`tinabs status --json`)."""
    return wait_for(lambda: dep.status(job_id).get("report"), 30, f"job {job_id}'s report")


def test_list_shows_repo_backups_by_their_id(deployment, backups):
    dep = deployment
    manifests = repo_manifests(dep)
    assert len(manifests) == 4
    for run in backups["all"]["runs"] + backups["again"]["runs"]:
        assert_one_repo_backup(dep, run)
    assert_repo_consistent(dep)
    # --json: mode, backup id, repository and stored bytes as the manifests say; no file
    listed = json.loads(dep.cli("list", "--json", check=True).stdout)
    repo_rows = {b["backup_id"]: b for b in listed if b["mode"] == "repo"}
    assert sorted(repo_rows) == sorted(manifests)
    for bid, row in repo_rows.items():
        m = manifests[bid]
        assert (row["path"], row["repository"], row["stored_bytes"], row["size"], row["status"]) == \
               (None, str(dep.repo_path), m["stored_bytes"], m["size"], "complete"), row
    (exported,) = [b for b in listed if b["mode"] == "export"]
    assert exported["backup_id"] is None and exported["path"].endswith(".xva")
    # the second backup of the VM found its blocks stored: it added its index, not its data
    (again,) = backups["again"]["runs"]
    assert int(again["stored_bytes"]) * 4 < int(again["size"]), again
    # text: the id stands where a file backup's path does
    lines = dep.cli("list", check=True).stdout.splitlines()
    last_column = {line.split()[-1]: line for line in lines[1:]}
    assert set(manifests) <= set(last_column), lines
    for bid in manifests:
        assert " repo " in last_column[bid], last_column[bid]
    assert exported["path"] in last_column and " export " in last_column[exported["path"]]


def test_status_and_the_report_name_the_backup_id_and_stored_bytes(deployment, backups):
    dep = deployment
    (again,) = backups["again"]["runs"]
    manifest = json.loads(open(again["manifest"]).read())
    bid, stored = manifest["backup_id"], manifest["stored_bytes"]
    job_id = backups["again"]["id"]
    # text: the run's detail names the backup and what it added to the repository
    out = dep.cli("status", job_id, check=True).stdout
    (row,) = [line for line in out.splitlines() if line.startswith("pool-a ")]
    assert f"repository backup {bid} ({human_bytes(stored)} new in the repository)" in row, out
    # --json: the run record carries them
    (run,) = dep.status(job_id)["runs"]
    assert (run["backup_id"], int(run["stored_bytes"]), int(run["size"])) == (bid, stored, manifest["size"])
    # the report the worker stored at the job's end: per VM and in total, and in its text
    report = _report(dep, job_id)
    (vm,) = report["vms"]
    assert (vm["backup"], vm["backup_id"], vm["stored_bytes"], vm["size"]) == (bid, bid, stored, manifest["size"])
    assert report["totals"]["stored_bytes"] == stored and report["totals"]["bytes"] == manifest["size"]
    body = report_text(report)
    assert f"{human_bytes(manifest['size'])} ({human_bytes(stored)} stored)" in body, body
    assert "of it new in the repository" in body, body
    # an export job's report speaks of files written, not of the repository
    export_report = _report(dep, backups["export"]["id"])
    assert export_report["vms"][0]["stored_bytes"] is None and "stored_bytes" not in export_report["totals"]
    assert "repository" not in report_text(export_report) and " written" in report_text(export_report)


def _rows(body: str) -> list[str]:
    return re.findall(r'<tr class="backup">(.*?)</tr>', body, re.S)


def _estimate(body: str) -> str:
    """The plan's byte estimate (the first figure of its summary line)."""
    found = re.search(r'id="plan-summary">.*?<b>([^<]+)</b>', body, re.S)
    assert found, body[:2000]
    return found.group(1)


def _web(dep, env: dict | None = None) -> tuple[WebProc, WebClient]:
    web = WebProc(env or dep.env, dep.root).start()
    client = WebClient(web.base)
    assert client.login("admin", PASSWORD).status == 303
    return web, client


def test_the_console_lists_repo_backups_and_starts_one(deployment, backups):
    dep = deployment
    manifests = repo_manifests(dep)
    web, client = _web(dep)
    try:
        # the catalog: each repo backup with its id, its stored bytes, Verify and Restore by its manifest
        page = client.get("/catalog")
        assert page.status == 200
        rows = {bid: [r for r in _rows(page.body) if f'<span class="backup-id">{bid}</span>' in r]
                for bid in manifests}
        assert all(len(found) == 1 for found in rows.values()), rows
        by_manifest = {str(p): bid for p in dep.dest.rglob("*.json")
                       for bid in [json.loads(p.read_text()).get("backup_id")] if bid}
        for manifest_path, bid in by_manifest.items():
            (row,) = rows[bid]
            assert f"{human_bytes(manifests[bid]['stored_bytes'])} stored" in row, row
            (href,) = re.findall(r'href="/catalog/restore\?path=([^"]+)"', row)
            assert urllib.parse.unquote(href) == manifest_path, row
            assert f'name="path" value="{manifest_path}"' in row, row  # Verify
            # the restore form opens for it and names the backup
            form = client.get(f"/catalog/restore?path={urllib.parse.quote(manifest_path)}")
            assert form.status == 200 and f'<span class="backup-id">{bid}</span>' in form.body, form.body[:2000]
        # the new-backup form offers repo, and a repo backup started there runs
        assert 'name="mode" value="repo"' in client.get("/backup/new").body
        vm_uuid = backups["again"]["runs"][0]["vm_uuid"]
        choice = {"kind": "vms", "vm": f"pool-a:{vm_uuid}", "mode": "repo"}
        preview = client.get("/backup/preview?" + urllib.parse.urlencode(choice))
        assert preview.status == 200 and "into the repository" in preview.body, preview.body[:2000]
        # its estimate: what an export of the VM would write (at most what the repository receives)
        as_export = client.get("/backup/preview?" + urllib.parse.urlencode({**choice, "mode": "export"}))
        assert _estimate(preview.body) == _estimate(as_export.body), (preview.body[:2000], as_export.body[:2000])
        started = client.post("/backup/start", {"csrf": client.csrf("/backup/new"), **choice})
        assert started.status == 303 and started.location.startswith("/jobs/"), (started.status, started.body)
        job = dep.wait_job(started.location.rsplit("/", 1)[1])
        (run,) = job["runs"]
        assert run["mode"] == "repo" and job["mode"] == "repo"
        manifest = assert_one_repo_backup(dep, run)
        state = json.loads(client.get(f"/jobs/{job['id']}/state", headers={"Accept": "application/json"}).body)
        (shown,) = state["runs"]
        assert (shown["path"], shown["stored_bytes"]) == (manifest["backup_id"], manifest["stored_bytes"]), shown
    finally:
        web.stop()


def test_the_console_offers_repo_only_with_a_repository_and_refuses_a_wrong_key(deployment, backups, tmp_path):
    dep = deployment
    other_key = tmp_path / "other.key"
    keys.generate_key_file(str(other_key))
    variants = {
        "none": config_variant(dep, "web-no-repo", lambda t: t.split("\n[repository]\n")[0] + "\n"),
        "wrong key": config_variant(dep, "web-wrong-key",
                                    lambda t: t.replace(str(dep.repo_key_file), str(other_key))),
    }
    says = {"none": "repo needs a [repository] table", "wrong key": "is not the key of repository"}
    vm_uuid = backups["again"]["runs"][0]["vm_uuid"]
    choice = {"kind": "vms", "vm": f"pool-a:{vm_uuid}", "mode": "repo"}
    for what, config in variants.items():
        jobs_before = dep.redis.zcard("tinabs:jobs")
        web, client = _web(dep, {**dep.env, "TINABS_CONFIG": config})
        try:
            offered = 'name="mode" value="repo"' in client.get("/backup/new").body
            assert offered == (what != "none"), what
            preview = client.get("/backup/preview?" + urllib.parse.urlencode(choice))
            assert preview.status == 400 and says[what] in preview.body, (what, preview.body[:2000])
            started = client.post("/backup/start", {"csrf": client.csrf("/backup/new"), **choice})
            assert started.status == 400 and says[what] in started.body, (what, started.body)
            assert len(started.body.strip().splitlines()) == 1 and "Traceback" not in started.body
        finally:
            web.stop()
        assert dep.redis.zcard("tinabs:jobs") == jobs_before, f"{what}: a job was started"
        assert str(other_key.read_text()).strip() not in web.log()  # the key never in the console's log
