"""Benchmark: how fast the simulator streams /export, and what it costs in memory.

Exports a VM whose only disk is a 2 GiB system disk (about a quarter
non-zero) to a discarding reader over loopback HTTP, and compares with a
baseline measured in the same run: the same number of bytes pushed through a
bare loopback socket by a trivial sender (what the machine can do at all).

Prints ``name: value`` lines:
  sim_export_MBps         XVA bytes on the wire per second
  sim_export_virtual_MBps disk bytes represented per second (zeros skipped)
  loopback_raw_MBps       baseline: a bare socket sender/reader pair
  sim_vs_loopback_ratio   sim_export_MBps / loopback_raw_MBps
  rss_MB                  the simulator's peak resident memory (VmHWM)
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import XenAPI

DISK_MIB = int(os.environ.get("BENCH_DISK_MIB", "2048"))
BLOCK = 1 << 20


def start_sim(extra: list[str] | None = None) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "sim", "--pools", "1",
                             "--vms-per-pool", "1", "--hosts-per-pool", "1", "--disk-mib", str(DISK_MIB),
                             *(extra or [])], stdout=subprocess.PIPE, text=True)
    return proc, json.loads(proc.stdout.readline())


def system_disk_only_snapshot(x) -> tuple[str, int]:
    """A snapshot of the first VM that leaves its data disks out (ignore_vdis)."""
    vm = next(ref for ref, r in x.VM.get_all_records().items()
              if not (r["is_a_template"] or r["is_control_domain"] or r["is_a_snapshot"]))
    data, system = [], None
    for vbd in x.VM.get_VBDs(vm):
        rec = x.VBD.get_record(vbd)
        if rec["type"] != "Disk":
            continue
        if rec["userdevice"] == "0":
            system = rec["VDI"]
        else:
            data.append(rec["VDI"])
    return x.VM.snapshot(vm, "bench", data), int(x.VDI.get_virtual_size(system))


def drain(conn: http.client.HTTPConnection, path: str) -> int:
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.status == 200, resp.status
    total = 0
    while chunk := resp.read(BLOCK):
        total += len(chunk)
    return total


def loopback_baseline(nbytes: int) -> float:
    payload = os.urandom(BLOCK)
    server = socket.create_server(("127.0.0.1", 0))

    def send():
        conn, _ = server.accept()
        left = nbytes
        while left > 0:
            conn.sendall(payload[: min(BLOCK, left)])
            left -= BLOCK
        conn.close()

    threading.Thread(target=send, daemon=True).start()
    began = time.perf_counter()
    with socket.create_connection(server.getsockname()) as client:
        got = 0
        while data := client.recv(BLOCK):
            got += len(data)
    elapsed = time.perf_counter() - began
    server.close()
    return got / elapsed / 1e6


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    proc, info = start_sim()
    try:
        pool = info["pools"][0]
        session = XenAPI.Session(pool["master"])
        session.xenapi.login_with_password(pool["username"], pool["password"], "2.21", "bench")
        snap, virtual = system_disk_only_snapshot(session.xenapi)
        url = urllib.parse.urlsplit(pool["master"])
        path = f"/export?session_id={session._session}&ref={snap}"
        best = None
        for _ in range(3):
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=300)
            began = time.perf_counter()
            wire = drain(conn, path)
            elapsed = time.perf_counter() - began
            best = elapsed if best is None else min(best, elapsed)
        sim_mbps = wire / best / 1e6
        raw_mbps = max(loopback_baseline(wire) for _ in range(3))
        print(f"export_bytes: {wire}")
        print(f"sim_export_MBps: {sim_mbps:.0f}")
        print(f"sim_export_virtual_MBps: {virtual / best / 1e6:.0f}")
        print(f"loopback_raw_MBps: {raw_mbps:.0f}")
        print(f"sim_vs_loopback_ratio: {sim_mbps / raw_mbps:.2f}")
        print(f"rss_MB: {peak_rss_mb(proc.pid):.0f}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
