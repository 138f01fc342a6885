"""``tinabs sim`` as a user runs it, and its realism knobs, seen from outside the process.

Given the command line of DESIGN.md §4, then the simulator prints one JSON
ready line fast, listens where it says, writes a usable config, refuses bad
values without a traceback, stops cleanly on SIGTERM/SIGINT, serves many
clients at once, and its latency and bandwidth knobs slow exactly what they
should.
"""
from __future__ import annotations

import json
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.parse
from pathlib import Path

import pytest
import XenAPI

from helpers.sim_proc import SimProc

BIN = Path(sys.executable).with_name("tinabs")
TINABS = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "tinabs_tasks.cli"]
SMALL = ("--pools", "1", "--vms-per-pool", "2", "--hosts-per-pool", "1", "--disk-mib", "1")
MiB = 1 << 20


@pytest.fixture
def launch():
    """Start ``tinabs sim ARGS`` and wait for its ready line: (process, info, seconds to ready)."""
    procs: list[subprocess.Popen] = []

    def start(*args: str, env: dict | None = None):
        began = time.monotonic()
        proc = subprocess.Popen([*TINABS, "sim", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
        procs.append(proc)
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout=20), "no ready line"
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        return proc, json.loads(line), time.monotonic() - began

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_to_exit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*TINABS, "sim", *args], capture_output=True, text=True, timeout=20)


def login(url: str, info_pool: dict) -> XenAPI.Session:
    s = XenAPI.Session(url)
    s.xenapi.login_with_password(info_pool["username"], info_pool["password"], "2.21", "tinabs-tests")
    return s


def port_of(url: str) -> int:
    return urllib.parse.urlsplit(url).port


def free_port_range(count: int) -> int:
    """A base port P with P .. P+count-1 all free on loopback."""
    for _ in range(200):
        base = random.randint(20000, 60000)
        socks = []
        try:
            for p in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port range")


# -- the ready line ----------------------------------------------------------------
def test_ready_line_is_one_json_line_within_2s(launch):
    # When the simulator is started with the DESIGN command line
    proc, info, seconds = launch("--pools", "3", "--vms-per-pool", "2", "--hosts-per-pool", "3",
                                 "--seed", "7", "--disk-mib", "8")
    # Then its ready line came quickly and says where everything is
    assert seconds < 2.0
    assert set(info) == {"pools", "control"}
    assert info["control"].startswith("http://127.0.0.1:")
    assert [p["name"] for p in info["pools"]] == ["pool-a", "pool-b", "pool-c"]
    for pool in info["pools"]:
        assert set(pool) == {"name", "master", "members", "username", "password"}
        assert pool["master"].startswith("http://127.0.0.1:") and len(pool["members"]) == 2
        s = login(pool["master"], pool)
        assert len(s.xenapi.host.get_all()) == 3
        assert {urllib.parse.urlsplit(m).hostname for m in pool["members"]} == {
            s.xenapi.host.get_address(h) for h in s.xenapi.host.get_all()} - {"127.0.0.1"}
    assert len({port_of(p["master"]) for p in info["pools"]} | {port_of(info["control"])}) == 4
    # And nothing else is ever printed on stdout
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert proc.stdout.read() == ""


def test_port_puts_control_on_p_and_pool_k_on_p_plus_k(launch):
    # Given a free range of ports
    base = free_port_range(3)
    # When the simulator is told to use it
    _, info, _ = launch("--port", str(base), "--pools", "2", "--vms-per-pool", "1", "--hosts-per-pool", "2",
                        "--disk-mib", "1")
    # Then control is on P, pool k on P+k, and the pools answer there
    assert info["control"] == f"http://127.0.0.1:{base}"
    assert [p["master"] for p in info["pools"]] == [f"http://127.0.0.1:{base + 1}", f"http://127.0.0.1:{base + 2}"]
    assert all(port_of(m) == base + k + 1 for k, p in enumerate(info["pools"]) for m in p["members"])
    assert login(info["pools"][1]["master"], info["pools"][1]).xenapi.pool.get_all()


