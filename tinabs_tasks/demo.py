"""``make demo``: start the simulator, look at its pools as a backup tool would, stop.

Until the backup chain exists (issue 3) the demo shows the ground it will run
on: two simulated pools, the VMs tagged with today's weekday, and one real
XVA export of a snapshot streamed to ./demo-out.
"""
from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import signal
import subprocess
import sys
import urllib.parse

import XenAPI


def main() -> int:
    sim = subprocess.Popen([sys.executable, "-m", "tinabs_tasks.cli", "sim", "--pools", "2",
                            "--vms-per-pool", "8", "--disk-mib", "64"], stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(sim.stdout.readline())
        print(f"simulator up: control API {info['control']}")
        today = dt.date.today().strftime("%a")
        for pool in info["pools"]:
            show_pool(pool, today)
        export_one(info["pools"][0])
        print("\nTry it yourself: `.venv/bin/tinabs sim` prints the same JSON line and keeps running;")
        print("log in with XenAPI.Session(master).xenapi.login_with_password(username, password).")
        return 0
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=10)


def login(pool: dict) -> XenAPI.Session:
    session = XenAPI.Session(pool["master"])
    session.xenapi.login_with_password(pool["username"], pool["password"], "2.21", "tinabs-demo")
    return session


def show_pool(pool: dict, today: str) -> None:
    x = login(pool).xenapi
    vms = [r for r in x.VM.get_all_records().values()
           if not (r["is_a_template"] or r["is_control_domain"] or r["is_a_snapshot"])]
    print(f"\n{pool['name']}: master {pool['master']}, {len(vms)} VMs")
    for r in sorted(vms, key=lambda r: r["name_label"]):
        mark = "  <- tagged today" if today in r["tags"] else ""
        print(f"  {r['name_label']:<10} {r['power_state']:<8} tags={','.join(r['tags']) or '-'}{mark}")


def export_one(pool: dict) -> None:
    session = login(pool)
    x = session.xenapi
    vm = next(ref for ref, r in x.VM.get_all_records().items()
              if not (r["is_a_template"] or r["is_control_domain"] or r["is_a_snapshot"]))
    snap = x.VM.snapshot(vm, "[demo] snapshot")
    os.makedirs("demo-out", exist_ok=True)
    path = os.path.join("demo-out", f"{x.VM.get_name_label(vm)}.xva")
    url = urllib.parse.urlsplit(pool["master"])
    conn = http.client.HTTPConnection(url.hostname, url.port)
    conn.request("GET", f"/export?session_id={session._session}&ref={snap}")
    resp = conn.getresponse()
    size = 0
    with open(path + ".partial", "wb") as out:
        while chunk := resp.read(1 << 20):
            out.write(chunk)
            size += len(chunk)
    os.replace(path + ".partial", path)
    print(f"\nexported a snapshot of {x.VM.get_name_label(vm)} to {path} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    sys.exit(main())
