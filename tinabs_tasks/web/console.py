"""What the console's pages show and do, in plain Python (routes.py turns it into HTTP).

Everything goes through what the CLI uses: jobstart.start_job to back up, JobStore for job
state and JobStore.abort, catalog.scan for the backups on disk, runs.requests (restore, verify),
and the console tasks (tasks_console.py) for what only a worker of a pool can see.  Blocking
calls (Redis, waiting for a worker's answer): routes.py runs them in a thread.
"""
from __future__ import annotations

import datetime as dt
import time

from tinabs_tasks.storage import catalog
from tinabs_tasks.runs import keys
from tinabs_tasks.restore import into_pool as restore
from tinabs_tasks.config.model import Config
from tinabs_tasks.runs.store import JobStore, RunState
from tinabs_tasks.runs.jobstart import check_pools, start_job
from tinabs_tasks.runs import requests
from tinabs_tasks.runs.redis_client import client
from tinabs_tasks.runs.job_view import backup_name, how_taken
from tinabs_tasks.schedule.times import WEEKDAYS
from tinabs_tasks.backup.modes import MODES
from tinabs_tasks.backup.selection import describe
from tinabs_tasks.repo.configured import open_configured
from tinabs_tasks.repo.errors import RepoError

#: a pool's inventory is asked again after this (or on "refresh")
INVENTORY_FRESH_S = 15.0
POLL_S = 0.05
#: a question for a page is worth a few seconds of a broker's restart, not the two minutes a
#: backup's own messages wait (app.PUBLISH_RETRY): the page says the broker is away instead
ASK_RETRY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


class ConsoleError(Exception):
    """A request the console refuses, with the reason for the user (shown on the page)."""


