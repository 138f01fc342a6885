"""The config's ``[schedule]``: what celery beat starts, and when (parsing and validation only).

``[schedule]`` holds ``timezone`` (required once any schedule is on: every time is read in it) and
``lock_timeout_s``; ``[schedule.daily]`` the original nightly backup of the VMs tagged with the
day's weekday (``at``, ``mode``, ``pools``, ``enabled``: on by default); ``[[schedule.backups]]``
any number of backups (``name``, ``cron`` or ``every``, one of ``tag``/``vm``/``all``, ``mode``,
``pools``); ``[[schedule.verify]]`` (``since_h``), ``[schedule.janitor]``, ``[schedule.prune]`` and
``[schedule.gc]`` (the repository's GC; it needs a ``[repository]``, checked in model.py) the upkeep
tasks.  The README's Schedules section has the example.  No ``[schedule]`` table:
nothing is scheduled.  The records are in schedule_entries.py; schedule/times.py computes the times.
"""
from __future__ import annotations

import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator, model_validator

from tinabs_tasks.config.base import MODES, Table, flag, one_of, text, validator
from tinabs_tasks.config.errors import NAME, ConfigError, problem, problems_of, several
from tinabs_tasks.config.schedule_entries import (DEFAULT_DAILY_AT, DEFAULT_LOCK_TIMEOUT_S, UNIT_S, BackupSchedule,
                                                  Entry, ScheduleConfig, When, describe_backup)

__all__ = ["ScheduleConfig", "BackupSchedule", "Entry", "When", "describe_backup", "check_cron", "parse_schedule",
           "ScheduleTable", "DEFAULT_DAILY_AT", "DEFAULT_LOCK_TIMEOUT_S", "MIN_LOCK_TIMEOUT_S"]
MIN_LOCK_TIMEOUT_S = 3
_AT = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
_EVERY = re.compile(r"^([0-9]+)(s|m|h|d)$")
_UPKEEP = {"janitor": ("tinabs.janitor_all", "janitor: remove the litter of dead runs on every pool ([janitor] "
                                             "max_age_h)"),
           "prune": ("tinabs.prune", "prune: apply [retention] to every VM's backups"),
           "gc": ("tinabs.repo_gc", "gc: remove the repository's blocks no backup references ([repository] "
                                    "gc_grace_h)")}
UPKEEP_KINDS = tuple(_UPKEEP)


def cron_problem(cron) -> str:
    """What is wrong with a cron expression ("" for nothing): five fields, as celery's crontab
    reads them (0 or sun = Sunday; names and ranges allowed)."""
    from celery.schedules import crontab
    fields = cron.split() if isinstance(cron, str) else []
    if len(fields) != 5:
        return f"cron must have 5 fields (minute hour day-of-month month day-of-week), got {cron!r}"
    try:
        crontab(*fields[:2], day_of_month=fields[2], month_of_year=fields[3], day_of_week=fields[4])
    except ValueError as exc:
        return f"cron {cron!r} is not valid: {exc}"
    if fields[2] != "*" and fields[4] != "*":
        # classic cron runs when EITHER matches, celery only when BOTH do: refuse the ambiguity
        return (f"cron {cron!r} restricts both the day of month and the day of week, which cron and celery "
                "read differently; restrict one (or use two entries)")
    return ""


def check_cron(cron, where: str) -> str:
    """``cron`` with its fields one space apart, or a ConfigError ``{where}: {what is wrong}``."""
    if cron_problem(cron):
        raise ConfigError(f"{where}: {cron_problem(cron)}")
    return " ".join(cron.split())


class _Switch(Table):
    enabled: bool = True

    _enabled = validator(flag, "enabled", got=False)


class _Timed(_Switch):
    """An entry beat starts at a ``cron`` time or ``every`` so long (exactly one)."""
    cron: str | None = None
    every: int | None = None  # seconds

    @field_validator("cron", mode="before")
    @classmethod
    def _cron(cls, value):
        if cron_problem(value):
            raise problem(cron_problem(value))
        return " ".join(value.split())

    @field_validator("every", mode="before")
    @classmethod
    def _every(cls, value):
        match = _EVERY.match(value.strip()) if isinstance(value, str) else None
        if not match:
            raise problem(f'every must look like "30s", "15m", "6h" or "1d", got {value!r}')
        seconds = int(match.group(1)) * UNIT_S[match.group(2)]
        if seconds < 1:
            raise problem("every must be at least 1s")
        return seconds

    @classmethod
    def cross(cls, data: dict, context: dict) -> list[tuple[tuple, str]]:
        if ("cron" in data) == ("every" in data):
            return [((), 'give either cron = "MIN HOUR DOM MON DOW" or every = "6h" (exactly one)')]
        return []

    @property
    def when(self) -> When:
        return When(cron=self.cron) if self.cron is not None else When(every_s=self.every)


