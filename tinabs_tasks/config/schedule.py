"""The config's ``[schedule]``: what celery beat starts, and when (parsing and validation only).

``[schedule]`` holds ``timezone`` (required once any schedule is on: every time is read in it) and
``lock_timeout_s``; ``[schedule.daily]`` the original nightly backup of the VMs tagged with the
day's weekday (``at``, ``mode``, ``pools``, ``enabled``: on by default); ``[[schedule.backups]]``
any number of backups (``name``, ``cron`` or ``every``, one of ``tag``/``vm``/``all``, ``mode``,
``pools``); ``[[schedule.verify]]`` (``since_h``), ``[schedule.janitor]`` and ``[schedule.prune]``
the upkeep tasks.  The README's Schedules section has the example.  No ``[schedule]`` table:
nothing is scheduled.  config.py calls ``parse_schedule``; schedule_times.py computes the times.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tinabs_tasks.config.model import MODES, ConfigError

DEFAULT_DAILY_AT = "01:30"
DEFAULT_LOCK_TIMEOUT_S = 60
MIN_LOCK_TIMEOUT_S = 3
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_AT = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
_EVERY = re.compile(r"^([0-9]+)(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_WHEN = ("cron", "every", "enabled")
_TOP = {"timezone", "lock_timeout_s", "daily", "backups", "verify", "janitor", "prune"}


@dataclass(frozen=True)
class When:
    """A cron expression (5 fields, minute resolution) or a fixed interval in seconds."""
    cron: str | None = None
    every_s: int | None = None

    def describe(self) -> str:
        return f'cron "{self.cron}"' if self.cron else f"every {_human_interval(self.every_s)}"


@dataclass(frozen=True)
class Entry:
    """One thing beat starts: ``name`` is its beat (and Redis) name, e.g. ``backup:daily``."""
    name: str
    task: str
    when: When
    what: str
    enabled: bool = True
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BackupSchedule:
    """A backup beat starts.  ``selector`` is ``{"weekday": True}`` for the daily entry: the tag is
    the day's weekday in the schedule's time zone, found when it fires (schedule_times.daily_tag)."""
    name: str
    when: When
    selector: dict
    mode: str
    pools: tuple[str, ...] = ()  # () = every configured pool
    enabled: bool = True
    at: str | None = None  # the daily entry's "HH:MM"

    @property
    def beat_name(self) -> str:
        return f"backup:{self.name}"


@dataclass(frozen=True)
class ScheduleConfig:
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
        return [Entry(b.beat_name, "tinabs.scheduled_backup", b.when, describe_backup(b), b.enabled,
                      args=(b.beat_name,)) for b in self.backups] + list(self.upkeep)


def describe_backup(b: BackupSchedule) -> str:
    if b.selector.get("weekday"):
        which = "the VMs tagged with the day's weekday (Mon..Sun)"
    elif "tag" in b.selector:
        which = f"the VMs tagged {b.selector['tag']}"
    elif "vm" in b.selector:
        which = f"the VM {b.selector['vm']}"
    else:
        which = "every VM"
    return f"back up {which} on {', '.join(b.pools) if b.pools else 'every pool'} ({b.mode})"


def parse_schedule(table, path: str, pools: list[str], default_mode: str) -> ScheduleConfig | None:
    """``[schedule]`` (None when the file has none); every problem is one ConfigError line."""
    if table is None:
        return None
    where = f"{path}: [schedule]"
    _table(table, where)
    _keys(table, _TOP, where)
    ctx = _Ctx(path, sorted(pools), default_mode)
    backups = [_daily(table.get("daily", {}), ctx)]
    backups += [_backup(t, i, ctx) for i, t in enumerate(_array(table, "backups", where))]
    upkeep = [_verify(t, i, ctx) for i, t in enumerate(_array(table, "verify", where))]
    for kind in ("janitor", "prune"):
        if kind in table:
            upkeep.append(_upkeep_table(table[kind], kind, ctx))
    _unique([b.beat_name for b in backups] + [e.name for e in upkeep], where)
    tz = table.get("timezone")
    if any(b.enabled for b in backups) or any(e.enabled for e in upkeep) or tz is not None:
        tz = _timezone(tz, where)
    return ScheduleConfig(timezone=tz, backups=tuple(backups), upkeep=tuple(upkeep),
                          lock_timeout_s=_lock_timeout(table, where))


@dataclass(frozen=True)
class _Ctx:
    path: str
    pools: list[str]
    default_mode: str


def _daily(table, ctx: _Ctx) -> BackupSchedule:
    where = f"{ctx.path}: [schedule.daily]"
    _table(table, where)
    _keys(table, {"at", "mode", "pools", "enabled"}, where)
    at = table.get("at", DEFAULT_DAILY_AT)
    if not isinstance(at, str) or not _AT.match(at):
        raise ConfigError(f'{where}: at must be a 24-hour "HH:MM" time such as "01:30", got {at!r}')
    hour, minute = at.split(":")
    when = When(cron=f"{int(minute)} {int(hour)} * * *")
    return BackupSchedule("daily", when, {"weekday": True}, _mode(table, where, ctx), _pools(table, where, ctx),
                          _enabled(table, where), at=at)


def _backup(table, index: int, ctx: _Ctx) -> BackupSchedule:
    name, where = _named(table, "backups", index, ctx.path)
    if any(k == "retention" or k.startswith("keep_") for k in table):
        raise ConfigError(f"{where}: retention is per VM, over all of its backups ([retention]); a policy per "
                          "schedule would prune the backups other schedules made of the same VM")
    _keys(table, {"name", *_WHEN, "tag", "vm", "all", "mode", "pools"}, where)
    if name == "daily":
        raise ConfigError(f"{where}: the name `daily` is taken by [schedule.daily]; choose another")
    given = [k for k in ("tag", "vm", "all") if k in table]
    if len(given) != 1:
        raise ConfigError(f"{where}: give exactly one of tag = \"...\", vm = \"...\" or all = true "
                          f"(found {', '.join(given) if given else 'none'})")
    key = given[0]
    if key == "all":
        if table["all"] is not True:
            raise ConfigError(f"{where}: `all` must be true (or left out for a tag or vm entry)")
        selector = {"all": True}
    else:
        value = table[key]
        if not isinstance(value, str) or not value.strip():  # never widen into "everything"
            raise ConfigError(f"{where}: `{key}` must be a non-empty string")
        selector = {key: value}
    return BackupSchedule(name, _when(table, where), selector, _mode(table, where, ctx), _pools(table, where, ctx),
                          _enabled(table, where))


def _verify(table, index: int, ctx: _Ctx) -> Entry:
    name, where = _named(table, "verify", index, ctx.path)
    _keys(table, {"name", *_WHEN, "since_h"}, where)
    since = table.get("since_h", 24)
    if isinstance(since, bool) or not isinstance(since, (int, float)) or since < 0:
        raise ConfigError(f"{where}: since_h must be a number of hours >= 0 (0 = every backup), got {since!r}")
    what = f"verify the backups of the last {since:g} h" if since else "verify every backup"
    return Entry(f"verify:{name}", "tinabs.verify", _when(table, where), what, _enabled(table, where),
                 kwargs={"since_h": float(since) if since else None})


def _upkeep_table(table, kind: str, ctx: _Ctx) -> Entry:
    where = f"{ctx.path}: [schedule.{kind}]"
    _table(table, where)
    _keys(table, set(_WHEN), where)
    what = {"janitor": "janitor: remove the litter of dead runs on every pool ([janitor] max_age_h)",
            "prune": "prune: apply [retention] to every VM's backups"}[kind]
    return Entry(kind, f"tinabs.{'janitor_all' if kind == 'janitor' else 'prune'}", _when(table, where), what,
                 _enabled(table, where))


def _when(table: dict, where: str) -> When:
    cron, every = table.get("cron"), table.get("every")
    if (cron is None) == (every is None):
        raise ConfigError(f'{where}: give either cron = "MIN HOUR DOM MON DOW" or every = "6h" (exactly one)')
    if cron is not None:
        return When(cron=check_cron(cron, where))
    if not isinstance(every, str) or not _EVERY.match(every.strip()):
        raise ConfigError(f'{where}: every must look like "30s", "15m", "6h" or "1d", got {every!r}')
    number, unit = _EVERY.match(every.strip()).groups()
    seconds = int(number) * _UNIT_S[unit]
    if seconds < 1:
        raise ConfigError(f"{where}: every must be at least 1s")
    return When(every_s=seconds)


def check_cron(cron, where: str) -> str:
    """Five fields, as celery's crontab reads them (0 or sun = Sunday; names and ranges allowed)."""
    from celery.schedules import crontab
    fields = cron.split() if isinstance(cron, str) else []
    if len(fields) != 5:
        raise ConfigError(f"{where}: cron must have 5 fields (minute hour day-of-month month day-of-week), "
                          f"got {cron!r}")
    try:
        crontab(*fields[:2], day_of_month=fields[2], month_of_year=fields[3], day_of_week=fields[4])
    except ValueError as exc:
        raise ConfigError(f"{where}: cron {cron!r} is not valid: {exc}") from None
    if fields[2] != "*" and fields[4] != "*":
        # classic cron runs when EITHER matches, celery only when BOTH do: refuse the ambiguity
        raise ConfigError(f"{where}: cron {cron!r} restricts both the day of month and the day of week, "
                          "which cron and celery read differently; restrict one (or use two entries)")
    return " ".join(fields)


