"""A night of work on every user VM: ``POST /sim/drift`` changes part of each system disk.

For every user VM (not a template, snapshot or control domain) the system disk
(the VDI of its ``userdevice 0`` disk VBD) gets ``fraction`` of its allocated
1 MiB chunks rewritten, chosen in clustered runs of 1-4 neighbouring allocated
chunks (a night's log rotation, package updates, database pages), with data of
its own: every choice and every byte derive from (seed, VDI uuid), so one seed
on one inventory changes exactly the same chunks to exactly the same bytes.
Writes go through ``pool.seeded_write``: snapshots keep their bytes and
changed block tracking sees them.
"""
from __future__ import annotations

import hashlib
import random

from tinabs_tasks.sim.datamodel import NULL_REF
from tinabs_tasks.sim.disks import CHUNK

MAX_RUN = 4


class DriftError(ValueError):
    """A drift request that cannot be carried out (bad fraction, seed or pool)."""


def parse_request(body, pools) -> tuple[float, int, list[str]]:
    """(fraction, seed, pool names) of a ``POST /sim/drift`` body, or DriftError saying what is wrong."""
    if not isinstance(body, dict):
        raise DriftError('drift takes {"fraction": F, "seed": N} with 0 < F <= 1 (optional "pool")')
    unknown = set(body) - {"fraction", "seed", "pool"}
    if unknown:
        raise DriftError(f"unknown drift keys {sorted(unknown)}; known: fraction, seed, pool")
    fraction, seed = body.get("fraction"), body.get("seed")
    # type() checks: JSON true/false are Python ints too
    if type(fraction) not in (int, float) or not 0 < fraction <= 1:
        raise DriftError(f"'fraction' must be a number with 0 < fraction <= 1, got {fraction!r}")
    if type(seed) is not int:
        raise DriftError(f"'seed' must be an integer, got {seed!r}")
    name = body.get("pool")
    if name is None:
        return float(fraction), seed, list(pools)
    if name not in pools:
        raise DriftError(f"unknown pool {name!r}; pools: {sorted(pools)}")
    return float(fraction), seed, [name]


def user_system_disks(pool) -> list[str]:
    """The system disk VDI of every user VM of ``pool``, in VM order."""
    store = pool.store
    disks = []
    with store.lock:
        for vm in store.refs("VM"):
            rec = store.record("VM", vm)
            if rec["is_a_template"] or rec["is_a_snapshot"] or rec["is_control_domain"]:
                continue
            for vbd in rec["VBDs"]:
                v = store.record("VBD", vbd)
                if v["userdevice"] == "0" and v["type"] == "Disk" and v["VDI"] != NULL_REF:
                    disks.append(v["VDI"])
    return disks


def vdi_seed(seed: int, vdi_uuid: str) -> int:
    """The seed of one disk's night: different per VDI, the same for the same (seed, VDI)."""
    return int.from_bytes(hashlib.sha256(f"tinabs-sim-drift {seed} {vdi_uuid}".encode()).digest()[:6], "big")


def choose_chunks(allocated: list[int], fraction: float, rng: random.Random) -> list[int]:
    """round(fraction x allocated) of the allocated chunks (at least one), in runs of up to
    MAX_RUN neighbours in allocation order."""
    if not allocated:
        return []
    wanted = min(len(allocated), max(1, round(fraction * len(allocated))))
    chosen: set[int] = set()
    while len(chosen) < wanted:
        start = rng.randrange(len(allocated))
        for k in allocated[start: start + rng.randint(1, MAX_RUN)]:
            if len(chosen) < wanted:
                chosen.add(k)
    return sorted(chosen)


def drift_disk(pool, vdi: str, fraction: float, seed: int) -> dict:
    """Rewrite ``fraction`` of one disk's allocated chunks; what changed."""
    uuid = pool.store.get("VDI", vdi, "uuid")
    disk_seed = vdi_seed(seed, uuid)
    content = pool.content(vdi)
    chunks = choose_chunks(list(content.data_chunks()), fraction, random.Random(disk_seed))
    written = 0
    for k in chunks:
        length = content.chunk_length(k)
        pool.seeded_write(vdi, k * CHUNK, length, disk_seed)
        written += length
    return {"pool": pool.name, "chunks": chunks, "bytes": written}


def drift(pools: dict, names: list[str], fraction: float, seed: int) -> dict:
    """``POST /sim/drift``: per VDI uuid, the chunks changed and their bytes."""
    changed = {}
    for name in names:
        pool = pools[name]
        for vdi in user_system_disks(pool):
            changed[pool.store.get("VDI", vdi, "uuid")] = drift_disk(pool, vdi, fraction, seed)
    return {"fraction": fraction, "seed": seed, "vdis": changed}