class _Backup(Table):
    """What a backup entry backs up: ``mode`` (else the file's default_mode) and ``pools`` (else all);
    ``full = true``: full backups even where an incremental one could be taken (a weekly full)."""
    mode: str | None = None
    pools: tuple[str, ...] = ()
    full: bool = False

    @field_validator("full", mode="before")
    @classmethod
    def _full(cls, value):
        if not isinstance(value, bool):
            raise problem("full must be true or false")
        return value

    _mode = validator(one_of, "mode", choices=MODES)

    @field_validator("pools", mode="before")
    @classmethod
    def _pools(cls, value, info):
        if not isinstance(value, list) or not value or not all(isinstance(p, str) for p in value):
            raise problem('pools must be a non-empty list of pool names, e.g. ["prod-a"] '
                          "(leave it out for every pool)")
        configured = (info.context or {}).get("pools", [])
        unknown = [p for p in value if p not in configured]
        if unknown:
            raise problem(f"unknown pool(s) {', '.join(unknown)}; configured pools: {', '.join(configured)}")
        return tuple(dict.fromkeys(value))


class DailyTable(_Backup, _Switch):
    """``[schedule.daily]``: the VMs tagged with the day's weekday, at ``at``."""
    at: str = DEFAULT_DAILY_AT

    @field_validator("at", mode="before")
    @classmethod
    def _at(cls, value):
        if not isinstance(value, str) or not _AT.match(value):
            raise problem(f'at must be a 24-hour "HH:MM" time such as "01:30", got {value!r}')
        return value

    def build(self, default_mode: str) -> BackupSchedule:
        hour, minute = self.at.split(":")
        return BackupSchedule(name="daily", when=When(cron=f"{int(minute)} {int(hour)} * * *"),
                              selector={"weekday": True}, mode=self.mode or default_mode, mode_given=self.mode is not None, pools=self.pools,
                              enabled=self.enabled, at=self.at, full=self.full)


class _Named(_Timed):
    name: str = Field(default=None, validate_default=True)

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value):
        if not isinstance(value, str) or not NAME.fullmatch(value):
            raise problem(f"name is required and uses letters, digits, '-' and '_' only, got {value!r}")
        return value


class BackupTable(_Backup, _Named):
    """A ``[[schedule.backups]]`` entry: one of ``tag``, ``vm`` or ``all = true``."""
    tag: str | None = None
    vm: str | None = None
    all: bool | None = None

    @classmethod
    def refusal(cls, key: str) -> str | None:
        if key == "retention" or key.startswith("keep_"):
            return ("retention is per VM, over all of its backups ([retention]); a policy per schedule would "
                    "prune the backups other schedules made of the same VM")
        return None

    _selector = validator(text, "tag", "vm")  # never widen into "everything"

    @field_validator("all", mode="before")
    @classmethod
    def _all(cls, value):
        if value is not True:
            raise problem("`all` must be true (or left out for a tag or vm entry)")
        return value

    @classmethod
    def cross(cls, data: dict, context: dict) -> list[tuple[tuple, str]]:
        found = super().cross(data, context)
        if data.get("name") == "daily":
            found.append(((), "the name `daily` is taken by [schedule.daily]; choose another"))
        given = [k for k in ("tag", "vm", "all") if k in data]
        if len(given) != 1:
            found.append(((), f"give exactly one of tag = \"...\", vm = \"...\" or all = true "
                              f"(found {', '.join(given) if given else 'none'})"))
        return found

    def build(self, default_mode: str) -> BackupSchedule:
        selector = {"all": True} if self.all else {"tag": self.tag} if self.tag is not None else {"vm": self.vm}
        return BackupSchedule(name=self.name, when=self.when, selector=selector, mode=self.mode or default_mode, mode_given=self.mode is not None,
                              pools=self.pools, enabled=self.enabled, full=self.full)


