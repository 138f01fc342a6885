"""Benchmark instrumentation, loaded by worker processes the benchmarks start (PYTHONPATH).

For every Celery task a worker runs, one JSON line is appended to $TINABS_TIMELINE_FILE: the
task, its run, when it started and ended, and how its time went: Redis round trips (each
``send_packed_command`` is one: a pipeline or a script is one too) and the time spent in them,
XAPI calls (XML-RPC requests through XenAPI) and the time spent in them, and the time spent
sleeping between polls of XAPI tasks.  Counts cover the whole process while the task runs (its
heartbeat threads too).  Nothing of tinabs is imported: the same file measures any version.
"""
import json
import os
import threading
import time

_FILE = os.environ.get("TINABS_TIMELINE_FILE")
_lock = threading.Lock()
_c = {"redis_rt": 0, "redis_s": 0.0, "xapi_calls": 0, "xapi_s": 0.0, "task_polls": 0, "sleep_s": 0.0}
_methods: dict = {}  # XAPI calls by method name, for the breakdown a benchmark prints


def _add(key, n):
    with _lock:
        _c[key] += n


def _timed(fn, count_key, time_key, extra=None):
    def wrapper(*args, **kwargs):
        began = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(time_key, time.perf_counter() - began)
            if count_key:
                _add(count_key, 1)
            if extra:
                extra(args)
    wrapper.__wrapped__ = fn
    return wrapper


def _install():
    import redis.connection as rc
    conn = getattr(rc, "AbstractConnection", rc.Connection)
    conn.send_packed_command = _timed(conn.send_packed_command, "redis_rt", "redis_s")
    conn.read_response = _timed(conn.read_response, None, "redis_s")
    try:
        import XenAPI
    except ImportError:
        XenAPI = None
    if XenAPI is not None:
        def polls(args):
            method = str(args[1]) if len(args) > 1 else "?"
            if method.startswith("task.get_"):
                _add("task_polls", 1)
            with _lock:
                _methods[method] = _methods.get(method, 0) + 1
        XenAPI.Session.xenapi_request = _timed(XenAPI.Session.xenapi_request, "xapi_calls", "xapi_s", polls)
    real_sleep = time.sleep

    def sleep(seconds):
        began = time.perf_counter()
        try:
            real_sleep(seconds)
        finally:
            _add("sleep_s", time.perf_counter() - began)
    time.sleep = sleep
    from celery import signals
    state = {}

    @signals.task_prerun.connect(weak=False)
    def _start(task_id=None, task=None, args=None, **_):
        with _lock:
            state[task_id] = (time.time(), dict(_c), dict(_methods))

    @signals.task_postrun.connect(weak=False)
    def _end(task_id=None, task=None, args=None, state_=None, **kw):
        began, before, methods_before = state.pop(task_id, (None, None, None))
        if began is None:
            return
        with _lock:
            delta = {k: _c[k] - before[k] for k in _c}
            methods = {m: n - methods_before.get(m, 0) for m, n in _methods.items() if n != methods_before.get(m, 0)}
        ctx = args[0] if args and isinstance(args[0], dict) else {}
        line = {"task": task.name, "run": ctx.get("run"), "start": began, "end": time.time(),
                "state": kw.get("state"), "xapi_methods": methods, **delta}
        with open(_FILE, "a") as fh:
            fh.write(json.dumps(line) + "\n")


if _FILE:
    try:
        _install()
    except Exception as exc:  # never break a worker over a benchmark's instrument
        import sys
        print(f"timeline instrumentation off: {exc}", file=sys.stderr)
