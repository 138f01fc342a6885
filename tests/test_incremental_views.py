"""How each backup was taken, wherever a sysadmin looks: status, the report, `tinabs list`, the
web console (its pages and its live job view in a browser) and the metrics.

Given real workers, a private Redis, an encrypted repository and the simulator over HTTP, when
one VM of pool-a is backed up in repo mode (night 1: a full backup, its first), the guest writes
to its disk, and every VM of pool-a is backed up in repo mode (night 2: that VM incremental
against night 1, the other VM full, its first), then the VM is backed up in export mode, and a
VM of pool-b in sr-copy mode (its first: full), then:

- `tinabs status JOB` says on each run's line ``incremental (from <night 1's id>)`` or
  ``full: <the reason the manifest gives>``; ``--json`` carries backup_kind, full_reason,
  base_backup and chain;
- the job's report says it per VM (JSON and text) and counts incremental and full backups in
  its totals;
- `tinabs list` has a KIND column and ``--json`` the manifest's fields, for repo and sr-copy
  backups;
- the console's job page (as served, in its JSON state and as its script redraws it in a
  browser) and its catalog show the same text;
- `tinabs_last_backup_incremental` is 0 after a full backup, 1 after an incremental one;

and an export backup shows none of it (it is always full, with no base).
"""
from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from helpers.browser import headless_chromium, screenshot
from helpers.pool_checks import backupable_vms
from helpers.waiting import wait_for
from helpers.web_client import WebClient
from helpers.web_proc import PASSWORD, WebProc
from helpers.xapi_http import guest_write
from test_metrics import Exporter, _system_vdi_uuid, _value

from tinabs_tasks.reports.summary import text as report_text

DEPLOYMENT_SIM_ARGS = ("--pools", "2", "--vms-per-pool", "2", "--disk-mib", "8")
DEPLOYMENT_REPOSITORY = True
POOL, OTHER_POOL = "pool-a", "pool-b"
MiB = 1 << 20
FIRST_REPO = "full: the VM's first backup in repo mode: no base yet"
FIRST_SR_COPY = "full: the VM's first backup in sr-copy mode: no base yet"
GAUGE = "tinabs_last_backup_incremental"


@dataclass
class Nights:
    vm: dict  # backed up on both nights, then in export mode
    other: dict  # pool-a's other VM: its first backup on night 2
    copied: dict  # pool-b's VM, backed up in sr-copy mode
    jobs: dict  # "night 1", "night 2", "export", "sr-copy" -> the job as `tinabs backup --wait --json` ends it
    scrapes: dict  # the same keys -> a metrics scrape right after that job


def _job(dep, *args: str) -> dict:
    code, job = dep.backup(*args)
    assert code == 0, json.dumps(job, indent=1)[:3000]
    return job


def _run(job: dict, vm: dict) -> dict:
    (run,) = [r for r in job["runs"] if r["vm_uuid"] == vm["uuid"]]
    return run


def _manifest(run: dict) -> dict:
    return json.loads(Path(run["manifest"]).read_text())


@pytest.fixture(scope="module")
def nights(deployment) -> Nights:
    dep = deployment
    state = dep.sim.state()
    vm, other = sorted(backupable_vms(state, POOL), key=lambda v: v["name_label"])
    copied = sorted(backupable_vms(state, OTHER_POOL), key=lambda v: v["name_label"])[0]
    exporter = Exporter(dep.env)
    jobs, scrapes = {}, {}
    try:
        for name, args, before in (
                ("night 1", ("--vm", vm["uuid"], "--pool", POOL, "--mode", "repo"), None),
                ("night 2", ("--all", "--pool", POOL, "--mode", "repo"), vm),
                ("export", ("--vm", vm["uuid"], "--pool", POOL, "--mode", "export"), None),
                ("sr-copy", ("--vm", copied["uuid"], "--pool", OTHER_POOL, "--mode", "sr-copy"), None)):
            if before is not None:  # the guest writes between the nights: night 2 has a delta to read
                guest_write(dep.sim, _system_vdi_uuid(dep, POOL, before["name_label"]), 3 * MiB, b"night 2" * 300)
            jobs[name] = _job(dep, *args)
            scrapes[name] = exporter.scrape()
    finally:
        exporter.stop()
    return Nights(vm, other, copied, jobs, scrapes)


def _ids(nights: Nights) -> tuple[str, str]:
    """The backup ids of the VM's two repo nights (night 2 is a delta against night 1)."""
    first = _manifest(_run(nights.jobs["night 1"], nights.vm))
    second = _manifest(_run(nights.jobs["night 2"], nights.vm))
    return first["backup_id"], second["backup_id"]


