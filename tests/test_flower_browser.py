"""Flower as an operator sees it: a real browser on a real Flower watching real backups.

Given a simulated pool of two VMs, Redis, two real workers and `celery -A tinabs_tasks flower`
with basic auth (as deploy/docker-compose.yml starts it), when a job backs up both VMs, one of
them with a system disk full of data on a host that streams at 8 MB/s (an export of seconds):
- while it exports, Flower's API shows its `tinabs.export` task in state PROGRESS, with the
  bytes done so far (growing) in its Result;
- afterwards headless Chromium is refused without credentials, logs in with basic auth, opens
  the tasks page and finds every `tinabs.*` task of the job listed as SUCCESS; the tasks'
  arguments name the pool and the VM, never the pool's password.  The page is kept as
  artifacts/flower-tasks.png.
Given a VM whose snapshot fails for good, when it is backed up, then the operator's call for
failed tasks since a given time lists its `tinabs.snapshot` task, and the task's page shows
the reason as its exception (kept as artifacts/flower-failed-task.png).
"""
from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from helpers import toml_write
from helpers.browser import headless_chromium, screenshot
from helpers.monitors import FlowerProc
from helpers.waiting import wait_for

DEPLOYMENT_SIM_ARGS = ("--pools", "1", "--vms-per-pool", "2", "--disk-mib", "32", "--host-bandwidth-mbps", "8")
USER, PASSWORD = "ops", "flower-browser-Pw-8k2m"
MiB = 1 << 20
STAGES = ("snapshot", "skeleton", "disks", "vifs", "export", "cleanup")
#: the tasks of a backup of two VMs: the plan, and each stage once per VM (the job may have more,
#: e.g. its report, which must end well too)
BACKUP_TASKS = Counter(["tinabs.plan"] + [f"tinabs.{s}" for s in STAGES] * 2)
SIZE = r"[\d.]+ [KMGT]?B"  # commands.common.human_bytes
UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
SNAPSHOT_GONE = ["HANDLE_INVALID", "VDI", "OpaqueRef:x"]


@pytest.fixture(scope="module")
def flower(deployment):
    flower = FlowerProc(deployment.env, deployment.root, USER, PASSWORD).start()
    try:
        wait_for(lambda: _hears_every_worker(flower, deployment), 30, "Flower to hear every worker's heartbeat")
        yield flower
    finally:
        flower.stop()


def _hears_every_worker(flower, dep) -> bool:
    """Flower's event receiver is consuming once its /metrics counts each worker online (from heartbeats)."""
    status, body = flower.get("/metrics")
    return status == 200 and all(re.search(rf'flower_worker_online{{worker="{w.name}@[^"]+"}} 1\.0', body.decode())
                                 for w in dep.workers)


@pytest.fixture(scope="module")
def browser():
    driver = headless_chromium("1600x1300", page_load_timeout_s=30)
    try:
        yield driver
    finally:
        driver.quit()


def _api(flower, path: str, **query) -> dict:
    status, body = flower.get(path + ("?" + urllib.parse.urlencode(query) if query else ""))
    assert status == 200, (path, status, body[:300])
    return json.loads(body)


def _vms(dep) -> list[dict]:
    return sorted((r for r in dep.sim.state()["pools"]["pool-a"]["VM"].values()
                   if not (r["is_a_template"] or r["is_a_snapshot"] or r["is_control_domain"])),
                  key=lambda r: r["uuid"])


def _bytes(text: str) -> float:
    """`12.6 MB, 8.0 MB/s` or `33.6 MB of 33.6 MB (100%), ...` -> 12.6e6 or 33.6e6."""
    number, unit = text.split(",")[0].split(" of ")[0].split()
    return float(number) * UNITS[unit]


def _system_vdi_uuid(dep, vm: dict) -> str:
    pool = dep.sim.state()["pools"]["pool-a"]
    vbd = next(pool["VBD"][b] for b in vm["VBDs"] if pool["VBD"][b]["userdevice"] == "0")
    return pool["VDI"][vbd["VDI"]]["uuid"]


