"""The one retry policy: what to do after a failure, for backup stages, compensation, plan and restore.

``decide(error, attempts, settings)`` is pure: it looks at a classified error (xapi.errors.classify),
at what this step has been through (``Attempts``) and at the ``[retry]`` settings, and returns what to
do next; the caller only carries it out.  The rules, in order:

* a session the pool says has expired: log in again and go on at once (``Relogin``), at most
  ``max_relogins`` times, never counted as a failure;
* a pool that refuses connections or does not answer: wait for it (``WaitForPool``), counted in
  time (``unreachable_wait_s``, times ``patience``), not in retries;
* a transient error: retry with exponential backoff and jitter (``Retry``), at most
  ``max_retries`` times (times ``patience``);
* anything else, or one retry too many: ``GiveUp`` with the reason shown everywhere.

Every decision also says whether the cached session must be dropped (a network failure or an
expired session leaves it useless).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from tinabs_tasks.xapi.errors import RELOGIN_CODES, UNREACHABLE, StageError

#: per run: an expired session costs a quick restart of the stage, never a retry
MAX_RELOGINS = 5
#: a wait for an unreachable pool polls at most this often: its backoff stops growing here
MAX_WAIT_EXPONENT = 8


@dataclass(frozen=True)
class Settings:
    max_retries: int = 5
    backoff_base_s: float = 2.0
    backoff_max_s: float = 120.0
    unreachable_wait_s: float = 900.0
    max_relogins: int = MAX_RELOGINS
    #: compensation leaves nothing behind: it waits and retries twice as long (2.0)
    patience: float = 1.0

    @classmethod
    def of(cls, retry_config, patience: float = 1.0) -> "Settings":
        """From the config's ``[retry]``."""
        return cls(retry_config.max_retries, retry_config.backoff_base_s, retry_config.backoff_max_s,
                   retry_config.unreachable_wait_s, patience=patience)


@dataclass(frozen=True)
class Attempts:
    """What this step has been through so far (kept in the run's context between deliveries)."""
    failures: int = 0          #: transient failures retried so far
    relogins: int = 0          #: expired sessions logged in again
    unreachable_since: float | None = None  #: when the pool stopped answering (None: it answers)


@dataclass(frozen=True)
class Retry:
    countdown: float
    reason: str
    drop_session: bool = False


@dataclass(frozen=True)
class Relogin:
    countdown: float = 0.0
    drop_session: bool = True


@dataclass(frozen=True)
class WaitForPool:
    countdown: float
    since: float
    waited_s: float
    reason: str
    drop_session: bool = True


@dataclass(frozen=True)
class GiveUp:
    reason: str
    drop_session: bool = False


Decision = Retry | Relogin | WaitForPool | GiveUp


def backoff(failures: int, settings: Settings, uniform=random.uniform) -> float:
    """``backoff_base_s * 2**failures`` capped at ``backoff_max_s``, times a jitter of 0.5-1.5."""
    base = min(settings.backoff_max_s, settings.backoff_base_s * (2 ** failures))
    return base * uniform(0.5, 1.5)


def decide(error: StageError, attempts: Attempts, settings: Settings, now: float,
           uniform=random.uniform) -> Decision:
    drop = error.code in RELOGIN_CODES
    if error.code == "SESSION_INVALID" and attempts.relogins < settings.max_relogins:
        return Relogin()
    if error.code == UNREACHABLE:
        since = attempts.unreachable_since if attempts.unreachable_since is not None else now
        waited = now - since
        allowed = settings.unreachable_wait_s * settings.patience
        if waited < allowed:
            countdown = backoff(min(attempts.failures, MAX_WAIT_EXPONENT), settings, uniform)
            return WaitForPool(countdown, since, waited,
                               f"{error} (waiting for the pool: {waited:.0f}s of {allowed:.0f}s)")
        return GiveUp(f"{error} (unreachable for {waited:.0f}s)", drop_session=True)
    allowed = int(settings.max_retries * settings.patience)
    if error.transient and attempts.failures < allowed:
        return Retry(backoff(attempts.failures, settings, uniform), str(error), drop_session=drop)
    reason = str(error)
    if error.transient:  # say why a retryable error still failed the step
        reason += f" (gave up after {attempts.failures} retries)"
    return GiveUp(reason, drop_session=drop)
