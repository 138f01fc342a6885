import pytest

from helpers.redis_proc import RedisNotFound, RedisProc, find_redis_server
from helpers.sim_proc import SimProc


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


@pytest.fixture(scope="module")
def sim():
    """A simulator process per test module: 2 pools x 2 hosts x 8 VMs, 16 MiB system disks."""
    proc = SimProc("--pools", "2", "--vms-per-pool", "8", "--hosts-per-pool", "2", "--disk-mib", "16").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def fresh_sim():
    """A simulator process for one test, for tests that change a lot or need knobs: call it."""
    started: list[SimProc] = []

    def start(*args: str) -> SimProc:
        proc = SimProc(*args).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