def test_the_nights_are_what_the_views_are_checked_against(nights):
    """The manifests themselves: night 1 full (its first), night 2 incremental against it, the
    other VM's first full, the export backup with no kind at all, the sr-copy backup full."""
    first, second = (_manifest(_run(nights.jobs[n], nights.vm)) for n in ("night 1", "night 2"))
    assert (first["backup_kind"], "full: " + first["full_reason"]) == ("full", FIRST_REPO), first
    assert (second["backup_kind"], second["base_backup"], second["chain"]) == \
           ("incremental", first["backup_id"], 1), second
    assert "full: " + _manifest(_run(nights.jobs["night 2"], nights.other))["full_reason"] == FIRST_REPO
    exported = _manifest(_run(nights.jobs["export"], nights.vm))
    assert not {"backup_kind", "full_reason", "base_backup", "chain"} & set(exported), exported
    copy = _manifest(_run(nights.jobs["sr-copy"], nights.copied))
    assert "full: " + copy["full_reason"] == FIRST_SR_COPY, copy


# -- tinabs status --------------------------------------------------------------------------------------

def _status_line(dep, job: dict, pool: str, vm: dict) -> str:
    """The run's line of `tinabs status JOB` (text), found by its pool and VM name."""
    out = dep.cli("status", job["id"], check=True).stdout
    lines = [line for line in out.splitlines() if line.split()[:2] == [pool, vm["name_label"]]]
    assert len(lines) == 1, out
    return lines[0]


def test_status_says_incremental_from_which_backup_or_full_and_why(deployment, nights):
    dep = deployment
    first, second = _ids(nights)
    for job, pool, vm, says in (("night 1", POOL, nights.vm, FIRST_REPO),
                                ("night 2", POOL, nights.vm, f"incremental (from {first})"),
                                ("night 2", POOL, nights.other, FIRST_REPO),
                                ("sr-copy", OTHER_POOL, nights.copied, FIRST_SR_COPY)):
        line = _status_line(dep, nights.jobs[job], pool, vm)
        assert line.endswith(f"; {says}"), (job, line)
    assert f" repository backup {second} (" in _status_line(dep, nights.jobs["night 2"], POOL, nights.vm)
    # an export backup: its file, nothing of a kind
    line = _status_line(dep, nights.jobs["export"], POOL, nights.vm)
    assert line.endswith(".xva") and "incremental" not in line and "full" not in line, line
    # --json: the run's record
    runs = {r["vm_uuid"]: r for r in dep.status(nights.jobs["night 2"]["id"])["runs"]}
    inc, full = runs[nights.vm["uuid"]], runs[nights.other["uuid"]]
    assert (inc["backup_kind"], inc["base_backup"], inc["chain"]) == ("incremental", first, "1"), inc
    assert "full_reason" not in inc
    assert (full["backup_kind"], "full: " + full["full_reason"], full["chain"]) == ("full", FIRST_REPO, "0"), full
    assert "base_backup" not in full
    (exported,) = dep.status(nights.jobs["export"]["id"])["runs"]
    assert not {"backup_kind", "full_reason", "base_backup", "chain"} & set(exported), exported


# -- the job's report -----------------------------------------------------------------------------------

def _report(dep, job_id: str) -> dict:
    """The job's report as the worker stored it when the job ended (`tinabs status --json`)."""
    return wait_for(lambda: dep.status(job_id).get("report"), 30, f"job {job_id}'s report")


def test_the_report_says_per_vm_how_and_counts_each_kind(deployment, nights):
    dep = deployment
    first, _second = _ids(nights)
    report = _report(dep, nights.jobs["night 2"]["id"])
    vms = {v["uuid"]: v for v in report["vms"]}
    inc, full = vms[nights.vm["uuid"]], vms[nights.other["uuid"]]
    assert (inc["backup_kind"], inc["base_backup"], inc["full_reason"], inc["chain"]) == \
           ("incremental", first, None, 1), inc
    assert (full["backup_kind"], full["base_backup"], "full: " + full["full_reason"], full["chain"]) == \
           ("full", None, FIRST_REPO, 0), full
    assert (report["totals"]["incremental"], report["totals"]["full"]) == (1, 1), report["totals"]
    # its text (the email's body): on each VM's line, and in the totals
    body = report_text(report)
    lines = {v["uuid"]: [line for line in body.splitlines() if line.split()[:2] == [POOL, v["name_label"]]]
             for v in (nights.vm, nights.other)}
    assert lines[nights.vm["uuid"]][0].endswith(f"  incremental (from {first})") and \
        len(lines[nights.vm["uuid"]]) == 1, body
    assert lines[nights.other["uuid"]][0].endswith(f"  {FIRST_REPO}") and len(lines[nights.other["uuid"]]) == 1, body
    assert "; 1 incremental, 1 full" in body, body
    # night 1's: one full
    night1 = _report(dep, nights.jobs["night 1"]["id"])
    assert (night1["totals"]["incremental"], night1["totals"]["full"]) == (0, 1), night1["totals"]
    # an export job's report has no kind, per VM or in its totals, and its text says nothing of one
    exported = _report(dep, nights.jobs["export"]["id"])
    (vm,) = exported["vms"]
    assert (vm["backup_kind"], vm["full_reason"], vm["base_backup"], vm["chain"]) == (None, None, None, None), vm
    assert "incremental" not in exported["totals"] and "full" not in exported["totals"], exported["totals"]
    text = report_text(exported)
    assert "incremental" not in text and "full" not in text, text


