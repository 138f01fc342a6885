import redis


def test_each_module_starts_with_an_empty_server_of_its_own(redis_server):
    # Given this module's first test, whatever modules ran before it in this test process
    r = redis.Redis.from_url(redis_server.url)
    # Then its Redis holds no key in any DB: no other module's keys can be read here
    assert r.info("keyspace") == {}
    assert r.dbsize() == 0
    r.close()


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
