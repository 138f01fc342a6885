"""``tinabs.report``: at the end of a job, build its summary, keep it, and send it where
``[reports]`` says, when it says (always / on failure / never).

Exactly once per job: JobStore claims the job's end atomically (``report_claimed`` on the job's
hash, set with HSETNX) and only the claimer sends this task, with the job id as its only
argument.  The task may still run more than once (a redelivery, a retry): the stored report
records each channel's delivery, a channel already sent is never sent again, and a lease keeps
two copies from sending at the same time.  A channel that fails is tried again ``max_retries``
times with backoff, then recorded as failed in the report (and logged): never silently lost.
A worker that dies between a server accepting a report and the record of it may send it twice.
"""
from __future__ import annotations

import logging
import random
import time

from tinabs_tasks.app import REPORT_TIME_LIMIT_S as TIME_LIMIT_S, app
from tinabs_tasks.runs.store import JobStore
from tinabs_tasks.runs.lease import Lease
from tinabs_tasks.runs.redis_client import client
from tinabs_tasks.reports.channels import DeliveryFailed, send
from tinabs_tasks.reports.summary import ReportStore, should_send, summarize

CFG = app.tinabs_config
log = logging.getLogger("tinabs.reports")
FINAL = ("sent", "failed", "not sent")


def request_report(job_id: str) -> None:
    """JobStore's end-of-job hook (called once per job, by whoever claimed its end)."""
    app.send_task("tinabs.report", args=(job_id,), ignore_result=True)


@app.task(name="tinabs.report", bind=True, acks_late=True, max_retries=None)
def report(self, job_id: str) -> dict:
    redis = client(CFG.broker_url, outage_s=120.0)
    lease = Lease(redis, f"report:{job_id}", TIME_LIMIT_S)
    if not lease.try_acquire():  # another copy is sending right now: look again once it is done
        raise self.retry(countdown=random.uniform(5, 10), max_retries=None)
    try:
        outcome = deliver(job_id, JobStore(redis, CFG.limits.state_ttl_s), ReportStore(redis))
    finally:
        lease.release()
    if outcome.get("retry_in") is not None:
        raise self.retry(countdown=outcome["retry_in"], max_retries=None)
    return {"job": job_id, "delivery": {c: d["status"] for c, d in outcome.get("delivery", {}).items()}}


def deliver(job_id: str, jobs: JobStore, store: ReportStore) -> dict:
    """One delivery round; the stored report afterwards, with ``retry_in`` if a channel waits."""
    stored = store.load(job_id)
    if stored is None:
        job = jobs.job(job_id)
        if job is None:
            log.warning("job %s: no state left (expired?); no report", job_id)
            return {}
        stored = _first_report(summarize(job))
    pending = [c for c, d in stored["delivery"].items() if d["status"] not in FINAL]
    summary = {k: v for k, v in stored.items() if k != "delivery"}
    for channel in pending:
        _attempt(job_id, channel, summary, stored["delivery"][channel])
    if not store.save(job_id, stored):
        log.warning("job %s: its state expired before the report was stored", job_id)
    waits = [d["retry_in"] for d in stored["delivery"].values() if d["status"] == "retrying"]
    return {**stored, "retry_in": min(waits) if waits else None}


def _first_report(summary: dict) -> dict:
    """The summary plus a delivery record per configured channel."""
    cfg = CFG.reports
    send_it = should_send(cfg.when, summary)
    why = f'[reports] when = "{cfg.when}"' + ("" if cfg.when == "never" else ", and the job succeeded")
    delivery = {name: ({"status": "pending", "to": channel.target, "attempts": 0} if send_it else
                       {"status": "not sent", "to": channel.target, "why": why})
                for name, channel in cfg.channels.items()}
    if not send_it or not delivery:
        log.info("job %s: %s; report stored, not sent (%s)", summary["job"], summary["result"],
                 why if delivery else "no [reports] channel configured")
    return {**summary, "delivery": delivery}


def _attempt(job_id: str, channel: str, summary: dict, record: dict) -> None:
    cfg = CFG.reports
    record["attempts"] = attempt = record.get("attempts", 0) + 1
    record.pop("retry_in", None)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        record["detail"] = send(channel, cfg.channels[channel], summary)
    except DeliveryFailed as exc:
        record["error"] = str(exc)
        if attempt <= cfg.max_retries:
            record.update(status="retrying", retry_in=cfg.backoff_s * 2 ** (attempt - 1))
            log.warning("job %s: report by %s failed (attempt %d of %d): %s; trying again in %.0fs", job_id,
                        channel, attempt, cfg.max_retries + 1, exc, record["retry_in"])
        else:
            record.update(status="failed", at=now)
            log.error("job %s: report by %s failed after %d attempt(s), giving up: %s", job_id, channel,
                      attempt, exc)
        return
    record.pop("error", None)
    record.update(status="sent", at=now)
    log.info("job %s: report %s by %s", job_id, record["detail"], channel)