def _fill_system_disk(dep, vm: dict) -> None:
    """Data in every MiB: no chunk is skipped as zero, so the export streams the whole disk (~4 s)."""
    uuid = _system_vdi_uuid(dep, vm)
    for offset in range(512, int(dep.sim.vdi_info(uuid)["virtual_size"]), MiB):
        status, body = dep.sim.control_call("POST", f"/sim/vdi/{uuid}/write", {"offset": offset, "hex": "5a"})
        assert status == 200, body


class ExportWatcher(threading.Thread):
    """Asks Flower's API, every 0.2 s, for `tinabs.export` tasks in state PROGRESS."""

    def __init__(self, flower):
        super().__init__(daemon=True)
        self.flower, self.seen, self.answers = flower, [], Counter()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            status, body = self.flower.get("/api/tasks?taskname=tinabs.export&state=PROGRESS")
            self.answers[status] += 1
            if status == 200:
                self.seen.extend(json.loads(body).values())
            self._stop_event.wait(0.2)

    def stop(self) -> list[dict]:
        self._stop_event.set()
        self.join(timeout=30)
        assert set(self.answers) == {200}, f"Flower's API did not always answer: {self.answers}"
        return self.seen


@pytest.fixture(scope="module")
def watched_job(deployment, flower):
    """The job of both VMs (the big one exporting for seconds), with what Flower showed meanwhile."""
    dep = deployment
    big = _vms(dep)[0]
    _fill_system_disk(dep, big)
    watcher = ExportWatcher(flower)
    watcher.start()
    try:
        status, job = dep.backup("--all", timeout=120)
    finally:
        seen = watcher.stop()
    assert status == 0 and len(job["runs"]) == 2, job
    # Flower hears a task's end just after the run's state says so: wait for every task of the job
    wait_for(lambda: _job_tasks_done(flower, job["id"]), 20, "Flower to see every task of the job end")
    return {"job": job, "big": big, "progress": seen}


def _job_tasks_done(flower, job_id: str) -> bool:
    tasks = _api(flower, "/api/tasks", search=f"args:{job_id}").values()
    return (not BACKUP_TASKS - Counter(t["name"] for t in tasks)
            and all(t["state"] in ("SUCCESS", "FAILURE") for t in tasks))


def _password(dep) -> str:
    password = Path(toml_write.read(dep.config)["pools"]["pool-a"]["password_file"]).read_text().strip()
    assert len(password) >= 8
    return password


def test_export_progress_shows_in_flower(watched_job):
    big, seen = watched_job["big"], watched_job["progress"]
    # While the big VM exported, its export task was listed in state PROGRESS, with the bytes so far
    mine = [t for t in seen if big["uuid"] in t["args"]]
    assert len(mine) >= 3, seen
    assert {t["state"] for t in mine} == {"PROGRESS"} and len({t["uuid"] for t in mine}) == 1
    results = [t["result"] or "" for t in mine]
    assert all(re.fullmatch(rf"export: {SIZE}( of {SIZE} \(\d+%\))?, {SIZE}/s", r) for r in results), results
    done = [_bytes(r.removeprefix("export: ")) for r in results]
    assert len(set(done)) >= 2 and done == sorted(done), results  # growing