class VerifyTable(_Named):
    """A ``[[schedule.verify]]`` entry: the backups of the last ``since_h`` hours (0: every backup)."""
    since_h: float = 24.0

    @field_validator("since_h", mode="before")
    @classmethod
    def _since(cls, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise problem(f"since_h must be a number of hours >= 0 (0 = every backup), got {value!r}")
        return value

    def build(self) -> Entry:
        what = f"verify the backups of the last {self.since_h:g} h" if self.since_h else "verify every backup"
        return Entry(name=f"verify:{self.name}", task="tinabs.verify", when=self.when, what=what,
                     enabled=self.enabled, kwargs={"since_h": float(self.since_h) if self.since_h else None})


class UpkeepTable(_Timed):
    """``[schedule.janitor]``, ``[schedule.prune]`` or ``[schedule.gc]``."""

    @classmethod
    def refusal(cls, key: str) -> str | None:
        if "grace" in key:  # one grace for beat's GC and `tinabs repo gc` alike
            return "the GC's grace is [repository] gc_grace_h, not a schedule setting"
        return None

    def build(self, kind: str) -> Entry:
        task, what = _UPKEEP[kind]
        return Entry(name=kind, task=task, when=self.when, what=what, enabled=self.enabled)


def _array(value, key: str):
    if not isinstance(value, list):
        raise problem(f"`{key}` must be an array of tables ([[schedule.{key}]])")
    return value


class ScheduleTable(Table):
    """``[schedule]`` as written."""
    timezone: str | None = None
    lock_timeout_s: int = DEFAULT_LOCK_TIMEOUT_S
    daily: DailyTable = DailyTable()
    backups: tuple[BackupTable, ...] = ()
    verify: tuple[VerifyTable, ...] = ()
    janitor: UpkeepTable | None = None
    prune: UpkeepTable | None = None
    gc: UpkeepTable | None = None

    _arrays = validator(_array, "backups", "verify")

    @field_validator("timezone", mode="before")
    @classmethod
    def _timezone(cls, value):
        try:
            if not isinstance(value, str) or not value or value.startswith("/"):
                raise ValueError(value)
            ZoneInfo(value)
        except (ValueError, ZoneInfoNotFoundError):
            raise problem(f'timezone {value!r} is not a known time zone; use an IANA name such as "Europe/Paris" '
                          'or "UTC"') from None
        return value

    @field_validator("lock_timeout_s", mode="before")
    @classmethod
    def _lock(cls, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < MIN_LOCK_TIMEOUT_S:
            raise problem(f"lock_timeout_s must be a whole number of seconds >= {MIN_LOCK_TIMEOUT_S}")
        return value

    @model_validator(mode="after")
    def _whole(self):
        upkeep = [getattr(self, k) for k in UPKEEP_KINDS if getattr(self, k) is not None]
        names = ["backup:daily", *(f"backup:{b.name}" for b in self.backups),
                 *(f"verify:{v.name}" for v in self.verify), *(k for k in UPKEEP_KINDS if getattr(self, k))]
        found = [problem(f"two schedules are named `{n}`; names must be unique", table=True)
                 for i, n in enumerate(names) if n in names[:i]]
        if self.timezone is None and any(t.enabled for t in (self.daily, *self.backups, *self.verify, *upkeep)):
            found.append(problem('timezone is required, every schedule time is read in it (e.g. timezone = '
                                 '"Europe/Paris", or "UTC")', table=True))
        if found:
            raise several(found)
        return self

    def build(self, default_mode: str) -> ScheduleConfig:
        upkeep = [v.build() for v in self.verify]
        upkeep += [getattr(self, kind).build(kind) for kind in UPKEEP_KINDS if getattr(self, kind) is not None]
        return ScheduleConfig(timezone=self.timezone, lock_timeout_s=self.lock_timeout_s, upkeep=tuple(upkeep),
                              backups=(self.daily.build(default_mode), *(b.build(default_mode) for b in self.backups)))


def parse_schedule(table, path: str, pools: list[str], default_mode: str) -> ScheduleConfig | None:
    """``[schedule]`` alone (None when the file has none); ConfigError with every problem, one line each."""
    if table is None:
        return None
    try:
        parsed = ScheduleTable.model_validate(table, context={"pools": sorted(pools)})
    except ValidationError as exc:
        raise ConfigError(problems_of(exc, {"schedule": table}, path, prefix=("schedule",))) from None
    return parsed.build(default_mode)
