"""Benchmark: incremental backups (issue 14) on the simulator, night after night.

Everything runs as separate processes, as in production: a private redis-server, `tinabs sim`,
one Celery worker process (-c 4) and the `tinabs` CLI (``Phase`` of bench/repo.py: an encrypted
repository, zstd level 3).  The simulated pool is **1 pool of 2 hosts** (the simulator's
default), each host's exports paced at BENCH_HOST_MBPS (40 MB/s, a host on a shared 1 GbE link),
with every slow XAPI operation (snapshot, clone, copy, create) taking BENCH_LATENCY_S (0.3 s).
An export is served by a host that sees its disks' SRs: the master for the VMs whose system
disk is on the shared NFS SR (6 of 8), the VM's own host for a system disk on local storage
(VMs 3 and 6), so a full night is bound by about one host's 40 MB/s, at most two
(``max_concurrent_exports = 2``).  BENCH_VMS (8) VMs are deployed from one template
(``--clone-from-template``): each BENCH_DISK_MIB (2048) MiB system disk is the template image
(25-50 % written) plus 2-8 MiB of its own.

Each night after the first starts with ``POST /sim/drift`` of BENCH_DRIFT (2 %) with a new seed:
on every VM's system disk the simulator rewrites that fraction of its written 1 MiB chunks
(clustered runs of 1-4, new data each night; its answer, checked here, says which chunks on which
disks).  2 % is of each disk's written data, as /sim/drift counts; BENCH_DRIFT_OF=disk makes it
2 % of each disk's virtual size instead.  The changed bytes are printed against both.

1. ``repo``: BENCH_NIGHTS (5) nights of `tinabs backup --all --mode repo --wait --json`.
   * ``night2_transferred_vs_full``: the bytes the pool sent on night 2 over night 1's, from the
     simulator's ``GET /sim/stats`` ``exported_bytes`` (the bytes of every ``/export``,
     ``/export_metadata`` and ``/export_raw_vdi`` body), read before and after each night's job;
     the manifests' transferred_bytes are summed and printed beside it as a cross-check.
     Target <= 0.05.
   * ``night2_wall_vs_full``: the wall time of night 2's job over night 1's (the CLI's
     `--wait`, start to end; the span between the first run queued and the last finished is
     printed beside it, with each stage's time summed over the VMs).  Target <= 0.25.
   * ``restore_incremental_vs_full_ratio``: every VM's night-5 backup (nights 2-5 each after a
     drift: its index refers to blocks written on every night) and its night-1 backup are each
     restored BENCH_RESTORE_ROUNDS (3) times with `tinabs restore MANIFEST --pool pool-a --local
     --json`, alternating which goes first from VM to VM and round to round, every repository
     file dropped from the page cache before each (posix_fadvise); the ratio is the sum of the
     night-5 times over the night-1 times (the ratio of medians is printed beside it: one
     restore of the same backup took 3-8 s on this busy machine).  Target <= 1.1.  Each
     restored system disk's digest (``GET /sim/vdi/UUID``: the simulator's hash of every
     non-zero chunk) must equal the source disk's on that night, read just before and
     just after that night's job (equal: nothing writes to the disks while the job snapshots
     them); any difference ends the benchmark with an error.
   * ``mode_check``: night 1's manifests are all ``backup_kind = full`` (their full_reason
     printed) and night 2's all ``incremental``; otherwise the benchmark ends with exit 1 after
     printing every figure.
2. ``srcopy``: a second simulator like the first, two nights of `tinabs backup --all --mode
   sr-copy` with a drift between them; the storage copies at BENCH_COPY_MBPS (100 MB/s) per copy.
   ``srcopy_night2_copied_vs_full`` = the simulator's ``copied_bytes`` (bytes VDI.copy/VM.copy
   wrote) on night 2 over night 1 (target <= 0.05); its mode check likewise.

Prints ``name: value`` lines and the targets.  Environment: BENCH_VMS (8), BENCH_DISK_MIB (2048),
BENCH_HOSTS (2), BENCH_HOST_MBPS (40), BENCH_LATENCY_S (0.3), BENCH_DRIFT (0.02), BENCH_DRIFT_OF
(data | disk), BENCH_NIGHTS (5), BENCH_RESTORE_ROUNDS (3), BENCH_COPY_MBPS (100), BENCH_ONLY
(repo,srcopy), BENCH_KEEP (keep the scratch directory).  The default run takes 9-10 minutes: night 1
streams 5.5 GB at about 45 MB/s (2 min), the 48 restores about 4.5 min.  A smoke run (25 s):
``BENCH_VMS=2 BENCH_DISK_MIB=64 BENCH_NIGHTS=3``.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from repo import Phase, destroy_vm, drop_cache  # noqa: E402  (bench/repo.py: the same processes)

from tinabs_tasks.dev.localrun import free_port, private_redis, stop_all  # noqa: E402

VMS = int(os.environ.get("BENCH_VMS", "8"))
DISK_MIB = int(os.environ.get("BENCH_DISK_MIB", "2048"))
HOSTS = int(os.environ.get("BENCH_HOSTS", "2"))
HOST_MBPS = float(os.environ.get("BENCH_HOST_MBPS", "40"))
LATENCY_S = float(os.environ.get("BENCH_LATENCY_S", "0.3"))
DRIFT = float(os.environ.get("BENCH_DRIFT", "0.02"))
DRIFT_OF = os.environ.get("BENCH_DRIFT_OF", "data")
NIGHTS = max(2, int(os.environ.get("BENCH_NIGHTS", "5")))
COPY_MBPS = float(os.environ.get("BENCH_COPY_MBPS", "100"))
RESTORE_ROUNDS = int(os.environ.get("BENCH_RESTORE_ROUNDS", "3"))
TARGETS = {"night2_transferred_vs_full": 0.05, "night2_wall_vs_full": 0.25,
           "restore_incremental_vs_full_ratio": 1.1, "srcopy_night2_copied_vs_full": 0.05}
MB = 1e6


def fail(message: str) -> None:
    sys.exit(f"incremental: {message}")


# -- the simulator's view ---------------------------------------------------------------------
def new_phase(root: str, name: str, redis_port: int, db: int) -> Phase:
    return Phase(os.path.join(root, name), redis_port, db,
                 ["--pools", "1", "--vms-per-pool", str(VMS), "--hosts-per-pool", str(HOSTS),
                  "--disk-mib", str(DISK_MIB), "--clone-from-template", "--host-bandwidth-mbps", str(HOST_MBPS),
                  "--latency", str(LATENCY_S), "--copy-bandwidth-mbps", str(COPY_MBPS)])


def system_disks(phase: Phase) -> dict[str, str]:
    """{VM uuid: its system disk's VDI uuid} for every user VM of the pool."""
    s = phase.session()
    try:
        x = s.xenapi
        disks = {}
        for vm, rec in x.VM.get_all_records().items():
            if rec["is_a_template"] or rec["is_control_domain"] or rec["is_a_snapshot"]:
                continue
            disks[rec["uuid"]] = system_disk_of(x, vm)
        return disks
    finally:
        s.xenapi.session.logout()


def system_disk_of(x, vm: str) -> str:
    for vbd in x.VM.get_VBDs(vm):
        v = x.VBD.get_record(vbd)
        if v["type"] == "Disk" and v["userdevice"] == "0":
            return x.VDI.get_uuid(v["VDI"])
    fail(f"VM {vm} has no system disk")


def vdi_info(phase: Phase, uuid: str) -> dict:
    return phase.control("GET", f"/sim/vdi/{uuid}?sha256=0")  # digest: every non-zero chunk hashed


def digests(phase: Phase, disks: dict[str, str]) -> dict[str, str]:
    return {vm: vdi_info(phase, vdi)["digest"] for vm, vdi in disks.items()}


def counters(phase: Phase) -> collections.Counter:
    total = collections.Counter()
    for pool in phase.control("GET", "/sim/stats")["pools"].values():
        total.update(pool)
    return total


def drift(phase: Phase, disks: dict[str, str], seed: int, fraction: float) -> dict:
    """A night of work; checks that it changed every VM's system disk."""
    answer = phase.control("POST", "/sim/drift", {"fraction": fraction, "seed": seed})
    changed = answer["vdis"]
    missed = [vm for vm, vdi in disks.items() if not changed.get(vdi, {}).get("chunks")]
    if missed:
        fail(f"the drift (seed {seed}) changed nothing on the system disks of VMs {missed}")
    return {"bytes": sum(v["bytes"] for v in changed.values()),
            "chunks": sum(len(v["chunks"]) for v in changed.values()), "disks": len(changed)}


def drift_fraction(phase: Phase, disks: dict[str, str]) -> tuple[float, int, int]:
    """(the /sim/drift fraction, the disks' written bytes, their virtual bytes)."""
    infos = [vdi_info(phase, vdi) for vdi in disks.values()]
    written, size = sum(i["nonzero_bytes"] for i in infos), sum(i["virtual_size"] for i in infos)
    if DRIFT_OF == "disk":
        return min(1.0, DRIFT * size / written), written, size
    if DRIFT_OF != "data":
        fail(f"BENCH_DRIFT_OF is data or disk, not {DRIFT_OF!r}")
    return DRIFT, written, size


# -- one night ------------------------------------------------------------------------------
def night(phase: Phase, mode: str, n: int, disks: dict[str, str], fraction: float, record: bool) -> dict:
    changed = drift(phase, disks, 1400 + n, fraction) if n > 1 else None
    before_digests = digests(phase, disks) if record else None
    before = counters(phase)
    wall, job, manifests = phase.backup("--all", "--mode", mode)
    after = counters(phase)
    out = {"wall": wall, "changed": changed, "manifests": {m["vm"]["uuid"]: m for m in manifests},
           "runs": {r["vm_uuid"]: r for r in job["runs"]},
           "sent": after["exported_bytes"] - before["exported_bytes"],
           "copied": after["copied_bytes"] - before["copied_bytes"],
           "span": max(float(r["finished"]) for r in job["runs"]) - min(float(r["queued"]) for r in job["runs"])}
    if len(out["manifests"]) != len(disks):
        fail(f"night {n} ({mode}) backed up {len(out['manifests'])} VMs, the pool has {len(disks)}")
    if record:
        after_digests = digests(phase, disks)
        if after_digests != before_digests:
            fail(f"night {n}: a system disk changed while the job ran: "
                 f"{[vm for vm in disks if after_digests[vm] != before_digests[vm]]}")
        out["digests"] = before_digests
    stages = collections.defaultdict(list)  # the run's record has every stage's time, cleanup too
    for r in job["runs"]:
        timings = r.get("timings") or "{}"
        for stage, seconds in (json.loads(timings) if isinstance(timings, str) else timings).items():
            stages[stage].append(float(seconds))
    out["stages"] = stages
    return out


def kinds(n: dict) -> collections.Counter:
    return collections.Counter((m.get("backup_kind"), m.get("full_reason")) for m in n["manifests"].values())


def mode_check(first: dict, second: dict) -> tuple[bool, str]:
    k1, k2 = kinds(first), kinds(second)
    ok = set(k for k, _r in k1) == {"full"} and set(k for k, _r in k2) == {"incremental"}
    return ok, f"{'ok' if ok else 'FAILED'}: night 1 {kinds_text(k1)}; night 2 {kinds_text(k2)}"


def kinds_text(k: collections.Counter) -> str:
    return ", ".join(f"{c} x {kind or 'no backup_kind'}" + (f" ({reason})" if reason else "")
                     for (kind, reason), c in sorted(k.items(), key=str))


def print_night(prefix: str, name: str, n: dict) -> None:
    ms = list(n["manifests"].values())
    print(f"{prefix}{name}_wall_s: {n['wall']:.1f}")
    print(f"{prefix}{name}_job_span_s: {n['span']:.1f}")
    print(f"{prefix}{name}_pool_exported_bytes: {n['sent']}")
    print(f"{prefix}{name}_pool_copied_bytes: {n['copied']}")
    for key in ("transferred_bytes", "logical_bytes", "stored_bytes"):
        if all(key in m for m in ms):
            print(f"{prefix}{name}_manifest_{key}: {sum(int(m[key]) for m in ms)}")
    print(f"{prefix}{name}_kinds: {kinds_text(kinds(n))}")
    chains = sorted({str(m.get("chain")) for m in ms if "chain" in m})
    if chains:
        print(f"{prefix}{name}_chain: {', '.join(chains)}")
    if n["changed"]:
        c = n["changed"]
        print(f"{prefix}{name}_drift_changed: {c['chunks']} chunks, {c['bytes']} bytes on {c['disks']} disks")
    print(f"{prefix}{name}_stage_s (sum over VMs / max): " + ", ".join(
        f"{stage} {sum(v):.1f}/{max(v):.1f}" for stage, v in sorted(n["stages"].items())))


# -- restore ----------------------------------------------------------------------------------
def restore(phase: Phase, manifest_path: str, label: str) -> tuple[float, str]:
    """`tinabs restore --local`: (seconds, the restored VM's uuid)."""
    began = time.perf_counter()
    done = phase.cli("restore", manifest_path, "--pool", "pool-a", "--local", "--json", "--name", label)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        fail(f"tinabs restore {manifest_path} failed:\n{done.stdout}\n{done.stderr}")
    return seconds, json.loads(done.stdout)["uuid"]


def restored_digest(phase: Phase, vm_uuid: str) -> str:
    s = phase.session()
    try:
        vdi = system_disk_of(s.xenapi, s.xenapi.VM.get_by_uuid(vm_uuid))
    finally:
        s.xenapi.session.logout()
    return vdi_info(phase, vdi)["digest"]


def restores(phase: Phase, full: tuple[int, dict], last: tuple[int, dict]) -> dict:
    """Every VM's backup of night ``full`` and of night ``last``, RESTORE_ROUNDS times, alternating
    which goes first (from VM to VM and round to round), cold cache; each restored disk checked."""
    files = [os.path.join(top, f) for top, _d, names in os.walk(phase.repo) for f in names]
    times = {full[0]: collections.defaultdict(list), last[0]: collections.defaultdict(list)}
    for r in range(RESTORE_ROUNDS):
        for i, vm in enumerate(sorted(full[1]["manifests"])):
            for n, data in (full, last) if (i + r) % 2 == 0 else (last, full):
                drop_cache(files)
                m = data["runs"][vm]["manifest"]
                seconds, restored = restore(phase, m, f"bench-n{n}-{r}-{i}")
                got, want = restored_digest(phase, restored), data["digests"][vm]
                destroy_vm(phase, restored)
                if got != want:
                    fail(f"the restore of VM {vm}'s night-{n} backup ({m}) has a system disk whose digest is "
                         f"{got}, the source disk's on night {n} was {want}")
                times[n][vm].append(seconds)
    return times


# -- the two parts ----------------------------------------------------------------------------
def repo_part(root: str, redis_port: int) -> bool:
    phase = new_phase(root, "repo", redis_port, 1)
    try:
        phase.start_worker("repo", 4)
        disks = system_disks(phase)
        fraction, written, size = drift_fraction(phase, disks)
        nights = {}
        for n in range(1, NIGHTS + 1):
            nights[n] = night(phase, "repo", n, disks, fraction, record=n in (1, NIGHTS))
            print(f"# night {n}: {nights[n]['wall']:.1f} s", file=sys.stderr, flush=True)
        times = restores(phase, (1, nights[1]), (NIGHTS, nights[NIGHTS]))
    finally:
        phase.stop()
    n1, n2 = nights[1], nights[2]
    print(f"repo: 1 pool, {HOSTS} hosts at {HOST_MBPS:g} MB/s each, {len(disks)} VMs, {DISK_MIB} MiB system disks "
          f"cloned from one template ({written / len(disks) / MB:.0f} MB written each, "
          f"{100 * written / size:.1f} % of the disk), latency {LATENCY_S:g} s per slow call")
    print(f"drift_fraction_of_written: {fraction:.4f} (BENCH_DRIFT {DRIFT:g} of the {DRIFT_OF})")
    for n, data in nights.items():
        print_night("", f"night{n}", data)
    c2 = n2["changed"]
    print(f"night2_drift_changed_vs_written: {c2['bytes'] / written:.4f}")
    print(f"night2_drift_changed_vs_virtual: {c2['bytes'] / size:.4f}")
    print(f"night1_pool_MBps: {n1['sent'] / n1['wall'] / MB:.1f}")
    sent_ratio = n2["sent"] / n1["sent"]
    print(f"night2_transferred_vs_full: {sent_ratio:.4f} (target <= {TARGETS['night2_transferred_vs_full']})")
    ms1, ms2 = n1["manifests"].values(), n2["manifests"].values()
    if all("transferred_bytes" in m for m in (*ms1, *ms2)):
        print(f"night2_transferred_vs_full_manifests: "
              f"{sum(int(m['transferred_bytes']) for m in ms2) / sum(int(m['transferred_bytes']) for m in ms1):.4f}")
    print(f"night2_transferred_vs_drift_changed: {n2['sent'] / c2['bytes']:.2f}")
    print(f"night2_wall_vs_full: {n2['wall'] / n1['wall']:.3f} (target <= {TARGETS['night2_wall_vs_full']})")
    print(f"night2_span_vs_full: {n2['span'] / n1['span']:.3f}")
    full, last = times[1], times[NIGHTS]
    print(f"restore: every VM's night-1 and night-{NIGHTS} backups, {RESTORE_ROUNDS} rounds, `tinabs restore --local`, "
          "cold cache, alternating; every restored system disk's digest equals its source's that night")
    for n, t in ((1, full), (NIGHTS, last)):
        print(f"restore_night{n}_s: " + "; ".join(", ".join(f"{s:.2f}" for s in t[vm]) for vm in sorted(t)))
        print(f"restore_night{n}_total_s: {sum(map(sum, t.values())):.1f}")
    median = {n: statistics.median(s for v in t.values() for s in v) for n, t in ((1, full), (NIGHTS, last))}
    print(f"restore_night1_median_s: {median[1]:.2f}")
    print(f"restore_night{NIGHTS}_median_s: {median[NIGHTS]:.2f}")
    print(f"restore_incremental_vs_full_median_ratio: {median[NIGHTS] / median[1]:.3f}")
    print(f"restore_incremental_vs_full_ratio: {sum(map(sum, last.values())) / sum(map(sum, full.values())):.3f} "
          f"(target <= {TARGETS['restore_incremental_vs_full_ratio']}; total time over total time)")
    ok, text = mode_check(n1, n2)
    print(f"mode_check: {text}")
    return ok


def srcopy_part(root: str, redis_port: int) -> bool:
    phase = new_phase(root, "srcopy", redis_port, 2)
    try:
        phase.start_worker("srcopy", 4)
        disks = system_disks(phase)
        fraction, _written, _size = drift_fraction(phase, disks)
        n1 = night(phase, "sr-copy", 1, disks, fraction, record=False)
        n2 = night(phase, "sr-copy", 2, disks, fraction, record=False)
    finally:
        phase.stop()
    print(f"srcopy: the same pool, `--mode sr-copy`, VDI.copy at {COPY_MBPS:g} MB/s per copy")
    print_night("srcopy_", "night1", n1)
    print_night("srcopy_", "night2", n2)
    print(f"srcopy_night2_copied_vs_drift_changed: {n2['copied'] / n2['changed']['bytes']:.2f}")
    print(f"srcopy_night2_wall_vs_full: {n2['wall'] / n1['wall']:.3f}")
    print(f"srcopy_night2_copied_vs_full: {n2['copied'] / n1['copied']:.4f} "
          f"(target <= {TARGETS['srcopy_night2_copied_vs_full']})")
    ok, text = mode_check(n1, n2)
    print(f"srcopy_mode_check: {text}")
    return ok


def main() -> None:
    root = tempfile.mkdtemp(prefix="tinabs-incremental-bench-")
    procs = []
    began = time.perf_counter()
    checks = []
    try:
        port = free_port()
        procs.append(private_redis(port, root))
        print(f"loadavg_at_start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
        only = os.environ.get("BENCH_ONLY", "repo,srcopy").split(",")
        if "repo" in only:
            checks.append(("mode_check", repo_part(root, port)))
            sys.stdout.flush()
        if "srcopy" in only:
            checks.append(("srcopy_mode_check", srcopy_part(root, port)))
        print(f"loadavg_at_end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print(f"bench_wall_s: {time.perf_counter() - began:.0f}")
    finally:
        stop_all(procs)
        if os.environ.get("BENCH_KEEP"):
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    failed = [name for name, ok in checks if not ok]
    if failed:
        fail(f"{', '.join(failed)} FAILED: night 1 must be full and night 2 incremental")


if __name__ == "__main__":
    main()