def _named(table, kind: str, index: int, path: str) -> tuple[str, str]:
    where = f"{path}: [[schedule.{kind}]] #{index + 1}"
    _table(table, where)
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}: name is required and uses letters, digits, '-' and '_' only, got {name!r}")
    return name, f'{path}: [[schedule.{kind}]] "{name}"'


def _mode(table: dict, where: str, ctx: _Ctx) -> str:
    mode = table.get("mode", ctx.default_mode)
    if mode not in MODES:
        raise ConfigError(f"{where}: mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def _pools(table: dict, where: str, ctx: _Ctx) -> tuple[str, ...]:
    if "pools" not in table:
        return ()
    pools = table["pools"]
    if not isinstance(pools, list) or not pools or not all(isinstance(p, str) for p in pools):
        raise ConfigError(f'{where}: pools must be a non-empty list of pool names, e.g. ["prod-a"] '
                          "(leave it out for every pool)")
    unknown = [p for p in pools if p not in ctx.pools]
    if unknown:
        raise ConfigError(f"{where}: unknown pool(s) {', '.join(unknown)}; configured pools: {', '.join(ctx.pools)}")
    return tuple(dict.fromkeys(pools))


def _enabled(table: dict, where: str) -> bool:
    value = table.get("enabled", True)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: enabled must be true or false")
    return value


def _timezone(tz, where: str) -> str:
    if tz is None:
        raise ConfigError(f'{where}: timezone is required, every schedule time is read in it '
                          '(e.g. timezone = "Europe/Paris", or "UTC")')
    try:
        if not isinstance(tz, str) or not tz or tz.startswith("/"):
            raise ValueError(tz)
        ZoneInfo(tz)
    except (ValueError, ZoneInfoNotFoundError):
        raise ConfigError(f'{where}: timezone {tz!r} is not a known time zone; use an IANA name such as '
                          '"Europe/Paris" or "UTC"') from None
    return tz


def _lock_timeout(table: dict, where: str) -> int:
    value = table.get("lock_timeout_s", DEFAULT_LOCK_TIMEOUT_S)
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_LOCK_TIMEOUT_S:
        raise ConfigError(f"{where}: lock_timeout_s must be a whole number of seconds >= {MIN_LOCK_TIMEOUT_S}")
    return value


def _unique(names: list[str], where: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{where}: two schedules are named `{name}`; names must be unique")
        seen.add(name)


def _array(table: dict, key: str, where: str) -> list:
    value = table.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"{where}: `{key}` must be an array of tables ([[schedule.{key}]])")
    return value


def _table(value, where: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table")


def _keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _human_interval(seconds: int) -> str:
    for unit in ("d", "h", "m"):
        if seconds % _UNIT_S[unit] == 0:
            return f"{seconds // _UNIT_S[unit]}{unit}"
    return f"{seconds}s"
