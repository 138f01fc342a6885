"""Benchmark: tinabs' export stage against `curl -o FILE` of the same /export URL.

A VM whose only disk is a 2 GiB system disk (about a quarter non-zero) is
exported from the simulator, alternately by curl and by tinabs' export
download (the code the export stage runs: streaming with a large buffer,
sha256 on the fly, fsync, atomic rename), each in its own process, best of
ROUNDS, in two settings:

* ``capped``: the simulated host streams at most CAP_MBPS MB/s, like a pool
  host on a fast link (the figure that matters: the target is >= 0.95);
* ``uncapped``: as fast as this machine goes, where tinabs' sha256 competes
  with the simulator for the same two cores (curl hashes nothing).

Prints ``name: value`` lines, per setting (suffix ``_capped``/``_uncapped``):
  curl_s, tinabs_s            best wall time of each
  export_vs_curl_ratio        curl_s / tinabs_s (1.0 = as fast as curl)
  curl_fsync_s                curl followed by an fsync of its file (durability, which tinabs has)
  export_vs_curl_fsync_ratio  curl_fsync_s / tinabs_s
  tinabs_peak_rss_MB          the tinabs process' peak RSS (target < 150 MB)
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import XenAPI

sys.path.insert(0, os.path.dirname(__file__))
from sim_export import start_sim, system_disk_only_snapshot  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
CAP_MBPS = float(os.environ.get("BENCH_CAP_MBPS", "400"))

# Runs in a fresh interpreter: the tinabs download path, no Celery, no Redis.
TINABS_DOWNLOAD = r"""
import json, resource, sys, time
from tinabs_tasks.config.model import PoolConfig
from tinabs_tasks.backup.export import download
from tinabs_tasks.xapi.connect import PoolSession
from tinabs_tasks.xapi.port import Xapi

args = json.loads(sys.argv[1])
pool = PoolConfig(name="bench", master=args["master"], username=args["username"],
                  password=args["password"], shared_sr="nfs-shared")
xapi = Xapi(PoolSession(pool))

class Quiet:
    def bytes(self, *a, **k): pass
    def fraction(self, *a, **k): pass

class Beat:
    class lost:
        @staticmethod
        def is_set(): return False

paths = {"dir": args["dir"], "data": args["dir"] + "/tinabs.xva"}
began = time.perf_counter()
size, digest = download(xapi, "/export", {"ref": args["ref"]}, paths, Quiet(), Beat())
elapsed = time.perf_counter() - began
print(json.dumps({"seconds": elapsed, "size": size,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_curl(url: str, path: str) -> tuple[float, float]:
    _fresh(path)
    began = time.perf_counter()
    subprocess.run(["curl", "-sS", "--fail", "-o", path, url], check=True)
    elapsed = time.perf_counter() - began
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return elapsed, time.perf_counter() - began


def run_tinabs(pool: dict, ref: str, workdir: str) -> dict:
    _fresh(os.path.join(workdir, "tinabs.xva"))
    payload = json.dumps({"master": pool["master"], "username": pool["username"], "password": pool["password"],
                          "ref": ref, "dir": workdir})
    out = subprocess.run([sys.executable, "-c", TINABS_DOWNLOAD, payload], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)


def _fresh(path: str) -> None:
    """Neither side pays for deleting the previous round's file, nor for its dirty pages."""
    if os.path.exists(path):
        os.unlink(path)
    os.sync()


def measure(cap_mbps: float, suffix: str) -> None:
    proc, info = start_sim(["--host-bandwidth-mbps", str(cap_mbps)] if cap_mbps else [])
    workdir = tempfile.mkdtemp(prefix="tinabs-bench-")
    try:
        pool = info["pools"][0]
        session = XenAPI.Session(pool["master"])
        session.xenapi.login_with_password(pool["username"], pool["password"], "2.21", "bench")
        snap, _virtual = system_disk_only_snapshot(session.xenapi)
        url = f"{pool['master']}/export?session_id={session._session}&ref={snap}"
        curl, curl_fsync, tinabs, rss = [], [], [], 0.0
        for _ in range(ROUNDS):
            c, cf = run_curl(url, os.path.join(workdir, "curl.xva"))
            curl.append(c)
            curl_fsync.append(cf)
            result = run_tinabs(pool, snap, workdir)
            tinabs.append(result["seconds"])
            rss = max(rss, result["rss_mb"])
            if os.path.getsize(os.path.join(workdir, "curl.xva")) != result["size"]:
                sys.exit("export_stream: curl and tinabs got different sizes")
        print(f"export_bytes_{suffix}: {result['size']}")
        print(f"curl_s_{suffix}: {min(curl):.3f}")
        print(f"curl_fsync_s_{suffix}: {min(curl_fsync):.3f}")
        print(f"tinabs_s_{suffix}: {min(tinabs):.3f}")
        print(f"export_vs_curl_ratio_{suffix}: {min(curl) / min(tinabs):.2f}")
        print(f"export_vs_curl_fsync_ratio_{suffix}: {min(curl_fsync) / min(tinabs):.2f}")
        print(f"tinabs_peak_rss_MB_{suffix}: {rss:.0f}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    if not shutil.which("curl"):
        sys.exit("export_stream: curl is needed for the baseline (apt-get install curl)")
    measure(CAP_MBPS, "capped")
    measure(0, "uncapped")


if __name__ == "__main__":
    main()
