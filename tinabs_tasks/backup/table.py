"""The stage table: every backup stage once, with everything the engine needs to know about it.

A stage is a plain function ``(env, ctx) -> ctx`` (``StageEnv`` below): what it makes on the pool,
how it finds an earlier attempt's work and how it is undone is in its module's docstring.  The
engine (tasks/engine.py) reads only this table: the order per mode, which time limit applies,
the Redis priority (later stages first, so workers finish the chains they started and exports
begin early), whether the stage obeys an abort, and which stage's success ends the run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tinabs_tasks.backup import cleanup, copy, disks, export, metadata, skeleton, snapshot, store, vifs
from tinabs_tasks.backup.modes import MODES  # noqa: F401 (the stages of each mode, in order)


@dataclass(frozen=True)
class StageEnv:
    """What a stage works with: the pool, its progress reporter, the pool's transfer slots, the
    destination (with the free space it must keep) and the repository."""
    xapi: object
    report: object
    slots: object = None
    destination: str = ""
    reserve_free_bytes: int = 0
    #: an earlier delivery of this stage started it (and may have died): look for what it left
    again: bool = False
    #: [repository] (a RepositoryConfig; None without one): where repo mode stores
    repository: object = None
    #: [retention] full_every: a full backup after this many incremental ones (0: never forced)
    full_every: int = 0


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[StageEnv, dict], dict]
    #: a transfer (export, copy, metadata): the long time limit ([limits] export_time_limit_s)
    long: bool = False
    #: Redis priority of its message (0 is served first)
    priority: int = 5
    #: an aborted job stops it (cleanup is not: a run that reached it holds a complete backup)
    obeys_abort: bool = True
    #: its success ends the run (succeeded): the run's lock is released, retention may follow
    ends_run: bool = False


STAGES = {s.name: s for s in (
    Stage("snapshot", snapshot.run, priority=7),
    Stage("skeleton", skeleton.run, priority=6),
    Stage("disks", disks.run, priority=5),
    Stage("vifs", vifs.run, priority=4),
    Stage("copy", copy.run, long=True, priority=3),
    Stage("export", export.run, long=True, priority=2),
    Stage("store", store.run, long=True, priority=2),
    Stage("metadata", metadata.run, long=True, priority=2),
    Stage("cleanup", cleanup.run, priority=1, obeys_abort=False, ends_run=True),
)}


def stages_of(mode: str) -> tuple[str, ...]:
    return MODES[mode]


def index_of(mode: str, name: str) -> int:
    return MODES[mode].index(name)


def next_stage(mode: str, name: str) -> str | None:
    order = MODES[mode]
    i = order.index(name)
    return order[i + 1] if i + 1 < len(order) else None


def task_name(stage: str) -> str:
    return f"tinabs.{stage}"
