import pytest

from helpers.redis_proc import RedisNotFound, RedisProc, find_redis_server
from helpers.deployment import Deployment
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


@pytest.fixture(scope="module")
def deployment(redis_server, tmp_path_factory, request):
    """Simulator (2 pools x 6 VMs) + private Redis + 2 real worker processes, for one test module.

    A module may set ``DEPLOYMENT_SIM_ARGS`` / ``DEPLOYMENT_WORKERS`` to change the shape.
    """
    sim_args = getattr(request.module, "DEPLOYMENT_SIM_ARGS",
                       ("--pools", "2", "--vms-per-pool", "6", "--disk-mib", "8"))
    db = abs(hash(request.module.__name__)) % 15 + 1  # a Redis DB per module: no cross-talk
    dep = Deployment(tmp_path_factory.mktemp("deploy"), redis_server, sim_args, db=db)
    try:
        for i in range(getattr(request.module, "DEPLOYMENT_WORKERS", 2)):
            dep.start_worker(f"w{i + 1}")
        yield dep
    finally:
        dep.stop()
