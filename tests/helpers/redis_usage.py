"""What a tinabs job leaves in Redis: memory, keys and their TTLs, measured without guessing.

Two things in Redis' used_memory do not grow with a job's data and are measured
apart: client connections (up to ~40 KB each; Celery worker children connect on
first use) and Redis 7's per-command latency histograms (~40 KB per command name
ever run, freed by CONFIG RESETSTAT).
"""
from __future__ import annotations

import threading

import redis

#: Redis memory outside client connections and command statistics may exceed its idle start
#: by this much after settling: what a job leaves by design (cached Lua scripts, kombu's
#: binding tables, allocator rounding).
MEMORY_SLACK_BYTES = 256 << 10
SAMPLE_EVERY_S = 0.2


class MemorySampler:
    """INFO memory every SAMPLE_EVERY_S in a thread: the peak used_memory and key count."""

    def __init__(self, url: str):
        self.r = redis.Redis.from_url(url, decode_responses=True)
        self.peak_bytes = self.peak_keys = self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="redis-memory", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self.r.info("memory")["used_memory"])
            self.peak_keys = max(self.peak_keys, self.r.dbsize())
            self.samples += 1
            self._stop.wait(SAMPLE_EVERY_S)


def key_kind(key: str) -> str:
    if key.startswith(("tinabs:job", "tinabs:run")):
        return "tinabs_state"
    if key.startswith("tinabs:metrics:"):
        return "tinabs_metrics"  # the Prometheus figures: kept by design (keys.METRICS_TTL_S)
    if key.startswith("tinabs:"):
        return "tinabs_limits"  # semaphores, wake lists, leases
    if key.startswith("celery-task-meta-"):
        return "celery_results"
    if key.startswith("_kombu.binding"):  # kombu's exchange tables and their deadline bookkeeping
        return "kombu_bindings"
    if key.startswith("unacked"):
        return "kombu_unacked"
    return "other"


def redis_snapshot(r: redis.Redis) -> dict:
    """Memory first (a SCAN lazily expires what it touches), then every key with its TTL and
    size (MEMORY USAGE), by kind.

    ``without_clients`` is used_memory after CONFIG RESETSTAT (which frees the latency
    histograms) less the sum of CLIENT LIST's tot-mem (INFO's mem_clients_normal lags behind:
    clientsCron updates it a few clients at a time)."""
    used = r.info("memory")["used_memory"]
    r.config_resetstat()
    used_no_stats = r.info("memory")["used_memory"]
    clients = r.client_list()
    names = list(r.scan_iter(count=1000))
    pipe = r.pipeline(transaction=False)
    for k in names:
        pipe.ttl(k)
        pipe.memory_usage(k, samples=0)
    answers = pipe.execute()
    keys = dict(zip(names, answers[0::2]))
    kinds: dict[str, int] = {}
    kind_bytes: dict[str, int] = {}
    for k, size in zip(names, answers[1::2]):
        kinds[key_kind(k)] = kinds.get(key_kind(k), 0) + 1
        kind_bytes[key_kind(k)] = kind_bytes.get(key_kind(k), 0) + (size or 0)  # None: expired meanwhile
    client_bytes = sum(int(c["tot-mem"]) for c in clients)
    return {"used_memory": used, "command_stats": used - used_no_stats, "clients": len(clients),
            "client_bytes": client_bytes, "without_clients": used_no_stats - client_bytes,
            "keys": keys, "kinds": kinds, "kind_bytes": kind_bytes}


def check_settled(before: dict, after: dict, vms: int, pools: int) -> list[str]:
    """Problems with what a job of `vms` VMs over `pools` pools left in Redis once settled.

    The metrics figures stay by design (a set of pools, and per pool a counters hash and a set
    of VMs, and a hash per VM): their number is checked, and their memory is left out of the
    comparison with the idle start."""
    problems = []
    metrics = after["kinds"].get("tinabs_metrics", 0)
    if metrics > 1 + 2 * pools + vms:
        problems.append(f"{metrics} tinabs:metrics keys left, more than the figures of {pools} pools and {vms} VMs")
    for kind in ("tinabs_state", "celery_results", "kombu_unacked"):
        if after["kinds"].get(kind):
            left = sorted(k for k in after["keys"] if key_kind(k) == kind)
            problems.append(f"{len(left)} {kind} keys left after the TTL, e.g. {left[:5]}")
    forever = sorted(k for k, ttl in after["keys"].items() if ttl == -1 and key_kind(k) != "kombu_bindings")
    if forever:
        problems.append(f"keys without a TTL left after the job: {forever[:10]}")
    kept = after["kind_bytes"].get("tinabs_metrics", 0) - before["kind_bytes"].get("tinabs_metrics", 0)
    grown = after["without_clients"] - before["without_clients"] - kept
    if grown > MEMORY_SLACK_BYTES:
        problems.append(f"Redis memory outside client connections is {grown / 1e6:.2f} MB above its idle "
                        f"start after settling, the metrics figures ({kept / 1e6:.2f} MB) left out (allowed "
                        f"{MEMORY_SLACK_BYTES / 1e6:.2f} MB)")
    return problems
