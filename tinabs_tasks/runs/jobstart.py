"""Starting a backup job: the one way `tinabs backup` and the scheduled backups both do it.

A job is recorded in Redis, then one ``tinabs.plan`` goes to each pool's queue; plan picks the
VMs and takes each VM's lock (vm_lock.py), so a VM still being backed up by an earlier job, a
scheduled one included, is left to it.
"""
from __future__ import annotations

from tinabs_tasks.config import model as config_mod


def check_pools(cfg: config_mod.Config, requested: list[str] | tuple[str, ...] | None) -> list[str]:
    """The pools a job covers (every configured one when none is asked for), each once: a pool
    named twice would get two `plan` tasks racing to send the same chains."""
    pools = list(dict.fromkeys(requested)) if requested else sorted(cfg.pools)
    for name in pools:
        cfg.pool(name)  # unknown: a ConfigError naming the configured pools
    return pools


def job_modes(cfg: config_mod.Config, mode: str | None, pools: list[str]) -> dict[str, str]:
    """Each pool's mode in a job: ``mode`` when the job names one, else the pool's own
    (``[pools.NAME] mode``, else ``default_mode``)."""
    return {name: mode or cfg.mode_of(name) for name in pools}


def describe_modes(modes: dict[str, str]) -> str:
    """The job's mode as recorded and shown: one mode, or each pool's (``prod-a: repo, lab: export``)."""
    distinct = set(modes.values())
    if len(distinct) <= 1:
        return next(iter(distinct), "")
    return ", ".join(f"{pool}: {m}" for pool, m in modes.items())


def start_job(cfg: config_mod.Config, store, selector: dict, mode: str | None, pools: list[str],
              once_key: str | None = None, full: str | None = None) -> str:
    """Record the job and send its plans; the job id.  ``mode`` None: each pool's own mode.
    ``full``: who asked for full backups (``--full``, a schedule entry), None: incremental where
    a mode and a VM's base allow.

    With ``once_key`` (a scheduled tick's task id), a second call with the same key — the
    tick's task delivered again — sends the same job's plans again instead of starting a second
    job; plan is idempotent per job, pool and VM.
    """
    from tinabs_tasks.runs import requests  # sent by name: this process needs only the broker
    modes = job_modes(cfg, mode, pools)
    job_id = store.r.get(once_key) if once_key else None
    if job_id is None:
        job_id = store.create_job(selector, describe_modes(modes), pools)
        if once_key and not store.r.set(once_key, job_id, nx=True, ex=store.ttl_s):
            # two copies of one tick at the same instant (only a redelivery racing its original
            # can do that): follow the first; ours stays an empty record until its TTL
            job_id = store.r.get(once_key)
    for name in pools:
        requests.plan(job_id, name, selector, modes[name], full)
    return job_id