# -- tinabs list ----------------------------------------------------------------------------------------

def test_list_has_a_kind_column_and_the_manifest_fields(deployment, nights):
    dep = deployment
    first, second = _ids(nights)
    listed = json.loads(dep.cli("list", "--json", check=True).stdout)
    by_name = {b["backup_id"] or b["path"]: b for b in listed}
    assert (by_name[first]["backup_kind"], "full: " + by_name[first]["full_reason"], by_name[first]["chain"]) == \
           ("full", FIRST_REPO, 0), by_name[first]
    assert (by_name[second]["backup_kind"], by_name[second]["base_backup"], by_name[second]["chain"],
            by_name[second]["full_reason"]) == ("incremental", first, 1, None), by_name[second]
    exported = by_name[_run(nights.jobs["export"], nights.vm)["path"]]
    assert (exported["mode"], exported["backup_kind"], exported["full_reason"], exported["base_backup"]) == \
           ("export", None, None, None), exported
    copied = by_name[_run(nights.jobs["sr-copy"], nights.copied)["path"]]
    assert (copied["mode"], copied["backup_kind"], "full: " + copied["full_reason"]) == \
           ("sr-copy", "full", FIRST_SR_COPY), copied
    # the text table: KIND after MODE, "-" for the export backup
    header, *rows = dep.cli("list", check=True).stdout.splitlines()
    assert header.split()[:4] == ["VM", "POOL", "MODE", "KIND"], header
    kinds = {row.split()[-1]: row.split()[2:4] for row in rows}
    assert kinds[first] == ["repo", "full"] and kinds[second] == ["repo", "incremental"], rows
    assert kinds[exported["path"]] == ["export", "-"] and kinds[copied["path"]] == ["sr-copy", "full"], rows


# -- the web console ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def web(deployment, nights):
    proc = WebProc(deployment.env, deployment.root).start()
    client = WebClient(proc.base)
    assert client.login("admin", PASSWORD).status == 303
    try:
        yield proc, client
    finally:
        proc.stop()


def _cells(row: str) -> dict:
    """The kind cell of a table row: (its class, its text as the browser shows it)."""
    found = re.findall(r'<td class="kind ?([a-z]*)">(.*?)</td>', row, re.S)
    assert len(found) == 1, row
    return {"class": found[0][0], "text": html.unescape(found[0][1]).strip()}


def test_the_job_page_shows_how_each_run_was_taken(nights, web):
    _proc, client = web
    first, _second = _ids(nights)
    job_id = nights.jobs["night 2"]["id"]
    page = client.get(f"/jobs/{job_id}")
    assert page.status == 200 and "<th>Kind</th>" in page.body
    rows = re.findall(r'<tr class="run">(.*?)</tr>', page.body, re.S)
    by_vm = {vm["uuid"]: [r for r in rows if f"<td>{vm['name_label']}</td>" in r] for vm in (nights.vm, nights.other)}
    assert all(len(found) == 1 for found in by_vm.values()), rows
    assert _cells(by_vm[nights.vm["uuid"]][0]) == {"class": "incremental", "text": f"incremental (from {first})"}
    assert _cells(by_vm[nights.other["uuid"]][0]) == {"class": "full", "text": FIRST_REPO}
    # the JSON the live view redraws from says the same
    state = json.loads(client.get(f"/jobs/{job_id}/state", headers={"Accept": "application/json"}).body)
    shown = {r["uuid"]: (r["backup_kind"], r["how"]) for r in state["runs"]}
    assert shown == {nights.vm["uuid"]: ("incremental", f"incremental (from {first})"),
                     nights.other["uuid"]: ("full", FIRST_REPO)}, shown
    # an export job's page: an empty kind cell
    page = client.get(f"/jobs/{nights.jobs['export']['id']}")
    (row,) = re.findall(r'<tr class="run">(.*?)</tr>', page.body, re.S)
    assert _cells(row) == {"class": "", "text": ""}, row
    state = json.loads(client.get(f"/jobs/{nights.jobs['export']['id']}/state",
                                  headers={"Accept": "application/json"}).body)
    assert [(r["backup_kind"], r["how"]) for r in state["runs"]] == [("", "")], state["runs"]


