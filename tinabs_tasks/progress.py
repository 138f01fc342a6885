"""Progress of a running stage: into the run's state (for `tinabs status`) and
to Celery (a task state Flower and result readers can see)."""
from __future__ import annotations

import time


class Reporter:
    def __init__(self, jobs, run_id: str, task=None, min_interval_s: float = 0.5):
        self.jobs, self.run_id, self.task = jobs, run_id, task
        self.min_interval_s = min_interval_s
        self._last = 0.0
        self._started = time.monotonic()

    def stage(self, name: str) -> None:
        self._started = time.monotonic()
        self._last = 0.0
        self.jobs.update_run(self.run_id, stage=name, bytes=0, rate=0, progress=0)

    def bytes(self, done: int, total: int | None = None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.min_interval_s:
            return
        self._last = now
        rate = done / max(now - self._started, 1e-6)
        fields = {"bytes": done, "rate": int(rate)}
        if total:
            fields.update(total_bytes=total, progress=round(min(1.0, done / total), 4))
        self._publish(fields)

    def fraction(self, value: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.min_interval_s:
            return
        self._last = now
        self._publish({"progress": round(value, 4)})

    def _publish(self, fields: dict) -> None:
        self.jobs.update_run(self.run_id, **fields)
        if self.task is not None and getattr(self.task.request, "id", None):
            self.task.update_state(state="PROGRESS", meta=fields)
