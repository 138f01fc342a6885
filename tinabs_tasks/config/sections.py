"""The config's tables of plain numbers: ``[retry]``, ``[limits]``, ``[retention]``, ``[janitor]``.

Each is read as written (the table is the record): every value is a non-negative number (never
a bool), converted to the field's type (``lease_s = 90.5`` is 90), or true/false for a flag;
``[retention]``'s ``keep_*`` counts are whole numbers (2.5 backups means nothing).
"""
from __future__ import annotations

from typing import ClassVar

from pydantic import field_validator

from tinabs_tasks.config.base import Table
from tinabs_tasks.config.errors import problem


class _Numbers(Table):
    #: fields that take whole numbers only (the others take any number, converted to their type)
    integers: ClassVar[tuple[str, ...]] = ()

    @field_validator("*", mode="before")
    @classmethod
    def _number(cls, value, info):
        name = info.field_name
        kind = cls.model_fields[name].annotation
        if kind is bool:
            if not isinstance(value, bool):
                raise problem(f"{name} must be true or false")
            return value
        if name in cls.integers and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise problem(f"{name} must be a non-negative integer, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise problem(f"{name} must be a non-negative number")
        return kind(value)


class RetryConfig(_Numbers):
    max_retries: int = 5
    backoff_base_s: float = 2.0
    backoff_max_s: float = 120.0
    #: how long a pool may refuse connections or time out before a stage gives up on it (a
    #: master reboot or a network cut); counted in time, not retries, and twice that for cleanup
    unreachable_wait_s: float = 900.0


class LimitsConfig(_Numbers):
    export_time_limit_s: int = 6 * 3600
    stage_time_limit_s: int = 1800
    lease_s: int = 60
    #: space the destination must keep free besides the backup being written (bytes)
    reserve_free_bytes: int = 0
    #: Redis redelivers a task unacknowledged this long (a worker that died mid-stage);
    #: 0 = longer than the longest time limit, so a live worker's task is never redelivered.
    #: Shorter resumes a killed worker's work sooner: the stage guard keeps the copy waiting.
    visibility_timeout_s: int = 0
    #: a started run that no stage holds and nothing has touched for this long lost its next message
    #: (Redis died with it in flight): it is sent again (resume.py); far above any retry countdown
    stuck_after_s: int = 900
    #: how long job/run state and task results stay in Redis (seconds; default a week)
    state_ttl_s: int = 7 * 24 * 3600


class RetentionConfig(_Numbers):
    """How many backups of each VM ``tinabs prune`` keeps (restic-like; 0 = rule unused)."""
    integers: ClassVar[tuple[str, ...]] = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "full_every")
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    #: incremental modes (repo, sr-copy): a full backup when the last one and the incremental
    #: backups since make this many (7: one full in every 7 nights); 0: only when needed
    full_every: int = 0
    #: apply the policy to a VM right after each of its good backups (else only `tinabs prune`)
    after_backup: bool = True

    @property
    def active(self) -> bool:
        """All zero: no policy, nothing is ever pruned."""
        return any((self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly))


class JanitorConfig(_Numbers):
    max_age_h: float = 24.0
