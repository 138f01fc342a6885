"""tinabs' own figures for Prometheus: kept in Redis by the workers, served by `tinabs metrics`.

When a run ends, `count_run_end` adds it to its pool's counters (backups succeeded or failed,
bytes exported, bytes stored in the repository) and notes the VM's last result.  A run is
counted once, however often its end is reported (a redelivered or duplicated task).  "Bytes
exported" is the size of each complete backup: the .xva written to the destination in export
mode, the metadata file in sr-copy mode (whose disk copy stays on the backup SR), the XVA
streamed into the repository in repo mode.  "Bytes stored" (repo mode only) is what each
repository backup added to the repository: its new blocks as sealed on disk and its index, far
less than its size once deduplication finds earlier blocks.  A failed run is not counted in either.
A repo or sr-copy backup also notes how the VM's last good backup was taken (``last_kind``:
incremental or full; an export backup, always full, clears it).

Counters only grow, and never expire while runs keep ending (keys.METRICS_TTL_S).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from tinabs_tasks.runs import keys

#: KEYS: the run's state hash, pools, pool, vms, vm; ARGV: figures ttl, pool, result,
#: vm uuid, vm name, end time, size, seconds, stored bytes ("" for a backup outside the repository),
#: backup kind ("" for an export backup).  All or nothing, and only once per run: the mark
#: that the run was counted is a field of the run's own state, so it lives exactly as long as
#: that state ([limits] state_ttl_s) and leaves nothing behind in Redis.
_COUNT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'metrics_counted', '1') == 0 then return 0 end
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[3], 'backups_' .. ARGV[3], 1)
redis.call('SADD', KEYS[4], ARGV[4])
redis.call('HSET', KEYS[5], 'name', ARGV[5], 'last_result', ARGV[3], 'last_end', ARGV[6])
if ARGV[3] == 'succeeded' then
  redis.call('HINCRBY', KEYS[3], 'bytes_exported', ARGV[7])
  redis.call('HSET', KEYS[5], 'last_success', ARGV[6], 'last_size', ARGV[7], 'last_seconds', ARGV[8])
  if ARGV[9] ~= '' then
    redis.call('HINCRBY', KEYS[3], 'bytes_stored', ARGV[9])
    redis.call('HSET', KEYS[5], 'last_stored', ARGV[9])
  else
    redis.call('HDEL', KEYS[5], 'last_stored')
  end
  if ARGV[10] ~= '' then
    redis.call('HSET', KEYS[5], 'last_kind', ARGV[10])
  else
    redis.call('HDEL', KEYS[5], 'last_kind')
  end
end
for i = 2, 5 do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
return 1
"""
RESULTS = ("succeeded", "failed")


def count_run_end(r, run: dict | None) -> bool:
    """Count an ended run (its state hash, as JobStore.run returns it); False if it was already
    counted, or is not ended (a late copy that found the run's state gone)."""
    if not run or run.get("state") not in RESULTS or not run.get("pool"):
        return False
    pool, vm_uuid = run["pool"], run["vm_uuid"]
    seconds = sum(json.loads(run.get("timings") or "{}").values())
    return bool(r.register_script(_COUNT)(
        keys=[keys.run(run["id"]), keys.metrics_pools(), keys.metrics_pool(pool),
              keys.metrics_vms(pool), keys.metrics_vm(pool, vm_uuid)],
        args=[keys.METRICS_TTL_S, pool, run["state"], vm_uuid, run.get("vm_name", ""),
              run.get("finished", 0), int(run.get("size") or 0), round(seconds, 3),
              int(run["stored_bytes"]) if run.get("stored_bytes") not in (None, "") else "",
              run.get("backup_kind") or ""]))


@dataclass
class VmFigures:
    uuid: str
    name: str
    last_result: str
    last_end: float
    last_success: float | None = None  #: None: no run of this VM has succeeded (while kept)
    last_size: int | None = None
    last_seconds: float | None = None
    #: what the last successful backup added to the repository; None unless it was a repo backup
    last_stored: int | None = None
    #: how the last successful backup was taken ("incremental", "full"); None for an export backup
    last_kind: str | None = None


@dataclass
class PoolFigures:
    name: str
    succeeded: int = 0
    failed: int = 0
    bytes_exported: int = 0
    bytes_stored: int = 0
    vms: list[VmFigures] = field(default_factory=list)


def read(r) -> list[PoolFigures]:
    """Every pool's figures, in three round trips whatever the number of VMs."""
    pools = sorted(r.smembers(keys.metrics_pools()))
    pipe = r.pipeline(transaction=False)
    for pool in pools:
        pipe.hgetall(keys.metrics_pool(pool))
        pipe.smembers(keys.metrics_vms(pool))
    replies = pipe.execute()
    counters, members = replies[0::2], replies[1::2]
    wanted = [(pool, uuid) for pool, uuids in zip(pools, members) for uuid in sorted(uuids)]
    pipe = r.pipeline(transaction=False)
    for pool, uuid in wanted:
        pipe.hgetall(keys.metrics_vm(pool, uuid))
    out = {pool: PoolFigures(pool, int(c.get("backups_succeeded", 0)), int(c.get("backups_failed", 0)),
                             int(c.get("bytes_exported", 0)), int(c.get("bytes_stored", 0)))
           for pool, c in zip(pools, counters)}
    for (pool, uuid), vm in zip(wanted, pipe.execute()):
        if vm:  # (gone: its hash expired before the set that lists it)
            out[pool].vms.append(_vm(uuid, vm))
    return list(out.values())


def _vm(uuid: str, h: dict) -> VmFigures:
    succeeded = "last_success" in h
    return VmFigures(uuid, h.get("name", ""), h.get("last_result", ""), float(h.get("last_end", 0)),
                     float(h["last_success"]) if succeeded else None,
                     int(h["last_size"]) if succeeded else None,
                     float(h["last_seconds"]) if succeeded else None,
                     int(h["last_stored"]) if succeeded and "last_stored" in h else None,
                     h.get("last_kind") if succeeded else None)