def test_the_catalog_shows_the_kind_of_each_backup(nights, web):
    _proc, client = web
    first, second = _ids(nights)
    page = client.get("/catalog")
    assert page.status == 200 and "<th>Kind</th>" in page.body
    rows = re.findall(r'<tr class="backup">(.*?)</tr>', page.body, re.S)

    def row_of(name: str) -> str:
        (found,) = [r for r in rows
                    if f'<span class="backup-id">{name}</span>' in r or f'<td class="path">{name}</td>' in r]
        return found

    assert _cells(row_of(first)) == {"class": "full", "text": FIRST_REPO}
    assert _cells(row_of(second)) == {"class": "incremental", "text": f"incremental (from {first})"}
    copied = _run(nights.jobs["sr-copy"], nights.copied)["path"]
    assert _cells(row_of(copied)) == {"class": "full", "text": FIRST_SR_COPY}
    assert _cells(row_of(_run(nights.jobs["export"], nights.vm)["path"])) == {"class": "", "text": ""}


def test_the_live_job_view_redraws_the_kind(nights, web):
    """In a browser: the page's script replaces the runs table with what /jobs/<id>/state says
    (drawJob, as its poll does); the kind survives that redraw."""
    proc, _client = web
    first, _second = _ids(nights)
    driver = headless_chromium("1400x900", page_load_timeout_s=60)
    try:
        driver.get(f"{proc.base}/jobs/{nights.jobs['night 2']['id']}")  # the login form first, then the job
        driver.find_element(By.NAME, "username").send_keys("admin")
        driver.find_element(By.NAME, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login").click()
        wait_for(lambda: "/jobs/" in driver.current_url and driver.find_elements(By.CSS_SELECTOR, "tr.run"), 30,
                 "the job page", explain=lambda: driver.page_source[:2000])
        # the rows as served, marked; then the redraw from the JSON state, as the page's poll does it
        redrawn = driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            document.querySelectorAll('tr.run').forEach(r => r.dataset.served = '1');
            fetch(document.getElementById('job').dataset.stateUrl, {headers: {Accept: 'application/json'}})
              .then(r => r.json()).then(job => { drawJob(job); done(job.runs.length); }, e => done(String(e)));
        """)
        assert redrawn == 2, redrawn
        assert driver.find_elements(By.CSS_SELECTOR, "tr.run") and \
            not driver.find_elements(By.CSS_SELECTOR, "tr.run[data-served]"), driver.page_source[:3000]
        kinds = {r.find_element(By.CSS_SELECTOR, "td").text:
                 (r.find_element(By.CSS_SELECTOR, "td.kind").text, r.find_element(By.CSS_SELECTOR, "td.kind")
                  .get_attribute("class")) for r in driver.find_elements(By.CSS_SELECTOR, "tr.run")}
        screenshot(driver, "web-incremental-job")
    finally:
        driver.quit()
    assert kinds == {nights.vm["name_label"]: (f"incremental (from {first})", "kind incremental"),
                     nights.other["name_label"]: (FIRST_REPO, "kind full")}, kinds


# -- metrics --------------------------------------------------------------------------------------------

def test_the_last_backup_incremental_gauge(nights):
    def gauge(when: str, vm: dict, pool: str = POOL):
        labels = dict(pool=pool, vm=vm["name_label"], vm_uuid=vm["uuid"])
        key = (GAUGE, tuple(sorted(labels.items())))
        return nights.scrapes[when].get(key)

    assert gauge("night 1", nights.vm) == 0.0  # full
    assert gauge("night 1", nights.other) is None  # not backed up yet
    assert gauge("night 2", nights.vm) == 1.0 and gauge("night 2", nights.other) == 0.0
    assert gauge("export", nights.vm) is None  # its last backup is an export: no kind to speak of
    assert gauge("export", nights.other) == 0.0
    assert gauge("sr-copy", nights.copied, OTHER_POOL) == 0.0
    # and the families it sits beside still say what they said
    assert _value(nights.scrapes["night 2"], "tinabs_last_run_succeeded", pool=POOL, vm=nights.vm["name_label"],
                  vm_uuid=nights.vm["uuid"]) == 1
