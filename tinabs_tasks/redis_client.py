"""One Redis client per process for tinabs' own state (not Celery's connections)."""
from __future__ import annotations

import functools

import redis


@functools.cache
def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=30, socket_connect_timeout=10,
                                health_check_interval=30, retry_on_timeout=True)
