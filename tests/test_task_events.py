"""tinabs waits for its XAPI tasks by events (xapi/task_events.py), against a real simulator.

Facts relied on: ``event.from(classes, token, timeout)`` answers ``{events, valid_ref_counts,
token}`` with one event per object changed since the token, classes such as ``task/<ref>``
(``xapi_event.ml`` ``from``); a pool that does not know a message answers MESSAGE_METHOD_UNKNOWN
(``server_helpers.ml``); a destroyed task's ref gives HANDLE_INVALID (``db_cache``), which is what
a task an HTTP handler made for itself becomes when the handler ends (``xapi_http.ml``
``with_context``).  Every test goes through tinabs' own port (``xapi.port.Xapi``) over HTTP with
the real XenAPI client.
"""
from __future__ import annotations

import threading
import time

import pytest
import XenAPI

from tinabs_tasks.config.pools import PoolConfig
from tinabs_tasks.xapi import task_events
from tinabs_tasks.xapi.connect import PoolSession
from tinabs_tasks.xapi.port import Xapi


def _port(sim, task_wait: str = "events") -> Xapi:
    p = sim.pool(0)
    return Xapi(PoolSession(PoolConfig(name=p["name"], master=p["master"], username=p["username"],
                                       password=p["password"], shared_sr="nfs-shared", task_wait=task_wait)))


class _Counting:
    """Counts the XML-RPC calls of every XenAPI session in this process, by method."""

    def __init__(self):
        self.calls: list[str] = []
        self._real = XenAPI.Session.xenapi_request

    def __enter__(self):
        real, calls = self._real, self.calls

        def counted(session, method, params):
            calls.append(method)
            return real(session, method, params)
        XenAPI.Session.xenapi_request = counted
        return self

    def __exit__(self, *exc):
        XenAPI.Session.xenapi_request = self._real

    def count(self, prefix: str) -> int:
        return sum(1 for m in self.calls if m.startswith(prefix))


@pytest.fixture
def slow_sim(fresh_sim):
    task_events._watchers.clear()  # each test's pool is new: no watcher of an earlier one
    return fresh_sim("--pools", "1", "--vms-per-pool", "5", "--hosts-per-pool", "1", "--disk-mib", "8",
                     "--latency", "1.5")


def _fault(sim, spec: dict) -> None:
    status, body = sim.control_call("POST", "/sim/faults", spec)
    assert status == 200, body


def _halted_vm(xapi: Xapi) -> str:
    return next(ref for ref, rec in xapi.x.VM.get_all_records().items()
                if not rec["is_a_template"] and not rec["is_control_domain"] and rec["power_state"] == "Halted")


def test_a_slow_task_is_waited_for_by_events_without_polling(slow_sim):
    """Given a pool whose slow operations take 1.5 s, when tinabs waits for an Async.VM.clone,
    then it gets the clone's ref, sends no task.get_record, and its watcher made a handful of
    event.from calls (its current record, then one long poll; a progress write or two) where
    polling would have made about eight."""
    with _Counting() as counted:
        xapi = _port(slow_sim)
        vm = _halted_vm(xapi)
        clone = xapi.call_async("VM.clone", vm, "events clone")
    assert clone.startswith("OpaqueRef:") and xapi.x.VM.get_name_label(clone) == "events clone"
    assert counted.count("task.get_") == 0, counted.calls
    assert 2 <= counted.count("event.from") <= 5, counted.calls


def test_polling_when_configured_and_the_same_result(slow_sim):
    """Given task_wait = "poll", when tinabs waits for the same clone, then it polls task.get_record
    (several times over 1.5 s) and never calls event.from: the benchmark's baseline is real."""
    with _Counting() as counted:
        xapi = _port(slow_sim, "poll")
        vm = _halted_vm(xapi)
        clone = xapi.call_async("VM.clone", vm, "polled clone")
    assert xapi.x.VM.get_name_label(clone) == "polled clone"
    assert counted.count("event.from") == 0 and counted.count("task.get_record") >= 4, counted.calls


def test_a_pool_without_events_falls_back_to_polling(slow_sim):
    """Given a pool that answers event.from with MESSAGE_METHOD_UNKNOWN (an xapi without it), when
    tinabs waits for a task, then the wait polls and returns the right result, and the watcher
    remembers it: the next wait asks no event.from at all."""
    _fault(slow_sim, {"method": "event.from", "error": ["MESSAGE_METHOD_UNKNOWN", "event.from"]})
    with _Counting() as counted:
        xapi = _port(slow_sim)
        vm = _halted_vm(xapi)
        first = xapi.call_async("VM.clone", vm, "fallback 1")
        second = xapi.call_async("VM.clone", vm, "fallback 2")
    assert {xapi.x.VM.get_name_label(first), xapi.x.VM.get_name_label(second)} == {"fallback 1", "fallback 2"}
    assert counted.count("event.from") == 1 and counted.count("task.get_record") >= 4, counted.calls
    assert task_events._watchers[slow_sim.pool(0)["name"]].no_events


