import pytest

from helpers.redis_proc import RedisNotFound, RedisProc, find_redis_server
from helpers.deployment import TEST_TUNING, Deployment
from helpers import xapi_http as H
from helpers.sim_proc import SimProc


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """This test module's own private, non-persistent redis-server on a free loopback port.

    One per module (starting one takes ~50 ms), so no module ever reads or writes another's keys,
    whichever test process runs them, and a module may restart or flush it.  Deployments use its
    DB 0; the module's tests run one after another, so a test that needs an empty DB while an
    earlier test of the same module used it flushes it, and a deployment that runs beside the
    module's needs a server of its own (``helpers.redis_proc.private_redis``).
    """
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


@pytest.fixture(scope="module")
def x(sim):
    """The XenAPI proxy of a session on the module simulator's first pool (tests/helpers/xapi_http)."""
    return H.api(sim.session(0))


@pytest.fixture(scope="module")
def master(sim):
    """The module simulator's first pool master URL."""
    return sim.pool(0)["master"]


@pytest.fixture(scope="module")
def nfs(x):
    """The first pool's shared SR (its default SR)."""
    return H.sr_by_name(x, "nfs-shared")


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
    """Simulator (2 pools x 6 VMs) + the module's private Redis (DB 0) + 2 real worker processes,
    for one test module.

    A module may set ``DEPLOYMENT_SIM_ARGS`` / ``DEPLOYMENT_WORKERS`` to change the shape, and
    ``DEPLOYMENT_REPOSITORY = True`` for an encrypted repository in the config (repo mode), and
    ``DEPLOYMENT_CONFIG`` for TOML appended to the config (after the test tuning).
    """
    sim_args = getattr(request.module, "DEPLOYMENT_SIM_ARGS",
                       ("--pools", "2", "--vms-per-pool", "6", "--disk-mib", "8"))
    dep = Deployment(tmp_path_factory.mktemp("deploy"), redis_server, sim_args,
                     tuning=TEST_TUNING + getattr(request.module, "DEPLOYMENT_CONFIG", ""),
                     repository=getattr(request.module, "DEPLOYMENT_REPOSITORY", False))
    try:
        for i in range(getattr(request.module, "DEPLOYMENT_WORKERS", 2)):
            dep.start_worker(f"w{i + 1}")
        yield dep
    finally:
        dep.stop()
