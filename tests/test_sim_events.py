"""The simulator's event API as xapi serves it (ocaml/xapi/xapi_event.ml), through the real
XenAPI client: event.from (tokens, add/mod/del, coalescing, timeouts, wake-ups, class/ref
filters, concurrent long polls), the deprecated register/next/unregister, get_current_id and
inject.  ``event.from`` is a Python keyword, so clients call ``getattr(x.event, "from")``.

Objects changed here are the tests' own (tasks from task.create, VM clones), so the shared
inventory never changes.
"""
from __future__ import annotations

import re
import threading
import time
import xmlrpc.client

import pytest
import XenAPI

from helpers import xapi_http as H
from helpers.sim_proc import wait_task

TOKEN = re.compile(r"\d{20},\d{20}\Z")


@pytest.fixture(scope="module")
def x(sim):
    return H.api(sim.session(0))


def from_(x, classes, token, timeout):
    return getattr(x.event, "from")(classes, token, timeout)


def now_token(x, classes=("task",)) -> str:
    return from_(x, list(classes), "", 0.0)["token"]


def ops(result) -> list[tuple[str, str]]:
    return [(e["operation"], e["ref"]) for e in result["events"]]


# -- event.from: the first call and the result's shape ----------------------------------
def test_empty_token_returns_every_object_as_an_add_with_its_record(x):
    """xapi_event.ml from_inner: token "" is generation 0, so every live object was created
    after it and comes back as one ``add`` (never also a ``mod``: "Only have a mod event if we
    don't have a created event"), with the record as snapshot; event_types.ml rpc_of_event:
    id and timestamp are strings, class is lower case; valid_ref_counts counts every table
    (rpclib Int32, so an int); Token.to_string is "%020Ld,%020Ld".  Sessions make no events
    (datamodel.ml session ``~gen_events:false``)."""
    result = from_(x, ["*"], "", 0.0)
    assert list(result) == ["events", "valid_ref_counts", "token"]
    assert TOKEN.match(result["token"])
    by_class: dict[str, list] = {}
    for event in result["events"]:
        assert event["operation"] == "add"
        assert isinstance(event["id"], str) and event["id"].isdigit()
        assert event["timestamp"] == "0.0"
        by_class.setdefault(event["class"], []).append(event)
    assert "session" not in by_class
    vms = x.VM.get_all_records()
    assert sorted(e["ref"] for e in by_class["vm"]) == sorted(vms)
    one = by_class["vm"][0]
    assert one["snapshot"] == vms[one["ref"]], "the snapshot is the record get_record gives"
    counts = result["valid_ref_counts"]
    assert counts["vm"] == len(vms) and counts["vdi"] == len(x.VDI.get_all())
    assert all(type(n) is int for n in counts.values()), "<i4> on the wire, not a string"
    assert counts["session"] >= 1


def test_add_mod_del_of_a_task_one_call_each(x):
    """xapi_event.ml from_inner: created after the token -> add; modified -> mod; deleted
    (db_cache_types.ml Table.fold_over_deleted) -> del, which has no snapshot."""
    token = now_token(x)
    task = x.task.create("events add", "")
    added = from_(x, ["task"], token, 5.0)
    assert ops(added) == [("add", task)]
    assert added["events"][0]["snapshot"]["name_label"] == "events add"
    assert added["token"] > token, "tokens compare as strings"

    x.task.add_to_other_config(task, "k", "v")
    modded = from_(x, ["task"], added["token"], 5.0)
    assert ops(modded) == [("mod", task)]
    assert modded["events"][0]["snapshot"]["other_config"] == {"k": "v"}

    x.task.destroy(task)
    deleted = from_(x, ["task"], modded["token"], 5.0)
    assert ops(deleted) == [("del", task)]
    assert "snapshot" not in deleted["events"][0]


