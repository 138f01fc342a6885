"""Aborting a job: asked for once, in Redis; obeyed by every task of the job, wherever it runs.

`JobStore.abort` marks the job (``aborted`` in its state).  From then on:

* a ``plan`` not yet run sends no chain (tasks.plan);
* a chain's next stage, when a worker takes it, does no work and hands the run to
  compensation, which removes what the run made by marker and marks it failed with the
  reason "aborted" (tasks.run_stage) — that is how the job's pending chains are revoked;
* a run already at its cleanup stage is left to finish: its backup is complete, and cleanup
  is what leaves the pool clean (throwing the backup away would help nobody);
* a stage working now is stopped: `AbortWatch`, beside it in the worker, sees the mark
  within a second and cancels the run's XAPI tasks on the pool (a snapshot, a disk copy, an
  export or metadata transfer: each carries the run in its ``other_config``, xapi/port.py),
  so the stage's call fails at once and the run goes to compensation too.

Why a mark in Redis and not only Celery's ``revoke``: a revoked task id lives in the memory of
the workers running at that moment (a worker started later, or restarted, would run it), and a
revoked chain is never compensated, so its run would stay unfinished and its litter on the pool.
"""
from __future__ import annotations

import logging

import XenAPI

from tinabs_tasks.runs.lease import Heartbeat
from tinabs_tasks.xapi.port import TASK_RUN

log = logging.getLogger("tinabs")
#: how soon a working stage notices an abort
WATCH_INTERVAL_S = 1.0
REASON = "aborted"


def reason(jobs, job_id: str) -> str:
    who = jobs.aborted_by(job_id)
    return f"{REASON} by {who}" if who else REASON


def cancel_run_tasks(xapi, run: str) -> list[str]:
    """Cancel the run's XAPI tasks that are still going; the ones cancelled."""
    cancelled = []
    for task, rec in xapi.xenapi.task.get_all_records().items():
        if rec["other_config"].get(TASK_RUN) != run or rec["status"] != "pending":
            continue
        try:
            xapi.xenapi.task.cancel(task)
            cancelled.append(task)
        except XenAPI.Failure as exc:  # it ended meanwhile, or cannot be cancelled: its stage ends anyway
            log.info("run %s: task %s not cancelled: %s", run, task, exc.details[:1])
    return cancelled


class AbortWatch:
    """While a stage works: once its job is aborted, cancel the run's XAPI tasks (again every
    second, since the stage may start another before it notices).  Runs on a limits.Heartbeat's
    thread, with a session of its own: the stage's session is busy in the stage's thread."""

    def __init__(self, jobs, job_id: str, run: str, open_session):
        self.jobs, self.job_id, self.run = jobs, job_id, run
        self._open_session = open_session
        self._session = None
        self._beat = Heartbeat([self._look], WATCH_INTERVAL_S)

    def __enter__(self):
        self._beat.__enter__()
        return self

    def __exit__(self, *exc):
        self._beat.__exit__(*exc)
        if self._session is not None:
            self._session.logout()

    def _look(self) -> bool:
        """One look; always True (a Heartbeat takes False for a lost lease, and there is none here)."""
        try:
            if not self.jobs.aborted(self.job_id):
                return True
            if self._session is None:
                self._session = self._open_session()
            cancelled = cancel_run_tasks(self._session, self.run)
            if cancelled:
                log.info("run %s: job %s aborted: cancelled %d XAPI task(s)", self.run, self.job_id, len(cancelled))
        except Exception as exc:  # Redis or the pool away for a moment: look again next second
            log.info("run %s: abort watch: %s", self.run, exc)
        return True
