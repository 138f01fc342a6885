"""The simulator's control API (loopback only, no XAPI session).

``GET /sim/state``                 every object of every class of every pool
``GET|POST|DELETE /sim/faults``    list, add (see ..faults), clear faults
``POST /sim/pools/<pool>/offline`` {"seconds": N}: the pool refuses connections (and resets
                                   open ones) for N seconds, then serves again as before
``GET /sim/vdi/<uuid>``            {pool, ref, digest, virtual_size, nonzero_bytes}, plus sha256
                                   (of every byte) for disks up to 4 GiB or with ?sha256=1
                                   (?sha256=0: never);
                                   digest reads only the data, so it is quick on any disk
``GET /sim/vdi/<uuid>/data``       the VDI's raw bytes
``POST /sim/vdi/<uuid>/write``     a guest write: {"offset": int, "hex": "..."} or
                                   {"offset": int, "length": int, "seed": int} (deterministic
                                   bytes, disks.seeded_bytes); only this VDI changes, its
                                   snapshots keep their bytes, as with a real live snapshot
``POST /sim/drift``                a night of work: {"fraction": F, "seed": N, "pool"?: name}
                                   rewrites F of every user VM's allocated system-disk chunks
                                   (see ..drift); answers {vdis: {uuid: {chunks, bytes}}}
``GET /sim/stats``                 {"pools": {name: {"copied_bytes", "exported_bytes",
                                   "imported_bytes"}}}: bytes the simulated storage copied
                                   (VDI.copy, VM.copy), sent by /export, /export_metadata and
                                   /export_raw_vdi, written
                                   by /import_raw_vdi since the simulator started
"""
from __future__ import annotations

import ipaddress
import json
import logging
import socket
import urllib.parse
from http.server import BaseHTTPRequestHandler

from tinabs_tasks.sim import datamodel
from tinabs_tasks.sim import drift
from tinabs_tasks.sim import wire
from tinabs_tasks.sim.errors import XapiError
from tinabs_tasks.sim.faults import FaultSpecError, parse_spec

log = logging.getLogger("tinabs.sim.control")

#: ``GET /sim/vdi/<uuid>`` hashes every byte (sha256) of disks up to this size unless asked
SHA256_LIMIT = 4 << 30


class ControlHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # head and body are two writes: without TCP_NODELAY the body waits ~40 ms
        # for the client's delayed ACK
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):
        log.debug(fmt, *args)

    def send_error(self, code, message=None, explain=None):
        # http.server's own errors (501 for PUT, 400 for a bad request line) answer JSON too
        self.close_connection = True
        self._json(code, {"error": message or self.responses.get(code, ("error",))[0]})

    @property
    def sim(self):
        return self.server.sim

    def _json(self, status: int, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body_json(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            return json.loads(raw or b"null")
        except ValueError as exc:
            raise FaultSpecError(f"body is not JSON: {exc}") from None

    def _allowed(self) -> bool:
        if ipaddress.ip_address(self.client_address[0]).is_loopback:
            return True
        self._json(403, {"error": "the control API answers loopback clients only"})
        return False

    def _parts(self) -> list[str]:
        return [p for p in urllib.parse.urlsplit(self.path).path.split("/") if p]

    def do_GET(self):
        if not self._allowed():
            return
        parts = self._parts()
        if parts == ["sim", "state"]:
            return self._json(200, self.sim.state())
        if parts == ["sim", "faults"]:
            return self._json(200, {"faults": self.sim.faults.active()})
        if parts == ["sim", "stats"]:
            return self._json(200, {"pools": {name: dict(p.byte_counters) for name, p in self.sim.pools.items()}})
        if len(parts) in (3, 4) and parts[:2] == ["sim", "vdi"]:
            return self._vdi(parts[2], data=len(parts) == 4 and parts[3] == "data")
        self._json(404, {"error": f"no such control endpoint {self.path}"})

    def do_POST(self):
        if not self._allowed():
            return
        parts = self._parts()
        try:
            if parts == ["sim", "faults"]:
                return self._add_faults(self._body_json())
            if parts == ["sim", "drift"]:
                return self._drift(self._body_json())
            if len(parts) == 4 and parts[:2] == ["sim", "vdi"] and parts[3] == "write":
                return self._write(parts[2], self._body_json())
            if len(parts) == 4 and parts[:2] == ["sim", "pools"] and parts[3] == "offline":
                return self._offline(parts[2], self._body_json())
        except (FaultSpecError, drift.DriftError) as exc:
            return self._json(400, {"error": str(exc)})
        self._json(404, {"error": f"no such control endpoint {self.path}"})

    def do_DELETE(self):
        if not self._allowed():
            return
        if self._parts() == ["sim", "faults"]:
            self.sim.faults.clear()
            return self._json(200, {"cleared": True})
        self._json(404, {"error": f"no such control endpoint {self.path}"})

    def _add_faults(self, body) -> None:
        specs = body if isinstance(body, list) else [body]
        parsed = [parse_spec(spec, self.sim.pools) for spec in specs]  # all or nothing
        ids, expired = [], 0
        for spec in parsed:
            if "expire_sessions" in spec and not {"method", "handler"} & set(spec):  # now, not on a call
                expired += sum(p.expire_sessions() for name, p in self.sim.pools.items()
                               if spec.get("pool") in (None, name))
            else:
                ids.append(self.sim.faults.add(spec))
        self._json(200, {"ids": ids, "expired_sessions": expired})

    def _offline(self, name: str, body) -> None:
        if name not in self.sim.pools:
            return self._json(404, {"error": f"unknown pool {name!r}; pools: {sorted(self.sim.pools)}"})
        seconds = body.get("seconds") if isinstance(body, dict) else None
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= 3600:
            raise FaultSpecError('body is {"seconds": N} with 0 < N <= 3600')
        if name in self.sim.offline_pools():
            return self._json(409, {"error": f"pool {name} is already offline"})
        self.sim.take_offline(name, float(seconds))
        self._json(200, {"pool": name, "offline_s": seconds})

    def _find_vdi(self, uuid: str):
        for pool in self.sim.pools.values():
            try:
                return pool, pool.store.by_uuid("VDI", uuid)
            except XapiError:
                continue
        return None, None

    def _vdi(self, uuid: str, data: bool) -> None:
        pool, ref = self._find_vdi(uuid)
        if pool is None:
            return self._json(404, {"error": f"no VDI with uuid {uuid}"})
        content = pool.content(ref)
        if not data:
            info = {"pool": pool.name, "ref": ref, "digest": content.digest(),
                    "virtual_size": content.size, "nonzero_bytes": content.nonzero_bytes()}
            # sha256 reads every byte, zeros included: minutes for a 64 GiB disk
            asked = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("sha256", [""])[-1]
            if asked in ("1", "true") or (content.size <= SHA256_LIMIT and asked not in ("0", "false")):
                info["sha256"] = content.sha256()
            return self._json(200, info)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(content.size))
        self.end_headers()
        for k in range(content.chunk_count() if content.size else 0):
            self.wfile.write(content.chunk(k))

    def _write(self, uuid: str, body) -> None:
        pool, ref = self._find_vdi(uuid)
        if pool is None:
            return self._json(404, {"error": f"no VDI with uuid {uuid}"})
        if isinstance(body, dict) and "seed" in body:
            return self._seeded_write(pool, ref, body)
        # type() rather than isinstance(): JSON true is a Python int too
        if not isinstance(body, dict) or type(body.get("offset")) is not int or not isinstance(body.get("hex"), str):
            raise FaultSpecError('a write is {"offset": int, "hex": "..."}')
        try:
            data = bytes.fromhex(body["hex"])
        except ValueError:
            raise FaultSpecError("'hex' is not hexadecimal") from None
        if body["offset"] < 0 or body["offset"] + len(data) > pool.content(ref).size:
            raise FaultSpecError("write outside the disk")
        pool.guest_write(ref, body["offset"], data)
        self._json(200, {"written": len(data)})

    def _seeded_write(self, pool, ref: str, body: dict) -> None:
        if set(body) != {"offset", "length", "seed"} or any(type(body[k]) is not int for k in body):
            raise FaultSpecError('a seeded write is {"offset": int, "length": int, "seed": int}')
        offset, length = body["offset"], body["length"]
        if offset < 0 or length <= 0 or offset + length > pool.content(ref).size:
            raise FaultSpecError("write outside the disk (or of no bytes)")
        pool.seeded_write(ref, offset, length, body["seed"])
        self._json(200, {"written": length})

    def _drift(self, body) -> None:
        fraction, seed, names = drift.parse_request(body, self.sim.pools)
        self._json(200, drift.drift(self.sim.pools, names, fraction, seed))


def pool_state(pool) -> dict:
    with pool.store.lock:  # one moment for all classes: no VBD of a VM read a class earlier
        return {cls: {ref: wire.to_json(rec) for ref, rec in pool.store.all_records(cls).items()}
                for cls in datamodel.CLASSES}
