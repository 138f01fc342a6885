"""One Redis client per process for tinabs' own state (not Celery's connections).

Workers ask for a *patient* client (``outage_s``): a Redis restart then makes
their state writes wait and retry instead of failing the stage, which would
lose the chain.  The CLI keeps the default, so an unreachable broker is
reported in seconds.
"""
from __future__ import annotations

import functools

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

BACKOFF_CAP_S = 2.0


class _RetryOutages(Retry):
    """Retry a lost connection, never a refused password (AuthenticationError is a
    ConnectionError to redis-py, and waiting cannot fix it)."""

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
        def retryable(error):
            if isinstance(error, redis.AuthenticationError):
                return False
            return is_retryable(error) if is_retryable else True
        return super().call_with_retry(do, fail, retryable, with_failure_count)


@functools.cache
def client(url: str, outage_s: float = 0.0) -> redis.Redis:
    retry = _RetryOutages(ExponentialBackoff(cap=BACKOFF_CAP_S, base=0.1), retries=int(outage_s / BACKOFF_CAP_S) + 3)
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=30, socket_connect_timeout=10,
                                health_check_interval=30, retry=retry,
                                retry_on_error=[redis.ConnectionError, redis.TimeoutError])
