"""The web console in a real browser: headless Chromium (Debian's, driven by its chromedriver)
against `tinabs web`, a real worker, a private Redis and the simulator over HTTP.

One sysadmin's session, in order: log in; see every pool with its hosts and VMs (tags, last
backup) and filter them; start today's tag backup, look at the plan with its estimated bytes,
confirm, and watch the job reach 100 % live (no reload); find the backups in the catalog and
verify one; pick two VMs, start their backup while exports are stalled in the pool, abort it,
and check the pools and the destination are left clean; restore a backup and find the VM in
the pool.  Screenshots of each step are kept in artifacts/web-*.png.
"""
from __future__ import annotations

import datetime as dt
import functools
import time

import pytest
from selenium.webdriver.common.alert import Alert
from selenium.webdriver.common.by import By

from helpers.backup_checks import assert_clean
from helpers.browser import headless_chromium, screenshot
from helpers.deployment import TEST_TUNING, Deployment
from helpers.pool_checks import backupable_vms
from helpers.waiting import wait_for
from helpers.web_proc import PASSWORD, running_console

SIM_ARGS = ("--pools", "2", "--vms-per-pool", "5", "--disk-mib", "4")
FLOWER = "http://flower.example:5555"  # where the console links to (nothing needs to answer there)
WEB = f"""
[web]
flower_url = "{FLOWER}"
"""
STALL_S = 120  # an export stalled this long ends in time only if the abort cancels it


@pytest.fixture(scope="module")
def dep(redis_server, tmp_path_factory):
    d = Deployment(tmp_path_factory.mktemp("webui"), redis_server, SIM_ARGS, tuning=TEST_TUNING + WEB)
    with running_console(d, name="wb1", concurrency=2) as d:
        yield d


@pytest.fixture(scope="module")
def browser():
    driver = headless_chromium("1400x1100", page_load_timeout_s=60)
    try:
        yield driver
    finally:
        driver.quit()


def _click_to(driver, element, path: str) -> None:
    """Click, then wait until the browser shows the page at ``path`` (and it has loaded)."""
    before = driver.current_url
    element.click()
    wait_for(lambda: driver.current_url != before and path in driver.current_url
             and driver.execute_script("return document.readyState") == "complete", 60, f"the page {path}",
             explain=functools.partial(_page, driver))


