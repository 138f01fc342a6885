"""Where a backup's time goes, per stage: read the lines bench/instrument/sitecustomize.py wrote.

For each stage: how many ran, and on average how long each waited in the queue (from the end of
the run's previous task to its start), its Redis round trips and time, its XAPI calls (task polls
among them) and time, the time it slept between polls, and the rest: the work itself (streaming,
hashing, writing, Python).
"""
from __future__ import annotations

import json
from collections import defaultdict

STAGE_ORDER = ("plan", "snapshot", "skeleton", "disks", "vifs", "copy", "export", "metadata", "cleanup",
               "compensate")


def read(path: str) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def per_stage(lines: list[dict]) -> dict[str, dict]:
    by_run = defaultdict(list)
    for line in lines:
        if line.get("run"):
            by_run[line["run"]].append(line)
    queued = defaultdict(list)
    for items in by_run.values():
        items.sort(key=lambda l: l["start"])
        for prev, cur in zip(items, items[1:]):
            queued[cur["task"]].append(max(0.0, cur["start"] - prev["end"]))
    out = {}
    for line in lines:
        stage = line["task"].split(".", 1)[-1]
        s = out.setdefault(stage, defaultdict(float))
        s["n"] += 1
        s["wall_s"] += line["end"] - line["start"]
        for key in ("redis_rt", "redis_s", "xapi_calls", "xapi_s", "task_polls", "sleep_s"):
            s[key] += line[key]
    for stage, s in out.items():
        n = s["n"]
        waits = queued.get(f"tinabs.{stage}", [])
        s["queued_s"] = sum(waits) / len(waits) if waits else 0.0
        for key in ("wall_s", "redis_rt", "redis_s", "xapi_calls", "xapi_s", "task_polls", "sleep_s"):
            s[key] /= n
        s["work_s"] = max(0.0, s["wall_s"] - s["redis_s"] - s["xapi_s"] - s["sleep_s"])
    return dict(sorted(out.items(), key=lambda kv: STAGE_ORDER.index(kv[0]) if kv[0] in STAGE_ORDER else 99))


def table(stages: dict[str, dict]) -> str:
    rows = [f"{'stage':<11}{'n':>5}{'queued_s':>10}{'wall_s':>9}{'redis_rt':>9}{'redis_s':>9}{'xapi':>6}"
            f"{'polls':>6}{'xapi_s':>8}{'sleep_s':>9}{'work_s':>8}"]
    for name, s in stages.items():
        rows.append(f"{name:<11}{int(s['n']):>5}{s['queued_s']:>10.3f}{s['wall_s']:>9.3f}{s['redis_rt']:>9.1f}"
                    f"{s['redis_s']:>9.3f}{s['xapi_calls']:>6.1f}{s['task_polls']:>6.1f}{s['xapi_s']:>8.3f}"
                    f"{s['sleep_s']:>9.3f}{s['work_s']:>8.3f}")
    return "\n".join(rows)


def chain_figures(stages: dict[str, dict], chain: tuple[str, ...]) -> dict[str, float]:
    """Totals over one chain's stages: Redis round trips per stage, XAPI calls per chain."""
    present = [s for s in chain if s in stages]
    rt = sum(stages[s]["redis_rt"] for s in present)
    return {"redis_rt_per_stage": rt / len(present) if present else 0.0,
            "redis_rt_per_chain": rt,
            "xapi_calls_per_chain": sum(stages[s]["xapi_calls"] for s in present),
            "task_polls_per_chain": sum(stages[s]["task_polls"] for s in present)}
