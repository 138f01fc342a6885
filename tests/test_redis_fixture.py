import redis


def test_redis_fixture_set_get_and_restart(redis_server):
    assert redis_server.port != 6379
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    r = redis.Redis.from_url(redis_server.url)
    assert r.ping()
    r.set("tinabs:probe", b"hello")
    assert r.get("tinabs:probe") == b"hello"
    r.close()

    redis_server.restart()

    r = redis.Redis.from_url(redis_server.url)
    assert r.ping()
    assert r.get("tinabs:probe") is None  # no persistence: data gone
    r.close()