class Console:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.redis = client(cfg.broker_url)
        self.store = JobStore(self.redis, cfg.limits.state_ttl_s)
        self._inventory: dict[str, tuple[float, dict]] = {}  # pool -> (when, its inventory)
        self._wait = cfg.web.answer_wait_s  # how long a page waits for a pool's worker

    # -- pools ------------------------------------------------------------------------------
    def pools(self, refresh: bool = False) -> list[dict]:
        """Every configured pool: its state, hosts and VMs (grouped by host), each VM's last backup."""
        now = time.monotonic()
        stale = [p for p in sorted(self.cfg.pools)
                 if refresh or p not in self._inventory or now - self._inventory[p][0] > INVENTORY_FRESH_S]
        for p, data in self.ask("tinabs.inventory", stale, lambda p: (p,)).items():
            self._inventory[p] = (time.monotonic(), data)
        last = self.last_backups()
        out = []
        for name in sorted(self.cfg.pools):
            data = self._inventory[name][1]
            if not data["reachable"]:
                out.append({**data, "hosts": [], "vms": []})
                continue
            vms = [{**vm, "last_backup": last.get((name, vm["uuid"]))} for vm in data["vms"]]
            out.append({**data, "vms": vms, "by_host": _by_host(data["hosts"], vms)})
        return out

    def ask(self, task: str, pools: list[str], args) -> dict[str, dict]:
        """Send ``task`` with ``args(pool)`` to each pool's queue and wait for the answers, all at
        once: {pool: the task's answer, or {"reachable": False, "error": why there is none}}.
        A question nobody answered in time expires, so a worker that comes back later does not
        answer it for nobody."""
        sent = {p: requests.ask(task, *args(p), expires=self._wait, retry_policy=ASK_RETRY) for p in pools}
        deadline = time.monotonic() + self._wait
        answers: dict[str, dict] = {}
        while True:
            for p, res in sent.items():
                if p in answers or not res.ready():
                    continue
                answers[p] = res.result if res.successful() else \
                    {"pool": p, "reachable": False, "error": f"the worker's task failed: {res.result}"}
                res.forget()
            if len(answers) == len(sent) or time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        for p in sent.keys() - answers.keys():
            answers[p] = {"pool": p, "reachable": False,
                          "error": f"no worker answered within {self._wait:.0f}s (is a worker serving queue "
                                   f"{self.cfg.pool(p).queue} running?)"}
        return answers

    def today_tag(self) -> str:
        """The weekday tag a backup started now is for, in the schedule's time zone if there is one
        (as the nightly schedule finds it), else this host's."""
        tz = None
        if self.cfg.schedule and self.cfg.schedule.timezone:
            from zoneinfo import ZoneInfo
            tz = ZoneInfo(self.cfg.schedule.timezone)
        now = dt.datetime.now(tz) if tz else dt.datetime.now()
        return WEEKDAYS[now.weekday()]

    # -- starting a backup ------------------------------------------------------------------
    def selection(self, kind: str, tag: str, vms: list[str], pools: list[str] | None) -> tuple[dict, list[str]]:
        """(selector, pools) from the form, checked as `tinabs backup` checks its arguments."""
        if kind == "today":
            selector = {"tag": self.today_tag()}
        elif kind == "tag":
            if not tag.strip():
                raise ConsoleError("give a tag (tags are case-sensitive, e.g. Mon or prod)")
            selector = {"tag": tag.strip()}
        elif kind == "vms":
            picked = [v.split(":", 1) for v in vms if ":" in v]
            if not picked:
                raise ConsoleError("no VM selected: tick VMs on the Pools page first")
            selector = {"uuids": sorted({uuid for _pool, uuid in picked})}
            pools = sorted({pool for pool, _uuid in picked})
        else:
            raise ConsoleError(f"unknown selection {kind!r}")
        try:
            return selector, check_pools(self.cfg, pools)
        except Exception as exc:  # ConfigError: an unknown pool, named
            raise ConsoleError(str(exc)) from None

    def modes(self) -> tuple[str, ...]:
        """The modes a backup started here may use: repo only with a [repository] in the config."""
        return ("export", "sr-copy", "repo") if self.cfg.repository is not None else ("export", "sr-copy")

    def check_mode(self, mode: str) -> str:
        mode = mode or self.cfg.default_mode
        offered = self.modes()
        if mode not in offered:
            why = " (repo needs a [repository] table in the config)" if mode == "repo" else ""
            raise ConsoleError(f"mode must be {', '.join(offered[:-1])} or {offered[-1]}, got {mode!r}{why}")
        if mode == "repo":
            check_repository(self.cfg)
        return mode

    def preview(self, selector: dict, mode: str, pools: list[str]) -> dict:
        """What the job would back up now, per pool (plan.select on a worker), with estimates.  A repo
        backup streams what an export writes into the repository, before deduplication and
        compression: its estimate is the export's (at most what the repository receives)."""
        per_pool = [{"vms": [], "notes": [], **data}
                    for _p, data in sorted(self.ask("tinabs.preview", pools, lambda p: (p, selector, mode)).items())]
        vms = [vm for p in per_pool for vm in p["vms"]]
        return {"pools": per_pool, "vm_count": len(vms), "what": describe(selector),
                "destination_bytes": sum(v["destination_bytes"] for v in vms),
                "backup_sr_bytes": sum(v["backup_sr_bytes"] for v in vms)}

    def start(self, selector: dict, mode: str, pools: list[str]) -> str:
        return start_job(self.cfg, self.store, selector, mode, pools)

    # -- jobs -------------------------------------------------------------------------------
    def recent_jobs(self, limit: int = 20) -> list[dict]:
        from tinabs_tasks.runs.job_view import summary
        jobs = [self.store.job(j) for j in self.store.recent_jobs(limit)]
        return [{**summary(j), "progress": job_progress(j)} for j in jobs if j]

    def job(self, job_id: str) -> dict | None:
        """The job as the live view shows it: per-VM stage, progress, rate; totals."""
        job = self.store.job(job_id)
        if job is None:
            return None
        from tinabs_tasks.runs.job_view import summary
        runs = []
        for r in job["runs"]:
            state = r["state"]
            runs.append({
                "pool": r.get("pool", ""), "vm": r.get("vm_name", ""), "uuid": r.get("vm_uuid", ""),
                "state": state, "stage": r.get("stage", ""), "progress": round(run_fraction(r) * 100, 1),
                "bytes": int(r.get("bytes") or 0) if state == RunState.RUNNING else int(r.get("size") or 0),
                "rate": int(r.get("rate") or 0) if state == RunState.RUNNING else 0,
                "error": r.get("error", "") if state in ("failed", "failing", "retrying") else "",
                "path": backup_name(r) if state == RunState.SUCCEEDED else "",
                "stored_bytes": int(r["stored_bytes"]) if r.get("stored_bytes") else None,
                # repo, sr-copy: incremental (from which base) or full (and why), as `tinabs status` says it
                "backup_kind": r.get("backup_kind", "") if state == RunState.SUCCEEDED else "",
                "how": how_taken(r) if state == RunState.SUCCEEDED else "",
                "flower": self.flower_task(r.get("task_id")),
            })
        s = summary(job)
        return {"id": job_id, "state": s["state"], "what": describe(job["selector"]), "mode": job["mode"],
                "pools": job["pools"], "created": s["created"], "done": job["done"], "planned": job["planned"],
                "succeeded": job["succeeded"], "aborted": bool(job.get("aborted")),
                "aborted_by": job.get("aborted_by", ""), "progress": job_progress(job),
                "bytes": sum(r["bytes"] for r in runs), "rate": sum(r["rate"] for r in runs),
                "ok": s["succeeded"], "total": s["total"], "failed": sum(r["state"] == "failed" for r in runs),
                "runs": runs, "notes": job["notes"]}

    def abort(self, job_id: str, by: str) -> None:
        if not self.store.abort(job_id, by):
            raise ConsoleError(f"no job {job_id!r}")

    def flower_task(self, task_id: str | None) -> str:
        return f"{self.cfg.web.flower_url}/task/{task_id}" if task_id and self.cfg.web.flower_url else ""

    # -- the catalog ------------------------------------------------------------------------
    def last_backups(self) -> dict[tuple[str, str], catalog.Backup]:
        last: dict[tuple[str, str], catalog.Backup] = {}
        for b in catalog.scan(self.cfg.destination):
            key = (b.pool, b.vm_uuid)
            if b.complete and b.created and (key not in last or b.created > last[key].created):
                last[key] = b
        return last

    def catalog(self, query: str = "") -> list[dict]:
        """Complete backups per VM (newest first), filtered by VM name, uuid or pool."""
        groups: dict[tuple[str, str, str], list] = {}
        q = query.strip().lower()
        for b in catalog.scan(self.cfg.destination):
            if not b.complete:
                continue
            if q and q not in b.vm_name.lower() and q not in b.vm_uuid.lower() and q not in b.pool.lower():
                continue
            groups.setdefault((b.pool, b.vm_name, b.vm_uuid), []).append(b)
        return [{"pool": pool, "vm": name, "uuid": uuid, "backups": sorted(bs, key=_newest_first)}
                for (pool, name, uuid), bs in sorted(groups.items())]

    def backup(self, path: str) -> dict:
        """A complete backup in the destination, as restore reads it; ConsoleError if it is not one."""
        try:
            return restore.load_backup(self.cfg.destination, path)
        except restore.BadBackup as exc:
            raise ConsoleError(str(exc)) from None

    # -- verify and restore (sent to a worker of the backup's pool) ------------------------
    def send_verify(self, path: str, by: str) -> str:
        backup = self.backup(path)
        pool = backup["manifest"].get("pool")
        # on a worker of the backup's pool (it checks an sr-copy backup's disks there), else any worker
        result = requests.ask("tinabs.verify_backup", pool if pool in self.cfg.pools else None,
                              backup["manifest_path"], expires=None, retry_policy=ASK_RETRY)
        return self._record(result.id, "verify", backup, pool or "", by)

    def send_restore(self, path: str, pool: str, options: dict, by: str) -> str:
        if pool not in self.cfg.pools:
            raise ConsoleError(f"unknown pool `{pool}`; configured pools: {', '.join(sorted(self.cfg.pools))}")
        problem = restore.name_problem(options["name"]) if options.get("name") is not None else None
        if problem:
            raise ConsoleError(f"the new name {problem}")
        backup = self.backup(path)
        try:
            restore.check_pool(backup, pool)
        except restore.BadBackup as exc:
            raise ConsoleError(str(exc)) from None
        result = requests.restore(pool, backup["manifest_path"], options, restore.new_run_id())
        return self._record(result.id, "restore", backup, pool, by)

    def _record(self, task_id: str, kind: str, backup: dict, pool: str, by: str) -> str:
        key = keys.web_action(task_id)
        # a repository backup has no data file: its manifest names it
        self.redis.hset(key, mapping={"kind": kind, "backup": backup.get("path") or backup["manifest_path"],
                                      "pool": pool, "by": by,
                                      "vm": backup["manifest"].get("vm", {}).get("name", ""),
                                      "created": time.time()})
        self.redis.expire(key, self.store.ttl_s)
        return task_id

    def action(self, task_id: str) -> dict | None:
        """A verify or restore this console sent: what, and where it stands (its task's state)."""
        record = self.redis.hgetall(keys.web_action(task_id))
        if not record:
            return None
        from tinabs_tasks.app import app
        res = app.AsyncResult(task_id)
        state = res.state
        out = {**record, "id": task_id, "state": state, "done": state in ("SUCCESS", "FAILURE"), "result": None,
               "error": "", "progress": None}
        if state == "SUCCESS":
            out["result"] = res.result
        elif state == "FAILURE":
            out["error"] = str(res.result)
        elif state == "PROGRESS" and isinstance(res.info, dict):
            out["progress"] = res.info
        return out