def test_changes_between_two_calls_coalesce_into_one_event(x):
    """xapi reads per-row generation counters (db_cache_types.ml Stat), not a log: an object
    changed many times since the token is one event with its latest record; one created and
    destroyed since the token is no event at all ("created and destroyed since the last
    update")."""
    task = x.task.create("events coalesce", "")
    token = now_token(x)
    for k in range(5):
        x.task.add_to_other_config(task, f"k{k}", str(k))
    gone = x.task.create("events fleeting", "")
    x.task.destroy(gone)
    result = from_(x, ["task"], token, 5.0)
    assert ops(result) == [("mod", task)]
    assert len(result["events"][0]["snapshot"]["other_config"]) == 5
    x.task.destroy(task)


def test_a_vm_clone_its_devices_and_its_destruction(x):
    """A clone is an add of the VM (and of its VBDs); destroying a VBD rewrites the VM's VBDs
    set, a mod of the VM (db_cache_types.ml update_one_to_many); VM.destroy is a del."""
    source = next(ref for ref, rec in H.user_vms(x).items() if rec["power_state"] == "Halted")
    token = now_token(x, ["vm"])
    vm = x.VM.clone(source, "events clone")
    added = from_(x, ["vm", "vbd"], token, 5.0)
    assert ("add", vm) in ops(added)
    assert {ref for op, ref in ops(added) if op == "add"} >= set(x.VM.get_VBDs(vm))

    vbd = x.VM.get_VBDs(vm)[0]
    x.VBD.destroy(vbd)
    after = from_(x, ["vm", "vbd"], added["token"], 5.0)
    assert sorted(ops(after)) == sorted([("mod", vm), ("del", vbd)])
    assert vbd not in next(e for e in after["events"] if e["ref"] == vm)["snapshot"]["VBDs"]

    x.VM.destroy(vm)
    gone = from_(x, ["vm"], after["token"], 5.0)
    assert ops(gone) == [("del", vm)]


# -- waiting ------------------------------------------------------------------------------
def test_timeout_with_nothing_happening_returns_no_events_after_the_timeout(x):
    """xapi_event.ml from: blocks until the deadline (now + timeout) when nothing it wants
    changes, then returns no events and a token no older than the one it was given."""
    task = x.task.create("events quiet", "")
    token = now_token(x)
    began = time.monotonic()
    result = from_(x, [f"task/{task}"], token, 1.0)
    took = time.monotonic() - began
    assert result["events"] == []
    assert 0.95 <= took < 2.0, took
    assert result["token"] >= token
    x.task.destroy(task)


def test_a_waiter_wakes_within_a_moment_of_a_change(x, sim):
    """xapi_event.ml From.add wakes the calls whose subscriptions match, and from_inner reads
    0.05 s later (Thread.delay 0.05): a 30 s long poll returns promptly after the change."""
    task = x.task.create("events wake", "")
    token = now_token(x)
    poller = H.api(sim.session(0))
    done: dict = {}

    def poll():
        done["result"] = from_(poller, [f"task/{task}"], token, 30.0)
        done["at"] = time.monotonic()

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.5)
    changed_at = time.monotonic()
    x.task.add_to_other_config(task, "wake", "1")
    thread.join(10)
    assert not thread.is_alive()
    assert ops(done["result"]) == [("mod", task)]
    assert done["at"] - changed_at < 0.5, done["at"] - changed_at
    x.task.destroy(task)


def test_class_and_object_subscriptions_select_what_comes_back(x):
    """xapi_event.ml Subscription: "*" is everything, "<class>" a table (compared in lower
    case), "<class>/<ref>" one object."""
    a = x.task.create("events filter a", "")
    b = x.task.create("events filter b", "")
    token = now_token(x)
    x.task.add_to_other_config(b, "k", "b")
    assert from_(x, [f"task/{a}"], token, 0.5)["events"] == []
    x.task.add_to_other_config(a, "k", "a")
    assert ops(from_(x, [f"task/{a}"], token, 5.0)) == [("mod", a)]
    assert sorted(ops(from_(x, ["TASK"], token, 5.0))) == sorted([("mod", a), ("mod", b)])
    assert from_(x, ["pool"], token, 0.0)["events"] == []
    x.task.destroy(a)
    x.task.destroy(b)