def _page(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def _text(driver, css: str) -> str:
    """The element's text; "" while the page does not have it (yet)."""
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def _today() -> str:
    return ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[dt.datetime.now().weekday()]


def _tagged(dep, tag: str) -> set[tuple[str, str]]:
    state = dep.sim.state()
    return {(pool, vm["uuid"]) for pool in state["pools"] for vm in backupable_vms(state, pool) if tag in vm["tags"]}


def _job_state(driver) -> str:
    return _text(driver, "#job-state")


def test_a_sysadmin_session_in_the_browser(dep, browser):
    base = dep.web.base
    d = browser
    shown = functools.partial(_page, d)  # what the page says, when a wait fails

    # -- log in: any page leads to the login form first ------------------------------------------
    d.get(base + "/pools")
    assert "/login" in d.current_url
    d.find_element(By.NAME, "username").send_keys("admin")
    d.find_element(By.NAME, "password").send_keys(PASSWORD)
    _click_to(d, d.find_element(By.ID, "login"), "/pools")

    # -- pools: each with its state, hosts and VMs (tags, last backup) -------------------------------
    state = dep.sim.state()
    for pool in ("pool-a", "pool-b"):
        section = d.find_element(By.ID, f"pool-{pool}")
        assert "reachable" in section.find_element(By.TAG_NAME, "h2").text
        hosts = section.find_elements(By.CSS_SELECTOR, "h3.host")
        assert len(hosts) == len(state["pools"][pool]["host"]), [h.text for h in hosts]
        rows = section.find_elements(By.CSS_SELECTOR, "tr.vm")
        expected = sorted(vm["name_label"] for vm in backupable_vms(state, pool))
        assert sorted(r.get_attribute("data-vm") for r in rows) == expected
        assert all("never" in r.find_element(By.CSS_SELECTOR, "td.last").text for r in rows)
    screenshot(d, "web-pools")
    today = _today()
    wanted = _tagged(dep, today)
    assert wanted, f"the simulator has no VM tagged {today}"
    # filter by today's tag: only those VMs stay
    box = d.find_element(By.ID, "filter")
    box.clear()
    box.send_keys(today)
    box.submit()
    wait_for(lambda: "q=" in d.current_url, 30, "the filtered page", explain=shown)
    listed = d.find_elements(By.CSS_SELECTOR, "tr.vm")
    assert len(listed) == len(wanted), [r.text for r in listed]
    assert all(today in r.text for r in listed)

    # -- today's tag backup: plan with estimates, then start, then watch it to 100 % ------------------
    dep.sim.add_fault({"handler": "/export", "delay_s": 1.5, "times": len(wanted)})  # slow enough to watch
    _click_to(d, d.find_element(By.ID, "backup-today"), "/backup/new")
    assert d.find_element(By.CSS_SELECTOR, "input[name=kind][value=today]").is_selected()
    _click_to(d, d.find_element(By.ID, "preview"), "/backup/preview")
    planned = wait_for(lambda: d.find_elements(By.CSS_SELECTOR, "tr.planned"), 60, "the plan", explain=shown)
    assert len(planned) == len(wanted)
    summary = _text(d, "#plan-summary")
    assert f"{len(wanted)} VM(s)" in summary and "MB to the destination" in summary, summary
    screenshot(d, "web-plan")
    _click_to(d, d.find_element(By.ID, "start"), "/jobs/")
    job_id = d.current_url.rstrip("/").rsplit("/", 1)[1]
    first = _job_state(d)
    wait_for(lambda: _job_state(d) in ("running", "succeeded") and d.find_elements(By.CSS_SELECTOR, "tr.run"),
             60, "runs on the job page", explain=shown)
    wait_for(lambda: "export" in _text(d, "#runs") or _job_state(d) == "succeeded", 60, "an export under way",
             explain=shown)
    screenshot(d, "web-job-running")
    wait_for(lambda: _job_state(d) == "succeeded", 120, "the job to succeed", explain=shown)
    assert first != "succeeded"  # the page changed by itself: the live view, no reload
    assert _text(d, "#total-text") == "100.0%"
    assert d.find_element(By.ID, "total-bar").get_attribute("value") == "100"
    runs = d.find_elements(By.CSS_SELECTOR, "tr.run")
    assert len(runs) == len(wanted) and all("succeeded" in r.text for r in runs)
    screenshot(d, "web-job-done")
    job = dep.status(job_id)
    assert job["succeeded"] and {(r["pool"], r["vm_uuid"]) for r in job["runs"]} == wanted
    # each run links to its (last) Celery task in Flower, the job to Flower's task list
    links = {a.get_attribute("href") for a in d.find_elements(By.CSS_SELECTOR, "#runs a")}
    assert links == {f"{FLOWER}/task/{r['task_id']}" for r in job["runs"]}, links
    assert d.find_element(By.PARTIAL_LINK_TEXT, "tasks in Flower").get_attribute("href") == f"{FLOWER}/tasks"

    # -- the catalog has them; verify one ---------------------------------------------------------------
    _click_to(d, d.find_element(By.LINK_TEXT, "Catalog"), "/catalog")
    backups = d.find_elements(By.CSS_SELECTOR, "tr.backup")
    assert len(backups) == len(wanted)
    _click_to(d, backups[0].find_element(By.CSS_SELECTOR, "button.verify"), "/actions/")
    wait_for(lambda: "OK:" in _text(d, "#action-result"), 60, "the verify verdict", explain=shown)
    screenshot(d, "web-verify")
    d.get(base + "/pools")
    # the pools page shows their last backup now
    assert len([c for c in d.find_elements(By.CSS_SELECTOR, "td.last") if "never" not in c.text]) == len(wanted)

    # -- abort a second job whose exports are stalled in the pool: the pools are left clean -------------
    dep.sim.clear_faults()
    dep.sim.add_fault({"handler": "/export", "delay_s": STALL_S})
    before = set(dep.files())
    boxes = d.find_elements(By.CSS_SELECTOR, "#pool-pool-a input[name=vm]")[:2]
    for b in boxes:
        b.click()
    _click_to(d, d.find_element(By.ID, "backup-selected"), "/backup/new")
    assert d.find_element(By.CSS_SELECTOR, "input[name=kind][value=vms]").is_selected()
    _click_to(d, d.find_element(By.ID, "preview"), "/backup/preview")
    wait_for(lambda: len(d.find_elements(By.CSS_SELECTOR, "tr.planned")) == 2, 60, "the plan of the two VMs",
             explain=shown)
    _click_to(d, d.find_element(By.ID, "start"), "/jobs/")
    slow_job = d.current_url.rstrip("/").rsplit("/", 1)[1]
    dep.sim.wait_fired(timeout=90)  # an export stalled
    d.find_element(By.ID, "abort").click()
    Alert(d).accept()
    began = time.monotonic()
    wait_for(lambda: _job_state(d) == "aborted", 90, "the job to end aborted", explain=shown)
    assert time.monotonic() - began < STALL_S / 2  # the stalled export was cancelled, not waited out
    runs = d.find_elements(By.CSS_SELECTOR, "tr.run")
    assert len(runs) == 2 and all("aborted by admin (web)" in r.text for r in runs), [r.text for r in runs]
    assert not d.find_elements(By.ID, "abort")
    screenshot(d, "web-job-aborted")
    dep.sim.clear_faults()
    new = set(dep.files()) - before
    assert not new, sorted(new)
    assert_clean(dep, new)
    assert dep.status(slow_job)["aborted_by"] == "admin (web)"

    # -- restore a backup with the CLI's defaults: a new VM in the pool -----------------------------------
    vms_before = {vm["uuid"] for pool in ("pool-a", "pool-b") for vm in backupable_vms(dep.sim.state(), pool)}
    _click_to(d, d.find_element(By.LINK_TEXT, "Catalog"), "/catalog")
    _click_to(d, d.find_elements(By.CSS_SELECTOR, "a.restore")[0], "/catalog/restore")
    assert d.find_element(By.CSS_SELECTOR, "input[name=macs][value=auto]").is_selected()
    assert not d.find_element(By.NAME, "start").is_selected()
    _click_to(d, d.find_element(By.ID, "restore"), "/actions/")
    wait_for(lambda: "Restored as" in _text(d, "#action-result"), 120, "the restore", explain=shown)
    screenshot(d, "web-restored")
    name = d.find_element(By.CSS_SELECTOR, "#action-result b").text
    state = dep.sim.state()
    restored = [vm for pool in state["pools"] for vm in backupable_vms(state, pool)
                if vm["uuid"] not in vms_before]
    assert [vm["name_label"] for vm in restored] == [name] and "(restored " in name
    assert restored[0]["power_state"] == "Halted"  # not started: the CLI's default
