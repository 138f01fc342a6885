"""Load, at CI scale: the driver of bench/load.py on 4 pools x 15 VMs and 2 workers.

Given a private Redis, the simulator (zero latency, 1 MiB disks) and two worker
processes, when one VM and then every VM is backed up with a 5-second state
TTL, then every chain succeeds, the pools and the destination hold exactly one
complete backup per VM and nothing else of tinabs, and once the TTL has passed
Redis holds no job state and no task result, every key left expires or is one
of kombu's binding tables, and its memory is back at its idle start (the
metrics figures, kept by design, aside).
"""
from __future__ import annotations

from helpers.load_run import LoadSpec, run_load
from helpers.redis_usage import key_kind

SPEC = LoadSpec(pools=4, vms_per_pool=15, workers=2, concurrency=2, disk_mib=1, state_ttl_s=5,
                settle_margin_s=5, timeout_s=150)


def test_load_all_succeed_leave_nothing_and_state_expires(tmp_path):
    result = run_load(SPEC, tmp_path)
    f = result.figures

    assert not result.problems, "\n".join(result.problems)
    assert (f["chains"], f["succeeded"], f["not_succeeded"]) == (60, 60, 0)
    assert f["redis_keys_peak"] > f["redis_keys_before"] + 60  # the job's state did exist
    left = dict(result.keys_after)
    assert {key_kind(k) for k in left} <= {"kombu_bindings", "tinabs_limits", "tinabs_metrics"}, left
    assert all(ttl > 0 for k, ttl in left.items() if key_kind(k) in ("tinabs_limits", "tinabs_metrics")), left
    # the Prometheus figures stay by design, and only they: the pools' set, per pool its counters
    # and its set of VMs, and one hash per VM (no mark per run)
    metrics = sorted(k for k in left if key_kind(k) == "tinabs_metrics")
    assert len(metrics) == 1 + 2 * 4 + 60, metrics
    # (and Redis' memory, the figures left out, is back near its start: check_settled, in problems)