# -- --pool-address: masters where other hosts (network namespaces, containers) reach them ----------
def test_pool_address_puts_each_master_on_its_own_address(launch, tmp_path):
    # When each pool is given an address of its own (loopback ones here: all of 127/8 is local)
    config = tmp_path / "tinabs.toml"
    _, info, _ = launch("--pools", "2", "--vms-per-pool", "1", "--hosts-per-pool", "1", "--disk-mib", "1",
                        "--pool-address", "127.0.9.1,127.0.9.2", "--write-config", str(config),
                        "--dest", str(tmp_path / "backups"))
    # Then each master listens there, says so in host.address, and the written config points there
    masters = [p["master"] for p in info["pools"]]
    assert [urllib.parse.urlsplit(m).hostname for m in masters] == ["127.0.9.1", "127.0.9.2"]
    for pool, address in zip(info["pools"], ("127.0.9.1", "127.0.9.2")):
        s = login(pool["master"], pool)
        assert [s.xenapi.host.get_address(h) for h in s.xenapi.host.get_all()] == [address]
    written = tomllib.loads(config.read_text())["pools"]
    assert [written[p["name"]]["master"] for p in info["pools"]] == masters
    # And nothing listens on 127.0.0.1 at the masters' ports; the control API stays on loopback
    for master in masters:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port_of(master)), timeout=2).close()
    assert info["control"].startswith("http://127.0.0.1:")


def test_one_pool_address_serves_every_pool(launch):
    _, info, _ = launch("--pools", "2", "--vms-per-pool", "1", "--hosts-per-pool", "1", "--disk-mib", "1",
                        "--pool-address", "127.0.9.3")
    assert {urllib.parse.urlsplit(p["master"]).hostname for p in info["pools"]} == {"127.0.9.3"}
    assert len({port_of(p["master"]) for p in info["pools"]}) == 2
    assert login(info["pools"][1]["master"], info["pools"][1]).xenapi.pool.get_all()


@pytest.mark.parametrize("args, words", [
    (("--pools", "3", "--hosts-per-pool", "1", "--pool-address", "127.0.9.1,127.0.9.2"), "one per pool (3)"),
    (("--pools", "1", "--hosts-per-pool", "2", "--pool-address", "127.0.9.1"), "--hosts-per-pool 1"),
    (("--pools", "1", "--hosts-per-pool", "1", "--pool-address", "127.0.9.1,"), "empty address"),
])
def test_bad_pool_addresses_exit_2_with_a_clear_message(args, words):
    result = run_to_exit(*args)
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


# -- --write-config ------------------------------------------------------------------
def test_write_config_writes_toml_with_password_files(launch, tmp_path):
    # When the simulator writes a config for its pools
    config, dest = tmp_path / "tinabs.toml", tmp_path / "backups"
    _, info, _ = launch("--pools", "2", "--vms-per-pool", "1", "--hosts-per-pool", "1", "--disk-mib", "1",
                        "--write-config", str(config), "--dest", str(dest))
    # Then it is TOML with the broker, the destination and one table per pool ...
    text = config.read_text()
    conf = tomllib.loads(text)
    assert conf["broker_url"].startswith("redis://")
    assert conf["destination"] == str(dest.resolve())
    assert set(conf["pools"]) == {p["name"] for p in info["pools"]}
    for pool in info["pools"]:
        table = conf["pools"][pool["name"]]
        assert table["master"] == pool["master"] and table["username"] == pool["username"]
        # ... whose password is only in a 0600 file ...
        assert "password" not in table and pool["password"] not in text
        secret = Path(table["password_file"])
        assert secret.is_absolute() and secret.stat().st_mode & 0o777 == 0o600
        assert secret.read_text().strip() == pool["password"]
        # ... and whose SRs exist in that pool
        x = login(table["master"], pool).xenapi
        assert len(x.SR.get_by_name_label(table["shared_sr"])) == 1
        assert len(x.SR.get_by_name_label(table["backup_sr"])) == 1
        assert table["shared_sr"] != table["backup_sr"]


def test_write_config_without_dest_is_a_usage_error(tmp_path):
    result = run_to_exit(*SMALL, "--write-config", str(tmp_path / "t.toml"))
    assert result.returncode == 2
    assert "--dest" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == "" and not (tmp_path / "t.toml").exists()


@pytest.mark.parametrize("args,option", [
    (("--pools", "0"), "--pools"),
    (("--disk-mib", "0"), "--disk-mib"),
    (("--hosts-per-pool", "0"), "--hosts-per-pool"),
    (("--vms-per-pool", "-1"), "--vms-per-pool"),
    (("--pools", "two"), "--pools"),
    (("--latency", "-1"), "--latency"),
    (("--host-bandwidth-mbps", "-5"), "--host-bandwidth-mbps"),
    (("--port", "70000"), "--port"),
])
def test_bad_values_exit_2_with_a_clear_message(args, option):
    # When a value makes no sense
    result = run_to_exit(*args)
    # Then the command says which option is wrong, without a traceback, and starts nothing
    assert result.returncode == 2, result.stderr
    assert option in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_write_config_tightens_an_existing_password_file(launch, tmp_path):
    # Given a password file left readable by others
    (tmp_path / "secrets").mkdir()
    old = tmp_path / "secrets" / "pool-a.password"
    old.write_text("stale\n")
    old.chmod(0o644)
    # When the config is written again
    _, info, _ = launch(*SMALL, "--write-config", str(tmp_path / "t.toml"), "--dest", str(tmp_path))
    # Then the file holds the new password, for its owner only
    table = tomllib.loads((tmp_path / "t.toml").read_text())["pools"]["pool-a"]
    assert Path(table["password_file"]) == old
    assert old.stat().st_mode & 0o777 == 0o600
    assert old.read_text().strip() == info["pools"][0]["password"]


