import pytest

from helpers.redis_proc import RedisNotFound, RedisProc, find_redis_server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A private, non-persistent redis-server on a free loopback port."""
    try:
        binary, problem = find_redis_server(), None
    except RedisNotFound as e:
        binary, problem = None, str(e)
    if problem:
        pytest.fail(problem, pytrace=False)
    server = RedisProc(tmp_path_factory.mktemp("redis"), binary=binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()
