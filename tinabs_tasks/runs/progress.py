"""Progress of a running stage: into the run's state (for `tinabs status`), to the result
backend (state PROGRESS, for result readers) and as a `task-progress` event: Flower builds
its task list from events only, so that event is what shows the task as PROGRESS there, with
a one-line summary in its Result field until the task ends."""
from __future__ import annotations

import time

from tinabs_tasks.runs.human import human_bytes


class Reporter:
    def __init__(self, jobs, run_id: str, task=None, min_interval_s: float = 0.5, stage: str = ""):
        """``stage``: the stage the run's record already shows (the engine's begin step wrote it)."""
        self.jobs, self.run_id, self.task = jobs, run_id, task
        self.min_interval_s = min_interval_s
        self.stage_name = stage
        self._last = 0.0
        self._started = time.monotonic()

    def stage(self, name: str) -> None:
        self.stage_name = name
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
            self.task.send_event("task-progress", result=summary(self.stage_name, fields), **fields)


def summary(stage: str, fields: dict) -> str:
    """E.g. `export: 12.6 MB of 33.6 MB (37%), 8.0 MB/s`, `snapshot: 40%`."""
    parts = []
    if "bytes" in fields:
        parts.append(human_bytes(fields["bytes"]))
        if fields.get("total_bytes"):
            parts[-1] += f" of {human_bytes(fields['total_bytes'])}"
    if "progress" in fields:
        pct = f"{fields['progress'] * 100:.0f}%"
        parts.append(f"({pct})" if parts else pct)
    text = " ".join(parts)
    if fields.get("rate"):
        text += f", {human_bytes(fields['rate'])}/s"
    return f"{stage}: {text}" if stage else text