def test_a_task_destroyed_while_waited_for_ends_the_wait_with_handle_invalid(slow_sim):
    """Given a task someone else destroys while tinabs waits for it (what xapi does to the task an
    HTTP handler made for itself), when the del event arrives, then the wait ends at once with
    HANDLE_INVALID, as polling it would have, instead of waiting for the operation's end."""
    xapi = _port(slow_sim)
    other = slow_sim.session(0).xenapi
    task = other.task.create("someone else's", "")
    threading.Timer(0.5, other.task.destroy, args=(task,)).start()
    began = time.monotonic()
    with pytest.raises(XenAPI.Failure) as failed:
        xapi.wait_task(task, timeout_s=30)
    assert failed.value.details[0] == "HANDLE_INVALID"
    assert time.monotonic() - began < 10  # not the 30 s timeout: the event ended it


def test_a_failed_and_a_cancelled_task_raise_their_errors(slow_sim):
    """Given a VM.clone that the pool fails (a fault) and one cancelled while pending, when tinabs
    waits by events, then it raises the task's error_info: the fault's code, and TASK_CANCELLED."""
    _fault(slow_sim, {"method": "VM.clone", "error": ["SR_FULL", "1", "0"], "times": 1})
    xapi = _port(slow_sim)
    vm = _halted_vm(xapi)
    with pytest.raises(XenAPI.Failure) as failed:
        xapi.call_async("VM.clone", vm, "fails")
    assert failed.value.details[:1] == ["SR_FULL"]
    task = xapi.start_async("VM.clone", vm, "cancelled")
    threading.Timer(0.3, xapi.x.task.cancel, args=(task,)).start()
    with pytest.raises(XenAPI.Failure) as cancelled:
        xapi.finish(task)
    assert cancelled.value.details[0] == "TASK_CANCELLED"


def test_a_wait_that_times_out_cancels_its_task(slow_sim):
    """Given a task that takes longer than the wait allows, when the wait times out, then tinabs
    raises TASK_TIMEOUT and the task is cancelled on the pool (nothing keeps working for nobody)."""
    xapi = _port(slow_sim)
    vm = _halted_vm(xapi)
    task = xapi.start_async("VM.clone", vm, "too slow")
    with pytest.raises(XenAPI.Failure) as failed:
        xapi.wait_task(task, timeout_s=0.4)
    assert failed.value.details[0] == "TASK_TIMEOUT"
    deadline = time.monotonic() + 5
    while xapi.x.task.get_status(task) not in ("cancelled", "failure") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert xapi.x.task.get_status(task) == "cancelled"


def test_concurrent_waits_share_one_watcher_connection(slow_sim):
    """Given four threads of one process waiting for four clones at once, when the clones end, then
    each thread gets its own clone, and one watcher (one event.from connection) served them all."""
    results: dict[int, str] = {}

    def clone(i: int) -> None:
        results[i] = xapi_ports[i].call_async("VM.clone", vm, f"together {i}")
    threads = [threading.Thread(target=clone, args=(i,)) for i in range(4)]
    with _Counting() as counted:  # before the ports: each binds its session's request function
        xapi_ports = [_port(slow_sim) for _ in range(4)]
        vm = _halted_vm(xapi_ports[0])
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    names = {i: xapi_ports[0].x.VM.get_name_label(ref) for i, ref in results.items()}
    assert names == {i: f"together {i}" for i in range(4)}
    assert len(task_events._watchers) == 1 and counted.count("task.get_") == 0, counted.calls


def test_an_unreachable_event_connection_lets_waiters_poll(slow_sim):
    """Given a watcher whose event.from fails (the pool answers it with an internal error), when a
    stage waits for its task, then the wait does not hang on the broken connection: it polls the
    task itself and returns its result."""
    _fault(slow_sim, {"method": "event.from", "error": ["INTERNAL_ERROR", "boom"]})
    with _Counting() as counted:
        xapi = _port(slow_sim)
        vm = _halted_vm(xapi)
        clone = xapi.call_async("VM.clone", vm, "polled after failure")
    assert xapi.x.VM.get_name_label(clone) == "polled after failure"
    assert counted.count("task.get_record") >= 1 and counted.count("event.from") >= 1, counted.calls