def _private_tmp(tmp_path: Path) -> dict:
    (tmp_path / "tmp").mkdir()
    return {**os.environ, "TMPDIR": str(tmp_path / "tmp")}


def test_unwritable_config_exits_2_and_leaves_nothing(tmp_path):
    # Given a config path below a regular file
    env = _private_tmp(tmp_path)
    (tmp_path / "file").write_text("")
    # When the simulator is asked to write there
    result = subprocess.run([*TINABS, "sim", *SMALL, "--write-config", str(tmp_path / "file" / "t.toml"),
                             "--dest", str(tmp_path)], capture_output=True, text=True, timeout=20, env=env)
    # Then it says so, exits 2 without a traceback or ready line, and removes its scratch
    assert result.returncode == 2
    assert "--write-config" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == "" and list((tmp_path / "tmp").iterdir()) == []


def test_port_in_use_exits_2_and_leaves_nothing(tmp_path):
    # Given a base port whose first pool port is taken
    env, base = _private_tmp(tmp_path), free_port_range(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 1))
        taken.listen()
        # When the simulator is told to use it
        result = subprocess.run([*TINABS, "sim", *SMALL, "--port", str(base)], capture_output=True, text=True,
                                timeout=20, env=env)
    # Then it names the address, exits 2 without a traceback, and removes its scratch
    assert result.returncode == 2
    assert f"127.0.0.1:{base + 1}" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == "" and list((tmp_path / "tmp").iterdir()) == []


# -- stopping ----------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_and_removes_scratch(launch, tmp_path, sig):
    # Given a simulator whose scratch directory lands in a private TMPDIR
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc, info, _ = launch(*SMALL, env={**os.environ, "TMPDIR": str(tmp)})
    scratch = list(tmp.glob("tinabs-sim-*"))
    assert len(scratch) == 1 and scratch[0].is_dir()
    # When it gets the signal
    proc.send_signal(sig)
    code = proc.wait(timeout=10)
    # Then it exits 0 without a traceback, its scratch is gone, and it no longer listens
    assert code == 0
    assert "Traceback" not in proc.stderr.read()
    assert not scratch[0].exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port_of(info["pools"][0]["master"])), timeout=2).close()