def test_tasks_page_lists_the_job_as_succeeded(deployment, flower, browser, watched_job):
    dep, job = deployment, watched_job["job"]
    # Without credentials, the tasks page is refused (headless Chromium shows a blank page for it)
    browser.get(f"{flower.base}/tasks")
    assert _status(browser) == 401 and not browser.find_elements(By.ID, "tasks-table")
    # When the operator logs in with basic auth, opens the tasks page and searches for the job's tasks
    host = flower.base.removeprefix("http://")
    browser.get(f"http://{USER}:{PASSWORD}@{host}/tasks")
    assert _status(browser) == 200
    search = WebDriverWait(browser, 20).until(lambda d: d.find_element(By.CSS_SELECTOR, "#tasks-table_filter input"))
    search.clear()
    search.send_keys(f"args:{job['id']}", Keys.ENTER)
    rows = wait_for(lambda: _backup_rows(browser), 20, "the job's tasks in the table")
    screenshot(browser, "flower-tasks")
    # Then every task of the job is listed as succeeded: the plan, and each stage once per VM
    assert {r["state"] for r in rows} == {"SUCCESS"}, rows
    assert all(r["name"].startswith("tinabs.") for r in rows) and len(rows) < 15, rows  # all on one page
    # And a task's page shows its arguments, naming the pool and the VM, and never the pool's password
    export = next(r for r in rows if r["name"] == "tinabs.export")
    browser.get(f"{flower.base}/task/{export['uuid']}")
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "SUCCESS" in page and "'pool': 'pool-a'" in page
    assert any(f"'uuid': '{r['vm_uuid']}', 'name': '{r['vm_name']}'" in page for r in job["runs"]), page
    everything = json.dumps(_api(flower, "/api/tasks"))
    assert _password(dep) not in page + browser.page_source + everything


def _status(browser) -> int:
    """The HTTP status of the page the browser shows (Navigation Timing)."""
    return browser.execute_script("return performance.getEntriesByType('navigation')[0].responseStatus")


def _backup_rows(browser) -> list[dict] | None:
    """The table's rows as {column: text}, once they include every task of the backup (None
    until then, and while Flower redraws the table under the reading: its rows are replaced)."""
    rows = []
    try:
        columns = [th.get_attribute("data-column")
                   for th in browser.find_elements(By.CSS_SELECTOR, "#tasks-table thead th")]
        for tr in browser.find_elements(By.CSS_SELECTOR, "#tasks-table tbody tr"):
            cells = [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            if len(cells) == len(columns):
                rows.append(dict(zip(columns, cells)))
    except StaleElementReferenceException:
        return None
    return rows if not BACKUP_TASKS - Counter(r.get("name") for r in rows) else None


def test_a_failed_task_shows_its_reason(deployment, flower, browser):
    dep = deployment
    vm = _vms(dep)[1]
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() - 60))  # Flower reads local time
    dep.sim.add_fault({"method": "VDI.snapshot", "error": SNAPSHOT_GONE, "pool": "pool-a",
                       "arg": _system_vdi_uuid(dep, vm)})
    try:
        status, job = dep.backup("--vm", vm["uuid"], timeout=90)
    finally:
        dep.sim.clear_faults()
    assert status == 1 and job["runs"][0]["state"] == "failed", job
    reason = job["runs"][0]["error"]
    assert reason.startswith("snapshot: ") and "HANDLE_INVALID" in reason
    # When the operator asks Flower for the tasks that failed since a given time
    failed = wait_for(lambda: _api(flower, "/api/tasks", state="FAILURE", received_start=since), 20,
                       "a failed task in Flower")
    # Then the snapshot of that VM is listed, and its exception is the run's reason
    (task_id, task), = failed.items()
    assert task["name"] == "tinabs.snapshot" and vm["uuid"] in task["args"]
    assert task["exception"].startswith("StageFailed(") and reason in task["exception"], task["exception"]
    info = _api(flower, f"/api/task/info/{task_id}")
    assert info["state"] == "FAILURE" and reason in info["traceback"]
    # And the task's page shows it to a logged-in browser
    host = flower.base.removeprefix("http://")
    browser.get(f"http://{USER}:{PASSWORD}@{host}/task/{task_id}")
    row = browser.find_element(By.XPATH, "//dt[normalize-space()='Exception']/..")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", row)
    screenshot(browser, "flower-failed-task")
    assert "FAILURE" in browser.find_element(By.TAG_NAME, "body").text
    assert reason in row.text, row.text
