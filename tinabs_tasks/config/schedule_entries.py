"""What ``[schedule]`` says, as beat and `tinabs schedule show` read it: ScheduleConfig and its entries."""
from __future__ import annotations

from zoneinfo import ZoneInfo

from pydantic import Field

from tinabs_tasks.config.base import Record

DEFAULT_DAILY_AT = "01:30"
DEFAULT_LOCK_TIMEOUT_S = 60
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class When(Record):
    """A cron expression (5 fields, minute resolution) or a fixed interval in seconds."""
    cron: str | None = None
    every_s: int | None = None

    def describe(self) -> str:
        return f'cron "{self.cron}"' if self.cron else f"every {human_interval(self.every_s)}"


class Entry(Record):
    """One thing beat starts: ``name`` is its beat (and Redis) name, e.g. ``backup:daily``."""
    name: str
    task: str
    when: When
    what: str
    enabled: bool = True
    args: tuple = ()
    kwargs: dict = Field(default_factory=dict)


class BackupSchedule(Record):
    """A backup beat starts.  ``selector`` is ``{"weekday": True}`` for the daily entry: the tag is
    the day's weekday in the schedule's time zone, found when it fires (schedule_times.daily_tag)."""
    name: str
    when: When
    selector: dict
    mode: str
    #: the entry names its mode; else a pool with its own (``[pools.NAME] mode``) uses that
    mode_given: bool = True
    pools: tuple[str, ...] = ()  # () = every configured pool
    enabled: bool = True
    at: str | None = None  # the daily entry's "HH:MM"
    #: full backups even where an incremental one could be taken
    full: bool = False

    @property
    def beat_name(self) -> str:
        return f"backup:{self.name}"


class ScheduleConfig(Record):
    timezone: str | None
    backups: tuple[BackupSchedule, ...] = ()
    upkeep: tuple[Entry, ...] = ()
    lock_timeout_s: int = DEFAULT_LOCK_TIMEOUT_S

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone or "UTC")

    def backup(self, beat_name: str) -> BackupSchedule | None:
        return next((b for b in self.backups if b.beat_name == beat_name), None)

    def entries(self) -> list[Entry]:
        """Every schedule, on or off, backups first, as beat knows them."""
        return [Entry(name=b.beat_name, task="tinabs.scheduled_backup", when=b.when, what=describe_backup(b),
                      enabled=b.enabled, args=(b.beat_name,)) for b in self.backups] + list(self.upkeep)


def describe_backup(b: BackupSchedule) -> str:
    if b.selector.get("weekday"):
        which = "the VMs tagged with the day's weekday (Mon..Sun)"
    elif "tag" in b.selector:
        which = f"the VMs tagged {b.selector['tag']}"
    elif "vm" in b.selector:
        which = f"the VM {b.selector['vm']}"
    else:
        which = "every VM"
    return f"back up {which} on {', '.join(b.pools) if b.pools else 'every pool'} ({b.mode}{', full' if b.full else ''})"


def human_interval(seconds: int) -> str:
    for unit in ("d", "h", "m"):
        if seconds % UNIT_S[unit] == 0:
            return f"{seconds // UNIT_S[unit]}{unit}"
    return f"{seconds}s"
