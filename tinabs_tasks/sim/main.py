"""``tinabs sim``: run the simulator in the foreground, print one JSON ready line."""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import ssl
import sys
import threading

from tinabs_tasks.sim.server import Simulator
from tinabs_tasks.sim.settings import SimSettings


EPILOG = """\
control API (loopback, plain http; its URL is "control" in the ready line):
  GET  /sim/state                 every object of every pool
  GET  /sim/vdi/UUID              {pool, ref, digest, virtual_size, nonzero_bytes}, plus sha256
                                  of every byte for disks up to 4 GiB, or any disk with ?sha256=1
                                  (none with ?sha256=0)
                                  (digest reads only the data: quick even on 64 GiB)
  GET  /sim/vdi/UUID/data         the disk's raw bytes
  GET  /sim/stats                 per pool: bytes copied by VDI.copy/VM.copy, sent by /export and
                                  /export_raw_vdi, taken by /import_raw_vdi
  POST /sim/vdi/UUID/write        {"offset": N, "hex": "..."} or {"offset": N, "length": N,
                                  "seed": N}: a guest write (snapshots keep their bytes)
  POST /sim/drift                 {"fraction": 0.02, "seed": N, "pool": NAME (optional)}: a night
                                  of work; rewrites that fraction of every user VM's allocated
                                  system-disk chunks in clustered runs, the same for the same
                                  seed; answers per VDI uuid the chunks and bytes changed
  GET|POST|DELETE /sim/faults     list, add, clear injected faults
  POST /sim/pools/NAME/offline    {"seconds": N}: the pool is unreachable for N seconds
The same --seed gives the same inventory, uuids included.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--pools", type=_count(1, 250), default=2, help="number of pools (default 2)")
    parser.add_argument("--vms-per-pool", type=_count(0, 10000), default=8, help="VMs per pool (default 8)")
    parser.add_argument("--hosts-per-pool", type=_count(1, 250), default=2, help="hosts per pool (default 2)")
    parser.add_argument("--seed", type=int, default=1, help="inventory seed (default 1)")
    parser.add_argument("--disk-mib", type=_count(1, 1 << 20), default=64, help="system disk size in MiB (default 64)")
    parser.add_argument("--port", type=_count(0, 65535), default=0,
                        help="control API port; pool k listens on PORT+k (default: free ports)")
    parser.add_argument("--latency", type=_non_negative, default=0.0, metavar="SECONDS",
                        help="duration of each slow operation: snapshot, clone, copy, create (default 0)")
    parser.add_argument("--host-bandwidth-mbps", type=_non_negative, default=0.0, metavar="MB_PER_S",
                        help="per-host export bandwidth cap in MB/s (default: none)")
    parser.add_argument("--copy-bandwidth-mbps", type=_non_negative, default=0.0, metavar="MB_PER_S",
                        help="VDI.copy speed in MB/s (default: instant)")
    parser.add_argument("--export-keepalive", type=_non_negative, default=5.0, metavar="SECONDS",
                        help="empty keep-alive chunk after this long without export output (default 5, as xapi)")
    parser.add_argument("--session-ttl", type=_non_negative, default=0.0, metavar="SECONDS",
                        help="expire sessions idle this long (default: never)")
    parser.add_argument("--tls-cert", metavar="CERT", help="serve every host over HTTPS with this PEM certificate")
    parser.add_argument("--tls-key", metavar="KEY", help="the PEM private key of --tls-cert (default: in CERT)")
    parser.add_argument("--pool-address", metavar="ADDR[,ADDR...]", type=_addresses,
                        help="pool masters listen on (and report) this address, one for all pools or one "
                             "per pool, so other network namespaces or containers reach them "
                             "(default 127.0.0.1; needs --hosts-per-pool 1)")
    parser.add_argument("--clone-from-template", action="store_true",
                        help="every VM's system disk is a clone of its pool's template image (a template "
                             "VM with a --disk-mib disk, 25-50%% written) plus 2-8 MiB of its own, as a "
                             "fleet deployed from one template is")
    parser.add_argument("--write-config", metavar="FILE", help="write a tinabs config for these pools")
    parser.add_argument("--dest", metavar="DIR", help="backup destination written into --write-config")


# argparse turns ArgumentTypeError into "argument --pools: ..." and exit 2: the
# user learns which option is wrong, before anything is started.
def _count(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value
    return parse


def _addresses(text: str) -> list[str]:
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r}: an empty address")
    return parts


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    if bool(args.write_config) != bool(args.dest):
        print("tinabs sim: --write-config and --dest go together", file=sys.stderr)
        return 2
    if args.port and args.port + args.pools > 65535:
        print(f"tinabs sim: --port {args.port} leaves no room for {args.pools} pools (pool k uses PORT+k)",
              file=sys.stderr)
        return 2
    if args.tls_key and not args.tls_cert:
        print("tinabs sim: --tls-key needs --tls-cert", file=sys.stderr)
        return 2
    settings = SimSettings(latency_s=args.latency, host_bandwidth=args.host_bandwidth_mbps * 1e6,
                           copy_bandwidth=args.copy_bandwidth_mbps * 1e6,
                           export_keepalive_s=args.export_keepalive, session_ttl_s=args.session_ttl,
                           clone_from_template=args.clone_from_template)
    try:
        sim = Simulator(args.pools, args.vms_per_pool, args.hosts_per_pool, args.seed, args.disk_mib,
                        args.port, settings, tls_cert=args.tls_cert, tls_key=args.tls_key,
                        pool_addresses=args.pool_address)
        info = sim.start()
    except ssl.SSLError as exc:
        print(f"tinabs sim: cannot use --tls-cert {args.tls_cert} / --tls-key {args.tls_key}: {exc}",
              file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"tinabs sim: {exc}", file=sys.stderr)
        return 2
    if args.write_config:
        try:
            write_config(args.write_config, args.dest, info)
        except OSError as exc:
            sim.stop()
            print(f"tinabs sim: cannot write --write-config {args.write_config}: {exc}", file=sys.stderr)
            return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(json.dumps(info), flush=True)
    stop.wait()
    sim.stop()
    return 0


def write_config(path: str, dest: str, info: dict) -> None:
    """A tinabs config for the simulated pools; passwords go to 0600 files beside it."""
    secrets = os.path.join(os.path.dirname(os.path.abspath(path)), "secrets")
    os.makedirs(secrets, mode=0o700, exist_ok=True)
    lines = ['broker_url = "redis://127.0.0.1:6379/0"', f"destination = {json.dumps(os.path.abspath(dest))}", ""]
    for pool in info["pools"]:
        secret = os.path.join(secrets, f"{pool['name']}.password")
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # the mode of os.open applies only to a new file
        with os.fdopen(fd, "w") as fh:
            fh.write(pool["password"] + "\n")
        lines += [f"[pools.{json.dumps(pool['name'])}]", f"master = {json.dumps(pool['master'])}",
                  f"username = {json.dumps(pool['username'])}", f"password_file = {json.dumps(secret)}",
                  'shared_sr = "nfs-shared"', 'backup_sr = "backup-sr"', "max_concurrent_exports = 2", ""]
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write("\n".join(lines))
    os.replace(tmp, path)
