"""Benchmark: the deduplicating, compressed, encrypted repository (issue 13) on the simulator.

Everything runs as separate processes, as in production: a private redis-server, `tinabs sim`,
real Celery worker processes and the `tinabs` CLI; the repository is encrypted (AES-256-GCM),
zstd level 3, with the default ``store_threads``.

1. ``fleet``: one pool of FLEET_VMS VMs deployed from one template (``--clone-from-template``:
   each system disk is a clone of the pool's template image, 25-50 % of FLEET_DISK_MIB written,
   plus 2-8 MiB of its own), backed up in repo mode on three nights:
   * night 1, the first full backup: ``night1_stored_vs_logical`` = sum of the manifests'
     stored_bytes (new block bytes plus the index) / sum of their logical_bytes (target <= 0.25);
   * night 2, nothing changed: ``night2_unchanged_stored_fraction`` = night 2's stored bytes /
     night 1's (target < 0.5 %);
   * night 3, after ``POST /sim/drift`` of 2 %: ``night2_drift2pct_stored_vs_changed`` = the
     night's stored bytes / the bytes the drift changed.  "Changed" is what the simulator says
     it rewrote: per system disk the chunks it chose (whole 1 MiB chunks, new data) and their
     bytes, summed (target <= 1.3).
   The repository's size on disk (every file under it) is printed after each night as a check.
2. ``throughput``: one VM with a DISK_MIB system disk, rewritten in full before each round
   with a new seed (``POST /sim/vdi/UUID/write``: incompressible 1 MiB chunks, none seen
   before, so deduplication flatters nothing), backed up once in repo mode and once in export
   (files) mode per round, alternating which goes first, ROUNDS rounds after one warm-up
   repo backup.  ``repo_vs_xva_write_ratio`` = median repo MB/s / median export MB/s, both the
   XVA's bytes over the stage's transfer time (the manifest's ``timings.transfer``: the
   /export stream into the repository, or into the .xva file, fsync included); the ratio of
   job wall times is printed beside it (target >= 0.8).  Run uncapped (the simulator as fast
   as two shared cores let it: CPU-bound) and, with BENCH_CAP_MBPS, with the host's
   export bandwidth capped like a pool host on a real link.
   ``peak_worker_rss_MB_repo_backup`` is the highest VmHWM among the worker's processes after
   the warm-up repo backup of the DISK_MIB disk, the first job those processes ran (target
   < 200 MB); ru_maxrss would be inherited across execve, VmHWM is the process's own.
3. ``restore``: the last round's two backups of the same VM data (the .xva file and the repo
   backup), each restored into the pool RESTORE_ROUNDS times, alternating, cold cache (the .xva
   file, and every block and index file, dropped from the page cache with posix_fadvise first),
   two ways:
   * ``cli``: `tinabs restore MANIFEST --pool pool-a --local --json`, the whole restore as a user
     runs it (the catalog and archive checks, the upload under an XAPI task, the import, the
     fix-ups); used once `tinabs restore` takes a repo backup (probed first);
   * ``upload``: only the upload and the import, from a script: the .xva file PUT to /import by
     tinabs_tasks.xapi.transfer, against the XVA rebuilt from the repository (every block read,
     authenticated, re-hashed, the stream's sha256 checked) PUT with its Content-Length.
   ``restore_rebuild_vs_file_ratio`` = file restore time / repo restore time, the ``cli`` way when
   there is one (target >= 0.8); CPU seconds per GB of the restoring process and the simulator are
   printed beside it.  Every restored VM is destroyed with its disks after it is timed.

Prints ``name: value`` lines.  Environment: BENCH_FLEET_VMS (20), BENCH_FLEET_DISK_MIB (512),
BENCH_DISK_MIB (2048), BENCH_ROUNDS (3), BENCH_RESTORE_ROUNDS (2), BENCH_CAP_MBPS (0: no
capped setting; e.g. 200 adds the throughput rounds with each host's export capped at 200 MB/s),
BENCH_ONLY (fleet,throughput), BENCH_KEEP (keep the scratch directory).  The machine's load
average is printed at the start and the end: the wall-time ratios move with it, the CPU figures
much less.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import XenAPI

from tinabs_tasks.dev.localrun import free_port, private_redis, stop_all
from tinabs_tasks.repo import keys
from tinabs_tasks.repo.layout import init_repository

FLEET_VMS = int(os.environ.get("BENCH_FLEET_VMS", "20"))
FLEET_DISK_MIB = int(os.environ.get("BENCH_FLEET_DISK_MIB", "512"))
DISK_MIB = int(os.environ.get("BENCH_DISK_MIB", "2048"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
RESTORE_ROUNDS = int(os.environ.get("BENCH_RESTORE_ROUNDS", "2"))
CAP_MBPS = float(os.environ.get("BENCH_CAP_MBPS", "0"))
DRIFT = 0.02
MB = 1e6


# -- processes ------------------------------------------------------------------------------
class Phase:
    """A simulator, its config (with an encrypted repository), a Redis DB and worker processes."""

    def __init__(self, root: str, redis_port: int, db: int, sim_args: list[str]):
        self.root = root
        os.makedirs(root)
        self.dest = os.path.join(root, "dest")
        os.makedirs(self.dest)
        self.config = os.path.join(root, "tinabs.toml")
        self.procs: list[subprocess.Popen] = []
        self.sim = subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "sim", *sim_args, "--write-config",
                                     self.config, "--dest", self.dest], stdout=subprocess.PIPE, text=True)
        self.procs.append(self.sim)
        self.info = json.loads(self.sim.stdout.readline())
        self.repo = os.path.join(root, "repo")
        self.key_file = os.path.join(root, "repo.key")
        init_repository(self.repo, key=keys.generate_key_file(self.key_file))
        with open(self.config, "a") as fh:
            fh.write(f'\n[repository]\npath = "{self.repo}"\nkey_file = "{self.key_file}"\n')
        self.env = {**os.environ, "TINABS_CONFIG": self.config,
                    "TINABS_BROKER_URL": f"redis://127.0.0.1:{redis_port}/{db}"}

    def start_worker(self, name: str, concurrency: int) -> subprocess.Popen:
        log = os.path.join(self.root, f"worker-{name}.log")
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tinabs_tasks", "worker", "-l", "info", "-c",
                                 str(concurrency), "-n", f"{name}@%h", "--without-mingle", "--without-gossip"],
                                env=self.env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                sys.exit(f"repo: a worker exited:\n{open(log).read()[-3000:]}")
            if " ready." in open(log, errors="replace").read():
                return proc
            time.sleep(0.1)
        sys.exit("repo: worker not ready")

    def stop(self) -> None:
        stop_all(self.procs)

    def cli(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def backup(self, *args: str) -> tuple[float, dict, list[dict]]:
        """`tinabs backup ARGS --wait --json`: (wall s, job, the runs' manifests); exits if a run failed."""
        began = time.perf_counter()
        done = self.cli("backup", *args, "--wait", "--json")
        wall = time.perf_counter() - began
        try:
            job = json.loads(done.stdout)
        except ValueError:
            sys.exit(f"repo: no JSON from tinabs backup {args}:\n{done.stdout}\n{done.stderr}")
        if done.returncode != 0:
            sys.exit(f"repo: tinabs backup {args} failed:\n{done.stderr}\n{[r.get('error') for r in job['runs']]}")
        return wall, job, [json.load(open(r["manifest"])) for r in job["runs"]]

    def control(self, method: str, path: str, body=None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.info["control"] + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as resp:
            return json.loads(resp.read())

    def session(self) -> XenAPI.Session:
        pool = self.info["pools"][0]
        s = XenAPI.Session(pool["master"])
        s.xenapi.login_with_password(pool["username"], pool["password"], "2.21", "bench-repo")
        return s


def tree_bytes(path: str) -> int:
    """Bytes every file under ``path`` takes (st_size)."""
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(top, name)).st_size
            except FileNotFoundError:
                pass
    return total


def worker_pids(proc: subprocess.Popen) -> list[int]:
    """The Celery worker's main process and its pool processes."""
    pids = [proc.pid]
    for task in os.listdir(f"/proc/{proc.pid}/task"):
        try:
            with open(f"/proc/{proc.pid}/task/{task}/children") as fh:
                pids += [int(p) for p in fh.read().split()]
        except FileNotFoundError:
            pass
    return pids


def vm_hwm_mb(pid: int) -> float:
    """A process's own peak resident set (VmHWM), MB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MB
    return 0.0


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (float(fields[11]) + float(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of(pids) -> float:
    return sum(process_cpu_s(p) for p in pids)


def drop_cache(paths) -> None:
    """Drop the files' clean pages from the page cache (after a sync): a cold read, for this file only."""
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def sum_of(manifests: list[dict], key: str) -> int:
    return sum(int(m[key]) for m in manifests)


# -- 1. the fleet -----------------------------------------------------------------------------
def fleet(root: str, redis_port: int) -> None:
    phase = Phase(os.path.join(root, "fleet"), redis_port, 1,
                  ["--pools", "1", "--vms-per-pool", str(FLEET_VMS), "--disk-mib", str(FLEET_DISK_MIB),
                   "--clone-from-template"])
    try:
        phase.start_worker("fleet", 4)
        nights = {}
        for night in ("night1", "night2", "night3"):
            changed = None
            if night == "night3":
                answer = phase.control("POST", "/sim/drift", {"fraction": DRIFT, "seed": 13})
                changed = {"bytes": sum(v["bytes"] for v in answer["vdis"].values()),
                           "chunks": sum(len(v["chunks"]) for v in answer["vdis"].values()),
                           "disks": len(answer["vdis"])}
            before = tree_bytes(phase.repo)
            wall, job, manifests = phase.backup("--all", "--mode", "repo")
            nights[night] = {"wall": wall, "vms": len(manifests), "changed": changed,
                             "repo_growth": tree_bytes(phase.repo) - before,
                             **{k: sum_of(manifests, k) for k in ("logical_bytes", "transferred_bytes",
                                                                  "stored_bytes", "new_blocks", "reused_blocks",
                                                                  "index_bytes")}}
        n1, n2, n3 = nights["night1"], nights["night2"], nights["night3"]
        print(f"fleet: {n1['vms']} VMs, 1 pool, {FLEET_DISK_MIB} MiB system disks cloned from one template")
        for name, n in nights.items():
            print(f"{name}_wall_s: {n['wall']:.1f}")
            print(f"{name}_logical_bytes: {n['logical_bytes']}")
            print(f"{name}_transferred_bytes: {n['transferred_bytes']}")
            print(f"{name}_stored_bytes: {n['stored_bytes']}")
            print(f"{name}_index_bytes: {n['index_bytes']}")
            print(f"{name}_new_blocks: {n['new_blocks']}")
            print(f"{name}_reused_blocks: {n['reused_blocks']}")
            print(f"{name}_repo_growth_on_disk_bytes: {n['repo_growth']}")
        print(f"night1_stored_vs_logical: {n1['stored_bytes'] / n1['logical_bytes']:.4f}")
        print(f"night2_unchanged_stored_bytes: {n2['stored_bytes']}")
        print(f"night2_unchanged_stored_fraction: {n2['stored_bytes'] / n1['stored_bytes']:.5f}")
        print(f"night2_unchanged_stored_percent: {100 * n2['stored_bytes'] / n1['stored_bytes']:.3f}")
        ch = n3["changed"]
        print(f"drift2pct_changed_disks: {ch['disks']}")
        print(f"drift2pct_changed_chunks: {ch['chunks']}")
        print(f"drift2pct_changed_bytes: {ch['bytes']}")
        print(f"night2_drift2pct_stored_bytes: {n3['stored_bytes']}")
        print(f"night2_drift2pct_stored_vs_changed: {n3['stored_bytes'] / ch['bytes']:.3f}")
        print(f"night2_drift2pct_new_blocks_vs_changed_chunks: {n3['new_blocks'] / ch['chunks']:.3f}")
    finally:
        phase.stop()


# -- 2. throughput, peak RSS, 3. restore ----------------------------------------------------
def system_disk(phase: Phase) -> tuple[str, str, int]:
    """(VM name, its system disk's uuid, the disk's size) of the phase's one user VM."""
    s = phase.session()
    try:
        x = s.xenapi
        vm, rec = next((ref, r) for ref, r in x.VM.get_all_records().items()
                       if not (r["is_a_template"] or r["is_control_domain"] or r["is_a_snapshot"]))
        for vbd in rec["VBDs"]:
            v = x.VBD.get_record(vbd)
            if v["type"] == "Disk" and v["userdevice"] == "0":
                return rec["name_label"], x.VDI.get_uuid(v["VDI"]), int(x.VDI.get_virtual_size(v["VDI"]))
    finally:
        s.xenapi.session.logout()
    raise RuntimeError("no system disk")


def throughput(root: str, redis_port: int, db: int, cap_mbps: float, restore_too: bool) -> dict:
    label = f"capped{cap_mbps:g}" if cap_mbps else "uncapped"
    args = ["--pools", "1", "--vms-per-pool", "1", "--hosts-per-pool", "1", "--disk-mib", str(DISK_MIB)]
    if cap_mbps:
        args += ["--host-bandwidth-mbps", str(cap_mbps)]
    phase = Phase(os.path.join(root, label), redis_port, db, args)
    out: dict = {}
    try:
        worker = phase.start_worker(label, 2)
        vm, disk, size = system_disk(phase)

        def fill(seed: int) -> None:  # the whole disk: new, incompressible 1 MiB chunks
            phase.control("POST", f"/sim/vdi/{disk}/write", {"offset": 0, "length": size, "seed": seed})

        idle_hwm = max(vm_hwm_mb(p) for p in worker_pids(worker))
        fill(1000)
        wall, _job, (m,) = phase.backup("--vm", vm, "--mode", "repo")
        out["rss_idle"] = idle_hwm
        out["rss_repo"] = max(vm_hwm_mb(p) for p in worker_pids(worker))
        out["warmup"] = (wall, m)
        rows = {"repo": [], "export": []}
        last = {}
        for i in range(ROUNDS):
            fill(2000 + i)
            order = ("repo", "export") if i % 2 == 0 else ("export", "repo")
            for mode in order:
                pids = worker_pids(worker)
                cpu_before, sim_before = cpu_of(pids), process_cpu_s(phase.sim.pid)
                wall, job, (m,) = phase.backup("--vm", vm, "--mode", mode)
                transfer = float(m["timings"]["transfer"])
                rows[mode].append({"wall": wall, "transfer": transfer, "size": int(m["size"]),
                                   "mbps": int(m["size"]) / transfer / MB, "new_blocks": m.get("new_blocks"),
                                   "reused_blocks": m.get("reused_blocks"),
                                   "worker_cpu": cpu_of(pids) - cpu_before,
                                   "sim_cpu": process_cpu_s(phase.sim.pid) - sim_before})
                last[mode] = (job["runs"][0], m)
        for r, e in zip(rows["repo"], rows["export"]):
            if abs(r["size"] - e["size"]) > 1 << 20:  # the same disk data: only ova.xml may differ
                sys.exit(f"repo: a repo backup streamed {r['size']} bytes, the export {e['size']}: not the same VM")
        out["rows"] = rows
        out["rss_all"] = max(vm_hwm_mb(p) for p in worker_pids(worker))
        if restore_too:
            out["restore"] = restores(phase, last)
    finally:
        phase.stop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(phase.root, ignore_errors=True)
    return {"label": label, **out}


# The restore of one backup, in a fresh interpreter: the same upload tinabs' restore does
# (xapi.transfer under a task, PUT /import with a Content-Length); a repo backup is rebuilt as
# it is sent.  Times the upload and the import task, then destroys what was imported.
RESTORE = r"""
import http.client, json, os, sys, time, urllib.parse
from tinabs_tasks.config import model as config_mod
from tinabs_tasks.repo.configured import open_configured
from tinabs_tasks.repo.index import load_index
from tinabs_tasks.repo.xva_rebuild import rebuild_xva
from tinabs_tasks.xapi import transfer
from tinabs_tasks.xapi.connect import PoolSession
from tinabs_tasks.xapi.port import Xapi

args = json.loads(sys.argv[1])
cfg = config_mod.load()
pool = cfg.pools[args["pool"]]
xapi = Xapi(PoolSession(pool))
query = {"restore": "false", "sr_id": xapi.sr_by_name_or_uuid(pool.shared_sr)}

def put_stream(query, pieces, size):
    parts = urllib.parse.urlsplit(xapi.base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    conn.putrequest("PUT", "/import?" + urllib.parse.urlencode(query), skip_accept_encoding=True)
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Content-Length", str(size))
    conn.putheader("Connection", "close")
    conn.endheaders()
    sent = 0
    for piece in pieces:
        conn.send(piece)
        sent += len(piece)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    if resp.status != 200 or sent != size:
        raise RuntimeError(f"PUT /import: HTTP {resp.status}, {sent} of {size} bytes sent")
    return sent

began = time.perf_counter()
if args["kind"] == "file":
    result = transfer.upload(xapi, "/import", query, args["path"], label="bench restore file")
else:
    repo = open_configured(cfg.repository)
    index = load_index(repo, args["backup_id"])
    size = int(index.figures["stream_bytes"])
    _sent, result = transfer.under_task(
        xapi, "bench restore repo",
        lambda task: put_stream(transfer.with_task(xapi, query, task), rebuild_xva(repo, index), size),
        transfer.UPLOAD)
seconds = time.perf_counter() - began
refs = result if isinstance(result, list) else [r for r in str(result).split(",") if r]
x = xapi.x
for vm in refs:
    for vbd in x.VM.get_VBDs(vm):
        vdi = x.VBD.get_VDI(vbd)
        if vdi != "OpaqueRef:NULL":
            x.VDI.destroy(vdi)
    x.VM.destroy(vm)
cpu = sum(os.times()[:2])
with open("/proc/self/status") as fh:
    hwm = next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "vms": len(refs), "rss_mb": hwm * 1024 / 1e6, "cpu_s": cpu}))
"""


def repo_restore_supported(phase: Phase, manifest_path: str) -> bool:
    """Whether `tinabs restore` takes a repo backup (another session is adding it)."""
    done = phase.cli("restore", manifest_path, "--pool", "pool-a", "--local", "--json", "--name", "bench-probe")
    if done.returncode != 0:
        return False
    destroy_vm(phase, json.loads(done.stdout)["uuid"])
    return True


def destroy_vm(phase: Phase, uuid: str) -> None:
    s = phase.session()
    try:
        x = s.xenapi
        vm = x.VM.get_by_uuid(uuid)
        for vbd in x.VM.get_VBDs(vm):
            vdi = x.VBD.get_VDI(vbd)
            if vdi != "OpaqueRef:NULL":
                x.VDI.destroy(vdi)
        x.VM.destroy(vm)
    finally:
        s.xenapi.session.logout()


def restores(phase: Phase, last: dict) -> dict:
    """Each way of restoring, file backup against repo backup, alternating, cold cache each time:
    ``cli`` (`tinabs restore --local`, once it takes a repo backup) and ``upload`` (the script)."""
    file_run, file_manifest = last["export"]
    repo_run, repo_manifest = last["repo"]
    xva = file_run["path"] if file_run.get("path") else file_run["manifest"][:-len(".json")] + ".xva"
    blocks = [os.path.join(top, f) for top, _d, files in os.walk(phase.repo) for f in files]
    ways = (["cli"] if repo_restore_supported(phase, repo_run["manifest"]) else []) + ["upload"]
    out = {"ways": ways, "bytes": int(file_manifest["size"])}
    for way in ways:
        times, cpu, rss = {"file": [], "repo": []}, {"file": [], "repo": []}, {"file": 0.0, "repo": 0.0}
        for i in range(RESTORE_ROUNDS):
            for kind in (("file", "repo") if i % 2 == 0 else ("repo", "file")):
                drop_cache([xva] if kind == "file" else blocks)
                sim_before = process_cpu_s(phase.sim.pid)
                if way == "cli":
                    children = resource.getrusage(resource.RUSAGE_CHILDREN)
                    began = time.perf_counter()
                    done = phase.cli("restore", file_run["manifest"] if kind == "file" else repo_run["manifest"],
                                     "--pool", "pool-a", "--local", "--json", "--name", f"bench-{kind}-{i}")
                    times[kind].append(time.perf_counter() - began)
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    cpu[kind].append(after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime)
                    if done.returncode != 0:
                        sys.exit(f"repo: tinabs restore ({kind}) failed:\n{done.stdout}\n{done.stderr}")
                    destroy_vm(phase, json.loads(done.stdout)["uuid"])
                else:
                    payload = {"pool": "pool-a", "kind": kind, "path": xva, "backup_id": repo_manifest["backup_id"]}
                    done = subprocess.run([sys.executable, "-c", RESTORE, json.dumps(payload)], env=phase.env,
                                          capture_output=True, text=True)
                    if done.returncode != 0:
                        sys.exit(f"repo: restore ({kind}) failed:\n{done.stderr[-3000:]}")
                    result = json.loads(done.stdout)
                    times[kind].append(result["seconds"])
                    rss[kind] = max(rss[kind], result["rss_mb"])
                    cpu[kind].append(result["cpu_s"])
                cpu.setdefault(f"sim_{kind}", []).append(process_cpu_s(phase.sim.pid) - sim_before)
        out[way] = {"times": times, "cpu": cpu, "rss": rss}
    return out


def report_throughput(t: dict) -> None:
    label = t["label"]
    wall, m = t["warmup"]
    print(f"throughput_{label}: 1 VM, {DISK_MIB} MiB system disk rewritten in full with new data per round, "
          f"{ROUNDS} rounds (warm-up repo backup: {wall:.1f} s, {int(m['size']) / MB:.0f} MB, "
          f"new_blocks {m['new_blocks']}, reused {m['reused_blocks']})")
    for mode, rows in t["rows"].items():
        print(f"{mode}_{label}_MBps: " + ", ".join(f"{r['mbps']:.0f}" for r in rows))
        print(f"{mode}_{label}_wall_s: " + ", ".join(f"{r['wall']:.1f}" for r in rows))
    repo, export = t["rows"]["repo"], t["rows"]["export"]
    for mode, rows in t["rows"].items():  # CPU per GB of XVA: what a busy machine's throughput follows
        print(f"{mode}_{label}_worker_cpu_s_per_GB: "
              f"{statistics.median(r['worker_cpu'] / (r['size'] / 1e9) for r in rows):.2f}")
        print(f"{mode}_{label}_sim_cpu_s_per_GB: {statistics.median(r['sim_cpu'] / (r['size'] / 1e9) for r in rows):.2f}")
    print(f"repo_new_blocks_{label}: " + ", ".join(str(r["new_blocks"]) for r in repo))
    print(f"xva_bytes_{label}: {repo[0]['size']}")
    print(f"repo_{label}_median_MBps: {statistics.median(r['mbps'] for r in repo):.0f}")
    print(f"export_{label}_median_MBps: {statistics.median(r['mbps'] for r in export):.0f}")
    print(f"repo_vs_xva_write_ratio_{label}: "
          f"{statistics.median(r['mbps'] for r in repo) / statistics.median(r['mbps'] for r in export):.2f}")
    print(f"repo_vs_xva_wall_ratio_{label}: "
          f"{statistics.median(r['wall'] for r in export) / statistics.median(r['wall'] for r in repo):.2f}")
    print(f"worker_idle_hwm_MB_{label}: {t['rss_idle']:.0f}")
    print(f"peak_worker_rss_MB_repo_backup_{label}: {t['rss_repo']:.0f}")
    print(f"peak_worker_rss_MB_all_{label}: {t['rss_all']:.0f}")
    r = t.get("restore")
    if r:
        gb = r["bytes"] / 1e9
        print(f"restore: {r['bytes']} bytes of XVA, cold cache, {RESTORE_ROUNDS} rounds, ways: {', '.join(r['ways'])} "
              "(cli: `tinabs restore --local`, the whole restore; upload: PUT /import under a task only)")
        for way in r["ways"]:
            w = r[way]
            for kind in ("file", "repo"):
                print(f"restore_{way}_{kind}_s: " + ", ".join(f"{s:.2f}" for s in w["times"][kind]))
                print(f"restore_{way}_{kind}_MBps: {r['bytes'] / statistics.median(w['times'][kind]) / MB:.0f}")
                print(f"restore_{way}_{kind}_cpu_s_per_GB: {statistics.median(w['cpu'][kind]) / gb:.2f}")
                print(f"restore_{way}_{kind}_sim_cpu_s_per_GB: {statistics.median(w['cpu']['sim_' + kind]) / gb:.2f}")
                if w["rss"][kind]:
                    print(f"restore_{way}_{kind}_peak_rss_MB: {w['rss'][kind]:.0f}")
            print(f"restore_rebuild_vs_file_ratio_{way}: "
                  f"{statistics.median(w['times']['file']) / statistics.median(w['times']['repo']):.2f}")
        w = r[r["ways"][0]]
        print(f"restore_rebuild_vs_file_ratio: "
              f"{statistics.median(w['times']['file']) / statistics.median(w['times']['repo']):.2f}")


def main() -> None:
    root = tempfile.mkdtemp(prefix="tinabs-repo-bench-")
    procs: list[subprocess.Popen] = []
    began = time.perf_counter()
    try:
        port = free_port()
        procs.append(private_redis(port, root))
        print(f"loadavg_at_start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        only = os.environ.get("BENCH_ONLY", "fleet,throughput").split(",")
        if "fleet" in only:
            fleet(root, port)
        if "throughput" in only:
            report_throughput(throughput(root, port, 2, 0, restore_too=True))
            if CAP_MBPS:
                report_throughput(throughput(root, port, 3, CAP_MBPS, restore_too=False))
        print(f"loadavg_at_end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print(f"bench_wall_s: {time.perf_counter() - began:.0f}")
    finally:
        stop_all(procs)
        if os.environ.get("BENCH_KEEP"):
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