def test_two_long_polls_wait_side_by_side_without_blocking_other_calls(x, sim):
    """Each connection has its own server thread, and a blocked event.from holds no lock a
    write needs (xapi_event.ml waits on its own condition, outside the DB lock): two 30 s
    polls on their own connections leave every other client's calls fast, and each poll
    returns only for its own task."""
    tasks = [x.task.create(f"events poll {k}", "") for k in range(2)]
    token = now_token(x)
    results: dict[int, tuple] = {}

    def poll(k):
        result = from_(H.api(sim.session(0)), [f"task/{tasks[k]}"], token, 30.0)
        results[k] = (result, time.monotonic())

    threads = [threading.Thread(target=poll, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    began = time.monotonic()
    assert x.VM.get_all() and x.task.get_record(tasks[0])
    assert time.monotonic() - began < 1.0, "other calls are not held up by the waiters"
    assert not results
    x.task.add_to_other_config(tasks[0], "k", "0")
    threads[0].join(10)
    assert ops(results[0][0]) == [("mod", tasks[0])]
    assert threads[1].is_alive(), "the other poll still waits"
    x.task.add_to_other_config(tasks[1], "k", "1")
    threads[1].join(10)
    assert ops(results[1][0]) == [("mod", tasks[1])]
    for task in tasks:
        x.task.destroy(task)


def test_logout_ends_a_waiting_call_with_session_invalid(sim):
    """xapi_event.ml on_session_deleted marks the session's blocked calls invalid and wakes
    them: they fail with SESSION_INVALID [session].  (Raw XML-RPC: the XenAPI client would
    log in again and retry.)"""
    waiter = sim.session(0).handle
    proxy = xmlrpc.client.ServerProxy(sim.pool(0)["master"])
    box: dict = {}
    # a class with no objects: token "" has nothing to return, so the call waits
    thread = threading.Thread(target=lambda: box.update(
        r=getattr(xmlrpc.client.ServerProxy(sim.pool(0)["master"]).event, "from")(
            waiter, ["no_such_class"], "", 30.0)))
    thread.start()
    time.sleep(0.3)
    proxy.session.logout(waiter)
    thread.join(5)
    assert not thread.is_alive()
    assert box["r"] == {"Status": "Failure", "ErrorDescription": ["SESSION_INVALID", waiter]}


# -- tokens, errors, arity ------------------------------------------------------------------
@pytest.mark.parametrize("token", ["bad", "1", "1,2,3", "a,b", "00000000000000000001;0"])
def test_a_bad_token_is_a_parse_failure(x, token):
    """xapi_event.ml from: Token.of_string fails -> EVENT_FROM_TOKEN_PARSE_FAILURE [token]."""
    with pytest.raises(XenAPI.Failure) as err:
        from_(x, ["*"], token, 0.0)
    assert err.value.details == ["EVENT_FROM_TOKEN_PARSE_FAILURE", token]


def test_from_and_next_have_no_async_form_but_register_does(x):
    """datamodel: from, next, get_current_id and inject are declared ~flags:[`Session]
    (the Go SDK has AsyncRegister/AsyncUnregister only); server_helpers.ml do_dispatch."""
    with pytest.raises(XenAPI.Failure) as err:
        getattr(x.Async.event, "from")(["*"], "", 0.0)
    assert err.value.details == ["Fault", "No async mode for this operation (rpc: event.from)"]
    assert wait_task(x, x.Async.event.register(["pool"]))["status"] == "success"


# -- register / next / unregister, get_current_id, inject ---------------------------------
class _Timeout(xmlrpc.client.Transport):
    def make_connection(self, host):
        conn = super().make_connection(host)
        conn.timeout = 10
        return conn


def test_register_next_unregister(sim):
    """xapi_event.ml Next: next before register is SESSION_NOT_REGISTERED [trackid of the
    session]; after register(classes) every write to a matching object is queued (not
    coalesced) with id = the current id, which get_current_id returns and which grows only
    when a registered session wants the event; unregister removes the classes."""
    s = sim.session(0)
    x = s.xenapi
    # a raw proxy with a socket timeout: were the check missing, next would block for ever
    refused = xmlrpc.client.ServerProxy(sim.pool(0)["master"], transport=_Timeout()).event.next(s.handle)
    assert refused["Status"] == "Failure"
    code, track = refused["ErrorDescription"]
    assert code == "SESSION_NOT_REGISTERED"
    assert re.fullmatch(r"[0-9a-f]{32}", track) and track != s.handle

    x.event.register(["task"])
    first = int(x.event.get_current_id())
    task = x.task.create("events next", "")
    x.task.add_to_other_config(task, "a", "1")
    x.task.add_to_other_config(task, "b", "2")
    events = x.event.next()
    assert [(e["operation"], e["ref"]) for e in events] == [("add", task), ("mod", task), ("mod", task)]
    assert [int(e["id"]) for e in events] == [first, first + 1, first + 2]
    assert events[1]["snapshot"]["other_config"] == {"a": "1"}, "next keeps each write's record"
    assert re.fullmatch(r"\d+\.", events[0]["timestamp"])
    assert int(x.event.get_current_id()) == first + 3

    x.event.unregister(["task"])
    x.task.destroy(task)
    assert int(x.event.get_current_id()) == first + 3, "nobody wants task events any more"


def test_inject_returns_a_token_that_sees_the_object(x):
    """xapi_event.ml inject: touches the row and returns the token just before it, so an
    event.from from that token sees a mod of the object; an unknown ref is HANDLE_INVALID."""
    task = x.task.create("events inject", "")
    token = x.event.inject("task", task)
    assert TOKEN.match(token)
    assert ops(from_(x, [f"task/{task}"], token, 5.0)) == [("mod", task)]
    with pytest.raises(XenAPI.Failure) as err:
        x.event.inject("task", "OpaqueRef:nope")
    assert err.value.details == ["HANDLE_INVALID", "task", "OpaqueRef:nope"]
    x.task.destroy(task)


# -- tasks: what a client waiting for one sees, and the journal's bound ----------------------
def test_waiting_for_an_async_clone_with_latency_takes_a_few_calls(fresh_sim):
    """What tinabs does: Async.VM.clone, then event.from(["task/<ref>"], token, 30) in a loop
    until the task leaves pending.  Progress writes wake the waiter, but each call returns
    once (from_inner), so a 1 s clone costs a handful of calls, not one per write."""
    sim = fresh_sim("--pools", "1", "--hosts-per-pool", "1", "--vms-per-pool", "8", "--disk-mib", "4",
                    "--latency", "1")
    x = H.api(sim.session(0))
    source = next(ref for ref, rec in H.user_vms(x).items() if rec["power_state"] == "Halted")
    counter = H.api(sim.session(0))
    counter.event.register(["task"])
    token = now_token(x)
    task = x.Async.VM.clone(source, "events latency")
    calls, seen = 0, []
    while True:
        result = from_(x, [f"task/{task}"], token, 30.0)
        calls, token = calls + 1, result["token"]
        seen += result["events"]
        if seen and seen[-1]["snapshot"]["status"] != "pending":
            break
    assert seen[-1]["snapshot"]["status"] == "success"
    writes = [e for e in counter.event.next() if e["ref"] == task]
    assert 2 <= calls <= 8, calls
    assert len(writes) > calls, "several writes came back coalesced"
    print(f"Async.VM.clone --latency 1: {len(writes)} task writes, {calls} event.from calls")


def test_deleted_objects_are_remembered_in_a_bounded_queue(fresh_sim):
    """db_cache_types.ml Table.remove keeps at most 512 deletions per table (cut back to the
    newest 256), so a pool that makes and destroys many tasks keeps a bounded journal; a
    client whose token is older than the queue misses the oldest deletions."""
    sim = fresh_sim("--pools", "1", "--hosts-per-pool", "1", "--vms-per-pool", "1", "--disk-mib", "1")
    x = H.api(sim.session(0))
    tasks = [x.task.create(f"t{k}", "") for k in range(700)]
    token = now_token(x)
    for task in tasks:
        x.task.destroy(task)
    dels = [ref for op, ref in ops(from_(x, ["task"], token, 5.0)) if op == "del"]
    assert 256 <= len(dels) < 512, len(dels)
    assert set(dels) <= set(tasks[-len(dels):]), "the newest deletions are the ones kept"