# -- many clients ---------------------------------------------------------------------
def test_many_parallel_clients_all_succeed(sim):
    # Given 32 clients, each with its own session
    sessions = [sim.session(i % 2) for i in range(32)]
    expected = [len(s.xenapi.VM.get_all()) for s in sessions[:2]]
    results, errors = [], []

    def client(k: int):
        try:
            for _ in range(20):
                results.append((k % 2, len(sessions[k].xenapi.VM.get_all_records())))
        except Exception as exc:  # collected: the assertion below names it
            errors.append(repr(exc))

    # When each makes 20 calls at the same time
    threads = [threading.Thread(target=client, args=(k,)) for k in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    # Then every call succeeded with the whole pool
    assert errors == []
    assert len(results) == 640
    assert all(n == expected[pool] for pool, n in results)


# -- realism knobs ---------------------------------------------------------------------
def _timed(fn, *args) -> float:
    began = time.monotonic()
    fn(*args)
    return time.monotonic() - began


def _slow_ops(sim) -> dict:
    """Callables for the slow operations, each on its own session (XenAPI is not thread-safe)."""
    x = sim.session(0).xenapi
    running = next(r for r, vm in x.VM.get_all_records().items()
                   if vm["power_state"] == "Running" and not vm["is_control_domain"])
    template = x.VM.get_by_name_label("Other install media")[0]
    vdi = x.VBD.get_VDI(next(b for b in x.VM.get_VBDs(running) if x.VBD.get_userdevice(b) == "0"))
    sr = x.pool.get_default_SR(x.pool.get_all()[0])
    record = {**x.VM.get_record(template), "name_label": "created", "is_a_template": False}
    vdi_args = {"SR": sr, "virtual_size": str(MiB), "type": "user", "sharable": False, "read_only": False,
                "other_config": {}, "name_label": "created"}

    def on_new_session(call):
        return lambda: call(sim.session(0).xenapi)

    return {
        "VM.snapshot": on_new_session(lambda x: x.VM.snapshot(running, "timed")),
        "VDI.copy": on_new_session(lambda x: x.VDI.copy(vdi, sr)),
        "VM.clone": on_new_session(lambda x: x.VM.clone(template, "timed")),
        "VM.create": on_new_session(lambda x: x.VM.create(record)),
        "VDI.create": on_new_session(lambda x: x.VDI.create(vdi_args)),
    }


def test_latency_slows_slow_operations_only(fresh_sim):
    # Given --latency 1
    sim = fresh_sim("--latency", "1", *SMALL)
    ops, x = _slow_ops(sim), sim.session(0).xenapi
    vm = x.VM.get_all()[0]
    elapsed: dict[str, float] = {}
    threads = [threading.Thread(target=lambda n=n, f=f: elapsed.__setitem__(n, _timed(f))) for n, f in ops.items()]
    # When the slow operations run side by side, and getters are called meanwhile
    for t in threads:
        t.start()
    getters = [_timed(x.VM.get_all_records), _timed(x.VM.get_record, vm), _timed(x.VDI.get_all_records),
               _timed(x.host.get_all), _timed(x.task.get_all_records)]
    for t in threads:
        t.join(timeout=30)
    # Then each slow operation took about a second, and no getter waited
    assert sorted(elapsed) == sorted(ops)
    assert all(0.9 <= s < 3.0 for s in elapsed.values()), elapsed
    assert max(getters) < 0.2, getters


def test_no_latency_by_default(sim):
    # Given the default simulator; when the slow operations run one after another
    elapsed = {name: _timed(fn) for name, fn in _slow_ops(sim).items()}
    # Then none of them takes long
    assert max(elapsed.values()) < 0.5, elapsed


@pytest.fixture(scope="module")
def capped():
    """One host, exports capped at 10 MB/s, VDI.copy at 5 MB/s."""
    proc = SimProc("--host-bandwidth-mbps", "10", "--copy-bandwidth-mbps", "5", *SMALL).start()
    try:
        yield proc
    finally:
        proc.stop()


def _vm_with_disk(sim, chunks: int) -> tuple[str, str]:
    """(VM, VDI): a disk-only template with ``chunks`` non-zero MiB chunks."""
    x = sim.session(0).xenapi
    vm = x.VM.clone(x.VM.get_by_name_label("Other install media")[0], "bandwidth")
    sr = x.pool.get_default_SR(x.pool.get_all()[0])
    vdi = x.VDI.create({"SR": sr, "virtual_size": str(chunks * MiB), "type": "user", "sharable": False,
                        "read_only": False, "other_config": {}, "name_label": "bandwidth"})
    x.VBD.create({"VM": vm, "VDI": vdi, "userdevice": "0", "bootable": True, "mode": "RW", "type": "Disk",
                  "empty": False, "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})
    uuid = x.VDI.get_uuid(vdi)
    for k in range(chunks):
        status, body = sim.control_call("POST", f"/sim/vdi/{uuid}/write", {"offset": k * MiB + 7, "hex": "ff"})
        assert status == 200, body
    return vm, vdi


def _export_seconds(sim, vm: str) -> tuple[float, int]:
    s = sim.session(0)
    query = urllib.parse.urlencode({"session_id": s.handle, "ref": vm})
    parts = urllib.parse.urlsplit(sim.pool(0)["master"])
    began = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as conn:
        conn.sendall(f"GET /export?{query} HTTP/1.0\r\n\r\n".encode())
        total = 0
        while piece := conn.recv(1 << 20):
            total += len(piece)
    return time.monotonic() - began, total


def test_host_bandwidth_caps_and_is_shared_by_concurrent_exports(capped):
    # Given two VMs with 3 MiB of data each on a host capped at 10 MB/s
    vms = [_vm_with_disk(capped, 3)[0] for _ in range(2)]
    # When one is exported alone, then both at once
    alone, size = _export_seconds(capped, vms[0])
    results = []
    threads = [threading.Thread(target=lambda v=v: results.append(_export_seconds(capped, v))) for v in vms]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    together = time.monotonic() - began
    # Then one export runs at about 10 MB/s, and two share the 10 MB/s
    assert size > 3 * MiB and [n for _, n in results] == [size, size]
    assert size / 10e6 * 0.9 <= alone <= size / 10e6 * 1.5 + 0.2, (size, alone)
    assert together >= 2 * size / 10e6 * 0.9, (size, together)
    assert together >= 1.6 * alone, (alone, together)


def test_copy_bandwidth_sets_vdi_copy_speed(capped):
    # Given a disk with 4 MiB of data and VDI.copy capped at 5 MB/s
    _, vdi = _vm_with_disk(capped, 4)
    x = capped.session(0).xenapi
    nonzero = capped.vdi_info(x.VDI.get_uuid(vdi))["nonzero_bytes"]
    sr = x.pool.get_default_SR(x.pool.get_all()[0])
    # When it is copied
    seconds = _timed(x.VDI.copy, vdi, sr)
    # Then the copy took as long as 5 MB/s allows
    assert nonzero == 4 * MiB
    assert nonzero / 5e6 * 0.9 <= seconds <= nonzero / 5e6 + 1.0, seconds


# -- a fleet deployed from one template (--clone-from-template) ---------------------
def _chunks(sim, uuid: str) -> list[bytes | None]:
    data = sim.vdi_bytes(uuid)
    return [None if not data[at: at + MiB].strip(b"\0") else data[at: at + MiB]
            for at in range(0, len(data), MiB)]


def _system_disks(pool: dict) -> dict[str, str]:
    """VM uuid -> system disk VDI uuid, for every VM with a userdevice 0 disk (templates too)."""
    out = {}
    for ref, vm in pool["VM"].items():
        for vbd in pool["VBD"].values():
            if vbd["VM"] == ref and vbd["userdevice"] == "0" and vbd["type"] == "Disk":
                out[vm["uuid"]] = pool["VDI"][vbd["VDI"]]["uuid"]
    return out


def test_clone_from_template_gives_every_vm_the_image_plus_a_few_mib(fresh_sim):
    """Like VM.clone of a template on an SM that clones (xapi_vdi.ml ``clone`` -> SM VDI.clone): every
    system disk is the image's bytes (user VMs: not templates, snapshots or control domains, as
    datamodel_vm.ml's flags tell) plus the VM's own writes."""
    # Given a pool built with --clone-from-template and 32 MiB system disks
    sim = fresh_sim("--pools", "1", "--vms-per-pool", "5", "--hosts-per-pool", "1", "--disk-mib", "32",
                    "--clone-from-template")
    pool = sim.state()["pools"]["pool-a"]
    images = [vm for vm in pool["VM"].values() if vm["other_config"].get("tinabs_sim_image") == "true"]
    # Then the pool has one template VM holding the image, 25-50 % of it written, like an installed OS
    assert len(images) == 1 and images[0]["is_a_template"] and not images[0]["is_default_template"]
    disks = _system_disks(pool)
    image_uuid = disks.pop(images[0]["uuid"])
    image = _chunks(sim, image_uuid)
    assert 0.25 * 32 <= sum(c is not None for c in image) <= 0.5 * 32 + 1
    users = {u: d for u, d in disks.items() if not next(vm for vm in pool["VM"].values()
                                                      if vm["uuid"] == u)["is_a_snapshot"]}
    assert len(users) == 5
    # And every VM's system disk shares the image's chunks but 2-8 MiB of its own
    own = []
    for uuid in users.values():
        chunks = _chunks(sim, uuid)
        differing = [k for k, (a, b) in enumerate(zip(image, chunks)) if a != b]
        assert 2 <= len(differing) <= 8, differing
        assert all(chunks[k] is not None for k in differing)
        own.append({chunks[k] for k in differing})
    # And no two VMs wrote the same data
    assert all(not (a & b) for i, a in enumerate(own) for b in own[i + 1:])


def test_default_inventory_has_no_template_image(sim):
    """Without --clone-from-template the inventory is as before: no image VM, system disks of their own."""
    pool = sim.state()["pools"]["pool-a"]
    assert not [vm for vm in pool["VM"].values() if vm["other_config"].get("tinabs_sim_image")]
    firsts = {sim.vdi_bytes(u)[:MiB] for u in list(_system_disks(pool).values())[:3]}
    assert len(firsts) == 3


def test_help_documents_drift_seeded_writes_and_template_fleets():
    """No xen-api fact: the simulator's own --help documents its control API and flags."""
    out = subprocess.run([*TINABS, "sim", "--help"], capture_output=True, text=True, check=True).stdout
    for words in ("--clone-from-template", "POST /sim/drift", '"fraction": 0.02', '"seed": N',
                  "POST /sim/vdi/UUID/write", "?sha256=1", "same --seed gives the same inventory"):
        assert words in out, words
