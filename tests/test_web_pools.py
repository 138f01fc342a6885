"""The console's Pools page when a pool cannot answer: it says why, per pool, and still shows
the others (a real `tinabs web`, workers, a private Redis and the simulator)."""
from __future__ import annotations

import re
import time

import pytest

from helpers.deployment import TEST_TUNING, Deployment
from helpers.waiting import wait_for
from helpers.web_client import WebClient
from helpers.web_proc import PASSWORD, running_console

SIM_ARGS = ("--pools", "3", "--vms-per-pool", "2", "--disk-mib", "2")
ANSWER_WAIT_S = 8  # long enough for a busy worker to answer the pools that can
WEB = f"""
[web]
answer_wait_s = {ANSWER_WAIT_S}
"""


@pytest.fixture(scope="module")
def dep(redis_server, tmp_path_factory):
    d = Deployment(tmp_path_factory.mktemp("webpools"), redis_server, SIM_ARGS, tuning=TEST_TUNING + WEB)
    # no worker serves pool-c: nobody can tell what it holds
    with running_console(d, name="wp1", queues=["tinabs", "tinabs.pool.pool-a", "tinabs.pool.pool-b"]) as d:
        yield d


def _section(body: str, pool: str) -> str:
    found = re.search(rf'<section class="pool card" id="pool-{pool}">(.*?)</section>', body, re.S)
    assert found, pool
    return found.group(1)


def test_an_offline_pool_and_a_pool_without_worker_say_why_and_the_others_show(dep):
    client = WebClient(dep.web.base)
    assert client.login("admin", PASSWORD).status == 303
    status, _ = dep.sim.control_call("POST", "/sim/pools/pool-b/offline", {"seconds": 60})
    assert status == 200
    began = time.monotonic()
    reply = client.get("/pools?refresh=1")
    took = time.monotonic() - began
    assert reply.status == 200
    a, b, c = (_section(reply.body, p) for p in ("pool-a", "pool-b", "pool-c"))
    assert "reachable" in a and "unreachable" not in a and a.count('class="vm"') == 2
    assert "unreachable" in b and "cannot reach the pool" in b, b
    assert "unreachable" in c and f"no worker answered within {ANSWER_WAIT_S}s" in c and "tinabs.pool.pool-c" in c, c
    assert took < ANSWER_WAIT_S + 15, took  # waited for the silent pool, not much longer
    # and the question nobody answered expires: a worker that comes later drops it unanswered
    late = dep.start_worker("wp2", queues=["tinabs.pool.pool-c"])
    # (its banner lists tinabs.inventory among its tasks: wait for what it did with the message)
    handled = re.compile(r"Discarding revoked task: tinabs\.inventory|Task tinabs\.inventory\[[^\]]+\] succeeded")
    wait_for(lambda: handled.search(late.log_path.read_text()), 30, "the late worker to handle the question",
             explain=late.log_tail)
    log = late.log_path.read_text()
    assert re.search(r"Discarding revoked task: tinabs\.inventory", log), log
    assert not re.search(r"Task tinabs\.inventory\[[^\]]+\] succeeded", log), log


def test_with_the_broker_away_pages_say_so_and_come_back_with_it(tmp_path):
    # Given a console whose Redis is its own (so the test can stop it)
    from helpers.redis_proc import RedisProc
    server = RedisProc(tmp_path / "redis")
    server.start()
    d = Deployment(tmp_path / "dep", server, ("--pools", "1", "--vms-per-pool", "2", "--disk-mib", "2"),
                   tuning=TEST_TUNING + WEB)
    try:
        with running_console(d, name="wr1") as d:
            client = WebClient(d.web.base)
            assert client.login("admin", PASSWORD).status == 303
            assert client.get("/pools").status == 200
            # When Redis stops
            server.stop()
            # Then pages answer 503 with the reason, soon, with no traceback in the page
            for path in ("/pools?refresh=1", "/jobs", "/jobs/0123456789ab"):
                began = time.monotonic()
                reply = client.get(path)
                assert reply.status == 503 and "cannot reach the broker (Redis)" in reply.body, (path, reply.status)
                assert "Traceback" not in reply.body and time.monotonic() - began < 30, path
            assert client.get("/jobs/0123456789ab/state", headers={"Accept": "application/json"}).status == 503
            # And once Redis is back, so is the console, with the same session
            server.start()
            wait_for(lambda: client.get("/jobs").status == 200, 30, "the console to come back with Redis", 0.5)
            assert client.get("/pools?refresh=1").status == 200
    finally:
        server.stop()