def check_repository(cfg: Config) -> None:
    """The configured repository opens with its key: a repo backup started from the console
    says what is wrong (no repository, a wrong or missing key) before anything is sent, as
    `tinabs backup` does.  The message names files and settings, never the key."""
    try:
        open_configured(cfg.repository)
    except RepoError as exc:
        raise ConsoleError(f"repository: {exc}") from None


def run_fraction(run: dict) -> float:
    """How far a run is, 0..1: its stages done plus the current stage's own progress."""
    if RunState(run["state"]).terminal:
        return 1.0
    names = MODES.get(run.get("mode", ""), ())
    stage = (run.get("stage") or "").split(":")[0]
    if stage not in names:
        return 0.0
    return (names.index(stage) + min(1.0, float(run.get("progress") or 0))) / len(names)


def job_progress(job: dict) -> float:
    """The job's progress in percent: 100 only once every pool is planned and every run has ended."""
    if job["done"]:
        return 100.0
    runs = job["runs"]
    if not runs:
        return 0.0
    value = sum(run_fraction(r) for r in runs) / len(runs) * 100
    return round(min(value, 99.9), 1)


def _by_host(hosts: list[dict], vms: list[dict]) -> list[dict]:
    groups = [{"host": h["name"], "master": h["master"], "address": h["address"],
               "vms": [v for v in vms if v["host"] == h["name"]]} for h in hosts]
    homeless = [v for v in vms if v["host"] not in {h["name"] for h in hosts}]
    if homeless:
        groups.append({"host": None, "master": False, "address": "", "vms": homeless})
    return groups


def _newest_first(b: catalog.Backup):
    return -(b.created.timestamp() if b.created else 0)
